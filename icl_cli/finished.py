"""A finished step answers at once: the same command run again prints, from the catalog,
what the run that did the work printed, without importing torch, h5py or MLflow.

Each step that did its work records its result (``store.finished``): the ``--json``
document, the settings it depends on and the files it read and wrote. What a step's
result depends on is computed here, once, for both sides: by the step when it records,
and by :func:`answer` when the command is run again, from the command's arguments and the
catalog, as the step would resolve them (the experiment's config with this call's
changes; the sha256 of the checkpoint, shards and data it would read; the catalog records
that hold its result). The two must be equal, and every recorded file must still have the
size and mtime it had (``store.finished.unchanged``); otherwise, or when anything is
unusual (no record yet, a record from before schema 7, torchrun, a lock held elsewhere),
:func:`answer` returns None and the command takes its normal path, which does the work or
its own full checks.

What counts as the same:

- ``synthesize --round t``: the sampler settings (the experiment's with this call's
  changes, and ``--amp``, ``--compile``, ``--channels-last``), checkpoint t-1 and the
  active shard of round t (by sha256);
- ``reclassify --round t``: what the checkpoint's inputs record (checkpoint t-1, the active
  shards 1..t, this round's changed settings, ``--amp``, ``--compile``,
  ``--channels-last``) and checkpoint t itself;
- ``evaluate``, ``inspect``, ``attack``, ``ood``, ``quality``: their options, the sha256 of
  the checkpoints or shards they read, the experiment's data fingerprint, and their
  results as the catalog holds them now (an evaluation of the same round with other
  ``--bins`` replaces them, and so this answer).

Example:
    >>> doc = answer("evaluate", None, "icl", t=3, bins=15, plot=True)  # doctest: +SKIP
    >>> doc is None or all(row["reused"] for row in doc)
    True
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icl_cli.config import ExperimentConfig, SamplerConfig, TrainConfig

if TYPE_CHECKING:
    from store import ExperimentInfo, Store

# Data that ships with icl (its files are part of the installed package); any other
# dataset's files under its root are stamped, at most DATA_FILES of them.
PACKAGED_DATA = ("mnist-embedded", "fake-cifar10", "fake-svhn")
DATA_FILES = 4096


class Doc(dict):
    """A recorded document read back: a dict whose keys also read as attributes, so the
    command renders it as it renders the step's own result (``r.count``, ``e["epoch"]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def plain(obj: Any) -> Any:
    """A step's result as its ``--json`` document (``icl_cli.cli.ui.to_plain``'s rules:
    dataclasses as dicts, tuples as lists, NaN and infinities as null)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _doc(obj: Any) -> Any:
    if isinstance(obj, dict):
        return Doc({k: _doc(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_doc(v) for v in obj]
    return obj


def reused(document: Any) -> Any:
    """``document`` marked as answered from the record: ``"reused": true`` in it (in each
    row of a list)."""
    if isinstance(document, list):
        return [{**row, "reused": True} for row in document]
    return {**document, "reused": True}


# --------------------------------------------------------------- what a result is of
Key = tuple[dict[str, Any], dict[str, Any]]  # (slot, settings)


def _root(store: Store) -> dict[str, Any]:
    # Documents hold absolute paths: a workspace seen at another folder is answered anew.
    return {"root": str(store.root)}


def _sha(info) -> str | None:
    return None if info is None else info.sha256


PREPARED = ("compile", "channels_last")
"""Runtime options that change floating-point order only (``icl_cli.algo.prepare``): like
``amp``, recorded with what they made (a shard's sampler settings, a checkpoint's inputs)
where set, so that a result made without one is not taken for one made with it."""


def prepared(compile: bool = False, channels_last: bool = False) -> dict[str, bool]:
    """The ``PREPARED`` options that are set, as a record keeps them.

    Example:
        >>> prepared(compile=False, channels_last=True)
        {'channels_last': True}
    """
    return {k: True for k, v in zip(PREPARED, (compile, channels_last), strict=True) if v}


def synthesize_key(store: Store, exp: ExperimentInfo, t: int, sampler: SamplerConfig,
                   amp: bool, compile: bool | None = None,
                   channels_last: bool | None = None) -> Key | None:
    """Round ``t``'s shard: its sampler settings (as a shard records them, without its
    block size), checkpoint t-1 and the active shard, by sha256. ``compile``,
    ``channels_last``: as the command asks them; None (the step recording what it drew):
    as the active shard records them."""
    source = store.checkpoint(exp.name, t - 1)
    if source is None or t < 1:
        return None
    shard = store.active_shard(exp.name, t)
    if compile is None or channels_last is None:
        made = dict(shard.sampler_config or {}) if shard is not None else {}
        compile = made.get("compile", False) if compile is None else compile
        channels_last = made.get("channels_last", False) if channels_last is None \
            else channels_last
    sampler = {**sampler.to_dict(), **({"amp": True} if amp else {}),
               **prepared(bool(compile), bool(channels_last))}
    return {"round": t}, {"sampler": sampler, "source": source.sha256,
                          "shard": _sha(shard), **_root(store)}


def train_inputs(parent_sha: str | None, shards: list, changed: dict | None,
                 amp: bool, compile: bool = False, channels_last: bool = False
                 ) -> dict[str, Any]:
    """What a checkpoint was trained from, as it records it (``inputs``): compared to decide
    whether a rerun is a no-op. ``changed``: the round's reclassify settings, when they
    differ from the experiment's; ``amp``: trained under bf16 autocast; ``compile``,
    ``channels_last``: the network prepared so (each recorded only when set, so that
    a checkpoint made before they existed keeps its inputs)."""
    out: dict[str, Any] = {"parent": parent_sha, "shards": [s.sha256 for s in shards]}
    if changed:
        out["train"] = changed
    if amp:
        out["amp"] = True
    out.update(prepared(compile, channels_last))
    return out


def reclassify_key(store: Store, exp: ExperimentInfo, t: int, train: TrainConfig,
                   amp: bool, compile: bool = False, channels_last: bool = False
                   ) -> Key | None:
    """Checkpoint t: the inputs it records and its sha256 (``train``: the round's
    settings). Round 0 of an experiment made ``--from`` another (a copy) has none."""
    cfg = ExperimentConfig.from_dict(exp.config)
    if t < 0 or (t == 0 and (train != cfg.train or exp.parent is not None)):
        return None
    parent = store.checkpoint(exp.name, t - 1) if t > 0 else None
    if t > 0 and parent is None:
        return None
    shards = store.active_shards(exp.name, t) if t > 0 and cfg.method != "baseline" else []
    inputs = train_inputs(_sha(parent), shards,
                          train.to_dict() if train != cfg.train else None, amp, compile,
                          channels_last)
    return {"round": t}, {"inputs": inputs, "checkpoint": _sha(store.checkpoint(exp.name, t)),
                          **_root(store)}


def _metrics(store: Store, exp: ExperimentInfo, t: int,
             keep: Callable[[str], bool]) -> dict[str, Any]:
    return {k: v for k, v in sorted(store.metrics(exp.name).get(t, {}).items()) if keep(k)}


def evaluate_key(store: Store, exp: ExperimentInfo, t: int, bins: int, plot: bool
                 ) -> Key | None:
    """Round t's evaluation: ``--bins``, ``--plot``, checkpoint t, the data, and the
    evaluations and calibration the catalog holds for round t."""
    ckpt = store.checkpoint(exp.name, t)
    if ckpt is None:
        return None
    found = sorted([e.split, e.error, e.n, list(e.per_class)]
                   for e in store.evaluations(exp.name) if e.round == t)
    cal = _metrics(store, exp, t, lambda k: k == "ece_bins" or k.endswith(("_nll", "_ece")))
    return {"round": t}, {"bins": bins, "plot": plot, "checkpoint": ckpt.sha256,
                          "data": exp.data_fingerprint, "recorded": [found, cal],
                          **_root(store)}


def inspect_key(store: Store, exp: ExperimentInfo, t: int, version: int | None
                ) -> Key | None:
    """Round t's shard (the active one, or ``version``), by sha256, and the data."""
    shards = store.shards(exp.name, t)
    info = next((s for s in shards if (s.active if version is None else
                                       s.version == version)), None)
    if info is None:
        return None
    return {"round": t, "version": version}, {"shard": info.sha256, "v": info.version,
                                              "data": exp.data_fingerprint, **_root(store)}


