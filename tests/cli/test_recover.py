"""``icl run --recover N``: a round whose training diverges is trained again from checkpoint
t-1 with a recorded change (half the learning rate, then also a gradient clip at 10), at
most N times; every attempt is in the step log, the catalog's metrics, MLflow and ``icl
report``, which says which rounds were recovered and which run diverged for good."""

import sqlite3

import pytest

from icl_cli.algo.reclassify import Diverged
from icl_cli.steps import reclassify as step
from store import Store
from tests.kit import COMMON, TINY, icl, icl_json


@pytest.fixture
def diverging(monkeypatch):
    """Training of round >= 1 diverges unless its gradient is clipped (the loss stops being
    finite at once), as the 5x-learning-rate stress case does on MNIST."""
    real = step.reclassify

    def reclassify(model, optimizer, *args, clip_grad=None, real_epochs=0, **kwargs):
        if real_epochs and not clip_grad:  # real_epochs > 0: a round >= 1 (TINY: 0 at init)
            raise Diverged(0, float("nan"))
        return real(model, optimizer, *args, clip_grad=clip_grad, real_epochs=real_epochs,
                    **kwargs)

    monkeypatch.setattr(step, "reclassify", reclassify)


def _init(ws, name="icl"):
    icl("init", "-w", ws, "-e", name, "--method", "icl", *TINY, "--real-epochs", "1",
        "--lr", "0.04", *COMMON)


def test_recover_retries_a_diverged_round_and_records_every_attempt(tmp_path, diverging):
    _init(tmp_path)
    ran = icl("run", "-w", tmp_path, "-e", "icl", "--rounds", "1", "--recover", "3",
              *COMMON)
    notes = [line for line in ran.stderr.splitlines() if "diverged" in line]
    assert len(notes) == 2 and "lr=0.02 (retry 1 of 3)" in notes[0], ran.stderr
    assert "lr=0.01, clip_grad=10 (retry 2 of 3)" in notes[1]
    with Store.open(tmp_path) as st:
        tries = [s for s in st.steps("icl", name="reclassify") if s.round == 1]
        assert [s.state for s in tries] == ["failed", "failed", "ok"]
        assert [s.config["recovery"]["attempt"] for s in tries] == [0, 1, 2]
        assert all(s.config["recovery"]["recover"] == 3 for s in tries)
        assert (tries[2].config["train"]["lr"], tries[2].config["train"]["clip_grad"]) == \
            (0.01, 10.0)
        kept = st.load_checkpoint(st.checkpoint("icl", 1))
        assert kept["inputs"]["train"]["lr"] == 0.01  # this round's own settings
        assert st.metrics("icl")[1]["recovery_attempts"] == 3.0
        assert st.metrics("icl")[1]["recovery_lr"] == 0.01
        assert st.metrics("icl")[1]["recovery_clip_grad"] == 10.0
    [row] = icl_json("report", "-w", tmp_path, "--no-plot")
    assert row["recovery"] == {"1": {"recovered": True, "attempts": 3, "lr": 0.01,
                                     "clip_grad": 10.0}}
    assert row["diverged"] is None and row["recover"] == 3
    assert row["divergence_rate"] == 0.0 and row["configuration"]["recovered"] == 1
    shown = icl("report", "-w", tmp_path, "--no-plot").stdout
    assert "| icl | 3 | 1 (3 attempts: lr=0.01, clip_grad=10) | - | 0 / 1 |" in shown
    # Resumed: the recovered round is done, not trained again.
    again = icl_json("run", "-w", tmp_path, "-e", "icl", "--rounds", "1", "--recover", "3",
                     *COMMON)
    assert [r["ran"] for r in again] == [[], []]


