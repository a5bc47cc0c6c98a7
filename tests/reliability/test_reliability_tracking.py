"""MLflow breaks, the work does not: tracking is best effort.

An unreachable server, a damaged or a deleted ``mlflow.db``: every step still succeeds and
is recorded in the catalog; the process prints one warning line on stderr and tracks no
more. The store is driven directly (no model is trained), so each test takes seconds.
"""

from __future__ import annotations

import time

import pytest

from store import Store
from store import tracking as tracking_mod
from store.tracking import flatten
from tests.reliability.relkit import execute

CONFIG = {"method": "icl", "seed": 0, "train": {"lr": 0.01}}
WARNING = "warning: MLflow tracking at "


@pytest.fixture(autouse=True)
def _tracking_on(monkeypatch):
    """Each test starts as a fresh process would: tracking not yet given up."""
    monkeypatch.setattr(tracking_mod, "_failure", None)


def work(st: Store) -> None:
    """What steps send to MLflow: params, metrics and an artefact, inside and after steps,
    for two experiments."""
    for name in ("icl", "base"):
        st.create_experiment(name, {**CONFIG, "method": name})
        for t in (1, 2):
            with st.step(name, "synthesize", t, {}):
                st.tracker(name).log_metrics({"pass_rate": 0.5}, step=t)
            tracker = st.tracker(name)
            tracker.log_params(CONFIG)
            tracker.log_metrics({"test_error": 1.5}, step=t)
            fig = st.figure_path(name, f"round-{t:04d}.png")
            fig.write_bytes(b"\x89PNG fake")
            tracker.log_artifact(fig)
    assert [s.state for s in st.steps()] == ["ok"] * 4


def warnings_in(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith(WARNING) for line in lines), lines
    return lines


def test_unreachable_server_costs_seconds_and_one_warning(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    t0 = time.monotonic()
    with Store.init(tmp_path / "ws") as st:
        work(st)
        assert st.experiment("icl").mlflow_run_id is None
    assert time.monotonic() - t0 < 15
    (line,) = warnings_in(capfd.readouterr().err)
    assert "http://127.0.0.1:1" in line and "Connection refused" in line
    assert "recorded in the catalog" in line and "MLFLOW_TRACKING_URI" in line


def test_unreachable_server_keeps_the_recorded_run(tmp_path, monkeypatch, capfd):
    """A server that is down is no reason to replace the experiment's run by a new one."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("icl", CONFIG)
        execute(st.root, "UPDATE experiments SET mlflow_run_id = ?", "0" * 32)
        with st.step("icl", "synthesize", 1, {}):
            st.tracker("icl").log_metrics({"pass_rate": 0.5}, step=1)
        assert st.experiment("icl").mlflow_run_id == "0" * 32
    assert len(warnings_in(capfd.readouterr().err)) == 1


def test_corrupt_mlflow_db_warns_once(tmp_path, capfd):
    st = Store.init(tmp_path / "ws")
    db = st.root / ".icl" / "mlflow.db"
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)
    with st:
        work(st)
    (line,) = warnings_in(capfd.readouterr().err)
    assert "not a database" in line and "MLFLOW_TRACKING_URI" not in line  # not set here
    assert db.read_bytes() == garbage  # the user's file is left for them to look at


def test_deleted_mlflow_db_gets_a_new_run_with_the_params(tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    st = Store.init(tmp_path / "ws")
    st.create_experiment("icl", CONFIG)
    # What a later process finds once mlflow.db was deleted (or MLFLOW_TRACKING_URI
    # changed): the catalog names a run that MLflow does not have. (Deleting the file
    # under this process would not do: MLflow keeps its engine on the open file.)
    execute(st.root, "UPDATE experiments SET mlflow_run_id = ?", "0" * 32)
    with st:
        with st.step("icl", "synthesize", 1, {}):
            pass
        st.tracker("icl").log_metrics({"pass_rate": 0.25}, step=1)  # as `icl synthesize`
        new = st.experiment("icl").mlflow_run_id
        run = MlflowClient(tracking_uri=st.tracking_uri).get_run(new)
    assert new != "0" * 32
    assert run.data.params == flatten(CONFIG)
    assert run.data.metrics == {"pass_rate": 0.25}
    assert run.info.status == "FINISHED"
    assert not capfd.readouterr().err.strip()
