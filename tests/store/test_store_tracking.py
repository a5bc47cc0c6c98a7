"""MLflow tracking into a sqlite URI under tmp_path; the run's status; NullTracker.

Creating MLflow's tables (alembic migrations) takes a few seconds: MLflow makes one
database per test run (``made_mlflow_db``), copied where making it is not the test's
subject; the status tests share one copy (each its own workspace and run). They assert
what was logged, never how fast. What happens when MLflow fails:
tests/reliability/test_reliability_tracking.py.
"""

from __future__ import annotations

import shutil
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
def shared_uri(_made_mlflow_db, tmp_path_factory) -> str:
    """One MLflow database for the status tests (making one takes seconds)."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(_made_mlflow_db, db)
    return f"sqlite:///{db}"


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


# ------------------------------------------------ a moved workspace, a lost mlflow.db


def _all_files(root) -> dict:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_copied_workspace_logs_artifacts_into_itself(store, tmp_path, monkeypatch,
                                                      made_mlflow_db):
    """MLflow records its artifact location as an absolute path: after ``cp -a`` the copy
    must point it at itself, never write into the original (nor after ``mv`` outside)."""
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking_mod, "_failure", None)
    made_mlflow_db(store.root / ".icl" / "mlflow.db")
    fig = tmp_path / "round-0001.png"
    fig.write_bytes(b"\x89PNG one")
    store.tracker("icl").log_artifact(fig)
    store.close()
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy, symlinks=True)
    before = _all_files(store.root)

    with Store.open(copy) as st:
        fig.write_bytes(b"\x89PNG two")
        st.tracker("icl").log_artifact(fig, "later")
        run_id = st.experiment("icl").mlflow_run_id
    assert _all_files(store.root) == before  # the original, byte for byte
    client = MlflowClient(tracking_uri=f"sqlite:///{copy}/.icl/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.artifact_uri == (copy / ".icl" / "mlartifacts").as_uri() + \
        f"/{run_id}/artifacts"
    assert client.get_experiment_by_name("icl").artifact_location == \
        (copy / ".icl" / "mlartifacts").as_uri()
    got = copy / ".icl" / "mlartifacts" / run_id / "artifacts"
    assert (got / "round-0001.png").read_bytes() == b"\x89PNG one"
    assert (got / "later" / "round-0001.png").read_bytes() == b"\x89PNG two"


def test_a_location_the_user_chose_is_left_alone(tmp_path, monkeypatch, made_mlflow_db):
    """Only the workspace's own mlflow.db is re-pointed: a tracking URI of the user's
    (another file, a server) keeps the locations it has."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking_mod, "_failure", None)
    uri = f"sqlite:///{made_mlflow_db(tmp_path / 'mine.db')}"
    MlflowClient(tracking_uri=uri).create_experiment("icl", artifact_location="file:///x/y")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("icl", {"method": "icl"})
        assert st.tracker("icl").run_id
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("icl").artifact_location \
        == "file:///x/y"


def _record(st: Store) -> None:
    """What the measuring steps record in the catalog (no MLflow call)."""
    st.record_evaluation("icl", 0, "test", 0.25, [0.25] * 10, 100)
    st.record_evaluation("icl", 1, "test", 0.125, [0.125] * 10, 100)
    st.record_evaluation("icl", 1, "val", 0.5, [0.5] * 10, 10)
    st.record_metrics("icl", 1, {"test_nll": 0.75, "ece_bins": 15.0, "grad_norm_max": 3.5,
                                 "never_passed": float("nan")})
    st.create_experiment("base", {"method": "baseline", "seed": 0})
    st.record_attack("icl", 1, "base", 1, 0.1, {"a_made": [80, 30, 20],
                                                "b_made": [70, 40, 10], "n": 100})
    st.record_attack("icl", 1, "base", 1, 0.05, {"a_made": [80, 10, 5],
                                                 "b_made": [70, 20, 8], "n": 100},
                     method="pgd", params={"steps": 10})


