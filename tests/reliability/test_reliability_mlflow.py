"""MLflow follows the workspace: after ``cp -a`` or ``mv`` a round logs into the folder it
runs in (the original is never written), and what MLflow lost is logged again from the
catalog (``store.tracking.sync_from_catalog``, what ``icl verify --repair`` runs).

Real ``icl`` processes with MLflow on (the default), on the tiny experiment.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from store import Store
from store import tracking as tracking_mod
from store.tracking import catalog_points, flatten, sync_from_catalog
from tests.reliability.relkit import run_child

TRACKED = ["--threads", "1", "--device", "cpu"]  # MLflow on


@pytest.fixture(autouse=True)
def _tracking_on(monkeypatch):
    monkeypatch.setattr(tracking_mod, "_failure", None)


def every_file(root: Path) -> dict[str, str]:
    """{path: sha256} of every file under ``root``: catalog, mlflow.db, artifacts..."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mlflow_run(ws: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws}/.icl/mlflow.db")
    with Store.open(ws) as st:
        run_id = st.experiment("icl").mlflow_run_id
    return client, client.get_run(run_id)


@pytest.fixture(scope="module")
def tracked(sqlite_templates, tmp_path_factory) -> Path:
    """The template's round 0, then round 1 run with MLflow on (its mlflow.db made then):
    shared, never written by a test (each changes a copy)."""
    ws = sqlite_templates.copy("round0", tmp_path_factory.mktemp("tracked") / "ws")
    run_child(["run", "-w", ws, "-e", "icl", "--rounds", "1", *TRACKED], ws.parent / "logs")
    return ws


def test_a_copy_and_a_moved_workspace_track_into_themselves(tracked, tmp_path, logs):
    ws = tracked  # left as it is: only its copies run
    assert list((ws / ".icl" / "mlartifacts").rglob("round-0001.v1.png"))
    original = every_file(ws)

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(ws), str(copy)], check=True)
    res = run_child(["run", "-w", copy, "-e", "icl", "--rounds", "2", *TRACKED], logs)
    assert not res.stderr.strip(), res.stderr
    assert every_file(ws) == original  # catalog, mlflow.db, mlartifacts, experiments/
    client, run = mlflow_run(copy)
    artifacts = copy / ".icl" / "mlartifacts"
    assert run.info.artifact_uri == f"{artifacts.as_uri()}/{run.info.run_id}/artifacts"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "round-0001.v1.png", "round-0002.v1.png", "error-vs-round.png"}
    assert (artifacts / run.info.run_id / "artifacts" / "round-0002.v1.png").is_file()
    # (round 0, from the template made with --no-mlflow, was logged from the catalog)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_error")) \
        == [0, 1, 2]

    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    run_child(["run", "-w", moved, "-e", "icl", "--rounds", "3", *TRACKED], logs)
    assert not copy.exists()  # nothing written where the workspace was
    assert every_file(ws) == original
    client, run = mlflow_run(moved)
    assert run.info.artifact_uri.startswith((moved / ".icl" / "mlartifacts").as_uri() + "/")
    assert (moved / ".icl" / "mlartifacts" / run.info.run_id / "artifacts" /
            "round-0003.v1.png").is_file()


def test_a_deleted_mlflow_db_is_logged_again_from_the_catalog(tracked, tmp_path, logs):
    ws = shutil.copytree(tracked, tmp_path / "ws", symlinks=True)
    (ws / ".icl" / "mlflow.db").unlink()
    with Store.open(ws) as st:
        lost = st.experiment("icl").mlflow_run_id
        lines = sync_from_catalog(st)
        points = catalog_points(st, "icl")
        config = st.experiment("icl").config
        new = st.experiment("icl").mlflow_run_id
    assert new != lost
    assert lines == [f"icl: re-logged {len(flatten(config))} params and {len(points)} metric "
                     f"values (rounds 0-1) into a new MLflow run {new}"]
    assert {("test_error", 0), ("val_error", 1), ("grad_norm_max", 1)} <= set(points)
    client, run = mlflow_run(ws)
    assert run.data.params == flatten(config)
    held = {(k, m.step): m.value for k in {k for k, _ in points}
            for m in client.get_metric_history(new, k)}
    assert held == points
    with Store.open(ws) as st:
        assert sync_from_catalog(st) == []  # idempotent
    # The next round logs into that run, and the workspace is consistent.
    run_child(["run", "-w", ws, "-e", "icl", "--rounds", "2", *TRACKED], logs)
    client, run = mlflow_run(ws)
    assert run.info.run_id == new
    assert sorted(m.step for m in client.get_metric_history(new, "test_error")) == [0, 1, 2]
    run_child(["verify", "-w", ws], logs)


def test_verify_repair_logs_again_what_mlflow_lost(templates, tmp_path, logs):
    """The command a user runs: ``icl verify --repair`` after ``mlflow.db`` was lost."""
    ws = templates.copy("round0", tmp_path / "ws")
    (ws / ".icl" / "mlflow.db").unlink(missing_ok=True)
    out = run_child(["verify", "-w", ws, "--repair"], logs).stdout
    lines = [x for x in out.splitlines() if x.startswith("repaired: mlflow: ")]
    assert lines and all("re-logged" in x and "into a new MLflow run" in x for x in lines)
    client, run = mlflow_run(ws)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_error")] == [0]
    again = run_child(["verify", "-w", ws, "--repair"], logs).stdout
    assert "repaired: mlflow:" not in again  # nothing left to log
    quiet = run_child(["verify", "-w", ws, "--repair", "--no-mlflow"], logs).stdout
    assert "mlflow" not in quiet
