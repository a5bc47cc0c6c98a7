"""The one store object: every file, catalog row and MLflow call of icl goes through it.

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
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .artifacts import ArtifactMethods
from .catalog import (
    Experiment,
    Step,
    check_schema,
    create_schema,
    make_engine,
    read_session,
    run_write,
    upgrade_schema,
    utcnow,
)
from .errors import ConflictError, ExperimentNotFound, NotAWorkspace, StoreError, Terminated
from .hashing import config_hash
from .infos import ExperimentInfo, StepInfo, VerifyReport
from .locking import experiment_lock, is_locked_elsewhere
from .results import ResultMethods
from .tracking import NullTracker, Runs, Tracker
from .workspace import (
    CATALOG_FILE,
    ICL_DIR,
    LOCKS_DIR,
    atomic_write,
    is_workspace,
    pid_alive,
    validate_name,
)

_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@contextmanager
def _ctrl_c_held() -> Iterator[list]:
    """Hold Ctrl-C (SIGINT) and SIGTERM during a short catalog write, so that the write and
    the code that made it cannot disagree (a step row left ``running`` by an interrupt
    landing just after the commit). Yields a list of the signals that came meanwhile; the
    caller then raises ``_interrupt(list)`` at a clean point."""
    pressed: list = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    held = (signal.SIGINT, signal.SIGTERM)
    try:
        old = [signal.signal(sig, lambda signum, _: pressed.append(signum)) for sig in held]
    except (ValueError, OSError):  # not allowed here (embedded interpreter...)
        yield pressed
        return
    try:
        yield pressed
    finally:
        for sig, handler in zip(held, old, strict=True):
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _interrupt(pressed: list) -> KeyboardInterrupt:
    """The interrupt to raise for the signals ``_ctrl_c_held`` held."""
    return Terminated() if signal.SIGTERM in pressed else KeyboardInterrupt()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:500]


class Store(ArtifactMethods, ResultMethods):
    """A workspace: ``root`` folder plus its catalog. Open with :meth:`init`/:meth:`open`."""

    def __init__(self, root: Path, catalog_url: str) -> None:
        self.root = Path(root).resolve()
        self.catalog_url = catalog_url
        self.engine = make_engine(catalog_url)

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _url(root: Path, catalog_url: str | None) -> str:
        url = catalog_url or os.environ.get("ICL_CATALOG_URL")
        return url or f"sqlite:///{root / ICL_DIR / CATALOG_FILE}"

    @classmethod
    def init(cls, root: Path, catalog_url: str | None = None) -> Store:
        """Make ``root`` a workspace (``.icl/``, catalog, locks); idempotent."""
        root = Path(root).expanduser().resolve()
        (root / ICL_DIR / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
        (root / "experiments").mkdir(exist_ok=True)
        store = cls(root, cls._url(root, catalog_url))
        create_schema(store.engine)
        return store

    @classmethod
    def open(cls, root: Path | None = None, catalog_url: str | None = None) -> Store:
        """Open the workspace at ``root`` (None: ``find_workspace()``)."""
        from .workspace import find_workspace

        root = find_workspace() if root is None else Path(root).expanduser().resolve()
        default_db = root / ICL_DIR / CATALOG_FILE
        url = cls._url(root, catalog_url)
        if not is_workspace(root) or (url.endswith(str(default_db)) and not default_db.is_file()):
            raise NotAWorkspace(
                f"not an icl workspace: {root}; run `icl init` there or pass --workspace"
            )
        store = cls(root, url)
        check_schema(store.engine)
        upgrade_schema(store.engine)
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rel(self, path: Path) -> str:
        """``path`` relative to the workspace root, POSIX style (as stored in the catalog)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    # ------------------------------------------------------------ experiments
    def _exp_row(self, s: Session, name: str) -> Experiment:
        row = s.scalar(select(Experiment).where(Experiment.name == name))
        if row is None:
            known = s.scalars(select(Experiment.name).order_by(Experiment.name)).all()
            raise ExperimentNotFound(
                f"no experiment '{name}' in {self.root}; known: {', '.join(known) or 'none'} "
                "(create one with `icl init`)"
            )
        return row

    @staticmethod
    def _exp_info(row: Experiment) -> ExperimentInfo:
        return ExperimentInfo(
            id=row.id,
            name=row.name,
            config=dict(row.config or {}),
            config_hash=row.config_hash,
            method=row.method,
            parent=row.parent_name,
            created_at=row.created_at,
            mlflow_run_id=row.mlflow_run_id,
            parent_round=row.parent_round,
            data_fingerprint=row.data_fingerprint,
        )

    def create_experiment(
        self,
        name: str,
        config: dict[str, Any],
        parent: str | None = None,
        parent_round: int | None = None,
        data_fingerprint: str | None = None,
    ) -> ExperimentInfo:
        """Record a new experiment; the existing one if ``config`` is the same; else
        ConflictError. ``parent``/``parent_round``: where ``--from`` started it;
        ``data_fingerprint``: which images it uses (recorded on an older row that has none)."""
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
                return self._exp_info(row)
            if parent is not None:
                self._exp_row(s, parent)
            row = Experiment(
                name=name,
                config=config,
                config_hash=digest,
                method=config.get("method"),
                parent_name=parent,
                parent_round=parent_round,
                data_fingerprint=data_fingerprint,
            )
            s.add(row)
            s.flush()
            return self._exp_info(row)

        info = run_write(self.engine, create)
        for sub in ("shards", "checkpoints", "figures"):
            (self.root / "experiments" / name / sub).mkdir(parents=True, exist_ok=True)
        return info

    def experiment(self, name: str | None = None) -> ExperimentInfo:
        """The named experiment; None: the only one, or the most recently created."""
        with read_session(self.engine) as s:
            if name is not None:
                return self._exp_info(self._exp_row(s, validate_name(name)))
            row = s.scalar(
                select(Experiment).order_by(Experiment.created_at.desc(), Experiment.id.desc())
            )
            if row is None:
                raise ExperimentNotFound(
                    f"no experiments in {self.root} yet; create one with `icl init`"
                )
            return self._exp_info(row)

    def experiments(self) -> list[ExperimentInfo]:
        """All experiments, oldest first."""
        with read_session(self.engine) as s:
            rows = s.scalars(select(Experiment).order_by(Experiment.created_at, Experiment.id))
            return [self._exp_info(r) for r in rows]

    # ---------------------------------------------------------- locks, steps
    def lock_path(self, experiment: str) -> Path:
        return self.root / ICL_DIR / LOCKS_DIR / f"{validate_name(experiment)}.lock"

    @contextmanager
    def lock(self, experiment: str, wait: bool = False, command: str | None = None):
        """Exclusive per-experiment lock; BusyError at once if held elsewhere and not
        ``wait``. ``command`` is shown to whoever finds it busy (default: this argv)."""
        anchor = self.root / "experiments" / validate_name(experiment)
        with experiment_lock(self.lock_path(experiment), experiment, wait, command, anchor):
            yield

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

            def start(s: Session) -> StepInfo:
                exp_id = self._exp_row(s, exp).id
                # We hold the lock, and a live step always does: any other ``running`` row
                # of this experiment is a process that died (SIGKILL, power cut).
                here = socket.gethostname()
                for dead in s.scalars(
                    select(Step).where(Step.experiment_id == exp_id, Step.state == "running")
                ):
                    if dead.pid == os.getpid() and dead.host in (None, here):
                        continue  # a step of this very process further up the stack
                    dead.state, dead.finished_at = "interrupted", utcnow()
                    dead.message = "process ended without finishing (found by the next step)"
                row = Step(
                    experiment_id=exp_id,
                    name=name,
                    round=round,
                    config=config,
                    config_hash=config_hash(config),
                    state="running",
                    pid=os.getpid(),
                    host=socket.gethostname(),
                )
                s.add(row)
                s.flush()
                return self._step_info(row, exp, "running")

            with _ctrl_c_held() as pressed:  # the row and this code agree, even on Ctrl-C
                info = run_write(self.engine, start)
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
        def finish(s: Session) -> None:
            row = s.get(Step, step_id)
            row.state, row.message = state, message
            row.finished_at, row.seconds = utcnow(), time.monotonic() - t0

        with _ctrl_c_held() as pressed:
            run_write(self.engine, finish)
        if pressed and state == "ok":
            raise _interrupt(pressed)  # the step is recorded as done; stop after it

    @staticmethod
    def _step_info(row: Step, exp: str, state: str) -> StepInfo:
        return StepInfo(
            experiment=exp,
            name=row.name,
            round=row.round,
            state=state,
            seconds=row.seconds,
            started_at=row.started_at,
            finished_at=row.finished_at,
            message=row.message,
            config_hash=row.config_hash,
            config=dict(row.config or {}),
            pid=row.pid,
            id=row.id,
        )

    def _stale(self, row: Step, exp: str) -> bool:
        """A ``running`` row whose process is gone. A live step always holds the lock, so
        a free lock means stale even if the pid was reused."""
        if row.state != "running":
            return False
        here = row.host in (None, socket.gethostname())
        if here and row.pid == os.getpid():
            return False
        if here and not pid_alive(row.pid):
            return True
        return not is_locked_elsewhere(self.lock_path(exp))

    def steps(
        self, experiment: str | None = None, name: str | None = None, round: int | None = None
    ) -> list[StepInfo]:
        """Step log, oldest first, optionally filtered; stale ``running`` rows read as
        ``interrupted``."""
        q = select(Step, Experiment.name).join(Experiment)
        if experiment is not None:
            q = q.where(Experiment.name == self.experiment(experiment).name)
        if name is not None:
            q = q.where(Step.name == name)
        if round is not None:
            q = q.where(Step.round == round)
        with read_session(self.engine) as s:
            rows = s.execute(q.order_by(Step.started_at, Step.id)).all()
            return [
                self._step_info(r, e, "interrupted" if self._stale(r, e) else r.state)
                for r, e in rows
            ]

    # --------------------------------------------------------- files, MLflow
    def figure_path(self, experiment: str, name: str) -> Path:
        """Where to write a figure: ``experiments/<exp>/figures/<name>`` (subfolders
        allowed, e.g. ``round-0003/grid.png``; the parent folder is created)."""
        exp = self.experiment(experiment).name
        parts = PurePosixPath(name).parts
        if not parts or any(not _PART_RE.fullmatch(p) for p in parts):
            raise StoreError(f"invalid figure name {name!r}: use relative names like 'grid.png'")
        path = self.root / "experiments" / exp / "figures" / Path(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_figure(self, path: Path, write_fn) -> Path:
        """Write a figure at ``path`` (from ``figure_path``) atomically: ``write_fn(tmp)``
        writes the bytes to a temporary name that is then renamed into place."""
        return atomic_write(path, write_fn)

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
                row = self._exp_row(s, exp.name)
                if row.mlflow_run_id not in (None, old):
                    return row.mlflow_run_id  # another process won the race
                row.mlflow_run_id = new
                return new

            return run_write(self.engine, cas)

        artifacts = (self.root / ICL_DIR / "mlartifacts").as_uri()
        tracker = Tracker(uri, artifacts, exp.name, exp.mlflow_run_id, save_run_id)
        return self._runs.add(exp.name, uri, tracker, exp.config)

    @property
    def tracking_uri(self) -> str:
        """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<ws>/.icl/mlflow.db``."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / ICL_DIR}/mlflow.db"

    def verify(self, repair: bool = False) -> VerifyReport:
        """Check every recorded file and the step log; see ``store.verify``."""
        from .verify import verify

        return verify(self, repair)