def test_sync_from_catalog_relogs_what_mlflow_missed(store, monkeypatch, made_mlflow_db):
    from mlflow.tracking import MlflowClient

    from store.tracking import catalog_points, sync_from_catalog

    monkeypatch.setattr(tracking_mod, "_failure", None)
    made_mlflow_db(store.root / ".icl" / "mlflow.db")
    _record(store)
    points = catalog_points(store, "icl")
    assert points == {  # the names the steps log (evaluate.py), by hand
        ("test_error", 0): 25.0, ("test_error", 1): 12.5, ("val_error", 1): 50.0,
        ("test_nll", 1): 0.75, ("grad_norm_max", 1): 3.5,  # NaN (kept as NULL) skipped
        ("fgsm_fool_self", 1): 30, ("fgsm_fool_other", 1): 20,
        ("fgsm_robust_accuracy", 1): 0.5,
        ("pgd_eps0.05_fool_self", 1): 10, ("pgd_eps0.05_fool_other", 1): 5,
        ("pgd_eps0.05_robust_accuracy", 1): 0.7,
    }
    lines = sorted(sync_from_catalog(store), reverse=True)  # icl, base
    run_id = store.experiment("icl").mlflow_run_id
    assert lines == [f"icl: re-logged 2 params and 11 metric values (rounds 0-1) into a "
                     f"new MLflow run {run_id}",  # (the params: as the run was made)
                     f"base: re-logged 2 params and 0 metric values into a new MLflow run "
                     f"{store.experiment('base').mlflow_run_id}"]
    client = MlflowClient(tracking_uri=store.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params == {"method": "icl", "seed": "0"}
    held = {(k, m.step): m.value for k in {k for k, _ in points}
            for m in client.get_metric_history(run_id, k)}
    assert held == points
    assert run.info.status == "FINISHED"
    assert sync_from_catalog(store) == []  # idempotent: nothing is logged twice
    assert len(client.get_metric_history(run_id, "test_error")) == 2

    # A round evaluated again: only the changed value is logged, and it reads latest.
    store.record_evaluation("icl", 1, "test", 0.0625, [0.0625] * 10, 100)
    assert sync_from_catalog(store, ["icl"]) == [
        f"icl: re-logged 0 params and 1 metric values (round 1) into MLflow run {run_id}"]
    assert client.get_run(run_id).data.metrics["test_error"] == 6.25


def test_sync_after_mlflow_lost_the_run_makes_one_with_everything(store, monkeypatch,
                                                                  made_mlflow_db):
    """mlflow.db deleted (or MLFLOW_TRACKING_URI switched): the catalog names a run that
    MLflow does not have; the sync makes a new one holding the config and every metric."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    from store.tracking import catalog_points, sync_from_catalog

    monkeypatch.setattr(tracking_mod, "_failure", None)
    made_mlflow_db(store.root / ".icl" / "mlflow.db")  # (a new one: it holds no run)
    _record(store)
    con = sqlite3.connect(store.root / ".icl" / "catalog.db")
    with con:
        con.execute("UPDATE experiments SET mlflow_run_id = ?", ("0" * 32,))
    con.close()
    lines = sorted(sync_from_catalog(store))  # base, icl
    new = store.experiment("icl").mlflow_run_id
    assert new != "0" * 32
    assert lines[1] == f"icl: re-logged 2 params and 11 metric values (rounds 0-1) into a " \
        f"new MLflow run {new}"
    client = MlflowClient(tracking_uri=store.tracking_uri)
    run = client.get_run(new)
    assert run.data.params == {"method": "icl", "seed": "0"}
    assert run.data.metrics == {k: v for (k, t), v in catalog_points(store, "icl").items()
                                if t == 1}  # the latest value of each: round 1's
    assert sync_from_catalog(store) == []


def test_a_half_made_mlflow_db_is_made_again(store, monkeypatch, capfd):
    """A full disk cut MLflow's creation of mlflow.db short: every later open failed with
    "table _alembic_tmp_... already exists". A file holding no run is made again."""
    import sqlite3

    monkeypatch.setattr(tracking_mod, "_failure", None)
    db = store.root / ".icl" / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_experiments (x)")  # as the cut-short upgrade
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, x)")
    con.execute("CREATE TABLE alembic_version (version_num TEXT)")
    con.commit()
    con.close()
    t = store.tracker("icl")
    t.log_metrics({"test_error": 1.0}, step=0)
    assert t.run_id and tracking_mod._failure is None
    err = capfd.readouterr().err
    assert "was left half-made" in err and "warning" not in err


def test_a_damaged_mlflow_db_with_runs_is_never_deleted(store, monkeypatch, capfd):
    import sqlite3

    monkeypatch.setattr(tracking_mod, "_failure", None)
    db = store.root / ".icl" / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_experiments (x)")
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, x)")
    con.execute("CREATE TABLE runs (run_uuid TEXT)")
    con.execute("INSERT INTO runs VALUES ('a run of the user')")
    con.commit()
    con.close()
    store.tracker("icl").log_metrics({"test_error": 1.0}, step=0)
    assert tracking_mod._failure is not None  # tracking off, one warning
    con = sqlite3.connect(db)  # (MLflow's own upgrade may have touched it; icl did not
    assert con.execute("SELECT run_uuid FROM runs").fetchall() == [("a run of the user",)]
    con.close()  # delete it)
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("warning: MLflow tracking at ")