def test_without_recover_a_divergence_stops_the_run_and_report_says_where(tmp_path,
                                                                            diverging):
    _init(tmp_path, "a")
    icl("init", "-w", tmp_path, "-e", "b", "--method", "icl", "--from", "a:0", *COMMON)
    bad = icl("run", "-w", tmp_path, "-e", "a", "--rounds", "2", *COMMON, code=3)
    [line] = bad.stderr.strip().splitlines()
    assert "training round 1 of 'a' diverged" in line and "--recover" in line
    rows = {r["experiment"]: r for r in icl_json("report", "-w", tmp_path, "--no-plot")}
    assert rows["a"]["diverged"] == 1 and rows["b"]["diverged"] is None
    assert rows["a"]["recovery"] == {"1": {"recovered": False, "attempts": 1}}
    # a and b share a configuration (b started --from a): 1 of its 2 runs diverged.
    assert rows["a"]["configuration"] == rows["b"]["configuration"]
    assert rows["a"]["configuration"]["runs"] == 2
    assert rows["a"]["divergence_rate"] == rows["b"]["divergence_rate"] == 0.5
    assert rows["a"]["recover"] is None


def test_a_round_that_diverges_in_every_attempt_fails_in_one_line(tmp_path):
    """A real divergence (lr 1e30): the retries at lr/2, then lr/4 with the clip, diverge
    too; the run stops in one line and nothing is saved for the round."""
    icl("init", "-w", tmp_path, "-e", "hot", "--method", "baseline", *TINY, *COMMON)
    bad = icl("run", "-w", tmp_path, "-e", "hot", "--rounds", "1", "--lr", "1e30",
              "--recover", "2", *COMMON, code=3)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged in each of its 3 attempts" in errors[0]
    assert "lr=2.5e+29, clip_grad=10" in errors[0]
    [row] = icl_json("report", "-w", tmp_path, "--no-plot")
    assert row["diverged"] == 1 and row["recovery"]["1"] == {"recovered": False,
                                                             "attempts": 3}
    assert row["divergence_rate"] == 1.0 and row["recover"] == 2
    with Store.open(tmp_path) as st:
        assert st.checkpoint("hot", 1) is None
        assert st.metrics("hot")[1] == {"recovery_attempts": 3.0, "diverged": 1.0}


def test_recover_is_bounded_and_passed_to_each_experiment(tmp_path):
    bad = icl("run", "-w", tmp_path, "--rounds", "1", "--recover", "11", *COMMON, code=3)
    assert "--recover must be in 0..10, got 11" in bad.stderr


def test_the_attempts_reach_mlflow(tmp_path, diverging, made_mlflow_db):
    _init(tmp_path)
    made_mlflow_db(tmp_path / ".icl" / "mlflow.db")  # (MLflow's making of it: seconds)
    icl("run", "-w", tmp_path, "-e", "icl", "--rounds", "1", "--recover", "2", "--threads",
        "1", "--device", "cpu")
    with sqlite3.connect(tmp_path / ".icl" / "mlflow.db") as db:
        logged = db.execute("SELECT step, value FROM metrics WHERE key = "
                            "'recovery_attempts'").fetchall()
    assert logged == [(1, 3.0)]


def test_the_stability_recipe_table_pairs_each_run_with_its_baseline(tmp_path, diverging):
    """recipes/stability_table.py --recovery: per case and seed, the run without and with
    --recover against the baseline of the same C_0, and per case the counts and rates."""
    import subprocess
    import sys

    from tests.kit import ROOT, child_env

    icl("init", "-w", tmp_path, "-e", "stab-s0-baseline", "--method", "baseline", *TINY,
        "--real-epochs", "1", *COMMON)
    icl("run", "-w", tmp_path, "-e", "stab-s0-baseline", "--rounds", "1", "--clip-grad",
        "5", *COMMON)
    for name, again in (("stab-s0-lr5x", []), ("stab-s0-lr5x-r2", ["--recover", "2"])):
        icl("init", "-w", tmp_path, "-e", name, "--method", "icl", "--from",
            "stab-s0-baseline:0", "--lr", "0.05", *COMMON)
        icl("run", "-w", tmp_path, "-e", name, "--rounds", "1", *again, *COMMON,
            code=None)
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "stability_table.py"),
                          "--recovery", str(tmp_path)], env=child_env(), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    [row] = [x for x in lines if x.startswith("| lr5x | 0 |")]
    assert "| diverged in round 1 |" in row and "| recovered round 1 (3 attempts) |" in row
    [total] = [x for x in lines if x.startswith("| lr5x | 1 |")]
    assert "| 1 / 1 | 1.00 | 0 / 1 | 1 / 1 | 0.00 |" in total
