"""MLflow tracking into a sqlite URI under tmp_path; NullTracker.

The MLflow test creates MLflow's tables (alembic migrations), which takes a few seconds:
it asserts what was logged, never how fast.
"""

from __future__ import annotations

from store import NullTracker, Store, Tracker
from store.tracking import flatten


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {
        "a.b": "1",
        "a.c.d": "None",
        "e": "[1, 2]",
    }


def test_mlflow_tracker_logs_and_resumes_one_run(store, tmp_path, capfd):
    uri = f"sqlite:///{store.root}/.icl/mlflow.db"  # the default: inside the workspace
    t = store.tracker("icl")
    assert isinstance(t, Tracker) and t.run_id
    t.log_params({"train": {"lr": 0.01}, "method": "icl"})
    t.log_params({"train": {"lr": 0.01}})  # the same value again: fine
    t.log_params({"train": {"lr": 0.5}})  # a changed value: kept as it was, no crash
    t.log_metrics({"test_error": 0.25, "skipped": None}, step=1)
    fig = tmp_path / "grid.png"
    fig.write_bytes(b"\x89PNG fake")
    t.log_artifact(fig)
    t.close()
    assert store.experiment("icl").mlflow_run_id == t.run_id

    # A later process (a new Store object) resumes the same run.
    with Store.open(store.root) as again:
        t2 = again.tracker("icl")
        assert t2.run_id == t.run_id
        t2.log_metrics({"test_error": 0.125}, step=2)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(t.run_id)
    assert run.data.params == {"train.lr": "0.01", "method": "icl"}
    history = client.get_metric_history(t.run_id, "test_error")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.125)]
    assert [a.path for a in client.list_artifacts(t.run_id)] == ["grid.png"]
    assert list((store.root / ".icl" / "mlartifacts").rglob("grid.png"))
    assert "INFO" not in capfd.readouterr().err  # MLflow's migration chatter is muted


def test_default_uri_lives_in_the_workspace(store, monkeypatch):
    assert store.tracking_uri == f"sqlite:///{store.root}/.icl/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert store.tracking_uri == "sqlite:////elsewhere/m.db"


def test_null_tracker_does_nothing(store):
    t = store.tracker("icl", enabled=False)
    assert isinstance(t, NullTracker) and not isinstance(t, Tracker)
    with t:
        t.log_params({"a": {"b": 1}})
        t.log_metrics({"x": 1.0}, step=0)
        t.log_artifact(store.root / "missing.png")
    assert not (store.root / ".icl" / "mlflow.db").exists()
    assert store.experiment("icl").mlflow_run_id is None
