"""The one store object: every file, catalog row and MLflow call of icl goes through it.

A Store is made of explicit parts, each with its own constructor: ``catalog``
(:class:`~store.catalog.Catalog`: the database and experiment rows), ``files``
(:class:`~store.artifacts.ArtifactFiles`: shards, parts and checkpoints), ``results``
(:class:`~store.results.Results`: evaluations, attacks, metrics), ``locks``
(:class:`~store.locking.Locks`), ``log`` (:class:`~store.steplog.StepLog`), the finished
steps' documents (:class:`~store.finished.FinishedSteps`) and the MLflow runs
(:class:`~store.tracking.Runs`). Its methods are those parts' methods (listed below,
one line each) plus what ties them together: :meth:`Store.step` (lock + log + run status),
experiments with their folders, figures, verification and :meth:`Store.rebuild`.

There is one way in: steps, the command line, recipes and benchmarks call the Store's own
methods (``store.write_part(...)``), never a part (``store.files.write_part(...)``); only
the store's code and its tests (``tests/store``) use the parts.

Example:
    >>> st = Store.init(tmp_path)                                   # doctest: +SKIP
    >>> exp = st.create_experiment("icl", {"method": "icl"})
    >>> with st.step("icl", "synthesize", 1, {"count": 20}):
    ...     info = st.write_shard("icl", 1, arrays, {"seed": 0, "sampler_config": {}})
    >>> st.read_shard(st.active_shard("icl", 1))["samples"].shape    # (N, C, H, W)
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property, wraps
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .artifacts import ArtifactFiles
from .catalog import Catalog
from .errors import (
    CatalogMissing,
    ConflictError,
    NotAWorkspace,
    OutsideWorkspace,
    StoreError,
    Terminated,
    display_url,
)
from .finished import FinishedSteps
from .hashing import config_hash
from .infos import ExperimentInfo, StepInfo, VerifyReport
from .locking import Locks
from .reader import sqlite_file, sqlite_url
from .results import Results
from .steplog import StepLog
from .tracking import NullTracker, Runs, Tracker
from .workspace import (
    CARDS,
    CATALOG_FILE,
    EXPERIMENTS_DIR,
    ICL_DIR,
    LOCKS_DIR,
    WORKSPACE_FIGURES,
    atomic_write,
    check_root,
    contained,
    experiments_on_disk,
    is_workspace,
    refuse_unrecorded,
    validate_name,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

from .interrupts import ctrl_c_held as _ctrl_c_held
from .interrupts import interrupt as _interrupt

__all__ = ["Store", "config_hash"]
_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet: what
    ``mkdir(parents=True)`` would make first (None: ``path`` exists)."""
    missing = None
    while not os.path.lexists(path):
        missing, parent = path, path.parent
        if parent == path:
            break
        path = parent
    return missing


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:500]


def _via(part: str, method: Callable) -> Callable:
    """``Store.<name>`` as ``self.<part>.<name>``, with that method's signature and docs."""

    @wraps(method)
    def call(self: Store, *args: Any, **kwargs: Any) -> Any:
        return method(getattr(self, part), *args, **kwargs)

    return call


