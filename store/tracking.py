"""MLflow tracking: one MLflow run per icl experiment, resumed by every later process.

Tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<ws>/.icl/mlflow.db``;
artifacts go to ``<ws>/.icl/mlartifacts`` (the MLflow experiment is named "icl"). The run
id lives in the catalog (``experiments.mlflow_run_id``), so ``synthesize --round 7`` in a
new process logs into the same run as round 1. Uses ``MlflowClient`` (no fluent global
run), which is safe to use from many processes.

Example:
    >>> t = store.tracker("icl")                          # doctest: +SKIP
    >>> t.log_params({"train": {"lr": 0.01}})             # -> param "train.lr"
    >>> t.log_metrics({"test_error": 0.0081}, step=3)     # step = round
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import StoreError

MLFLOW_EXPERIMENT = "icl"
_PARAM_MAX = 6000  # MLflow's limit on a param value
_log = logging.getLogger("store.tracking")


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
    """Import MLflow quietly: no telemetry, no INFO lines (table creation...) on stderr."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's own SQLAlchemy models trip SQLAlchemy 2.1 deprecations: not the user's concern.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow(\.|$)")
    return MlflowClient


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class NullTracker:
    """Does nothing (``--no-mlflow``); same methods as :class:`Tracker`."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("FAILED" if exc[0] else "FINISHED")


class Tracker(NullTracker):
    """Logs into the MLflow run of one icl experiment.

    tracking_uri, artifact_location: where MLflow keeps runs and artifacts.
    run_name: the icl experiment name. run_id: the run recorded in the catalog (None: a
    new run is created). save_run_id(new, old) -> run id to use: records a new run id
    in the catalog unless another process recorded one first (then that one wins).
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str,
        run_name: str,
        run_id: str | None,
        save_run_id: Callable[[str, str | None], str],
    ) -> None:
        self.tracking_uri = tracking_uri
        try:
            client_cls = _import_mlflow()
            self._client = client_cls(tracking_uri=tracking_uri)
            self.run_id = self._resolve_run(artifact_location, run_name, run_id, save_run_id)
        except StoreError:
            raise
        except Exception as exc:  # MlflowException, SQLAlchemy errors from MLflow's store
            raise StoreError(
                f"MLflow tracking at {tracking_uri} failed ({_one_line(exc)}); "
                "fix MLFLOW_TRACKING_URI or pass --no-mlflow"
            ) from exc

    def _experiment_id(self, artifact_location: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        try:
            return self._client.create_experiment(
                MLFLOW_EXPERIMENT, artifact_location=artifact_location
            )
        except MlflowException:
            # Another process created it between our lookup and create.
            exp = self._client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            if exp is None:
                raise
            return exp.experiment_id

    def _resolve_run(
        self,
        artifact_location: str,
        run_name: str,
        run_id: str | None,
        save_run_id: Callable[[str, str | None], str],
    ) -> str:
        from mlflow.exceptions import MlflowException

        if run_id is not None:
            try:
                if self._client.get_run(run_id).info.lifecycle_stage == "active":
                    return run_id
            except MlflowException:
                pass  # deleted, or the user switched MLFLOW_TRACKING_URI: start a new run
        exp_id = self._experiment_id(artifact_location)
        run = self._client.create_run(exp_id, run_name=run_name, tags={"icl.experiment": run_name})
        winner = save_run_id(run.info.run_id, run_id)
        if winner != run.info.run_id:
            self._client.delete_run(run.info.run_id)
        return winner

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) dict as dotted params. Values already logged are skipped; a
        changed value is kept as it was (MLflow params are immutable) with a warning."""
        from mlflow.entities import Param

        flat = flatten(params)
        old = self._client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in old and old[k] != v)
        if changed:
            _log.warning("MLflow params already logged with other values, kept: %s", changed)
        new = [Param(k, v) for k, v in flat.items() if k not in old]
        for i in range(0, len(new), 100):  # MLflow's batch limit
            self._client.log_batch(self.run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log numbers at ``step`` (the round); None values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (a sample grid PNG...) into the run's artifacts."""
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        """Mark the run ended; a later process may still log into it."""
        self._client.set_terminated(self.run_id, status=status)
