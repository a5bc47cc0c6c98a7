"""benchmarks/startup.py's read-only check: which modules a fresh ``icl status``, ``icl
report`` and ``icl verify`` import (none of SQLAlchemy, torch, MLflow, h5py, matplotlib,
nor Typer's pydantic), on a small workspace recorded through the store (no training:
seconds); flags and paths coerced without pydantic exactly as Typer's adapter does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.startup import HEAVY, READ_ONLY, imported
from icl_cli.cli.main import coerce_without_pydantic

ROOT = Path(__file__).resolve().parents[2]


def test_imported_names_the_top_level_modules_a_command_loads():
    found = imported(["-c", "import json.decoder, email.utils"])
    assert {"json", "email"} <= found and "torch" not in found
    with pytest.raises(RuntimeError, match="exited 3"):  # a failed command proves nothing
        imported(["-c", "import sys; sys.exit(3)"])


@pytest.fixture
def workspace(tmp_path):
    """Three experiments as status and report read them, one evaluation each."""
    from store import Store

    with Store.init(tmp_path / "ws") as st:
        for i, method in enumerate(("baseline", "icl-noise", "icl")):
            st.create_experiment(method, {"method": method, "seed": 0, "model": {"mode":
                                 "softmax"}, "data": {"dataset": "mnist-embedded",
                                                      "train_size": 200}},
                                 parent=None if i == 0 else "baseline", parent_round=0)
            with st.step(method, "evaluate", 0, {}):
                st.record_evaluation(method, 0, "test", 0.1 * (i + 1), [0.1] * 10, 100)
        return st.root


def test_the_read_only_commands_import_nothing_heavy(workspace, monkeypatch):
    monkeypatch.chdir(ROOT)  # this checkout's icl_cli and store
    # The module every read-only command reaches first: importing it must not pull in
    # SQLAlchemy (a SQLite catalog is read with the standard library's sqlite3).
    light = subprocess.run([sys.executable, "-c", "import sys, store.artifacts; "
                            "print('sqlalchemy' in sys.modules)"], capture_output=True,
                           text=True)
    assert light.returncode == 0, light.stderr
    assert light.stdout.strip() == "False", "importing store.artifacts imports SQLAlchemy"
    for argv in READ_ONLY:
        cmd = ["-m", "icl_cli", *argv, "-w", str(workspace),
               *(["--no-plot"] if argv == ["report"] else [])]
        done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr)
        found = imported(cmd)
        assert sorted(found & set(HEAVY)) == [], argv
        assert "pydantic" not in found or not coerce_without_pydantic(), argv


def test_flags_and_paths_coerce_as_typer_does_without_pydantic():
    import typer.main

    from icl_cli.cli import register

    if not coerce_without_pydantic():
        pytest.skip("this Typer coerces without pydantic adapters of its own")
    from typer._coercion import build_runtime_param

    status = typer.main.get_command(register()).commands["status"]
    params = {p.name: p for p in status.params}
    for name, values in (("workspace", ["", "a b", "~/x", "/tmp", Path("/tmp")]),
                         ("json", [True, False, "true", "0"])):
        param = params[name]
        light = param.get_runtime_param()
        assert type(light).__name__ == "LightParam", name
        for value in values:
            typers = build_runtime_param(param.type_descriptor).coerce(value, param, None)
            assert light.coerce(value, param, None) == typers, (name, value)
