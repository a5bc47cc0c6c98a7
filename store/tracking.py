"""MLflow tracking: one MLflow run per icl experiment, resumed by every later process.

Tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<ws>/.icl/mlflow.db``;
artifacts go to ``<ws>/.icl/mlartifacts`` (the MLflow experiment is named "icl"). The run
id lives in the catalog (``experiments.mlflow_run_id``), so ``synthesize --round 7`` in a
new process logs into the same run as round 1. Uses ``MlflowClient`` (no fluent global
run), which is safe to use from many processes.

The run's status tells how the last step went: RUNNING while a step of the experiment is
open in a process that tracks it, then FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED as the
outermost step ends; a log call outside any step leaves it FINISHED. The single-step
commands log only once their result is in the catalog (MLflow's import and database cost
seconds, which they spend after their work, never before it): their logs leave the run
FINISHED, and a step of theirs that fails leaves the run as it was (the catalog's step log
says it failed). ``icl run`` tracks the whole loop, so its run reads RUNNING meanwhile.

Tracking is best effort: the catalog is the record. The first MLflow failure of a process
(server unreachable, a damaged ``mlflow.db``...) prints one warning line on stderr and turns
tracking off for the rest of the process; HTTP requests give up within seconds
(``_HTTP_DEFAULTS``, each overridable through its environment variable). What MLflow missed
meanwhile is logged again from the catalog by :func:`sync_from_catalog`.

The workspace's own ``mlflow.db`` follows the workspace: MLflow records its artifact
location as an absolute path, so after ``mv`` or ``cp -a`` each process first points the
"icl" experiment and its runs at the folder it runs in (a copy never writes into the
original). An ``mlflow.db`` whose creation was cut short (a full disk: "table
_alembic_tmp_... already exists" ever after) and that holds no run is made again.

Example:
    >>> t = store.tracker("icl")                          # doctest: +SKIP
    >>> t.log_params({"train": {"lr": 0.01}})             # -> param "train.lr"
    >>> t.log_metrics({"test_error": 0.0081}, step=3)     # step = round
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MLFLOW_EXPERIMENT = "icl"
_PARAM_MAX = 6000  # MLflow's limit on a param value
_HTTP_DEFAULTS = {  # MLflow's own: 120 s a request, 7 retries with backoff (minutes in all)
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
}
_log = logging.getLogger("store.tracking")
_failure: str | None = None  # why tracking stopped in this process; None while it works


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1, 2]"}``."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:_PARAM_MAX]
    return out


def _import_mlflow():
    """Import MLflow quietly: no telemetry, no INFO lines (table creation...) on stderr,
    HTTP requests bounded to seconds."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for var, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(var, value)
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs every database error it re-raises with a full traceback (tens of lines on a
    # full disk); the error reaches us and becomes the one warning line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # MLflow's own SQLAlchemy models trip SQLAlchemy 2.1 deprecations: not the user's concern.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow(\.|$)")
    return MlflowClient


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The root cause of ``exc``, on one line: "ConnectionRefusedError: [Errno 111]...",
    "DatabaseError: file is not a database" (MLflow's own message buries it)."""
    root = exc
    for _ in range(20):  # the chain of causes is short; never loop on a cycle
        nxt = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if nxt is None:
            break
        root = nxt
    return _one_line(exc) if root is exc else f"{type(root).__name__}: {_one_line(root)}"


def _give_up(tracking_uri: str, exc: Exception) -> None:
    """Turn tracking off for this process; warn once, on one stderr line."""
    global _failure
    _log.debug("MLflow tracking failed", exc_info=exc)
    if _failure is not None:
        return
    _failure = _reason(exc)
    from .workspace import says_disk_full

    if says_disk_full(exc):
        fix = "free some space: the next icl run or init logs what MLflow missed"
    elif os.environ.get("MLFLOW_TRACKING_URI") == tracking_uri:
        fix = "check MLFLOW_TRACKING_URI, or pass --no-mlflow"
    else:  # the workspace's own mlflow.db: damaged, locked, unwritable...
        fix = "check or move away that file, or pass --no-mlflow"
    print(
        f"warning: MLflow tracking at {tracking_uri} failed ({_failure}); the work is recorded "
        f"in the catalog, MLflow tracking is off for the rest of this command ({fix})",
        file=sys.stderr,
        flush=True,
    )


def outcome(exc: BaseException | None) -> str:
    """The MLflow run status for a block that ended with ``exc`` (None: no exception)."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, and store.errors.Terminated (SIGTERM)
        return "KILLED"
    if isinstance(exc, SystemExit) or hasattr(exc, "exit_code"):  # typer.Exit(0): success
        code = getattr(exc, "code", getattr(exc, "exit_code", 1))
        return "FINISHED" if code in (0, None) else "FAILED"
    return "FAILED"


class NullTracker:
    """Does nothing (``--no-mlflow``); same methods as :class:`Tracker`."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def begin(self) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self):
        """``with tracker:`` a block that counts as a step: see :meth:`Tracker.begin`."""
        self.begin()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(outcome(exc))


class Tracker(NullTracker):
    """Logs into the MLflow run of one icl experiment; connects on first use.

    tracking_uri, artifact_location: where MLflow keeps runs and artifacts (None: where the
    tracking server puts them).
    run_name: the icl experiment name. run_id: the run recorded in the catalog (None: a
    new run is created). save_run_id(new, old) -> run id to use: records a new run id
    in the catalog unless another process recorded one first (then that one wins).
    Set before first use: ``new_run_params`` (logged into a run this tracker creates, so a
    run made after ``mlflow.db`` was lost still has the config), ``open_steps`` (steps of
    the experiment already open in this process). Every call is best effort (module doc).
    """

    new_run_params: Mapping[str, Any] | None = None
    open_steps: int = 0
    _fresh = False  # this tracker made the run, and no sync has said so yet

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str | None,
        run_name: str,
        run_id: str | None,
        save_run_id: Callable[[str, str | None], str],
    ) -> None:
        self.tracking_uri = tracking_uri
        self._where = (artifact_location, run_name, run_id, save_run_id)
        self._client = None
        self._own: Path | None = None  # the workspace's own mlflow.db, once connected
        self._run_id: str | None = None
        self._status: str | None = None  # as last read or set; None: unknown

    # ------------------------------------------------------------ connecting
    @property
    def run_id(self) -> str | None:
        """The MLflow run (connecting if needed); None when tracking is off."""
        self._safely(lambda: None)
        return self._run_id

    def _safely(self, call: Callable[[], None], connect: bool = True) -> None:
        """``call()`` once connected, unless tracking is off; a failure turns it off."""
        if _failure is not None or (self._client is None and not connect):
            return
        try:
            if self._client is None:
                self._connect()
            call()
        except Exception as exc:  # MlflowException, SQLAlchemy, requests, OSError...
            _give_up(self.tracking_uri, exc)

    def _connect(self) -> None:
        self._own = _own_db(self.tracking_uri, self._where[0])
        try:
            if self._own is not None:
                from .workspace import contained

                workspace = self._own.parent.parent  # <ws>/.icl/mlflow.db
                for own in (self._own, self._own.with_name("mlartifacts")):
                    contained(workspace, own)  # never tracked through a link out of it
                self._open_own_db(self._own)
            else:
                self._client = _import_mlflow()(tracking_uri=self.tracking_uri)
            self._run_id, self._status = self._resolve_run(*self._where)
        except BaseException:
            self._client = None
            raise
        if self.open_steps:
            self._set_running()

    def _open_own_db(self, db: Path) -> None:
        """Open the workspace's ``mlflow.db``: made again if its creation was cut short
        and it holds no run; its artifact locations pointed at this workspace. One icl
        process at a time (an flock on its folder): MLflow's own creation of the file is
        not safe against a second process doing the same, and a file made again must be
        one that nobody is making."""
        with _folder_lock(db.parent):
            self._open_own_db_locked(db)

    def _open_own_db_locked(self, db: Path) -> None:
        client = _import_mlflow()
        try:  # the client creates (or upgrades) the file's tables, now or on first use
            self._client = client(tracking_uri=self.tracking_uri)
            self._client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        except Exception as exc:
            from .workspace import says_disk_full

            if says_disk_full(exc) or not _unfinished(db):  # (full: made again next time)
                raise
            _forget_engine(self.tracking_uri)  # MLflow keeps one per URI, on the old file
            for leftover in (db, *(db.with_name(db.name + s) for s in ("-journal", "-wal",
                                                                       "-shm"))):
                leftover.unlink(missing_ok=True)
            print(f"note: {db} was left half-made (its creation was cut short, e.g. by a "
                  "full disk) and held no run: made again", file=sys.stderr, flush=True)
            self._client = client(tracking_uri=self.tracking_uri)
            self._client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        _rebase(db, self._where[0])

    def _experiment_id(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        exp = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(MLFLOW_EXPERIMENT, artifact_location=artifact_location)
        except MlflowException:
            # Another process created it between our lookup and create.
            exp = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            if exp is None:
                raise
            return exp.experiment_id

    def _resolve_run(
        self,
        artifact_location: str | None,
        run_name: str,
        run_id: str | None,
        save_run_id: Callable[[str, str | None], str],
    ) -> tuple[str, str | None]:
        """(run id, its status): the recorded run, else a new one (with the params)."""
        from mlflow.exceptions import MlflowException

        client = self._client
        if run_id is not None:
            try:
                info = client.get_run(run_id).info
                if info.lifecycle_stage == "active":
                    return run_id, info.status
            except MlflowException as exc:
                # Deleted, mlflow.db lost, or MLFLOW_TRACKING_URI switched: start a new run.
                # Anything else (server down...) is a failure, not a reason for a new run.
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
        exp_id = self._experiment_id(artifact_location)
        run = client.create_run(exp_id, run_name=run_name, tags={"icl.experiment": run_name})
        winner = save_run_id(run.info.run_id, run_id)
        if winner != run.info.run_id:
            client.delete_run(run.info.run_id)
            return winner, None
        self._fresh = True
        if self.new_run_params:
            self._run_id = winner
            self._log_params(self.new_run_params)
        return winner, run.info.status

    # --------------------------------------------------------------- status
    def _set_running(self) -> None:
        if self._status != "RUNNING":
            self._client.update_run(self._run_id, status="RUNNING")
            self._status = "RUNNING"

    def _terminate(self, status: str) -> None:
        self._client.set_terminated(self._run_id, status=status)
        self._status = status

    def _logged(self) -> None:
        """After a log call: outside any step, the run reads FINISHED."""
        if not self.open_steps and self._status != "FINISHED":
            self._terminate("FINISHED")

    def begin(self) -> None:
        """A step of the experiment starts in this process: the run is RUNNING again."""
        self.open_steps += 1
        self._safely(self._set_running)

    def end(self, status: str = "FINISHED") -> None:
        """A step ends; when it is the outermost, the run ends with ``status``."""
        self.open_steps = max(0, self.open_steps - 1)
        if not self.open_steps:
            self._safely(lambda: self._terminate(status), connect=False)

    # -------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) dict as dotted params. Values already logged are skipped; a
        changed value is kept as it was (MLflow params are immutable) with a warning."""

        def log() -> None:
            self._log_params(params)
            self._logged()

        self._safely(log)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        old = self._client.get_run(self._run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in old and old[k] != v)
        if changed:
            _log.warning("MLflow params already logged with other values, kept: %s", changed)
        new = [Param(k, v) for k, v in flat.items() if k not in old]
        for i in range(0, len(new), 100):  # MLflow's batch limit
            self._client.log_batch(self._run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log numbers at ``step`` (the round); None values are skipped."""

        def log() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [
                Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None
            ]
            for i in range(0, len(batch), 1000):  # MLflow's batch limit
                self._client.log_batch(self._run_id, metrics=batch[i : i + 1000])
            self._logged()

        self._safely(log)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (a sample grid PNG...) into the run's artifacts."""

        def log() -> None:
            if self._own is None:
                self._client.log_artifact(self._run_id, str(path), artifact_path)
            else:  # the run's location as it reads now (MLflow caches it per run id)
                from mlflow.store.artifact.artifact_repository_registry import (
                    get_artifact_repository,
                )

                uri = self._client.get_run(self._run_id).info.artifact_uri
                get_artifact_repository(uri).log_artifact(str(path), artifact_path)
            self._logged()

        self._safely(log)

    def sync(self, params: Mapping[str, Any], points: Mapping[tuple[str, int], float]
             ) -> tuple[int, list[int], bool] | None:
        """Log the ``params`` and the ``{(metric, step): value}`` points that the run does
        not hold yet (a metric whose latest value at that step differs counts as missing).
        Returns (params logged, the step of each metric value logged, whether the run is
        new: made by this tracker since the last sync), or None when tracking is off."""
        done: list[tuple[int, list[int], bool]] = []

        def log() -> None:
            from mlflow.entities import Metric, Param

            old = self._client.get_run(self._run_id).data.params
            params_ = [Param(k, v) for k, v in flatten(params).items() if k not in old]
            for i in range(0, len(params_), 100):
                self._client.log_batch(self._run_id, params=params_[i : i + 100])
            held = {key: self._latest(key) for key in {k for k, _ in points}}
            now = int(time.time() * 1000)
            missing = [Metric(k, float(v), now, int(t)) for (k, t), v in sorted(points.items())
                       if not _same(held[k].get(int(t)), v)]
            for i in range(0, len(missing), 1000):
                self._client.log_batch(self._run_id, metrics=missing[i : i + 1000])
            if params_ or missing:
                self._logged()
            fresh, self._fresh = self._fresh, False
            made = len(flatten(self.new_run_params or {})) if fresh else 0
            done.append((made + len(params_), [m.step for m in missing], fresh))

        self._safely(log)
        return done[0] if done else None

    def _latest(self, key: str) -> dict[int, float]:
        """{step: the value logged last at that step} of metric ``key``."""
        out: dict[int, float] = {}
        for m in sorted(self._client.get_metric_history(self._run_id, key),
                        key=lambda m: m.timestamp):
            out[m.step] = m.value
        return out


def _same(held: float | None, value: float) -> bool:
    return held is not None and math.isclose(held, float(value), rel_tol=1e-12, abs_tol=0.0)


def _own_db(tracking_uri: str, artifact_location: str | None) -> Path | None:
    """The workspace's own ``mlflow.db`` (``sqlite:///<ws>/.icl/mlflow.db`` used with
    ``file://<ws>/.icl/mlartifacts``), else None: a server's, or a file the user chose."""
    from urllib.parse import unquote, urlparse
    from urllib.request import url2pathname

    if not tracking_uri.startswith("sqlite:///") or not (artifact_location or "").startswith(
            "file:"):
        return None
    db = Path(unquote(tracking_uri.removeprefix("sqlite:///")))
    artifacts = Path(url2pathname(urlparse(artifact_location).path))
    named = (db.name, artifacts.name) == ("mlflow.db", "mlartifacts")
    return db if named and db.parent == artifacts.parent else None


@contextmanager
def _folder_lock(folder: Path, timeout: float = 60.0) -> Iterator[None]:
    """An exclusive flock on ``folder`` (waiting up to ``timeout`` s, then going on
    without it: tracking must not hang a step)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    break
                time.sleep(0.05)
            except OSError:
                break
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _forget_engine(tracking_uri: str) -> None:
    """Drop MLflow's cached SQLAlchemy engine of ``tracking_uri`` (its pooled connections
    would go on using a file deleted under them); a no-op where MLflow keeps none."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        return
    engines = getattr(SqlAlchemyStore, "_engine_map", None)
    engine = engines.pop(tracking_uri, None) if isinstance(engines, dict) else None
    if engine is not None:
        engine.dispose()


def _unfinished(db: Path) -> bool:
    """True if ``db`` is an SQLite file (one MLflow failed to open: its creation stopped
    half-way, leaving e.g. "table _alembic_tmp_jobs already exists" or "table secrets
    already exists" ever after) that holds no MLflow run and no registered model."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return False
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return all(t not in tables or not con.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                   for t in ("runs", "registered_models"))
    except sqlite3.Error:
        return False
    finally:
        con.close()


def _rebase(db: Path, location: str) -> None:
    """Point the "icl" experiment of the workspace's ``db`` and its runs' artifacts at
    ``location`` when they name another folder's ``.icl/mlartifacts`` (the workspace was
    moved or copied); a location the user set elsewhere is left alone."""
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            row = con.execute("SELECT experiment_id, artifact_location FROM experiments "
                              "WHERE name = ?", (MLFLOW_EXPERIMENT,)).fetchone()
            if row is None or row[1] == location or not row[1].endswith("/.icl/mlartifacts"):
                return
            exp_id, old = row
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        (location, exp_id))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                        (location, len(old) + 1, exp_id, len(old) + 1, old + "/"))
    finally:
        con.close()


def catalog_points(store, experiment: str) -> dict[tuple[str, int], float]:
    """{(MLflow metric, round): value} of what the catalog holds for ``experiment``, under
    the names the steps log: ``{split}_error`` (percent), every round metric (calibration,
    sample health, training peaks, OOD, quality), and each attack's ``{method}_fool_self``,
    ``_fool_other`` and ``_robust_accuracy`` (the latest record wins where two share a
    name and round, as in MLflow)."""
    points = {(f"{e.split}_error", e.round): 100 * e.error for e in store.evaluations(experiment)}
    for t, metrics in store.metrics(experiment).items():
        points |= {(k, t): v for k, v in metrics.items() if v is not None and k != "ece_bins"}
    for a in sorted(store.attacks(experiment), key=lambda a: a.created_at):
        m = "fgsm" if a.method == "fgsm" else f"pgd_eps{a.eps:g}"  # as evaluate.py logs
        correct, fool_source, fool_both = a.counts["a_made"]
        points |= {(f"{m}_fool_self", a.round): fool_source,
                   (f"{m}_fool_other", a.round): fool_both,
                   (f"{m}_robust_accuracy", a.round): (correct - fool_source) / a.counts["n"]}
    return points


def sync_from_catalog(store, experiments: list[str] | None = None) -> list[str]:
    """Make MLflow hold what the catalog holds, for ``experiments`` (default: all): the
    config as params and every recorded per-round metric (:func:`catalog_points`), into
    the run the catalog names (a new one if MLflow lost it). Idempotent: what MLflow holds
    already is not logged again. Returns one line per experiment that needed something,
    e.g. "icl: re-logged 0 params and 6 metric values (rounds 0-2) into MLflow run 3f2c...",
    or why it could not. Best effort, like every tracking call: it never raises for MLflow.

    Not re-created (the catalog does not hold them): losses, seconds, pass rates and
    figures that only MLflow held.
    """
    lines = []
    names = experiments if experiments is not None else [e.name for e in store.experiments()]
    for name in names:
        exp = store.experiment(name)
        tracker = store.tracker(exp.name)
        points = catalog_points(store, exp.name)
        counts = tracker.sync(exp.config, points) if isinstance(tracker, Tracker) else None
        if counts is None:
            if _failure is not None:
                lines.append(f"{exp.name}: not re-logged, MLflow tracking failed ({_failure})")
            continue
        n_params, steps, fresh = counts
        if n_params or steps:
            first, last = (min(steps), max(steps)) if steps else (None, None)
            span = ("" if not steps else f" (round {first})" if first == last
                    else f" (rounds {first}-{last})")
            run = f"{'a new ' if fresh else ''}MLflow run {tracker.run_id}"
            lines.append(f"{exp.name}: re-logged {n_params} params and {len(steps)} metric "
                         f"values{span} into {run}")
    return lines


class Runs:
    """A store's trackers, one per (experiment, tracking URI), and its open steps.

    ``Store.step`` calls :meth:`step_started` / :meth:`step_ended`, so the experiment's run
    reads RUNNING during a step and how the outermost step ended after it. Only trackers
    already made in this process are touched: a step never imports MLflow by itself.
    """

    def __init__(self) -> None:
        self._trackers: dict[tuple[str, str], Any] = {}
        self._open: dict[str, int] = {}

    def get(self, experiment: str, tracking_uri: str):
        return self._trackers.get((experiment, tracking_uri))

    def add(self, experiment: str, tracking_uri: str, tracker, params: Mapping[str, Any]):
        """Keep ``tracker``, made for ``experiment``; ``params``: its config. Returns it."""
        if isinstance(tracker, Tracker):
            tracker.new_run_params = params
            tracker.open_steps = self._open.get(experiment, 0)
        self._trackers[(experiment, tracking_uri)] = tracker
        return tracker

    def _of(self, experiment: str) -> list[Tracker]:
        return [
            t
            for (exp, _), t in self._trackers.items()
            if exp == experiment and isinstance(t, Tracker)
        ]

    def step_started(self, experiment: str) -> None:
        self._open[experiment] = self._open.get(experiment, 0) + 1
        for t in self._of(experiment):
            t.begin()

    def step_ended(self, experiment: str, status: str) -> None:
        self._open[experiment] = max(0, self._open.get(experiment, 0) - 1)
        for t in self._of(experiment):
            t.end(status)
