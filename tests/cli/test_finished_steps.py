"""A finished step answers at once (``icl_cli.finished``): run again with the same settings
on the same inputs, ``synthesize``, ``reclassify``, ``evaluate``, ``inspect``, ``attack``,
``ood`` and ``quality`` print, in a fresh process that imports none of torch, h5py, MLflow
(nor SQLAlchemy or pydantic), what the run that did the work printed: the same table, and
the same ``--json`` document with ``"reused": true``. A changed setting, ``--force``, or an
input or output file whose size or mtime changed sends the command back to its step.

What the cheap check does not see: a file whose bytes were changed with its size kept and
its mtime set back is answered from the record; ``icl verify`` hashes every file and
reports it (the last test).

The workspace is made once in this process (torch already loaded: seconds), with the
first run of every command: round 1's as ``--json``, round 2's as a table (quality: of
experiment ``a`` as ``--json``, of ``b`` as a table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit import COMMON, ROOT, TINY, child_env, copy_workspace, icl, write_folder

ENTRY = Path(__file__).with_name("modules_entry.py")
HEAVY = ["torch", "h5py", "mlflow", "sqlalchemy", "pydantic"]
WIDTH = {"COLUMNS": "200"}  # the tables' width, the same in this process and a child

# Each command's two first runs: (json run's arguments, table run's arguments).
RUNS = {
    "synthesize": (["synthesize", "--round", "1", *COMMON],
                   ["synthesize", "--round", "2", *COMMON]),
    "reclassify": (["reclassify", "--round", "1", *COMMON],
                   ["reclassify", "--round", "2", *COMMON]),
    "evaluate": (["evaluate", "--round", "1", *COMMON], ["evaluate", *COMMON]),
    "inspect": (["inspect", "--round", "1"], ["inspect", "--round", "2"]),
    "attack": (["attack", "--round", "1", "--against", "a:0", *COMMON],
               ["attack", "--round", "2", "--against", "a:1", "--eps", "0.25", *COMMON]),
    "ood": (["ood", "--round", "1", "--limit", "40", *COMMON],
            ["ood", "--round", "2", "--limit", "40", "--no-plot", *COMMON]),
    "quality": (["quality", "--epochs", "1", "-e", "a", *COMMON],
                ["quality", "--epochs", "1", "-e", "b", *COMMON]),
}
ORDER = ["synthesize", "reclassify", "evaluate", "inspect", "attack", "ood", "quality"]
EVAL1 = ["evaluate", "--round", "1", "-e", "a", *COMMON]
RUNS = {c: tuple(a if c == "quality" else [*a, "-e", "a"] for a in runs)
        for c, runs in RUNS.items()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(workspace, {command: (first --json document, first table)}): experiment ``a``
    with rounds 1 and 2, experiment ``b`` (``--from a:0``) with round 1's shard."""
    ws = tmp_path_factory.mktemp("finished") / "ws"
    from icl_cli.cli import ui

    mp = pytest.MonkeyPatch()
    mp.setenv("COLUMNS", WIDTH["COLUMNS"])
    # rich reads COLUMNS when a console is made: the one this process made at its first
    # import of ui (maybe in another test) gets the width here
    mp.setattr(ui.out, "width", int(WIDTH["COLUMNS"]))
    try:
        w = ["-w", str(ws)]
        icl("init", "-e", "a", *TINY, *COMMON, "-w", ws)
        first: dict[str, list] = {c: [None, None] for c in ORDER}
        for round_ in (1, 2):
            for command in ORDER:
                args = RUNS[command][round_ - 1]
                if command == "quality":
                    continue
                res = icl(*args, *w, *(["--json"] if round_ == 1 else []))
                first[command][round_ - 1] = res.json() if round_ == 1 else res.stdout
        icl("init", "-e", "b", "--from", "a:0", *COMMON, *w)
        icl("synthesize", "--round", "1", "-e", "b", *COMMON, *w)
        first["quality"][0] = icl(*RUNS["quality"][0], *w, "--json").json()
        first["quality"][1] = icl(*RUNS["quality"][1], *w).stdout
    finally:
        mp.undo()
    return ws, first