def attack_key(store: Store, exp: ExperimentInfo, t: int, other: ExperimentInfo,
               other_round: int, settings: dict[str, Any]) -> Key | None:
    """The attack between (exp, t) and (other, other_round): its settings (every field of
    ``AttackSettings``), both checkpoints, the data and the counts the catalog holds."""
    a, b = store.checkpoint(exp.name, t), store.checkpoint(other.name, other_round)
    if a is None or b is None:
        return None
    slot = {"round": t, "against": other.name, "against_round": other_round,
            "eps": float(settings["eps"]), "method": settings["method"]}
    held = [[r.counts, r.params] for r in store.attacks(exp.name)
            if (r.round, r.against_experiment, r.against_round, r.eps, r.method)
            == (t, other.name, other_round, float(settings["eps"]), settings["method"])]
    return slot, {"attack": dict(settings), "checkpoints": [a.sha256, b.sha256],
                  "data": [exp.data_fingerprint, other.data_fingerprint], "recorded": held,
                  **_root(store)}


def ood_roots(roots: list[Path] | None) -> list[str]:
    """``--ood-root`` folders as absolute paths (what a record keeps)."""
    return [str(Path(r).expanduser().resolve()) for r in roots or []]


def ood_key(store: Store, exp: ExperimentInfo, t: int, roots: list[Path] | None, seed: int,
            plot: bool, limit: int | None) -> Key | None:
    """Round t's OOD scores: the options, checkpoint t, the data and the ``ood_*`` metrics
    the catalog holds for round t."""
    ckpt = store.checkpoint(exp.name, t)
    if ckpt is None:
        return None
    held = _metrics(store, exp, t, lambda k: k.startswith("ood_"))
    return {"round": t}, {"roots": ood_roots(roots), "seed": seed, "plot": plot,
                          "limit": limit, "checkpoint": ckpt.sha256,
                          "data": exp.data_fingerprint, "recorded": held, **_root(store)}


