"""End to end through the ``icl`` command line: a tiny net on a small slice of the
embedded MNIST subset, in a workspace under tmp_path."""

import json

import h5py
import numpy as np
import pytest

from store import Store
from tests.kit import COMMON, TINY, icl, icl_json


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with a baseline and a paired ICL experiment, both at round 1."""
    ws = tmp_path_factory.mktemp("ws")
    icl("init", "-w", ws, "-e", "base", "--method", "baseline", *TINY, *COMMON)
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", "--from", "base:0", *COMMON)
    icl("run", "-w", ws, "-e", "base", "--rounds", "1", *COMMON)
    return ws


def test_init_records_round_zero_and_pairs_from_parent(ws):
    base = icl_json("evaluate", "-w", ws, "-e", "base", "--round", "0", *COMMON)
    paired = icl_json("evaluate", "-w", ws, "-e", "icl", "--round", "0", *COMMON)
    # The paired experiment starts from the very same C_0: identical errors on both splits.
    assert [e["error"] for e in base] == [e["error"] for e in paired]
    assert {e["split"] for e in base} == {"test", "val"}
    assert all(e["n"] > 0 for e in base)


def test_round_as_written_in_the_design_card(ws, monkeypatch):
    monkeypatch.chdir(ws)
    out = icl_json("synthesize", "-e", "icl", "--round", "1", "--count", "4", *COMMON)
    assert out["count"] == 40 and out["version"] == 1 and not out["reused"]
    assert 0 <= out["pass_rate"] <= 1
    with h5py.File(out["path"]) as f:  # a shard is readable with plain h5py
        assert f["samples"].shape == (40, 1, 28, 28)
        assert sorted(np.unique(f["target"][:])) == list(range(10))
        assert f.attrs["round"] == 1
    again = icl("synthesize", "-e", "icl", "--round", "1", "--count", "4", *COMMON)
    assert "already synthesized" in again.stderr
    other = icl("synthesize", "-e", "icl", "--round", "1", "--count", "5", *COMMON, code=3)
    assert "--force" in other.stderr and "Traceback" not in other.output

    train = icl_json("reclassify", "-e", "icl", "--round", "1", *COMMON)
    assert train["pseudo_negatives"] == 40 and len(train["epochs"]) == 1
    assert icl_json("reclassify", "-e", "icl", "--round", "1", *COMMON)["reused"]
    errors = icl_json("evaluate", "-e", "icl", "--round", "1", *COMMON)
    assert {e["split"] for e in errors} == {"test", "val"}

    shown = icl_json("inspect", "-e", "icl", "--round", "1")
    assert sum(c["count"] for c in shown["classes"]) == 40
    assert shown["nearest_train"] > 0
    png = open(shown["grid"], "rb").read(8)
    assert png == b"\x89PNG\r\n\x1a\n"

    attack = icl_json("attack", "-e", "icl", "--round", "1", "--against", "base:1",
                      "--eps", "0.125", *COMMON)
    assert [a["source"] for a in attack] == ["icl", "base"]
    for a in attack:
        assert 0 <= a["fool_both"] <= a["fool_source"] <= a["correct"] <= 2000
    # The report carries the recorded counts, so tables can be made from the catalog.
    rows = {r["experiment"]: r for r in icl_json("report", "--no-plot")}
    [recorded] = rows["icl"]["attacks"]
    assert recorded["against"] == "base" and recorded["against_round"] == 1
    icl_side, base_side = attack
    assert recorded["made_here"] == [icl_side["correct"], icl_side["fool_source"],
                                     icl_side["fool_both"]]
    assert recorded["made_there"][1] == base_side["fool_source"]
    # ... and each experiment's settings, so a sweep's lines can be told apart.
    assert rows["icl"]["config"]["method"] == "icl"
    assert rows["icl"]["config"]["sampler"]["count"] == 4
    # The pair shares its data fingerprint; the round's warning signs are recorded.
    assert len(rows["icl"]["data_fingerprint"]) == 64
    assert rows["icl"]["data_fingerprint"] == rows["base"]["data_fingerprint"]
    signs = rows["icl"]["diagnostics"]["1"]
    assert signs["grad_norm_max"] > 0 and signs["pool_logit_max"] > 0
    assert 0 <= signs["outside_range"] <= 1 and 0 <= signs["never_passed"] <= 1


def test_attack_refuses_a_model_of_other_data(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):  # --seed draws another subset
        icl("init", "-w", tmp_path, "-e", name, "--method", "baseline", *TINY, "--seed", seed,
            *COMMON)
    out = icl("attack", "-w", tmp_path, "-e", "a", "--round", "0", "--against", "b:0",
              *COMMON, code=3)
    assert "data fingerprints differ" in out.stderr


def test_force_makes_a_new_version_and_replay_matches(ws):
    first = icl_json("synthesize", "-w", ws, "-e", "icl", "--round", "1", "--count", "4",
                     *COMMON)
    icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON)  # (or done already)
    forced = icl_json("synthesize", "-w", ws, "-e", "icl", "--round", "1", "--count", "4",
                      "--force", *COMMON)
    assert forced["version"] == first["version"] + 1
    old = icl_json("inspect", "-w", ws, "-e", "icl", "--round", "1", "--version",
                   str(first["version"]))
    assert old["version"] == first["version"]  # the old version stays readable
    replay = icl("synthesize", "-w", ws, "-e", "icl", "--round", "1", "--replay", *COMMON)
    assert "matches bit for bit" in replay.stdout
    # The round-1 checkpoint was trained on v1; the active shard is now v2.
    stale = icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON, code=3)
    assert "--force" in stale.stderr
    replay = icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", "--replay", *COMMON)
    assert "matches bit for bit" in replay.stdout


def test_corrupted_shard_is_refused_with_a_clear_message(ws):
    shard = icl_json("synthesize", "-w", ws, "-e", "icl", "--round", "1", "--count", "4",
                     *COMMON)
    data = bytearray(open(shard["path"], "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard["path"], "wb").write(bytes(data))
    out = icl("reclassify", "-w", ws, "-e", "icl", "--round", "1", "--force", *COMMON, code=4)
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "round-0001" in line and "--force" in line
    verify = icl("verify", "-w", ws, code=4)
    assert "round-0001" in verify.stdout
    data[len(data) // 2] ^= 0xFF  # mend it, so later tests see a consistent workspace
    open(shard["path"], "wb").write(bytes(data))
    assert icl("verify", "-w", ws).code == 0


def test_user_mistakes_get_one_line_and_an_exit_code(ws, tmp_path):
    cases = [
        (["synthesize", "-w", ws, "-e", "icl", "--round", "0"], 3, "round >= 1"),
        (["synthesize", "-w", ws, "-e", "icl", "--round", "3"], 3, "reclassify --round 2"),
        (["synthesize", "-w", ws, "-e", "icl", "--round", "1", "--count", "0", "--force"], 3,
         "--count"),
        (["synthesize", "-w", ws, "-e", "base", "--round", "1"], 3, "baseline"),
        (["synthesize", "-w", ws, "-e", "nope", "--round", "1"], 3, "nope"),
        (["evaluate", "-w", tmp_path], 6, "icl init"),
        (["attack", "-w", ws, "-e", "icl", "--round", "1", "--against", "base", "--eps", "2"],
         3, "[0, 1]"),
        (["init", "-w", ws, "-e", "../evil"], 3, "experiment name"),
        (["init", "-w", ws, "-e", "x", "--arch", "resnet999", "--no-mlflow"], 3, "resnet999"),
    ]
    for args, code, words in cases:
        out = icl(*args, "--no-mlflow" if args[0] != "evaluate" else "--device=cpu", code=code)
        assert words in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1
        assert "Traceback" not in out.output


def test_interrupted_step_leaves_nothing_and_run_resumes(ws, monkeypatch):
    import icl_cli.steps.reclassify as train

    real = train.reclassify

    def interrupted(*args, **kwargs):
        real(*args, **{**kwargs, "epochs": 0, "real_epochs": 0})
        raise KeyboardInterrupt

    # Earlier tests replaced round 1's shard (--force): round 1 is stale until run redoes it.
    icl("run", "-w", ws, "-e", "icl", "--rounds", "1", *COMMON)
    monkeypatch.setattr(train, "reclassify", interrupted)
    out = icl("run", "-w", ws, "-e", "icl", "--rounds", "2", *COMMON, code=130)
    assert "interrupted" in out.stderr
    status = icl_json("status", "-w", ws)
    icl_row = next(r for r in status["experiments"] if r["experiment"] == "icl")
    assert icl_row["rounds"] == 1  # no checkpoint 2 was recorded
    assert icl("verify", "-w", ws).code == 0

    monkeypatch.setattr(train, "reclassify", real)
    rows = icl_json("run", "-w", ws, "-e", "icl", "--rounds", "2", *COMMON)
    assert rows[2]["ran"] == ["reclassify", "evaluate"]  # the shard survived; resumed after it
    assert rows[2]["test_error"] is not None
    report = icl("report", "-w", ws).stdout
    assert "| icl | icl |" in report and "| base | baseline |" in report


def test_retrained_round_is_evaluated_again(ws):
    before = icl_json("run", "-w", ws, "-e", "base", "--rounds", "1", *COMMON)
    assert before[1]["ran"] == []  # round 1 of the baseline is done and evaluated
    icl("reclassify", "-w", ws, "-e", "base", "--round", "1", "--force", *COMMON)
    after = icl_json("run", "-w", ws, "-e", "base", "--rounds", "1", *COMMON)
    assert after[1]["ran"] == ["evaluate"]  # the old evaluation belonged to the old weights


def test_paired_init_reuses_the_parents_round_zero_evaluation(ws, monkeypatch):
    import icl_cli.steps.init as init_step

    def no_second_pass(*args, **kwargs):
        raise AssertionError("C_0 evaluated again")

    monkeypatch.setattr(init_step, "evaluate_round", no_second_pass)
    out = icl_json("init", "-w", ws, "-e", "noise", "--method", "icl-noise", "--from",
                   "base:0", *COMMON)
    base = icl_json("evaluate", "-w", ws, "-e", "base", "--round", "0", *COMMON)
    assert sorted((e["split"], e["error"]) for e in out["evaluations"]) == \
        sorted((e["split"], e["error"]) for e in base)


def test_report_lists_each_baseline_then_its_paired_methods():
    from types import SimpleNamespace as Row

    from icl_cli.steps.report import _paired_order

    rows = [Row(experiment="b0", parent=None, method="baseline"),
            Row(experiment="b0-icl", parent="b0", method="icl"),
            Row(experiment="b1", parent=None, method="baseline"),
            Row(experiment="b0-noise", parent="b0", method="icl-noise"),
            Row(experiment="b1-icl", parent="b1", method="icl")]
    assert [r.experiment for r in sorted(rows, key=_paired_order(rows))] == \
        ["b0", "b0-noise", "b0-icl", "b1", "b1-icl"]


def test_training_that_diverges_fails_in_one_line_and_saves_nothing(tmp_path):
    out = icl("init", "-w", tmp_path, "-e", "hot", *TINY, "--lr", "1e30", *COMMON, code=3)
    [line] = out.stderr.strip().splitlines()
    assert "diverged" in line and "nothing was saved" in line and "--lr" in line
    assert not list(tmp_path.rglob("round-0000.pt*"))
    # ... and leaves no experiment behind: the name is free for another try.
    assert icl_json("status", "-w", tmp_path)["experiments"] == []


def test_status_shows_the_defaults_a_config_lacks(tmp_path):
    """An experiment whose config icl did not write (or an older icl wrote) is listed with
    the settings the steps would run it with, not a KeyError."""
    with Store.init(tmp_path) as st:
        st.create_experiment("bare", {"method": "baseline", "seed": 3})
    [row] = icl_json("status", "-w", tmp_path)["experiments"]
    assert (row["experiment"], row["method"], row["mode"], row["dataset"], row["seed"]) == \
        ("bare", "baseline", "softmax", "mnist-embedded", 3)
    assert "bare" in icl("status", "-w", tmp_path).stdout


def test_synthesize_sampler_lr_changes_the_samples(tmp_path):
    icl("init", "-w", tmp_path, "-e", "icl", "--method", "icl", *TINY, *COMMON)
    shards = []
    for lr in ("0.05", "0.2"):
        out = icl_json("synthesize", "-w", tmp_path, "-e", "icl", "--round", "1",
                       "--sampler-lr", lr, "--force", *COMMON)
        with h5py.File(out["path"]) as f:
            shards.append((f["samples"][:], json.loads(f.attrs["sampler_config"])["lr"]))
    assert [lr for _, lr in shards] == [0.05, 0.2]
    assert not np.array_equal(shards[0][0], shards[1][0])


def test_reclassify_takes_this_rounds_settings_and_replay_uses_them(tmp_path):
    w = ["-w", tmp_path, "-e", "icl"]
    icl("init", *w, "--method", "icl", *TINY, *COMMON)
    icl("synthesize", *w, "--round", "1", *COMMON)
    one = icl_json("reclassify", *w, "--round", "1", "--epochs", "2", "--real-epochs", "1",
                   "--lr", "0.02", *COMMON)
    assert [e["samples"] for e in one["epochs"]] == [240, 240, 200]  # 2 mixed + 1 real-only
    again = icl_json("reclassify", *w, "--round", "1", "--epochs", "2", "--real-epochs", "1",
                     "--lr", "0.02", *COMMON)
    assert again["reused"]
    other = icl("reclassify", *w, "--round", "1", *COMMON, code=3)
    assert "setting changed" in other.stderr and "--force" in other.stderr
    replay = icl("reclassify", *w, "--round", "1", "--replay", *COMMON)
    assert "matches bit for bit" in replay.stdout
    steps = icl_json("status", "-w", tmp_path)["recent_steps"]
    trained = [s for s in steps if s["name"] == "reclassify"][-1]
    assert (trained["config"]["train"]["epochs"], trained["config"]["train"]["lr"]) == (2, 0.02)
    shown = icl("status", "-w", tmp_path).stdout  # the "changed" column (it may wrap)
    assert "epochs=2" in shown and "lr=0.02" in shown
    # icl run passes its own to the rounds it trains; a bad value is refused up front.
    bad = icl("run", *w, "--rounds", "2", "--pn-weight", "-1", *COMMON, code=3)
    assert "--pn-weight is out of range" in bad.stderr
    icl("run", *w, "--rounds", "2", "--epochs", "3", *COMMON)
    with Store.open(tmp_path) as st:
        state = st.load_checkpoint(st.checkpoint("icl", 2))
    assert len(state["history"]) == 3 and state["inputs"]["train"]["epochs"] == 3
    refused = icl("reclassify", *w, "--round", "0", "--epochs", "2", *COMMON, code=3)
    assert "round 0" in refused.stderr


def test_version_and_json_errors(tmp_path):
    from icl_cli import __version__

    assert icl("--version").stdout.strip() == f"icl {__version__}"
    # Under --json a failure is one JSON document on stdout too, beside the line on stderr.
    out = icl("status", "-w", tmp_path / "nowhere", "--json", code=6)
    doc = json.loads(out.stdout)
    assert doc["exit_code"] == 6 and "not an icl workspace" in doc["error"]
    assert out.stderr.count("\n") == 1


def test_main_builds_only_the_command_it_runs_and_answers_the_same(tmp_path):
    from typer.testing import CliRunner

    from icl_cli.cli import register
    from icl_cli.cli.main import _only_the_command

    app = register()

    names = [c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert "status" in names and len(names) > 5
    for line in (["status", "--help"], ["verify", "--bogus"], ["synthesize", "--round", "x"],
                 ["status", "-w", str(tmp_path / "nowhere")]):
        only = _only_the_command(line)
        assert [c.callback.__name__ for c in only.registered_commands] == [line[0]]
        whole, one = CliRunner().invoke(app, line), CliRunner().invoke(only, line)
        assert (one.exit_code, one.stdout, one.stderr) == (
            whole.exit_code, whole.stdout, whole.stderr), line
    # No command first, or an unknown one: the whole app (its help lists every command).
    for line in ([], ["--help"], ["--version"], ["statu"], ["-w", "x", "status"]):
        assert _only_the_command(line) is app


def test_report_redraws_its_plot_only_when_the_catalog_changed(ws, monkeypatch):
    import icl_cli.steps.report as report_step

    icl("report", "-w", ws)
    drawn = []
    real = report_step.plot_errors
    monkeypatch.setattr(report_step, "plot_errors",
                        lambda *a, **k: drawn.append(a[1]) or real(*a, **k))
    out = icl("report", "-w", ws)
    assert drawn == [] and "report-error-vs-round.png" in out.stderr  # still named
    icl("evaluate", "-w", ws, "-e", "base", "--round", "1", *COMMON)  # a catalog write
    icl("report", "-w", ws)
    assert len(drawn) == 1 and "base" in drawn[0]
    icl("report", "-w", ws)
    assert len(drawn) == 1
