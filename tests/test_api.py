"""``icl_cli.api``: the examples of docs/api.md run as written; each Workspace method gives
what its command gives (the same settings, the same ``--json`` documents, the same records);
every typed error is raised where the command would exit with its code, and a refused call
writes nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import typer
from torch import nn

from icl_cli import api
from icl_cli.api import (
    Busy,
    Conflict,
    DataError,
    DiskFull,
    Diverged,
    IclError,
    IntegrityFailure,
    InvalidSetting,
    NotAWorkspace,
    NotFound,
    Refused,
    Workspace,
    open_workspace,
)
from tests.kit import COMMON, ROOT, TINY, TINY_SETTINGS, child_env, icl, icl_json

DOCS = ROOT / "docs" / "api.md"
RUNTIME = dict(device="cpu", threads=1, mlflow=False)  # COMMON, as keywords


def python_blocks(path: Path) -> list[str]:
    """The fenced ```python blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def snapshot(root: Path) -> tuple[dict, list[str]]:
    """What a workspace holds: every file's sha256 (but the catalog's own files and the
    lock files, which opening and locking touch) and the catalog's rows (a dump)."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith((".icl/catalog.db", ".icl/locks/")):
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    with sqlite3.connect(root / ".icl" / "catalog.db") as con:
        rows = list(con.iterdump())
    return files, rows


# ------------------------------------------------------------------ the docs
def test_the_examples_of_docs_api_md_run_as_written(tmp_path, monkeypatch):
    blocks = python_blocks(DOCS)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md, python block {i + 1}", "exec"), ns)
    # What the blocks left behind is what they say.
    assert [r["round"] for r in ns["rows"]] == [0, 1, 2]
    assert ns["made"]["config"]["train"]["momentum"] == 0.5
    assert isinstance(ns["net"], nn.Module) and not ns["net"].training
    assert ns["samples"].shape == (60, 1, 28, 28) and ns["f_k"].shape == (60,)
    assert ns["card"]["commands"][0].startswith("icl init -e base ")
    assert (tmp_path / "ws" / "cards" / "icl.json").is_file()
    assert ns["drawn"].samples.shape == (15, 2, 6, 6)
    assert ns["drawn"].steps.float().mean() > 0  # the sampler took steps
    with Workspace(tmp_path / "ws") as ws:
        assert ws.experiments() == ["base", "icl", "momentum"]
        # What no icl init option sets is named on its card, with the API's way to set it.
        assert ws.card("momentum")["not_settable_by_init"] == ["train.momentum=0.5"]
        md = (ws.root / "cards" / "momentum.md").read_text()
        assert "`train.momentum=0.5`" in md and "init('momentum', config=CONFIG)" in md


def test_the_pure_pieces_example_needs_no_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(python_blocks(DOCS)[-1], ns)
    assert list(tmp_path.iterdir()) == []
    assert torch.isfinite(ns["loss"]) and ns["pn_term"] > 0
    code = [line for line in python_blocks(DOCS)[-1].splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 25  # a short example


# ----------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace made through the API: a baseline and a paired ICL experiment, both at
    round 1."""
    root = tmp_path_factory.mktemp("api") / "ws"
    w = Workspace(root, **RUNTIME)
    w.init("base", method="baseline", **TINY_SETTINGS)
    w.init("icl", from_="base:0")
    w.run("base", rounds=1)
    w.run("icl", rounds=1)
    yield w
    w.close()


def test_init_takes_icl_inits_settings_and_records_the_same_config(ws, tmp_path):
    icl("init", "-w", tmp_path / "cli", "-e", "base", "--method", "baseline", *TINY, *COMMON)
    with Workspace(tmp_path / "cli") as cli:
        assert cli.experiment("base")["config_hash"] == ws.experiment("base")["config_hash"]
    paired = ws.experiment("icl")
    assert (paired["parent"], paired["parent_round"]) == ("base", 0)
    assert paired["config"]["method"] == "icl"  # icl init's default method, with --from too
    assert paired["config"]["sampler"]["count"] == TINY_SETTINGS["count"]  # the parent's
    assert set(TINY_SETTINGS) <= set(api.init_settings())
    assert api.init_settings()["sampler_lr"] == ("sampler", "lr")
    assert api.init_settings()["data_seed"] == ("data", "seed")
    with pytest.raises(TypeError, match="unknown settings sampler_rate"):
        ws.init("typo", sampler_rate=0.1)
    # A whole config, as a card holds it, makes the same experiment in another workspace.
    with Workspace(tmp_path / "again", **RUNTIME) as again:
        made = again.init("copy", config=ws.card("base", write=False)["config"])
        assert made["config"] == ws.experiment("base")["config"]
        assert again.experiment("copy")["config_hash"] == ws.experiment("base")["config_hash"]


def test_the_results_are_the_documents_json_gives(ws):
    w = ["-w", ws.root]
    assert ws.evaluate("icl", round=1) == icl_json("evaluate", *w, "-e", "icl", "--round",
                                                    "1", *COMMON)
    assert ws.report() == icl_json("report", *w, "--no-plot")
    again = ws.run("icl", rounds=1)
    assert again == icl_json("run", *w, "-e", "icl", "--rounds", "1", *COMMON)
    assert [r["ran"] for r in again] == [[], []]  # done already: nothing ran
    status = ws.status()
    assert status["workspace"] == str(ws.root) and len(status["recent_steps"]) == 5
    assert ws.experiments() == ["base", "icl"]


def test_a_round_by_hand_records_what_the_commands_record(ws):
    shard = ws.synthesize("icl", round=2, count=3, sampler_lr=0.05)
    assert (shard["round"], shard["version"], shard["count"]) == (2, 1, 30)
    assert ws.synthesize("icl", round=2, count=3, sampler_lr=0.05)["reused"]
    trained = ws.reclassify("icl", round=2, epochs=1)
    assert trained["pseudo_negatives"] == 40 + 30 and len(trained["checkpoint"]) == 64
    errors = ws.evaluate("icl", round=2)
    assert {e["split"] for e in errors} == {"test", "val"}
    assert all(0 <= e["error"] <= 1 for e in errors)
    with pytest.raises(TypeError, match="unknown settings pn_wieght"):
        ws.reclassify("icl", round=2, pn_wieght=0.5)
    steps = [(s.name, s.round) for s in ws.store.steps("icl")][-2:]
    assert steps == [("synthesize", 2), ("reclassify", 2)]


def test_load_model_gives_the_checkpoints_network_loaded_weights_only(ws):
    net = ws.load_model("icl", round=1)
    assert isinstance(net, nn.Module) and not net.training
    info = ws.store.checkpoint("icl", 1)
    state = torch.load(info.path, weights_only=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state["model"][key])
    x = ws.pseudo_negatives("icl", round=1)[0][:5]
    with torch.no_grad():
        assert net(x).shape == (5, 10)
    with pytest.raises(NotFound, match=r"no checkpoint of round 7 \(rounds with one: 0, 1"):
        ws.load_model("icl", round=7)


def test_pseudo_negatives_are_the_shards_arrays_as_tensors(ws):
    samples, target = ws.pseudo_negatives("icl", round=1)
    info = ws.store.active_shard("icl", 1)
    with h5py.File(info.path) as f:
        assert np.array_equal(samples.numpy(), f["samples"][:])
        assert np.array_equal(target.numpy(), f["target"][:])
    assert samples.dtype == torch.float32 and target.dtype == torch.int64
    assert samples.shape == (40, 1, 28, 28) and sorted(set(target.tolist())) == list(range(10))
    assert torch.equal(ws.pseudo_negatives("icl", 1, version=1)[0], samples)
    with pytest.raises(NotFound, match=r"no shard of version 4 of round 1 \(versions of "
                                       r"round 1: v1\)"):
        ws.pseudo_negatives("icl", round=1, version=4)
    with pytest.raises(NotFound, match="no shard of round 1"):
        ws.pseudo_negatives("base", round=1)


def test_card_writes_the_files_icl_report_card_writes(ws):
    card = ws.card("icl")
    on_disk = json.loads((ws.root / "cards" / "icl.json").read_text())
    assert {k: v for k, v in on_disk.items() if k != "written_at"} == \
        {k: v for k, v in card.items() if k != "written_at"}
    assert (ws.root / "cards" / "icl.md").read_text().startswith("# Reproducibility card: icl")
    assert ws.card("base", write=False)["experiment"] == "base"
    assert not (ws.root / "cards" / "base.md").exists()


# ------------------------------------------------------------------- errors
def test_not_a_workspace_is_raised_and_nothing_is_made(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(NotAWorkspace, match="not an icl workspace") as e:
        Workspace(where).experiments()
    assert e.value.exit_code == 6
    with pytest.raises(NotAWorkspace):
        open_workspace(where)
    assert not where.exists()


def test_a_refused_init_makes_no_workspace(tmp_path):
    fresh = Workspace(tmp_path / "new", **RUNTIME)
    with pytest.raises(InvalidSetting, match=r"^--lr is out of range \(-1.0\)$") as e:
        fresh.init("x", lr=-1.0, **TINY_SETTINGS)
    assert e.value.exit_code == 3 and isinstance(e.value, ValueError)
    with pytest.raises(DataError, match="missing.npz") as e:
        fresh.init("x", dataset="npz", data_root=tmp_path / "missing.npz", **TINY_SETTINGS)
    assert isinstance(e.value, Refused)
    with pytest.raises(InvalidSetting, match="--pn-weighting must be one of"):
        fresh.init("x", pn_weighting="sometimes", **TINY_SETTINGS)
    assert not (tmp_path / "new").exists()


def test_refusals_on_a_workspace_write_nothing(ws):
    before = snapshot(ws.root)
    refusals = [
        (NotFound, "no experiment 'nope'", lambda: ws.evaluate("nope", round=0)),
        (NotFound, "known: base, icl", lambda: ws.load_model("nope")),
        (Refused, "is a baseline", lambda: ws.synthesize("base", round=1)),
        (Refused, "has no checkpoint", lambda: ws.reclassify("icl", round=9)),
        (Conflict, "already exists with another config",
         lambda: ws.init("icl", from_="base:0", count=5)),
        (Conflict, "pass --force to retrain it", lambda: ws.reclassify("icl", 1, epochs=3)),
        (Conflict, "--force", lambda: ws.synthesize("icl", 1, count=5)),
        (InvalidSetting, "--epochs is out of range", lambda: ws.run("icl", 1, epochs=-1)),
        (InvalidSetting, "--count must be a positive", lambda: ws.synthesize("icl", 2,
                                                                            count=0)),
    ]
    for kind, words, call in refusals:
        with pytest.raises(kind, match=re.escape(words)) as e:
            call()
        assert e.value.exit_code == 3 and "\n" not in str(e.value)
        assert e.value.__cause__ is not None  # the step's own error, chained
    assert snapshot(ws.root) == before


def test_a_diverged_round_is_diverged_and_saves_nothing(ws, monkeypatch):
    from icl_cli.algo.reclassify import Diverged as LossNotFinite
    from icl_cli.steps import reclassify as step

    def diverge(*args, **kwargs):
        raise LossNotFinite(0, float("nan"))

    monkeypatch.setattr(step, "reclassify", diverge)
    files = snapshot(ws.root)[0]
    rounds = [c.round for c in ws.store.checkpoints("icl")]
    with pytest.raises(Diverged, match="diverged") as e:
        ws.run("icl", rounds=len(rounds))  # the next round: its shard, then it diverges
    assert (e.value.round, e.value.exit_code) == (len(rounds), 3)
    assert "nan" in e.value.detail
    assert [c.round for c in ws.store.checkpoints("icl")] == rounds  # no checkpoint
    added = set(snapshot(ws.root)[0]) - set(files)
    assert all("/shards/" in p or "/figures/" in p for p in added), added  # no checkpoint
    assert ws.store.steps("icl", name="reclassify")[-1].state == "failed"  # in the log


def test_a_tampered_checkpoint_is_an_integrity_failure(ws):
    path = ws.store.checkpoint("base", 1).path
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-10] + b"0123456789")
        with pytest.raises(IntegrityFailure) as e:
            ws.load_model("base", round=1)
        assert e.value.exit_code == 4 and "round-0001.pt" in str(e.value)
    finally:
        path.write_bytes(good)
    assert isinstance(ws.load_model("base", round=1), nn.Module)


def test_a_full_disk_is_disk_full_and_leaves_no_file(ws, monkeypatch):
    import store.workspace

    for old in (ws.root / "cards").glob("*"):
        old.unlink()
    before = snapshot(ws.root)
    monkeypatch.setattr(store.workspace, "free_bytes", lambda folder: 0)
    with pytest.raises(DiskFull, match="no space left|free") as e:
        ws.card("icl")
    assert e.value.exit_code == 7
    assert snapshot(ws.root) == before and not list((ws.root / "cards").glob("*"))


def test_open_workspace_opens_an_existing_one_at_once(ws):
    with open_workspace(ws.root, **RUNTIME) as again:
        assert again.root == ws.root and "base" in again.experiments()
        assert repr(again) == f"Workspace({str(ws.root)!r})"
    with pytest.raises(NotAWorkspace):  # as -w: the workspace's own folder
        open_workspace(ws.root / "experiments")


def test_a_step_of_an_experiment_another_process_runs_is_busy(ws):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from store import Store
            st = Store.open({str(ws.root)!r})
            with st.lock("base", command="reclassify --round 1"):
                print("locked", flush=True)
                sys.stdin.read()
            """)], env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(ws.root)
        with pytest.raises(Busy, match="reclassify --round 1") as e:
            ws.reclassify("base", round=1, force=True)
        assert e.value.exit_code == 5
        assert snapshot(ws.root) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def _cli_exit_code(exc: BaseException) -> int:
    """The exit code ``icl`` gives ``exc`` raised inside a command."""
    from icl_cli.cli.main import user_errors

    with pytest.raises(typer.Exit) as e, user_errors():
        raise exc
    return e.value.exit_code


def test_every_error_has_the_exit_code_icl_gives_it(monkeypatch):
    from icl_cli.config import ConfigError
    from icl_cli.errors import DataError as StepDataError
    from icl_cli.errors import StepError
    from icl_cli.steps.reclassify import TrainingDiverged
    from store import (
        BusyError,
        CatalogDamaged,
        ConflictError,
        ExperimentNotFound,
        IntegrityError,
        StoreError,
    )
    from store import NotAWorkspace as NoWorkspace
    from store.workspace import DiskFull as NoSpace

    monkeypatch.setattr("icl_cli.cli.main._json_mode", [False])
    cases = [
        (NoWorkspace("not an icl workspace: /x"), NotAWorkspace),
        (BusyError("busy"), Busy),
        (IntegrityError("altered"), IntegrityFailure),
        (CatalogDamaged("the workspace catalog is damaged"), IntegrityFailure),
        (NoSpace("no space left on /x"), DiskFull),
        (OSError(errno.ENOSPC, "No space left on device", "/x"), DiskFull),
        (ExperimentNotFound("no experiment 'x'"), NotFound),
        (ConflictError("another config"), Conflict),
        (TrainingDiverged("training round 2 diverged (nan)", 2, "nan"), Diverged),
        (ConfigError("--lr is out of range (0)"), InvalidSetting),
        (StepDataError("cannot read /x.npz"), DataError),
        (StepError("pass --force to retrain it"), Conflict),
        (StepError("round 3 has no checkpoint"), Refused),
        (StoreError("invalid name"), Refused),
        (OSError(errno.EACCES, "Permission denied", "/x"), Refused),
    ]
    for exc, kind in cases:
        mapped = api.translate(exc)
        assert type(mapped) is kind, (exc, mapped)
        assert mapped.exit_code == _cli_exit_code(exc), exc
        assert isinstance(mapped, IclError)
    assert api.translate(KeyboardInterrupt()) is None  # Ctrl-C stays Ctrl-C
    assert api.translate(RuntimeError("a bug")) is None  # a bug is not a user error