class Store:
    """A workspace: ``root`` folder plus its catalog. Open with :meth:`init`/:meth:`open`
    (or :meth:`rebuild` after the catalog was lost)."""

    def __init__(self, root: Path, catalog_url: str) -> None:
        self.root = check_root(Path(root).resolve())
        self.catalog_url = catalog_url
        self.catalog = Catalog(catalog_url, self.root)
        self.files = ArtifactFiles(self.root, self.catalog)
        self.results = Results(self.catalog)
        self.locks = Locks(self.root, self.catalog.server)  # a server adds advisory locks
        self.log = StepLog(self.catalog, self.locks)
        self.finished_steps = FinishedSteps(self.catalog)
        self.rebuilt: list[str] = []  # what :meth:`rebuild` recorded (shown by ``verify``)
        self.adopted: list[str] = []  # what ``open(adopt=True)`` recorded (idem)

    # ------------------------------------------------------- the parts' methods
    experiment = _via("catalog", Catalog.experiment)
    experiments = _via("catalog", Catalog.experiments)
    rel = _via("files", ArtifactFiles.rel)
    write_shard = _via("files", ArtifactFiles.write_shard)
    shards = _via("files", ArtifactFiles.shards)
    active_shard = _via("files", ArtifactFiles.active_shard)
    active_shards = _via("files", ArtifactFiles.active_shards)
    read_shard = _via("files", ArtifactFiles.read_shard)
    part_claim = _via("files", ArtifactFiles.part_claim)
    write_part = _via("files", ArtifactFiles.write_part)
    read_part = _via("files", ArtifactFiles.read_part)
    part_on_disk = _via("files", ArtifactFiles.part_on_disk)
    remove_parts = _via("files", ArtifactFiles.remove_parts)
    save_checkpoint = _via("files", ArtifactFiles.save_checkpoint)
    checkpoint = _via("files", ArtifactFiles.checkpoint)
    checkpoints = _via("files", ArtifactFiles.checkpoints)
    load_checkpoint = _via("files", ArtifactFiles.load_checkpoint)
    check_file = _via("files", ArtifactFiles.check_file)
    stale_rounds = _via("files", ArtifactFiles.stale_rounds)
    forget_experiment = _via("files", ArtifactFiles.forget_experiment)
    record_evaluation = _via("results", Results.record_evaluation)
    record_evaluations = _via("results", Results.record_evaluations)
    evaluations = _via("results", Results.evaluations)
    record_attack = _via("results", Results.record_attack)
    attacks = _via("results", Results.attacks)
    record_metrics = _via("results", Results.record_metrics)
    metrics = _via("results", Results.metrics)
    steps = _via("log", StepLog.steps)
    record_finished = _via("finished_steps", FinishedSteps.record)
    forget_finished = _via("finished_steps", FinishedSteps.forget)
    restamp_finished = _via("finished_steps", FinishedSteps.restamp)
    finished = _via("finished_steps", FinishedSteps.find)
    lock_path = _via("locks", Locks.path)
    lock = _via("locks", Locks.lock)

    @property
    def workspace_id(self) -> str | None:
        """The workspace's id (``.icl/workspace-id``, see ``store.owner``; None where an
        older workspace has none yet)."""
        from .owner import workspace_id

        return workspace_id(self.root)

    @property
    def engine(self):
        """The catalog's SQLAlchemy engine (for tests and tools; steps never need it)."""
        return self.catalog.engine

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _url(root: Path, catalog_url: str | None) -> str:
        url = catalog_url or os.environ.get("ICL_CATALOG_URL")
        return url or Store.default_url(root)

    @staticmethod
    def default_url(root: Path) -> str:
        """The URL of the workspace's own SQLite catalog, ``<ws>/.icl/catalog.db``."""
        return sqlite_url(Path(root) / ICL_DIR / CATALOG_FILE)

    @property
    def own_catalog(self) -> bool:
        """True when the catalog is the workspace's own ``.icl/catalog.db`` (the common
        case; else ``ICL_CATALOG_URL`` names another: a server, or a file elsewhere)."""
        return self.catalog_url == self.default_url(self.root)

    @classmethod
    def init(cls, root: Path, catalog_url: str | None = None) -> Store:
        """Make ``root`` a workspace (``.icl/``, catalog, locks); idempotent. Refuses
        (CatalogMissing, nothing written) where ``experiments/`` holds files of experiments
        the catalog does not know: a new catalog never replaces a lost one."""
        root = Path(root).expanduser().resolve()
        store = cls(root, cls._url(root, catalog_url))  # connects on first use only
        store._refuse_links()
        store._bind(claim=False)  # another workspace's catalog: refused before any write
        store._refuse_unrecorded()
        # What this call makes: removed again if it fails (a catalog that cannot be
        # opened or created), so a failed `icl init` leaves no folder behind.
        top = _first_missing(root)
        made = [top] if top is not None else [
            p for p in (root / ICL_DIR, root / EXPERIMENTS_DIR) if not os.path.lexists(p)]
        try:
            (root / ICL_DIR / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
            (root / EXPERIMENTS_DIR).mkdir(exist_ok=True)
            store.catalog.create()
            store._bind()
        except BaseException:
            store.close()
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return store

    @classmethod
    def open(cls, root: Path | None = None, catalog_url: str | None = None,
             adopt: bool = False) -> Store:
        """Open the workspace at ``root`` (None: ``find_workspace()``). A missing or emptied
        catalog beside experiments' files is CatalogMissing (run ``icl verify --rebuild``).
        A catalog of another workspace (``ICL_CATALOG_URL``) is CatalogOfAnotherWorkspace;
        ``adopt``: the workspace was moved here, record its new place (``store.owner``;
        ``store.adopted`` says what was recorded)."""
        from .workspace import find_workspace

        root = find_workspace() if root is None else Path(root).expanduser().resolve()
        default_db = root / ICL_DIR / CATALOG_FILE
        url = cls._url(root, catalog_url)
        store = cls(root, url)
        store._refuse_links()
        if is_workspace(root) and not adopt:
            store._bind(claim=False)
        store._refuse_unrecorded()
        if not is_workspace(root) or (store.own_catalog and not default_db.is_file()):
            raise NotAWorkspace(
                f"not an icl workspace: {root}; run `icl init` there or pass --workspace"
            )
        store.catalog.open()
        store.adopted = store._bind(adopt=adopt)
        return store

    @classmethod
    def rebuild(cls, root: Path | None = None, catalog_url: str | None = None) -> Store:
        """Open the workspace at ``root``, first re-creating the catalog rows of every
        experiment whose files are on disk but not in the catalog, from the files' own
        metadata (see ``store.rebuild``). ``store.rebuilt`` says what was recorded.
        None: the workspace around the current folder (or the current folder itself,
        if it holds ``experiments/`` but no ``.icl/`` any more)."""
        from .rebuild import record_from_files
        from .workspace import find_workspace

        if root is None:
            try:
                root = find_workspace()
            except (NotAWorkspace, CatalogMissing):
                if not (Path.cwd() / EXPERIMENTS_DIR).is_dir():
                    raise
                root = Path.cwd()
        root = Path(root).expanduser().resolve()
        if not (root / EXPERIMENTS_DIR).is_dir() and not is_workspace(root):
            raise NotAWorkspace(f"not an icl workspace: {root} (no experiments/ folder to "
                                "rebuild from); pass the workspace with --workspace")
        store = cls(root, cls._url(root, catalog_url))
        store._refuse_links()
        store._bind(claim=False)
        (root / ICL_DIR / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
        store.catalog.create()
        store._bind()
        store.rebuilt = record_from_files(store.files)
        return store

    def _bind(self, claim: bool = True, adopt: bool = False) -> list[str]:
        """Check that the catalog serves this workspace, claiming a new one (see
        ``store.owner``); nothing for the workspace's own ``.icl/catalog.db``. The store is
        closed when it is refused. Returns what was recorded."""
        if self.own_catalog:
            return []
        from .owner import bind

        file = sqlite_file(self.catalog_url)
        if not claim and not adopt and file is not None and not file.is_file():
            return []  # a catalog file not made yet: no one's
        try:
            return bind(self, claim=claim, adopt=adopt)
        except BaseException:
            self.close()
            raise

    def _refuse_links(self) -> None:
        """OutsideWorkspace if a folder or file where the workspace keeps its catalog, locks
        or experiments is a link that leads out of it (a few ``lstat`` calls)."""
        own = [ICL_DIR, f"{ICL_DIR}/{LOCKS_DIR}", EXPERIMENTS_DIR]
        if self.own_catalog:
            own += [f"{ICL_DIR}/{CATALOG_FILE}{end}" for end in ("", "-wal", "-shm")]
        try:
            for rel in own:
                contained(self.root, self.root / rel)
        except OutsideWorkspace:
            self.close()
            raise

    def _refuse_unrecorded(self) -> None:
        """CatalogMissing if ``experiments/`` holds shards or checkpoints of experiments
        that the catalog does not know (it was deleted, emptied or replaced). Connects only
        when such files exist and the catalog file does (never creates it)."""
        on_disk = experiments_on_disk(self.root)
        if not on_disk:
            return
        db = self.root / ICL_DIR / CATALOG_FILE
        default = self.own_catalog
        missing = default and not db.is_file()
        known = set() if missing else self.catalog.names()
        state = "is missing" if missing else "is empty" if not known else "does not know them"
        try:
            shown = ".icl/catalog.db" if default else display_url(self.catalog_url)
            refuse_unrecorded(self.root, on_disk, known, state, shown)
        except CatalogMissing:
            self.close()
            raise

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ experiments
    def create_experiment(
        self,
        name: str,
        config: dict[str, Any],
        parent: str | None = None,
        parent_round: int | None = None,
        data_fingerprint: str | None = None,
    ) -> ExperimentInfo:
        """Record a new experiment and make its folders; the existing one if ``config`` is
        the same; else ConflictError. ``parent``/``parent_round``: where ``--from`` started
        it; ``data_fingerprint``: which images it uses (recorded on an older row that has
        none)."""
        from sqlalchemy import select

        from .orm import Experiment, experiment_info

        validate_name(name)
        digest = config_hash(config)

        def create(s: Session) -> ExperimentInfo:
            row = s.scalar(select(Experiment).where(Experiment.name == name))
            if row is not None:
                if row.config_hash != digest:
                    raise ConflictError(
                        f"experiment '{name}' already exists with another config "
                        f"({row.config_hash}, not {digest}); pick a new name with --experiment"
                    )
                if row.data_fingerprint is None:
                    row.data_fingerprint = data_fingerprint
                return experiment_info(row)
            if parent is not None:
                self.catalog.row(s, parent)
            row = Experiment(name=name, config=config, config_hash=digest,
                             method=config.get("method"), parent_name=parent,
                             parent_round=parent_round, data_fingerprint=data_fingerprint)
            s.add(row)
            s.flush()
            return experiment_info(row)

        folders = [self.root / EXPERIMENTS_DIR / name / sub
                   for sub in ("shards", "checkpoints", "figures")]
        for folder in folders:
            contained(self.root, folder)
        info = self.catalog.write(create)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        return info

    # ------------------------------------------------------------------ steps
    @contextmanager
    def step(
        self,
        experiment: str | None,
        name: str,
        round: int | None,
        config: dict[str, Any],
        wait: bool = False,
    ) -> Iterator[StepInfo]:
        """Run a step under the experiment lock and log it: a ``running`` row, then ok,
        failed (an exception) or interrupted (Ctrl-C), with its duration. Re-raises.
        The experiment's MLflow run, if this process tracks it, reads RUNNING meanwhile,
        then FINISHED, FAILED or KILLED as the outermost step ends."""
        exp = self.experiment(experiment).name
        command = f"{name}{'' if round is None else f' --round {round}'} -e {exp}"
        with self.lock(exp, wait=wait, command=command):
            t0 = time.monotonic()
            with _ctrl_c_held() as pressed:  # the row and this code agree, even on Ctrl-C
                info = self.log.start(exp, name, round, config)
            run_status = "KILLED"  # what the MLflow run reads after this step
            try:
                self._runs.step_started(exp)
                if pressed:
                    raise _interrupt(pressed)
                yield info
            except KeyboardInterrupt as exc:
                how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
                self._finish(info.id, "interrupted", f"interrupted ({how})", t0)
                raise
            except BaseException as exc:
                code = getattr(exc, "code", getattr(exc, "exit_code", 1))
                if isinstance(exc, SystemExit) or hasattr(exc, "exit_code"):
                    ok = code in (0, None)  # typer.Exit(0) / sys.exit(0) is a success
                else:
                    ok = False
                run_status = "FINISHED" if ok else "FAILED"
                self._finish(info.id, "ok" if ok else "failed", None if ok else _one_line(exc), t0)
                raise
            else:
                run_status = "FINISHED"
                self._finish(info.id, "ok", None, t0)
            finally:
                self._runs.step_ended(exp, run_status)  # best effort, never raises

    def _finish(self, step_id: int, state: str, message: str | None, t0: float) -> None:
        with _ctrl_c_held() as pressed:
            self.log.finish(step_id, state, message, time.monotonic() - t0)
        if pressed and state == "ok":
            raise _interrupt(pressed)  # the step is recorded as done; stop after it

    # --------------------------------------------------------- files, MLflow
    def figure_path(self, experiment: str, name: str) -> Path:
        """Where to write a figure: ``experiments/<exp>/figures/<name>`` (subfolders
        allowed, e.g. ``round-0003/grid.png``; the parent folder is created)."""
        exp = self.experiment(experiment).name
        parts = PurePosixPath(name).parts
        if not parts or any(not _PART_RE.fullmatch(p) for p in parts):
            raise StoreError(f"invalid figure name {name!r}: use relative names like 'grid.png'")
        path = contained(self.root, self.root / EXPERIMENTS_DIR / exp / "figures" / Path(*parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def workspace_figure_path(self, name: str) -> Path:
        """Where to write a figure of several experiments: ``figures/<name>`` at the
        workspace's top (``icl report``'s error-vs-round plot), never inside one
        experiment's folder; the folder is created."""
        parts = PurePosixPath(name).parts
        if not parts or any(not _PART_RE.fullmatch(p) for p in parts):
            raise StoreError(f"invalid figure name {name!r}: use relative names like 'grid.png'")
        path = contained(self.root, self.root / WORKSPACE_FIGURES / Path(*parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def card_path(self, experiment: str, suffix: str) -> Path:
        """Where experiment ``experiment``'s reproducibility card goes: ``cards/<experiment>
        .<suffix>`` at the workspace's top (``md`` or ``json``; ``icl report --card``)."""
        exp = self.experiment(experiment).name
        if suffix not in ("md", "json"):
            raise StoreError(f"a card is .md or .json, not .{suffix}")
        return contained(self.root, self.root / CARDS / f"{exp}.{suffix}")

    def write_card(self, path: Path, text: str) -> Path:
        """Write a card's ``text`` (UTF-8) at ``path`` (from ``card_path``) atomically."""
        return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"),
                            root=self.root)

    def write_figure(self, path: Path, write_fn) -> Path:
        """Write a figure at ``path`` (from ``figure_path``) atomically: ``write_fn(tmp)``
        writes the bytes to a temporary name that is then renamed into place."""
        return atomic_write(path, write_fn, root=self.root)

    @cached_property
    def _runs(self) -> Runs:
        """The trackers this store made and its open steps (see ``store.tracking.Runs``)."""
        return Runs()

    def tracker(self, experiment: str | None, enabled: bool = True) -> Tracker | NullTracker:
        """The MLflow run of ``experiment`` (created on first use, with the experiment's
        config as params), or a NullTracker. One tracker per experiment and store; it
        imports MLflow only when first used, and never raises (see ``store.tracking``)."""
        if not enabled:
            return NullTracker()
        exp = self.experiment(experiment)
        uri = self.tracking_uri
        known = self._runs.get(exp.name, uri)
        if known is not None:
            return known

        def save_run_id(new: str, old: str | None) -> str:
            def cas(s: Session) -> str:
                row = self.catalog.row(s, exp.name)
                if row.mlflow_run_id not in (None, old):
                    return row.mlflow_run_id  # another process won the race
                row.mlflow_run_id = new
                return new

            return self.catalog.write(cas)

        # A tracking server keeps the artefacts where it serves them from (every machine can
        # reach them); a file URI keeps them in the workspace.
        artifacts = None if uri.startswith(("http://", "https://")) else (
            self.root / ICL_DIR / "mlartifacts").as_uri()
        tracker = Tracker(uri, artifacts, exp.name, exp.mlflow_run_id, save_run_id)
        return self._runs.add(exp.name, uri, tracker, exp.config)

    @property
    def tracking_uri(self) -> str:
        """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<ws>/.icl/mlflow.db``."""
        own = sqlite_url(self.root / ICL_DIR / "mlflow.db")
        return os.environ.get("MLFLOW_TRACKING_URI") or own

    def verify(self, repair: bool = False) -> VerifyReport:
        """Check every recorded file and the step log; see ``store.verify``."""
        from .verify import verify

        report = verify(self.files, self.log, repair)
        if self.adopted:
            report = replace(report, repaired=[*self.adopted, *report.repaired])
        return replace(report, rebuilt=list(self.rebuilt)) if self.rebuilt else report