def quality_key(store: Store, exp: ExperimentInfo, epochs: int, seed: int, plot: bool
                ) -> Key | None:
    """The experiment's sample quality: the options, its active shards, the data and the
    ``quality_*`` metrics the catalog holds."""
    shards = [[s.round, s.version, s.sha256] for s in store.shards(exp.name, active_only=True)]
    held = {str(t): {k: v for k, v in sorted(m.items()) if k.startswith("quality_")}
            for t, m in sorted(store.metrics(exp.name).items())}
    return {}, {"epochs": epochs, "seed": seed, "plot": plot, "shards": shards,
                "data": exp.data_fingerprint, "recorded": held, **_root(store)}


# ---------------------------------------------------------------- files it depends on
def data_stamps(store: Store, exp: ExperimentInfo) -> list[dict[str, Any]] | None:
    """Stamps of the files an experiment's data is read from: none for data that ships
    with icl; the files under its data root otherwise, and its folders (a file added or
    removed changes its folder's mtime). None where there is no root, or more than
    ``DATA_FILES`` files: then no answer is recorded."""
    from store.finished import stamp

    data = ExperimentConfig.from_dict(exp.config).data
    if data.dataset in PACKAGED_DATA:
        return []
    if not data.root:
        return None
    top = Path(data.root).expanduser()
    if top.is_file():
        return [stamp(store.root, top.resolve())]
    found: list[Path] = []
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        found += [Path(folder), *(Path(folder, f) for f in sorted(files))]
        if len(found) > DATA_FILES:
            return None
    return [stamp(store.root, p.resolve()) for p in found] if found else None


