"""``icl report --card``: each experiment's reproducibility card (cards/<name>.md and .json).

Two experiments whose settings differ in one option give cards whose settings
(``card.comparable``: the card without ``card.OUTCOMES``, i.e. without names, paths, dates,
timings, messages, input and artefact hashes and errors) differ exactly where that option
shows; the card's commands, run in a fresh workspace, make the same experiments again (the
same config hash and data fingerprint) and a card with the same settings; steps recorded
before icl kept where a step ran read "not recorded"."""

from __future__ import annotations

import json
import shlex
import sqlite3

import pytest
import typer.main

from icl_cli.card import (
    INIT_SETTINGS,
    NOT_RECORDED,
    OUTCOMES,
    comparable,
    init_command,
    init_option,
    not_settable,
)
from icl_cli.cli import register
from icl_cli.config import ExperimentConfig
from store import Store
from tests.kit import COMMON, TINY, icl


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Experiments "a" (the tiny settings), "b" (the same with --pn-weight 0.5) and "c"
    (started --from a:0 with --count 3), each run to round 1, and their cards."""
    ws = tmp_path_factory.mktemp("cards") / "ws"
    icl("init", "-w", ws, "-e", "a", *TINY, *COMMON)
    icl("init", "-w", ws, "-e", "b", *TINY, "--pn-weight", "0.5", *COMMON)
    icl("init", "-w", ws, "-e", "c", "--from", "a:0", "--count", "3", *COMMON)
    for name in ("a", "b", "c"):
        icl("run", "-w", ws, "-e", name, "--rounds", "1", *COMMON)
    return ws


def card_of(ws, name: str) -> dict:
    return json.loads((ws / "cards" / f"{name}.json").read_text())


def test_report_card_writes_each_card_and_says_where_on_stderr(ws):
    plain = icl("report", "-w", ws, "--no-plot")
    made = icl("report", "-w", ws, "--no-plot", "--card")
    assert made.stdout == plain.stdout  # the report itself is unchanged
    assert [line for line in made.stderr.splitlines() if line.startswith("card:")] == [
        f"card: {ws / 'cards' / n}.md and {ws / 'cards' / n}.json" for n in ("a", "c", "b")]
    as_json = icl("report", "-w", ws, "--no-plot", "--card", "--json")
    assert [r["experiment"] for r in as_json.json()] == ["a", "c", "b"]
    card = card_of(ws, "b")
    assert card["experiment"] == "b" and card["config"]["train"]["pn_weight"] == 0.5
    with Store.open(ws) as st:
        exp = st.experiment("b")
        assert card["config_hash"] == exp.config_hash
        assert card["data"]["fingerprint"] == exp.data_fingerprint
        assert [(c["round"], c["sha256"]) for c in card["checkpoints"]] == [
            (c.round, c.sha256) for c in st.checkpoints("b")]
        assert [s["sha256"] for s in card["shards"]] == [s.sha256 for s in st.shards("b")]
        assert [(s["name"], s["round"]) for s in card["steps"]] == [
            (s.name, s.round) for s in st.steps("b")]
    assert [r["round"] for r in card["results"]["rounds"]] == [0, 1]
    assert all(0 <= r["test_error"] <= 1 for r in card["results"]["rounds"])
    for step in card["steps"]:  # where each step ran, recorded with it
        env = step["environment"]
        assert env["device"] == "cpu" and env["device_model"] == env["cpu_model"]
        assert env["torch"] and env["icl"] and env["threads"] == 1
        assert set(env["determinism"]) >= {"deterministic_algorithms", "cudnn_benchmark"}
    assert card["versions"]["torch"] and card["devices"][0].startswith("cpu: ")
    assert card["seeds"]["seed"] == 0 and card["seeds"]["shards"][0][:2] == [1, 1]


def test_the_markdown_card_holds_the_same(ws):
    card, md = card_of(ws, "b"), (ws / "cards" / "b.md").read_text()
    assert md.startswith("# Reproducibility card: b\n")
    for heading in ("## Reproduce", "## Results (error %)", "## Steps", "## Determinism",
                    "## Artefacts (sha256)", "## Config"):
        assert f"\n{heading}\n" in md
    script = md.split("```bash\n")[1].split("```")[0].splitlines()
    assert script == card["commands"]
    for artefact in card["checkpoints"] + card["shards"]:
        assert f"`{artefact['sha256']}`" in md
    assert card["data"]["fingerprint"] in md and card["config_hash"] in md


def test_two_cards_differ_exactly_where_their_settings_differ(ws):
    a, b = comparable(card_of(ws, "a")), comparable(card_of(ws, "b"))
    assert set(a) == set(b)  # the same fields
    differ = {k for k in a if a[k] != b[k]}
    init = [i for i, s in enumerate(card_of(ws, "a")["steps"]) if s["round"] == 0][0]
    trained = [i for i, s in enumerate(card_of(ws, "a")["steps"])
               if s["name"] == "reclassify" and s["round"] == 1][0]
    assert differ == {"config.train.pn_weight",  # the setting itself
                      f"steps.{init}.config.train.pn_weight",  # the steps that record it
                      f"steps.{trained}.config.train.pn_weight",
                      f"steps.{init}.command",  # the icl init that sets it
                      "commands.0"}
    assert (a["config.train.pn_weight"], b["config.train.pn_weight"]) == (1.0, 0.5)
    assert "--pn-weight 1.0" in a["commands.0"] and "--pn-weight 0.5" in b["commands.0"]
    assert a["commands.0"].replace("--pn-weight 1.0", "--pn-weight 0.5") == b["commands.0"]
    # What was left out is what OUTCOMES names, and it is there in the card.
    full = card_of(ws, "a")
    assert full["steps"][trained]["config"]["inputs"]["parent"] == \
        full["checkpoints"][0]["sha256"]
    assert {"experiment", "config_hash", "checkpoints", "results"} <= set(OUTCOMES)


def test_the_cards_commands_rebuild_the_experiment_in_a_fresh_workspace(ws, tmp_path):
    card = card_of(ws, "c")  # a paired experiment: its parent's commands come first
    assert card["commands"][0].startswith("icl init -e a ")
    assert card["commands"][2].startswith("icl init -e c --from a:0 ")
    fresh = tmp_path / "fresh"
    for command in card["commands"]:
        words = shlex.split(command)
        assert words[0] == "icl"
        icl(*words[1:], "-w", fresh, *COMMON)
    with Store.open(ws) as old, Store.open(fresh) as new:
        for name in ("a", "c"):
            assert new.experiment(name).config_hash == old.experiment(name).config_hash
            assert new.experiment(name).data_fingerprint == \
                old.experiment(name).data_fingerprint
        assert [c.round for c in new.checkpoints("c")] == [0, 1]
    icl("report", "-w", fresh, "--no-plot", "--card")
    assert comparable(card_of(fresh, "c")) == comparable(card)


def test_every_icl_init_setting_is_on_the_card():
    # A new `icl init` option must be written into the card's init command too.
    params = typer.main.get_command(register()).commands["init"].params
    options = {p.opts[0] for p in params}
    settings = {init_option(g, f) for g, f in INIT_SETTINGS}
    not_settings = {"--experiment", "--from", "--workspace", "--device", "--threads",
                    "--amp", "--compile", "--channels-last", "--no-mlflow", "--json",
                    "--config", "--dump-config"}
    assert settings <= options
    assert options - not_settings == settings


def test_what_no_option_sets_is_named_and_the_rest_is_given_in_full():
    cfg = ExperimentConfig.from_dict({"method": "icl-noise", "train": {"momentum": 0.5},
                                      "sampler": {"kind": "noise", "beta1": 0.9},
                                      "data": {"augment": True, "download": True}})
    assert not_settable(cfg.to_dict()) == ["train.momentum=0.5", "sampler.beta1=0.9"]
    command = init_command("x", cfg.to_dict())
    assert "--augment" in command and "--download" in command and "--no-clamp" in command
    assert "--clip-grad" not in command  # None: left out, as icl init's default
    paired = init_command("y", cfg.to_dict(), "x:0")
    assert "--from x:0" in paired and "--dataset" not in paired and "--seed" not in paired
    assert "--method icl-noise" in paired and "--pn-weight" in paired


def test_steps_recorded_before_their_environment_was_kept_read_not_recorded(ws):
    with sqlite3.connect(ws / ".icl" / "catalog.db") as con:
        con.execute("UPDATE steps SET environment = NULL WHERE experiment_id = "
                    "(SELECT id FROM experiments WHERE name = 'b') AND round = 0")
    icl("report", "-w", ws, "--no-plot", "--card")
    card = card_of(ws, "b")
    assert [s["environment"] == NOT_RECORDED for s in card["steps"]] == [True, False, False]
    md = (ws / "cards" / "b.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 1 | reclassify | 0 "))
    assert row.count(NOT_RECORDED) == 4  # device, its model, icl, torch


def test_a_step_on_a_gpu_records_the_gpus_model(monkeypatch):
    # No GPU here: torch's answers for one, to check what the record takes from them.
    import torch

    from icl_cli.steps import common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda device=None: f"NVIDIA H100 ({torch.device(device)})")
    env = common.step_environment({"device": "cuda:1"})
    assert (env["device"], env["device_model"], env["gpu_model"]) == (
        "cuda:1", "NVIDIA H100 (cuda:1)", "NVIDIA H100 (cuda:1)")
    assert env["cpu_model"] == common.cpu_model() and env["cpu_model"]
    on_cpu = common.step_environment({"device": "cpu"})
    assert (on_cpu["device_model"], on_cpu["gpu_model"]) == (common.cpu_model(), None)
    joined = common.step_environment({"device": "cpu,cuda:0"})  # a round drawn in parts
    assert joined["gpu_model"] == "NVIDIA H100 (cuda:0)"
