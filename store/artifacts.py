"""The artefact files of a store: shards and checkpoints, checked against the catalog.

Order for every artefact (STYLE habit 4): write a temporary file, fsync, rename, hash,
then record the row in one transaction. Reads check the sha256 against the catalog
before any parser (h5py, torch) sees the bytes. A file already on disk is never
overwritten by one the catalog does not know of (a lost catalog loses nothing).

Example:
    >>> files = ArtifactFiles(root, catalog)                      # doctest: +SKIP
    >>> info = files.write_shard("icl", 1, arrays, {"seed": 0, "sampler_config": {}})
    >>> files.read_shard(info)["samples"].shape                   # (N, C, H, W)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoints as ckpt_files
from . import shards as shard_files
from .catalog import Catalog
from .errors import BusyError, ConflictError, IntegrityError, OutsideWorkspace, StoreError
from .hashing import config_hash
from .infos import CheckpointInfo, ExperimentInfo, ShardInfo, to_info
from .locking import advisory_lock, experiment_lock
from .schema import utcnow
from .workspace import (
    EXPERIMENTS_DIR,
    ICL_DIR,
    LOCKS_DIR,
    atomic_write,
    contained,
    leaving_link,
    sha256_file,
)

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.orm import Session

    from .orm import Checkpoint, Shard


def shard_fix(experiment: str, round: int) -> str:
    return f"re-create it with `icl synthesize --round {round} --force -e {experiment}`"


def checkpoint_fix(experiment: str, round: int) -> str:
    # Round 0 too: ``reclassify --round 0`` retrains C_0 (or copies it again from the
    # experiment it was started ``--from``) with the recorded config.
    what = " (C_0 of `icl init`)" if round == 0 else ""
    return f"re-create it{what} with `icl reclassify --round {round} --force -e {experiment}`"


def _numbers(path: Path) -> tuple[int, int, int, int]:
    """(round, version, part i, of N) of a part file's name."""
    m = shard_files.PART_FILE.match(path.name)
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))


def unrecorded(path: Path) -> ConflictError:
    """The refusal to write over a file that is on disk but not in the catalog."""
    return ConflictError(
        f"{path.parent.parent.parent.name}/{path.parent.parent.name}/{path.parent.name}/"
        f"{path.name} is on disk but not in the catalog (a lost or replaced catalog?); it "
        "is never overwritten: run `icl verify --rebuild` to record it again"
    )


@dataclass(frozen=True)
class PartInfo:
    """A part file of round ``round``'s shard v``version``: part ``index`` of ``parts``,
    ``count`` samples (see ``store.shards``: the step log, not the catalog, records it)."""

    experiment: str
    round: int
    version: int
    index: int
    parts: int
    path: Path
    sha256: str
    count: int


STORE_KEY = "catalog"
"""The checkpoint payload entry where the store keeps what ``rebuild`` needs to record the
file again: the experiment's row and the parent checkpoint (see :func:`catalog_record`)."""


def catalog_record(exp: ExperimentInfo, parent: CheckpointInfo | None) -> dict[str, Any]:
    """What a checkpoint carries of its catalog rows (plain data; no timestamps, so two
    identical trainings still write identical bytes)."""
    return {
        "experiment": {"name": exp.name, "config": exp.config, "config_hash": exp.config_hash,
                       "parent": exp.parent, "parent_round": exp.parent_round,
                       "data_fingerprint": exp.data_fingerprint},
        "parent": None if parent is None else {
            "experiment": parent.experiment, "round": parent.round, "sha256": parent.sha256},
    }


