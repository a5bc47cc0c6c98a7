"""MLFLOW_TRACKING_URI=http://... against a real ``mlflow server``.

The server needs full MLflow (~850 MB: Flask, pandas, ...), which icl does not depend on,
so this test is ``slow`` and finds the server's executable in ``ICL_MLFLOW_SERVER`` (or an
``mlflow`` on PATH, if it is full MLflow's). It may live in its own virtual environment:
client and server share only HTTP. ``.ci/run`` makes such an environment and runs it.

    python -m venv /tmp/mlflow-venv && /tmp/mlflow-venv/bin/pip install mlflow
    ICL_MLFLOW_SERVER=/tmp/mlflow-venv/bin/mlflow python -m pytest -m slow \
        tests/store/test_store_mlflow_server.py
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ICL = [sys.executable, "-m", "icl_cli"]
TINY = ["--arch", "tiny", "--train-size", "100", "--val-size", "50", "--init-epochs", "1",
        "--epochs", "1", "--count", "2", "--max-steps", "5", "--threads", "1",
        "--device", "cpu"]


def _server_exe() -> str:
    """Full MLflow's ``mlflow``: mlflow-skinny has a ``server`` command too, but its server
    never comes up (its job runner wants huey and pandas, which only full MLflow brings)."""
    exe = os.environ.get("ICL_MLFLOW_SERVER") or shutil.which("mlflow")
    if not exe:
        pytest.skip("no mlflow server: set ICL_MLFLOW_SERVER to full MLflow's `mlflow`")
    shebang = Path(exe).read_text(errors="replace").splitlines()[0].removeprefix("#!")
    probe = subprocess.run([*shlex.split(shebang), "-c", "import importlib.metadata as m; "
                            "m.distribution('mlflow'); import huey"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{exe} is not full MLflow's (mlflow-skinny, or huey missing): set "
                    "ICL_MLFLOW_SERVER to a full MLflow's `mlflow` (see this file's header)")
    return exe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = _server_exe()
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [exe, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 600  # full MLflow's imports: minutes on a loaded machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < end, (
                (root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url, root
    finally:  # the server and its workers: one process group
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_steps_log_to_a_tracking_server(server, tmp_path):
    url, root = server
    # icl gives up on a request after 3 s unless told otherwise (a dead server must not
    # hold a step up); a live one beside other jobs may take longer to answer.
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}
    ws = tmp_path / "ws"
    for argv in (["init", "-w", ws, "-e", "icl", "--method", "icl", *TINY],
                 ["run", "-w", ws, "--rounds", "1", "--threads", "1", "--device", "cpu"]):
        res = subprocess.run([*ICL, *map(str, argv)], capture_output=True, text=True,
                             env=env)
        assert res.returncode == 0, res.stderr
        assert "warning: MLflow" not in res.stderr  # the server took everything
    assert not (ws / ".icl" / "mlflow.db").exists()  # nothing went to the local default

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    [run] = client.search_runs([client.get_experiment_by_name("icl").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "icl"
    assert run.data.params["method"] == "icl"
    history = client.get_metric_history(run.info.run_id, "test_error")
    assert sorted(m.step for m in history) == [0, 1]
    # Artefacts go through the server to its own store, not into the workspace.
    paths = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert paths, "no artefacts logged"
    assert list((root / "artifacts").rglob("*.png"))
    assert not (ws / ".icl" / "mlartifacts").exists()
