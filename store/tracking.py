"""MLflow tracking: one MLflow run per icl experiment, resumed by every later process.

Tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<ws>/.icl/mlflow.db``;
artifacts go to ``<ws>/.icl/mlartifacts`` (the MLflow experiment is named "icl"). The run
id lives in the catalog (``experiments.mlflow_run_id``), so ``synthesize --round 7`` in a
new process logs into the same run as round 1. Uses ``MlflowClient`` (no fluent global
run), which is safe to use from many processes.

The run's status tells how the last step went: RUNNING while a step of the experiment is
open in a process that tracks it, then FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED as the
outermost step ends; a log call outside any step leaves it FINISHED.

Tracking is best effort: the catalog is the record. The first MLflow failure of a process
(server unreachable, a damaged ``mlflow.db``...) prints one warning line on stderr and turns
tracking off for the rest of the process; HTTP requests give up within seconds
(``_HTTP_DEFAULTS``, each overridable through its environment variable).

Example:
    >>> t = store.tracker("icl")                          # doctest: +SKIP
    >>> t.log_params({"train": {"lr": 0.01}})             # -> param "train.lr"
    >>> t.log_metrics({"test_error": 0.0081}, step=3)     # step = round
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
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
    if os.environ.get("MLFLOW_TRACKING_URI") == tracking_uri:
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

    tracking_uri, artifact_location: where MLflow keeps runs and artifacts.
    run_name: the icl experiment name. run_id: the run recorded in the catalog (None: a
    new run is created). save_run_id(new, old) -> run id to use: records a new run id
    in the catalog unless another process recorded one first (then that one wins).
    Set before first use: ``new_run_params`` (logged into a run this tracker creates, so a
    run made after ``mlflow.db`` was lost still has the config), ``open_steps`` (steps of
    the experiment already open in this process). Every call is best effort (module doc).
    """

    new_run_params: Mapping[str, Any] | None = None
    open_steps: int = 0

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str,
        run_name: str,
        run_id: str | None,
        save_run_id: Callable[[str, str | None], str],
    ) -> None:
        self.tracking_uri = tracking_uri
        self._where = (artifact_location, run_name, run_id, save_run_id)
        self._client = None
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
        self._client = _import_mlflow()(tracking_uri=self.tracking_uri)
        try:
            self._run_id, self._status = self._resolve_run(*self._where)
        except BaseException:
            self._client = None
            raise
        if self.open_steps:
            self._set_running()

    def _experiment_id(self, artifact_location: str) -> str:
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
        artifact_location: str,
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
            self._client.log_artifact(self._run_id, str(path), artifact_path)
            self._logged()

        self._safely(log)


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