def fresh(*args, code: int = 0) -> tuple[str, list[str]]:
    """``icl ARGS`` in a fresh process: (stdout, the heavy modules it imported)."""
    res = subprocess.run([sys.executable, str(ENTRY), *map(str, args)], cwd=ROOT,
                         env=child_env(**WIDTH), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == code, (args, res.stdout, res.stderr)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ICL-IMPORTED: "), res.stderr
    return res.stdout, json.loads(last.removeprefix("ICL-IMPORTED: "))


def without_reused(doc):
    if isinstance(doc, list):
        return [without_reused(row) for row in doc]
    assert doc.pop("reused") is not None
    return doc


@pytest.mark.parametrize("command", ORDER)
def test_a_second_call_prints_what_the_first_printed_without_torch(made, command):
    ws, first = made
    doc, table = first[command]
    as_json, table_args = RUNS[command]
    out, heavy = fresh(*as_json, "-w", ws, "--json")
    assert heavy == [], (command, heavy)
    again = json.loads(out)
    rows = again if isinstance(again, list) else [again]
    assert rows and all(r["reused"] is True for r in rows)
    assert all(r["reused"] is False for r in (doc if isinstance(doc, list) else [doc]))
    assert without_reused(again) == without_reused(json.loads(json.dumps(doc)))
    out, heavy = fresh(*table_args, "-w", ws)
    assert heavy == [], (command, heavy)
    assert out == table and out.strip()


def _calls():
    """Each command's recorded call (as ``answer`` takes it) and one setting changed."""
    from icl_cli.config import SamplerChanges, TrainChanges

    attack = dict(method="fgsm", eps=0.125, steps=40, step_size=None, restarts=1,
                  random_start=True, seed=0, limit=None)
    return {
        "synthesize": (dict(t=1, changes=SamplerChanges(), amp=False),
                       dict(t=1, changes=SamplerChanges(max_steps=3), amp=False)),
        "reclassify": (dict(t=1, changes=TrainChanges(), amp=False),
                       dict(t=1, changes=TrainChanges(), amp=True)),
        "evaluate": (dict(t=1, bins=15, plot=True), dict(t=1, bins=10, plot=True)),
        "inspect": (dict(t=1, version=None), dict(t=1, version=2)),
        "attack": (dict(t=1, other="a", other_round=0, settings=attack),
                   dict(t=1, other="a", other_round=0, settings={**attack, "limit": 9})),
        "ood": (dict(t=1, roots=None, seed=0, plot=True, limit=40),
                dict(t=1, roots=None, seed=1, plot=True, limit=40)),
        "quality": (dict(epochs=1, seed=0, plot=True, experiment="a"),
                    dict(epochs=1, seed=3, plot=True, experiment="a")),
    }


def _ask(ws: Path, command: str, call: dict):
    call = dict(call)
    name = call.pop("experiment", "a")
    from icl_cli.finished import answer

    return answer(command, ws, name, **call)


@pytest.mark.parametrize("command", ORDER)
def test_a_changed_setting_is_not_answered_from_the_record(made, command):
    ws, _ = made
    same, changed = _calls()[command]
    assert _ask(ws, command, same) is not None
    assert _ask(ws, command, changed) is None


def _touch(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.mark.parametrize("command", ORDER)
def test_a_file_touched_since_sends_the_command_back_to_its_step(made, command, tmp_path):
    same, _ = _calls()[command]
    # A copy of the workspace (mtimes kept) is answered anew: documents hold its paths.
    assert _ask(copy_workspace(made[0], tmp_path / "ws"), command, same) is None
    assert _ask(made[0], command, same) is not None
    from store import Store

    with Store.open(made[0]) as st:
        found = st.finished("a", command, _slot(st, command, same))
    for f in found.files:
        path = Path(f["path"]) if os.path.isabs(f["path"]) else made[0] / f["path"]
        before = path.stat()
        _touch(path)
        try:
            assert _ask(made[0], command, same) is None, f["path"]
        finally:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert _ask(made[0], command, same) is not None


def _slot(st, command: str, call: dict) -> dict:
    """The slot ``answer`` looks up for ``call``."""
    from icl_cli import finished
    from icl_cli.config import ExperimentConfig

    call = dict(call)
    exp = st.experiment(call.pop("experiment", "a"))
    changes = call.pop("changes", None)
    if changes is not None:
        cfg = ExperimentConfig.from_dict(exp.config)
        call["sampler" if command == "synthesize" else "train"] = changes.apply(
            cfg.sampler if command == "synthesize" else cfg.train)
    if command == "attack":
        call["other"] = st.experiment(call["other"])
    return finished.KEYS[command](st, exp, **call)[0]


def test_force_and_a_touched_checkpoint_recompute_in_a_fresh_process(made, tmp_path):
    ws = copy_workspace(made[0], tmp_path / "ws")
    icl(*EVAL1, "-w", ws)  # recorded for the copy's folder
    _, heavy = fresh(*EVAL1, "-w", ws, "--json", "--force")
    assert "torch" in heavy
    _touch(ws / "experiments" / "a" / "checkpoints" / "round-0001.pt")
    out, heavy = fresh(*EVAL1, "-w", ws, "--json")
    assert "torch" in heavy and all(r["reused"] is False for r in json.loads(out))
    # ... and the record it made trusts the file as it is now.
    out, heavy = fresh(*EVAL1, "-w", ws, "--json")
    assert heavy == [] and all(r["reused"] is True for r in json.loads(out))


def test_bytes_changed_behind_the_same_size_and_mtime_are_seen_by_verify(made, tmp_path):
    ws = copy_workspace(made[0], tmp_path / "ws")
    same = dict(t=1, bins=15, plot=True)
    icl(*EVAL1, "-w", ws)  # recorded for the copy's folder
    assert _ask(ws, "evaluate", same) is not None
    ckpt = ws / "experiments" / "a" / "checkpoints" / "round-0001.pt"
    st = ckpt.stat()
    blob = bytearray(ckpt.read_bytes())
    blob[-1] ^= 0xFF
    ckpt.write_bytes(bytes(blob))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _ask(ws, "evaluate", same) is not None  # the cheap check trusts size and mtime
    res = icl("verify", "-w", ws, "--no-mlflow", code=4)
    assert "round-0001.pt" in res.stdout
    # A changed size is seen at once, and the step's own check refuses the file.
    ckpt.write_bytes(bytes(blob) + b"x")
    assert _ask(ws, "evaluate", same) is None
    icl(*EVAL1, "-w", ws, code=4)


def test_plain_options_coerce_as_typers_adapter_does():
    import typer.main

    from icl_cli.cli import register
    from icl_cli.cli.main import coerce_without_pydantic

    assert coerce_without_pydantic()
    from typer._coercion import build_runtime_param

    commands = typer.main.get_command(register()).commands
    cases = {("evaluate", "round_"): ["7", "0", "-3", "12", None],
             ("evaluate", "bins"): [15, "10"],
             ("evaluate", "device"): ["cpu", "auto", "cuda:1"],
             ("attack", "eps"): ["0.125", "1e-1", "2", "-1.5E+2", 0.125],
             ("attack", "step_size"): [None, "0.01"],
             ("ood", "ood_root"): [(), []]}
    for (command, name), values in cases.items():
        param = {p.name: p for p in commands[command].params}[name]
        light = param.get_runtime_param()
        assert type(light).__name__ == "LightParam", name
        for value in values:
            typers = build_runtime_param(param.type_descriptor).coerce(value, param, None)
            mine = light.coerce(value, param, None)
            assert (mine, type(mine)) == (typers, type(typers)), (name, value)


@pytest.mark.parametrize("command", ["synthesize", "reclassify"])
def test_a_rerun_that_found_the_work_done_trusts_a_touched_file_again(made, command):
    """The normal path hashes the shard or checkpoint it finds done; the record's stamps
    follow, so the call after it answers at once again."""
    ws = made[0]
    same, _ = _calls()[command]
    sub = "shards/round-0001.v1.h5" if command == "synthesize" else \
        "checkpoints/round-0001.pt"
    _touch(ws / "experiments" / "a" / sub)
    assert _ask(ws, command, same) is None
    res = icl(command, "--round", "1", "-e", "a", *COMMON, "-w", ws, "--json")
    assert res.json()["reused"] is True
    assert _ask(ws, command, same) is not None


def test_a_data_folder_added_to_or_touched_sends_evaluate_back_to_its_step(tmp_path):
    """Data read from a folder is stamped file by file, and its folders (a file added or
    removed changes the folder's mtime); data that ships with icl is not."""
    (tmp_path / "idx").mkdir()
    data = write_folder(tmp_path / "idx", n_train=40, n_test=12)
    ws = tmp_path / "ws"
    icl("init", "-e", "d", "--dataset", "idx", "--data-root", data, "--arch", "tiny",
        "--train-size", "20", "--val-size", "8", "--init-epochs", "1", *COMMON, "-w", ws)
    icl("evaluate", "--round", "0", *COMMON, "-w", ws)
    same = dict(t=0, bins=15, plot=True)
    assert _ask(ws, "evaluate", {**same, "experiment": "d"}) is not None
    extra = data / "notes.txt"
    extra.write_text("a file beside the images")
    assert _ask(ws, "evaluate", {**same, "experiment": "d"}) is None
    extra.unlink()
    _touch(data)  # the folder as it was, but its mtime moved by the add and remove
    icl("evaluate", "--round", "0", *COMMON, "-w", ws)  # the step: the data unchanged
    assert _ask(ws, "evaluate", {**same, "experiment": "d"}) is not None
    _touch(data / "t10k-images-idx3-ubyte.gz")
    assert _ask(ws, "evaluate", {**same, "experiment": "d"}) is None


def test_a_fast_answer_that_fails_falls_back_to_the_step_and_says_why_under_debug(
        monkeypatch, capsys):
    from icl_cli import finished

    def broken(*_args):
        raise RuntimeError("catalog surprise")

    monkeypatch.setattr(finished, "_answer", broken)
    monkeypatch.delenv("ICL_DEBUG", raising=False)
    assert finished.answer("evaluate", None, None, round=1) is None
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("ICL_DEBUG", "1")
    assert finished.answer("evaluate", None, None, round=1) is None
    assert "no fast answer for evaluate (RuntimeError: catalog surprise)" in \
        capsys.readouterr().err
