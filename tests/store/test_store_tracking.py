"""MLflow tracking into a sqlite URI under tmp_path; the run's status; NullTracker.

Creating MLflow's tables (alembic migrations) takes a few seconds: the status tests share
one MLflow database (each its own workspace and run). They assert what was logged, never
how fast. What happens when MLflow fails: tests/reliability/test_reliability_tracking.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from store import NullTracker, Store, Terminated, Tracker
from store import tracking as tracking_mod
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
    assert store.experiment("icl").mlflow_run_id == t.run_id

    # A later process (a new Store object) resumes the same run.
    with Store.open(store.root) as again:
        t2 = again.tracker("icl")
        assert t2.run_id == t.run_id
        t2.log_metrics({"test_error": 0.125}, step=2)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(t.run_id)
    # The config is logged when the run is created; log_params adds to it.
    assert run.data.params == {"train.lr": "0.01", "method": "icl", "seed": "0"}
    assert run.info.status == "FINISHED"
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


# ------------------------------------------------------------------- run status


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory) -> str:
    """One MLflow database for the status tests (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def tracked(store, shared_uri, monkeypatch):
    """The ``store`` fixture, tracking into the shared MLflow database."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_uri)
    monkeypatch.setattr(tracking_mod, "_failure", None)  # tracking on, whatever ran before
    return store


def status(st: Store, name: str = "icl") -> str:
    from mlflow.tracking import MlflowClient

    run_id = st.experiment(name).mlflow_run_id
    return MlflowClient(tracking_uri=st.tracking_uri).get_run(run_id).info.status


def test_run_is_running_during_a_step_and_finished_after(tracked):
    with tracked.step("icl", "synthesize", 1, {}):
        t = tracked.tracker("icl")
        t.log_metrics({"pass_rate": 0.5}, step=1)
        assert status(tracked) == "RUNNING"
        assert tracked.tracker("icl") is t  # one tracker per experiment and store
    assert status(tracked) == "FINISHED"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=tracked.tracking_uri).get_run(t.run_id)
    assert run.data.params == {"method": "icl", "seed": "0"}  # logged as the run was made


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Terminated])
def test_interrupted_step_leaves_the_run_killed(tracked, interrupt):
    with pytest.raises(interrupt), tracked.step("icl", "synthesize", 1, {}):
        tracked.tracker("icl").log_metrics({"pass_rate": 0.5}, step=1)
        raise interrupt()
    assert tracked.steps("icl")[-1].state == "interrupted"
    assert status(tracked) == "KILLED"


def test_a_tracker_made_before_the_step_follows_it(tracked):
    """A step that logs only after it ends (as synthesize does) still shows in the run
    when its tracker was made first."""
    tracker = tracked.tracker("icl")
    with pytest.raises(Terminated), tracked.step("icl", "synthesize", 1, {}):
        assert status(tracked) == "RUNNING"
        raise Terminated
    assert status(tracked) == "KILLED"
    with tracked.step("icl", "synthesize", 1, {}):
        assert status(tracked) == "RUNNING"
    tracker.log_metrics({"pass_rate": 0.5}, step=1)
    assert status(tracked) == "FINISHED"


def test_failed_step_leaves_the_run_failed(tracked):
    with pytest.raises(ValueError), tracked.step("icl", "reclassify", 1, {}):
        tracked.tracker("icl").log_metrics({"train_loss": 0.5}, step=1)
        raise ValueError("diverged")
    assert status(tracked) == "FAILED"


def test_next_step_resumes_the_run(tracked):
    with pytest.raises(KeyboardInterrupt), tracked.step("icl", "synthesize", 1, {}):
        tracked.tracker("icl").log_metrics({"pass_rate": 0.5}, step=1)
        raise KeyboardInterrupt
    run_id = tracked.experiment("icl").mlflow_run_id
    # The same process (`icl run`): RUNNING as soon as the step starts, before any log.
    with tracked.step("icl", "synthesize", 1, {}):
        assert status(tracked) == "RUNNING"
    assert status(tracked) == "FINISHED"
    # A later process: RUNNING again once its step logs, FINISHED after.
    with pytest.raises(ValueError), tracked.step("icl", "reclassify", 1, {}):
        tracked.tracker("icl").log_metrics({"train_loss": 0.5}, step=1)
        raise ValueError
    with Store.open(tracked.root) as later:
        with later.step("icl", "synthesize", 2, {}):
            later.tracker("icl").log_metrics({"pass_rate": 0.25}, step=2)
            assert status(later) == "RUNNING"
        assert status(later) == "FINISHED"
        assert later.experiment("icl").mlflow_run_id == run_id


def test_nested_steps_end_with_the_outermost(tracked):
    with pytest.raises(KeyboardInterrupt), tracked.step("icl", "run", None, {}):
        with pytest.raises(ValueError), tracked.step("icl", "synthesize", 1, {}):
            tracked.tracker("icl").log_metrics({"pass_rate": 0.5}, step=1)
            raise ValueError  # handled by the outer step, which goes on
        assert status(tracked) == "RUNNING"
        with tracked.step("icl", "reclassify", 1, {}):
            pass
        assert status(tracked) == "RUNNING"
        raise KeyboardInterrupt
    assert status(tracked) == "KILLED"


def test_logging_outside_a_step_leaves_the_run_finished(tracked):
    t = tracked.tracker("icl")
    t.log_metrics({"test_error": 1.5}, step=0)  # a new run: created RUNNING, then ended
    assert status(tracked) == "FINISHED"
    t.begin()
    t.end("KILLED")  # as a step cut short leaves it
    with Store.open(tracked.root) as later:  # `icl evaluate` after an interrupted step
        later.tracker("icl").log_metrics({"test_error": 1.25}, step=1)
        assert status(later) == "FINISHED"
    with tracked.tracker("icl"):  # a block that counts as a step (a whole `icl run`)
        with tracked.step("icl", "synthesize", 1, {}):
            pass
        assert status(tracked) == "RUNNING"
    assert status(tracked) == "FINISHED"


def test_steps_and_null_trackers_never_import_mlflow(tmp_path):
    """--no-mlflow and read-only commands stay free of MLflow (a separate process)."""
    code = f"""if True:
        import sys
        from store import Store
        st = Store.init({str(tmp_path / "ws")!r})
        st.create_experiment("icl", {{"method": "icl"}})
        with st.step("icl", "synthesize", 1, {{}}):
            st.tracker("icl", enabled=False).log_metrics({{"x": 1.0}}, step=1)
        with Store.open(st.root) as again:
            again.steps("icl"), again.experiments()
        assert "mlflow" not in sys.modules, "mlflow imported"
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