def record(store: Store, exp: ExperimentInfo, command: str, key: Key | None,
           files: list[tuple[Path, str | None]], result: Any, data: bool = False) -> None:
    """What a step that did its work records: its result as its ``--json`` document, under
    ``key`` (the same function :func:`answer` calls), with the stamps of ``files`` ((path,
    sha256 or None) read or written) and, with ``data``, of the experiment's data files.
    Nothing when there is no key or the data cannot be stamped."""
    from store.finished import stamp

    try:
        stamps = [stamp(store.root, p, sha) for p, sha in files]
        more = data_stamps(store, exp) if data else []
        if key is not None and more is not None:
            slot, settings = key
            store.record_finished(exp.name, command, slot, settings, stamps + more,
                                  plain(result))
    except Exception as exc:
        # The answer only saves a rerun's time: the step's work is done and recorded, and
        # a row left from an earlier run of the slot no longer matches what the catalog
        # holds now (other hashes, other results), so a rerun takes the step's path. Said
        # in one line, so that a rerun that is never fast has its reason on record.
        print(f"warning: {command}'s result was not kept for a fast rerun "
              f"({type(exc).__name__}: {exc}); a rerun will redo its checks", file=sys.stderr)


# ----------------------------------------------------------------------- the answer
def answer(command: str, workspace: Path | None, experiment: str | None,
           **args: Any) -> Doc | None:
    """The recorded document of ``command`` run with ``args``, marked reused, when the
    catalog holds one made with the same settings from the same inputs and every file it
    was made from is unchanged (size and mtime); None otherwise (the command then runs its
    step). Never raises: anything unexpected is left to the normal path."""
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        return None  # torchrun's ranks agree on the command in the step
    if str(args.pop("device", "auto")).split(":")[0] not in ("auto", "cpu", "cuda"):
        return None  # the step says what is wrong with it
    try:
        return _answer(command, workspace, experiment, args)
    except Exception as exc:  # the step runs and reports any real problem in its own line
        if os.environ.get("ICL_DEBUG"):
            print(f"debug: no fast answer for {command} ({type(exc).__name__}: {exc}); "
                  "running the step", file=sys.stderr)
        return None


def _answer(command: str, workspace: Path | None, experiment: str | None,
            args: dict[str, Any]) -> Doc | None:
    from store import Store, find_workspace
    from store.finished import unchanged

    store = Store.open(find_workspace(workspace))
    try:
        exp = store.experiment(experiment)
        if command == "attack":
            args["other"] = store.experiment(args["other"])
            if args["other_round"] is None:
                args["other_round"] = args["t"]
        changes = args.pop("changes", None)
        if changes is not None:  # as the step applies them to the experiment's settings
            cfg = ExperimentConfig.from_dict(exp.config)
            args["sampler" if command == "synthesize" else "train"] = changes.apply(
                cfg.sampler if command == "synthesize" else cfg.train)
        if command == "evaluate" and args["t"] is None:
            args["t"] = max((c.round for c in store.checkpoints(exp.name)), default=0)
        key = KEYS[command](store, exp, **args)
        if key is None:
            return None
        if command in ("synthesize", "reclassify") and store.locks.held_elsewhere(exp.name):
            return None  # a step of this experiment is running: its own path decides
        slot, settings = key
        found = store.finished(exp.name, command, slot)
        if found is None or found.settings != settings or not unchanged(store.root,
                                                                        found.files):
            return None
        return _doc(reused(found.document))
    finally:
        store.close()


KEYS: dict[str, Callable[..., Key | None]] = {
    "synthesize": synthesize_key, "reclassify": reclassify_key, "evaluate": evaluate_key,
    "inspect": inspect_key, "attack": attack_key, "ood": ood_key, "quality": quality_key}