class ArtifactFiles:
    """Shards and checkpoints under ``root/experiments``, recorded in ``catalog``."""

    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root, self.catalog = root, catalog

    def rel(self, path: Path) -> str:
        """``path`` relative to the workspace root, POSIX style (as stored in the catalog):
        by its name under the root (a link keeps its own name), else as it resolves.
        OutsideWorkspace for a path that is not in the workspace at all."""
        named = os.path.normpath(os.path.abspath(path))
        top = str(self.root)
        if named.startswith(top + os.sep):
            return Path(named[len(top) + 1:]).as_posix()
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            raise OutsideWorkspace(f"{path} is not inside the workspace {self.root}") from None

    def _name(self, experiment: str | None) -> str:
        return self.catalog.experiment(experiment).name

    # ----------------------------------------------------------------- shards
    def _shard_info(self, row: Shard, name: str) -> ShardInfo:
        return to_info(ShardInfo, row, experiment=name, path=self.root / row.path,
                       sampler_config=dict(row.sampler_config or {}),
                       source_checkpoint=row.source_checkpoint_sha256)

    def write_shard(
        self, experiment: str, round: int, arrays: dict[str, np.ndarray], attrs: dict[str, Any]
    ) -> ShardInfo:
        """Write round ``round``'s next shard version and make it the active one.

        arrays: samples (N, C, H, W) float32, target (N,) int64, steps (N,) int32,
        logit (N,) float32, passed (N,) bool (other dtypes are cast).
        attrs: seed, sampler_config (dict), source_checkpoint (sha256 hex).
        """
        name = self._name(experiment)
        if int(round) < 1:
            raise StoreError(f"shards belong to rounds >= 1, got round {round}")
        data = shard_files.prepare_arrays(arrays)
        folder = contained(self.root, self.root / "experiments" / name / "shards")
        known = [sh.version for sh in self.catalog.reader.shards(name, round)]
        # Skip versions whose file exists without a row (a crash after rename): never
        # overwrite a file, so an orphan stays as evidence until the user removes it.
        pattern = re.compile(rf"round-{round:04d}\.v(\d+)\.h5$")
        on_disk = [int(m.group(1)) for p in folder.glob("*.h5") if (m := pattern.match(p.name))]
        version = max([0, *known, *on_disk]) + 1
        path = folder / shard_files.shard_name(round, version)
        file_attrs = {
            "round": round,
            "version": version,
            "seed": attrs.get("seed"),
            "sampler_config": attrs.get("sampler_config") or {},
            "source_checkpoint": attrs.get("source_checkpoint"),
            "experiment": name,
        }
        from sqlalchemy import update

        from .orm import Shard

        def record(s: Session) -> ShardInfo:
            exp = self.catalog.row(s, name)
            s.execute(
                update(Shard)
                .where(Shard.experiment_id == exp.id, Shard.round == round)
                .values(active=False)
            )
            row = Shard(
                experiment_id=exp.id,
                round=round,
                version=version,
                active=True,
                path=self.rel(path),
                sha256=sha256_file(path),
                count=int(data["samples"].shape[0]),
                sampler_config=file_attrs["sampler_config"],
                seed=None if attrs.get("seed") is None else int(attrs["seed"]),
                source_checkpoint_sha256=attrs.get("source_checkpoint"),
            )
            s.add(row)
            s.flush()
            return self._shard_info(row, name)

        try:
            atomic_write(path, lambda tmp: shard_files.write_file(tmp, data, file_attrs),
                         root=self.root)
            return self.catalog.write(record)
        except BaseException:
            # Not recorded (also a Ctrl-C between the rename and the row): remove the file
            # so nothing unreferenced is left behind.
            if path.is_file() and not self._path_recorded(Shard, path):
                path.unlink(missing_ok=True)
            raise

    def _path_recorded(self, table: type, path: Path) -> bool:
        from sqlalchemy import select

        with self.catalog.read() as s:
            return s.scalar(select(table.id).where(table.path == self.rel(path))) is not None

    # ------------------------------------------------------------------ parts
    def part_path(self, experiment: str, round: int, version: int, index: int,
                  parts: int, key: str | None = None) -> Path:
        """``experiments/<exp>/shards/round-0007.v1.part-2-of-3.h5`` (with ``key``, the
        settings' key: ``round-0007.v1.part-2-of-3.<key>.h5``)."""
        return (self.root / EXPERIMENTS_DIR / self._name(experiment) / "shards"
                / shard_files.part_name(round, version, index, parts, key))

    def _part_of(self, plain: Path, key: str) -> Path:
        """Where a part of the set ``key`` goes: its plain name, unless a part of another
        set (or a file that tells no set) holds it; then the name with its key."""
        contained(self.root, plain)
        if not (plain.exists() or plain.is_symlink()):
            return plain
        try:
            held = shard_files.part_key(shard_files.read_meta(plain, self.rel(plain)))
        except IntegrityError:
            held = None
        return plain if held == key else plain.with_name(
            shard_files.part_name(*_numbers(plain), key))

    def write_part(self, experiment: str, round: int, version: int, index: int, parts: int,
                   arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> PartInfo:
        """Write part ``index`` of ``parts`` of round ``round``'s shard v``version``
        atomically and return it with its sha256. A part drawn again with the same settings
        replaces its file; one of other settings (seed, sampler_config, source_checkpoint,
        round_count) never replaces a part of another set: it gets a name of its own
        (``shards.part_key``).

        arrays: as for :meth:`write_shard`; attrs: seed, sampler_config, source_checkpoint,
        rows, round_count, draw_seconds, device. The caller records it (a
        step-log entry).
        """
        name = self._name(experiment)
        data = shard_files.prepare_arrays(arrays)
        path = self._part_of(self.part_path(name, round, version, index, parts),
                             shard_files.part_key(attrs))
        file_attrs = {**attrs, "round": round, "version": version, "experiment": name,
                      "part_index": index, "part_count": parts}
        atomic_write(path, lambda tmp: shard_files.write_file(tmp, data, file_attrs),
                     root=self.root)
        return PartInfo(name, round, version, index, parts, path, sha256_file(path),
                        int(data["samples"].shape[0]))

    def part_on_disk(self, experiment: str, round: int, version: int, index: int,
                     parts: int, attrs: dict[str, Any] | None = None
                     ) -> tuple[PartInfo, dict[str, Any]] | None:
        """The part file of the set drawn with ``attrs`` (seed, sampler_config,
        source_checkpoint, round_count; None: the newest part file of that round, version
        and part), if there is one: its PartInfo (sha256 of the bytes there now) and its
        own attributes (``shards.read_meta``), unchecked."""
        plain = contained(self.root, self.part_path(experiment, round, version, index, parts))
        if attrs is not None:
            path = self._part_of(plain, shard_files.part_key(attrs))
        else:
            found = [p for p in plain.parent.glob(plain.name.removesuffix(".h5") + "*.h5")
                     if shard_files.PART_FILE.match(p.name)
                     and _numbers(p) == (round, version, index, parts) and p.is_file()]
            path = max(found, key=lambda p: p.stat().st_mtime_ns, default=plain)
        if not path.is_file():
            return None
        meta = shard_files.read_meta(path, self.rel(path))
        return (PartInfo(self._name(experiment), round, version, index, parts, path,
                         sha256_file(path), meta["count"]), meta)

    def read_part(self, info: PartInfo, expect: dict[str, Any],
                  fix: str) -> dict[str, np.ndarray]:
        """The arrays of a recorded part, after checking it: StoreError if its file is
        missing; IntegrityError if it fails its sha256, is not a readable shard file, or its
        own attributes disagree with ``expect`` (seed, sampler_config, source_checkpoint and
        the part attributes: a part of another round, version or sampler config). Messages
        name the part and end with ``fix``."""
        rel = self.rel(info.path)
        what = f"part {info.index}/{info.parts} of round {info.round} ({rel})"
        if not info.path.is_file():
            raise StoreError(f"{what} is missing: {fix}")
        self.check_file(info.path, info.sha256, what, fix)
        arrays = shard_files.read_file(info.path, info.round, info.version, rel, fix)
        meta = shard_files.read_meta(info.path, rel)
        wrong = sorted(k for k, v in expect.items() if meta.get(k) != v)
        if wrong or arrays["samples"].shape[0] != info.count:
            raise IntegrityError(f"{what} was drawn for other settings "
                                 f"({', '.join(wrong) or 'count'} differ): {fix}")
        return arrays

    def remove_parts(self, experiment: str, round: int, version: int) -> list[Path]:
        """Delete every part file of round ``round``'s shard v``version`` (once the shard
        joined from them is recorded); returns what was removed."""
        folder = contained(self.root, self.root / EXPERIMENTS_DIR / self._name(experiment)
                           / "shards")
        gone = []
        for path in sorted(folder.glob(f"round-{round:04d}.v{version}.part-*.h5")):
            m = shard_files.PART_FILE.match(path.name)
            if m and (int(m.group(1)), int(m.group(2))) == (round, version):
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    @contextmanager
    def part_claim(self, experiment: str, round: int, index: int, parts: int) -> Iterator[None]:
        """Hold the claim on part ``index``/``parts`` of an experiment while drawing it, so
        two processes never draw the same part at once: the second gets BusyError. The
        claim is an flock on ``.icl/locks/<exp>@part-<i>-of-<N>.lock`` (``@`` is never in
        an experiment's name), which holds on this machine only; with a PostgreSQL catalog
        also the server's advisory lock of that name, which holds across machines."""
        name = self._name(experiment)
        claim = f"{name}@part-{index}-of-{parts}"
        server = self.catalog.server
        lock = contained(self.root, self.root / ICL_DIR / LOCKS_DIR / f"{claim}.lock")
        with ExitStack() as stack:
            try:  # only the claim itself is rephrased, not a BusyError of the body
                stack.enter_context(experiment_lock(lock, name))
                if server is not None and server.dialect.name == "postgresql":
                    stack.enter_context(advisory_lock(server, claim))
            except BusyError:
                raise BusyError(f"part {index}/{parts} of '{name}' is being drawn by another "
                                "icl process; wait for it to finish (it records the part) or "
                                "stop it") from None
            yield

    def shards(
        self, experiment: str, round: int | None = None, active_only: bool = False
    ) -> list[ShardInfo]:
        """Shards of an experiment, by round then version."""
        return self.catalog.reader.shards(self._name(experiment), round, active_only)

    def active_shard(self, experiment: str, round: int) -> ShardInfo | None:
        """The active version of round ``round``'s shard, or None if there is none."""
        found = self.shards(experiment, round=round, active_only=True)
        return found[0] if found else None

    def active_shards(self, experiment: str, up_to: int) -> list[ShardInfo]:
        """Active shards of rounds 1..up_to, one per round (reclassify of round t uses
        ``up_to=t``); a missing round raises StoreError naming the command to run."""
        name = self._name(experiment)
        by_round = {i.round: i for i in self.shards(name, active_only=True) if i.round <= up_to}
        for r in range(1, up_to + 1):
            if r not in by_round:
                raise StoreError(
                    f"experiment '{name}' has no shard for round {r}; "
                    f"run `icl synthesize --round {r} -e {name}` first"
                )
        return [by_round[r] for r in range(1, up_to + 1)]

    def forget_experiment(self, experiment: str) -> None:
        """Remove an experiment that has no shard and no checkpoint (an ``icl init`` that
        failed before C_0 was saved): its catalog rows and its empty folders. Refuses
        (StoreError) once it has any artefact."""
        name = self._name(experiment)
        if self.shards(name) or self.checkpoints(name):
            raise StoreError(f"experiment '{name}' has shards or checkpoints; not removed")

        def drop(s: Session) -> None:
            s.delete(self.catalog.row(s, name))

        self.catalog.write(drop)
        folder = self.root / EXPERIMENTS_DIR / name
        if leaving_link(self.root, folder) is not None or folder.is_symlink():
            return  # its rows are gone; a link is not icl's to remove
        for sub in sorted(folder.glob("*"), reverse=True) if folder.is_dir() else []:
            if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
                sub.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def stale_rounds(self, experiment: str) -> dict[int, str]:
        """Rounds whose shard or checkpoint no longer follows from the round before, with
        why: a shard drawn from another checkpoint than the current t-1, a checkpoint
        trained from another parent, or on a shard replaced (``--force``) after it was
        trained; and every round after a stale one. From the catalog alone (no file read).
        """
        name = self._name(experiment)
        ckpts = {c.round: c for c in self.checkpoints(name)}
        shards = {s.round: s for s in self.shards(name, active_only=True)}
        out: dict[int, str] = {}
        for t in sorted(set(ckpts) | set(shards)):
            if t == 0:
                continue
            before, ck, sh = ckpts.get(t - 1), ckpts.get(t), shards.get(t)
            if out.get(t - 1):
                out[t] = f"round {t - 1} is stale"
            elif sh is not None and before is not None and sh.source_checkpoint \
                    and sh.source_checkpoint != before.sha256:
                out[t] = f"its shard v{sh.version} was drawn from another checkpoint {t - 1}"
            elif ck is not None and before is not None and ck.parent_sha256 \
                    and ck.parent_sha256 != before.sha256:
                out[t] = f"its checkpoint was trained from another checkpoint {t - 1}"
            elif ck is not None and any(s.created_at > ck.created_at
                                        for r, s in shards.items() if r <= t):
                newer = min(r for r, s in shards.items() if r <= t
                            and s.created_at > ck.created_at)
                out[t] = f"the shard of round {newer} was replaced after it was trained"
        return out

    def read_shard(self, info: ShardInfo) -> dict[str, np.ndarray]:
        """Check a shard against the catalog (exists, sha256, format, round/version,
        count) and return its arrays (see ``store.shards`` for names and shapes)."""
        rel, fix = self.rel(info.path), shard_fix(info.experiment, info.round)
        self.check_file(info.path, info.sha256, f"shard {rel}", fix)
        arrays = shard_files.read_file(info.path, info.round, info.version, rel, fix)
        if arrays["samples"].shape[0] != info.count:
            raise IntegrityError(
                f"shard {rel} holds {arrays['samples'].shape[0]} samples, "
                f"the catalog says {info.count}: {fix}"
            )
        return arrays

    def check_file(self, path: Path, expected: str, what: str, fix: str) -> None:
        """IntegrityError unless ``path`` is a file whose sha256 is ``expected``; the message
        names it as ``what`` and ends with ``fix`` (the command that re-creates it). A file
        behind a link that leaves the workspace is OutsideWorkspace, never read."""
        contained(self.root, path, what, fix)
        if not path.is_file():
            raise IntegrityError(f"{what} is missing: {fix}")
        got = sha256_file(path)
        if got != expected:
            raise IntegrityError(
                f"{what} failed its sha256 check (expected {expected[:12]}.., "
                f"got {got[:12]}..): {fix}"
            )

    # ------------------------------------------------------------ checkpoints
    def _ckpt_info(self, row: Checkpoint, name: str) -> CheckpointInfo:
        return to_info(CheckpointInfo, row, experiment=name, path=self.root / row.path)

    def save_checkpoint(
        self,
        experiment: str,
        round: int,
        state: dict[str, Any],
        parent: CheckpointInfo | None = None,
        replace: bool = False,
    ) -> CheckpointInfo:
        """Save the state after round ``round`` (plain data only, see
        ``store.checkpoints``); ``experiment`` and ``round`` entries are filled in.
        An existing checkpoint of that round is replaced only with ``replace=True``."""
        name = self._name(experiment)
        for key, want in (("experiment", name), ("round", int(round))):
            if state.get(key, want) != want:
                raise StoreError(f"checkpoint state says {key}={state[key]!r}, expected {want!r}")
        exp = self.catalog.experiment(name)
        payload = {**state, "experiment": name, "round": int(round),
                   STORE_KEY: catalog_record(exp, parent)}
        cfg = payload.get("config")
        cfg_hash = config_hash(cfg) if isinstance(cfg, dict) else None
        path = contained(self.root, self.root / "experiments" / name / "checkpoints"
                         / ckpt_files.checkpoint_name(round))
        existing = self.checkpoint(name, round)
        if existing is not None and not replace:
            raise ConflictError(
                f"checkpoint {self.rel(path)} (experiment '{name}' round {round}) already "
                "exists; pass --force to replace it"
            )
        # A file of this name that no row names and that is older than the experiment's row
        # was not left by a crash of this catalog's writes: it is evidence, never replaced.
        if existing is None and path.is_file() \
                and path.stat().st_mtime < exp.created_at.timestamp():
            raise unrecorded(path)
        bad = ckpt_files.non_finite(payload.get("model") or {})
        if bad:
            raise StoreError(f"checkpoint weights {', '.join(bad[:3])} hold NaN or infinite "
                             f"values (training diverged); round {round} was not saved")
        from sqlalchemy import select

        from .orm import Checkpoint, Experiment

        def record(s: Session) -> CheckpointInfo:
            exp = self.catalog.row(s, name)
            parent_id = None
            if parent is not None:
                parent_id = s.scalar(
                    select(Checkpoint.id)
                    .join(Experiment)
                    .where(
                        Experiment.name == parent.experiment,
                        Checkpoint.round == parent.round,
                        Checkpoint.sha256 == parent.sha256,
                    )
                )
            row = s.scalar(
                select(Checkpoint).where(
                    Checkpoint.experiment_id == exp.id, Checkpoint.round == round
                )
            )
            if row is not None and not replace:
                raise ConflictError(f"checkpoint {self.rel(path)} was recorded meanwhile")
            if row is None:
                row = Checkpoint(experiment_id=exp.id, round=round)
                s.add(row)
            row.path, row.sha256, row.config_hash = self.rel(path), sha, cfg_hash
            row.parent_id = parent_id
            row.parent_sha256 = parent.sha256 if parent is not None else None
            row.created_at = utcnow()  # a replaced checkpoint is a new artefact
            s.flush()
            return self._ckpt_info(row, name)

        try:
            atomic_write(path, lambda tmp: ckpt_files.write_file(tmp, payload), root=self.root)
            sha = sha256_file(path)  # before the write lock is taken (``record`` reads it)
            return self.catalog.write(record)
        except BaseException:
            # Not recorded (also a Ctrl-C between the rename and the row): no file is left
            # that no row names.
            if existing is None and path.is_file() \
                    and not self._path_recorded(Checkpoint, path):
                path.unlink(missing_ok=True)
            raise

    def checkpoint(self, experiment: str, round: int) -> CheckpointInfo | None:
        """The checkpoint after round ``round``, or None."""
        found = [c for c in self.checkpoints(experiment) if c.round == round]
        return found[0] if found else None

    def checkpoints(self, experiment: str) -> list[CheckpointInfo]:
        """All checkpoints of an experiment, by round."""
        return self.catalog.reader.checkpoints(self._name(experiment))

    def load_checkpoint(self, info: CheckpointInfo, map_location: Any = "cpu") -> dict[str, Any]:
        """Check (exists, sha256) and load a checkpoint with ``weights_only=True``; the
        payload must name the same experiment and round as the catalog row."""
        rel, fix = self.rel(info.path), checkpoint_fix(info.experiment, info.round)
        self.check_file(info.path, info.sha256, f"checkpoint {rel}", fix)
        state = ckpt_files.read_file(info.path, rel, fix, map_location=map_location)
        if (state.get("experiment"), state.get("round")) != (info.experiment, info.round):
            raise IntegrityError(
                f"checkpoint {rel} belongs to experiment {state.get('experiment')!r} round "
                f"{state.get('round')}, not '{info.experiment}' round {info.round}: {fix}"
            )
        return state
