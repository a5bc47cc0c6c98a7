"""Losing the catalog loses nothing: re-create its rows from the files' own metadata.

Each shard holds its round, version, seed, sampler config, source checkpoint and time of
writing as HDF5 attributes (``store.shards``); each checkpoint holds its experiment, round
and config, and since schema 3 the store's own record of the experiment row and the parent
checkpoint (``artifacts.catalog_record``; an older checkpoint's parent comes from its
``inputs``). :func:`record_from_files` records every experiment whose folder holds such
files but which the catalog does not know; it never changes a file, nor an experiment the
catalog knows. What only the catalog held is gone: evaluations, attacks, round metrics,
the step log and the MLflow run id (``icl evaluate`` measures again; tracking starts a new
run).

Example:
    >>> st = Store.rebuild(ws)                    # doctest: +SKIP
    >>> st.rebuilt
    ["experiment 'icl': 3 checkpoints (rounds 0-2), 2 shards"]
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import checkpoints as ckpt_files
from . import shards as shard_files
from .artifacts import STORE_KEY, ArtifactFiles, checkpoint_fix, shard_fix
from .errors import IntegrityError
from .hashing import config_hash
from .orm import Checkpoint, Experiment, Shard
from .workspace import CHECKPOINT_FILE, SHARD_FILE, experiments_on_disk, sha256_file


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)


def record_from_files(files: ArtifactFiles) -> list[str]:
    """Record every experiment on disk that the catalog lacks; one line per experiment
    (what was recorded, or why it was not). Files that fail their own checks are named
    and left out; nothing on disk changes."""
    known = files.catalog.names()
    lines: list[str] = []
    plans = []
    for name, paths in experiments_on_disk(files.root).items():
        if name in known:
            continue
        try:
            plans.append(_plan(files, name, paths))
        except IntegrityError as exc:
            lines.append(f"experiment '{name}' not recorded: {exc}")
    if plans:
        files.catalog.write(lambda s: [_record(s, plan) for plan in plans])
    for plan in plans:
        rounds = sorted(c["round"] for c in plan["checkpoints"])
        span = f"rounds {rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else f"round {rounds[0]}"
        skipped = "".join(f"; left out {why}" for why in plan["skipped"])
        lines.append(f"experiment '{plan['name']}': {len(rounds)} checkpoint(s) ({span}), "
                     f"{len(plan['shards'])} shard(s){skipped}")
    return lines


def _plan(files: ArtifactFiles, name: str, paths: list[Path]) -> dict[str, Any]:
    """What to record of one experiment, read from its files (IntegrityError if nothing
    tells its config: no readable checkpoint)."""
    ckpts, shards, skipped = [], [], []
    for path in paths:
        rel = files.rel(path)
        try:
            if path.suffix == ".pt":
                ckpts.append(_checkpoint(path, rel, name))
            else:
                shards.append(_shard(path, rel, name))
        except IntegrityError as exc:
            skipped.append(str(exc))
    if not ckpts:
        raise IntegrityError(f"no readable checkpoint tells its config; its files stay on disk "
                             f"untouched (move experiments/{name} out of the workspace to go "
                             "on without it)")
    ckpts.sort(key=lambda c: c["round"])
    record = ckpts[0]["record"].get("experiment") or {}
    config = record.get("config") or ckpts[0]["config"]
    if not isinstance(config, dict):
        raise IntegrityError(f"checkpoint {ckpts[0]['rel']} holds no experiment config")
    latest = {}
    for sh in shards:  # the newest version of each round is the active one, as written
        if sh["version"] > latest.get(sh["round"], 0):
            latest[sh["round"]] = sh["version"]
    for sh in shards:
        sh["active"] = latest[sh["round"]] == sh["version"]
    created = min([c["created_at"] for c in ckpts] + [s["created_at"] for s in shards])
    return {"name": name, "config": config, "record": record, "created_at": created,
            "checkpoints": ckpts, "shards": shards, "skipped": skipped}


def _checkpoint(path: Path, rel: str, name: str) -> dict[str, Any]:
    round_ = int(CHECKPOINT_FILE.match(path.name).group(1))
    state = ckpt_files.read_file(path, rel, checkpoint_fix(name, round_))
    if (state.get("experiment"), state.get("round")) != (name, round_):
        raise IntegrityError(f"checkpoint {rel} says experiment {state.get('experiment')!r} "
                             f"round {state.get('round')}, not '{name}' round {round_}")
    record = state.get(STORE_KEY) if isinstance(state.get(STORE_KEY), dict) else {}
    parent = record.get("parent") or {}
    inputs = state.get("inputs") if isinstance(state.get("inputs"), dict) else {}
    cfg = state.get("config")
    return {"round": round_, "rel": rel, "sha256": sha256_file(path), "record": record,
            "config": cfg, "config_hash": config_hash(cfg) if isinstance(cfg, dict) else None,
            "parent_sha256": parent.get("sha256") or inputs.get("parent"),
            "created_at": _mtime(path)}


def _shard(path: Path, rel: str, name: str) -> dict[str, Any]:
    m = SHARD_FILE.match(path.name)
    meta = shard_files.read_meta(path, rel)
    if (meta["round"], meta["version"]) != (int(m.group(1)), int(m.group(2))):
        raise IntegrityError(f"shard {rel} holds round {meta['round']} v{meta['version']}: "
                             f"{shard_fix(name, int(m.group(1)))}")
    try:
        created = datetime.fromisoformat(meta["created_at"])
    except ValueError:
        created = _mtime(path)
    return {**meta, "rel": rel, "sha256": sha256_file(path), "created_at": created}


def _record(s: Session, plan: dict[str, Any]) -> None:
    rec = plan["record"]
    exp = Experiment(name=plan["name"], config=plan["config"],
                     config_hash=config_hash(plan["config"]),
                     method=plan["config"].get("method"), parent_name=rec.get("parent"),
                     parent_round=rec.get("parent_round"),
                     data_fingerprint=rec.get("data_fingerprint"), created_at=plan["created_at"])
    s.add(exp)
    s.flush()
    for sh in plan["shards"]:
        s.add(Shard(experiment_id=exp.id, round=sh["round"], version=sh["version"],
                    active=sh["active"], path=sh["rel"], sha256=sh["sha256"], count=sh["count"],
                    sampler_config=sh["sampler_config"], seed=sh["seed"],
                    source_checkpoint_sha256=sh["source_checkpoint"],
                    created_at=sh["created_at"]))
    for ck in plan["checkpoints"]:
        parent_id = None if ck["parent_sha256"] is None else s.scalar(
            select(Checkpoint.id).where(Checkpoint.sha256 == ck["parent_sha256"]).limit(1))
        s.add(Checkpoint(experiment_id=exp.id, round=ck["round"], path=ck["rel"],
                         sha256=ck["sha256"], parent_id=parent_id,
                         parent_sha256=ck["parent_sha256"], config_hash=ck["config_hash"],
                         created_at=ck["created_at"]))
        s.flush()
