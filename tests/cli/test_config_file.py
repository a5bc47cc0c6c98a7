"""``--config FILE``: every command reads its options from a TOML file (top-level keys
shared, a ``[command]`` table per command), a flag on the command line wins, a key no
command takes is one line naming the closest option and nothing is written, and ``icl init
--dump-config`` writes a file that makes the same experiment again.

Each test fails if the file were ignored: the values it checks differ from icl's defaults
and from the flags given beside the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from icl_cli.cli.configfile import read
from store import Store
from tests.kit import COMMON, ROOT, icl, write_folder

RECIPE = ROOT / "recipes" / "configs" / "table1-mnist-icl.toml"
# A C_0 of seconds: the tiny net on 60 embedded-MNIST images, 20 held out.
SMALL = """
arch = "tiny"
train-size = 60
val_size = 20
init-epochs = 1
epochs = 1
sampler-lr = 0.05
"""
RUNTIME = 'no-mlflow = true\nthreads = 1\ndevice = "cpu"\n'
# Beside a file that must be refused: were it read and not refused, these flags would make a
# C_0 in a second, so the test fails at once.
CHEAP = ["--arch", "tiny", "--train-size", "20", "--init-epochs", "1", *COMMON]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def recorded(ws: Path, name: str):
    with Store.open(ws) as st:
        return st.experiment(name)


def one_line(r, code: int, *says: str) -> str:
    """The refusal's one stderr line (no traceback), which says each of ``says``."""
    assert r.code == code, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for s in says:
        assert s in lines[0], lines[0]
    return lines[0]


def test_the_files_values_are_used_and_a_flag_on_the_line_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    cfg = write(tmp_path / "c.toml", f'workspace = "{ws}"\nseed = 3\n{RUNTIME}[init]\n'
                f'{SMALL}count = 3\nmax-steps = 5\nclamp = true\npn-weighting = "drawn"\n')
    icl("init", "--config", cfg, "-e", "x", "--train-size", "40", "--no-clamp")
    c = recorded(ws, "x").config  # the workspace named in the file was made
    assert c["data"]["train_size"] == 40 and c["sampler"]["clamp"] is False  # the line won
    assert (c["seed"], c["data"]["val_size"], c["model"]["arch"]) == (3, 20, "tiny")
    assert (c["sampler"]["count"], c["sampler"]["max_steps"]) == (3, 5)
    assert c["train"]["pn_weighting"] == "drawn" and c["init_epochs"] == 1
    # --dump-config says the same, and writes nothing
    r = icl("init", "--config", cfg, "-e", "y", "--train-size", "40", "--dump-config")
    dumped = read(write(tmp_path / "dump.toml", r.stdout))["init"]
    assert (dumped["train-size"], dumped["seed"], dumped["count"]) == (40, 3, 3)
    with Store.open(ws) as st:
        assert [e.name for e in st.experiments()] == ["x"]


def test_a_commands_table_is_read_by_that_command_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    # Top level: read by init and synthesize alike (max-steps), or by init alone and passed
    # over by synthesize (init-epochs, arch...). [synthesize] count: synthesize's only.
    cfg = write(tmp_path / "c.toml", f'workspace = "{ws}"\nexperiment = "e"\n{RUNTIME}'
                f'{SMALL}max-steps = 4\n[init]\ncount = 3\n[synthesize]\ncount = 2\n'
                '[run]\nrounds = 1\n')
    icl("init", "--config", cfg, "--train-size", 60, "--init-epochs", 1)
    sampler = recorded(ws, "e").config["sampler"]
    assert (sampler["count"], sampler["max_steps"]) == (3, 4)
    r = icl("synthesize", "--config", cfg, "--round", 1, "--json").json()
    assert r["count"] == 2 * 10  # [synthesize] count, 10 classes
    with Store.open(ws) as st:
        shard = st.active_shards("e", 1)[0]
    assert shard.sampler_config["count"] == 2 and shard.sampler_config["max_steps"] == 4


@pytest.mark.parametrize(("text", "says"), [
    ("trian-size = 30\n", ["no icl command takes 'trian-size'", "--train-size"]),
    ("[init]\nrounds = 3\n", ["icl init takes no --rounds", "icl run"]),
    ("[inti]\ncount = 3\n", ["[inti] is not an icl command", "[init]"]),
    ("[run]\nround = 3\n", ["icl run takes no --round", "--rounds"]),
])
def test_a_key_no_command_takes_is_one_line_naming_the_closest_and_nothing_is_written(
        tmp_path, monkeypatch, text, says):
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path / "c.toml", f'arch = "tiny"\n{text}')
    before = sorted(tmp_path.rglob("*"))
    line = one_line(icl("init", "--config", cfg, "-w", tmp_path / "ws", *CHEAP, code=None),
                    2, str(cfg), *says)
    assert "Traceback" not in line and sorted(tmp_path.rglob("*")) == before
    # the whole file is checked, whichever command reads it
    one_line(icl("status", "--config", cfg, code=None), 2, *says)


def test_a_missing_or_broken_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line(icl("init", "--config", tmp_path / "none.toml", *CHEAP, code=None), 2,
             "none.toml", "no such file")
    bad = write(tmp_path / "bad.toml", "count = [\n")
    one_line(icl("init", "--config", bad, *CHEAP, code=None), 2, "bad.toml",
             "not valid TOML")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_a_value_of_the_wrong_type_is_refused_as_on_the_command_line(tmp_path):
    cfg = write(tmp_path / "c.toml", '[init]\nval-size = "many"\n')
    one_line(icl("init", "--config", cfg, "-w", tmp_path / "ws", *CHEAP, code=None), 2,
             "--val-size")
    assert not (tmp_path / "ws").exists()


def test_the_dumped_config_makes_the_same_experiment_in_another_workspace(tmp_path):
    options = ["-e", "a", "--arch", "tiny", "--train-size", "60", "--val-size", "20",
               "--init-epochs", "1", "--epochs", "2", "--count", "3", "--max-steps", "6",
               "--seed", "2", "--data-seed", "5", "--pn-weighting", "drawn",
               "--pn-recency", "0.25", "--clip-grad", "5", "--langevin-std", "0.01",
               "--stop-rule", "argmax", "--mode", "ova"]
    one = tmp_path / "one"
    dump = icl("init", "-w", one, *options, "--dump-config", *COMMON).stdout
    assert not one.exists()  # dumping creates nothing
    icl("init", "-w", one, *options, *COMMON)
    icl("init", "-w", tmp_path / "two", "--config", write(tmp_path / "a.toml", dump),
        "--train-size", "60", "--init-epochs", "1", *COMMON)  # as in the file
    a, b = recorded(one, "a"), recorded(tmp_path / "two", "a")
    assert a.config == b.config and a.config_hash == b.config_hash
    assert a.data_fingerprint == b.data_fingerprint
    assert b.config["train"]["clip_grad"] == 5 and b.config["data"]["seed"] == 5


def test_the_table1_config_makes_its_experiment_with_a_small_override(tmp_path):
    """The committed Table 1 row, with only the data and its size made small: every other
    setting is the file's."""
    (tmp_path / "idx").mkdir()
    ws, idx = tmp_path / "ws", write_folder(tmp_path / "idx", n_train=40, n_test=12)
    icl("init", "-w", ws, "--config", RECIPE, "--data-root", idx, "--train-size", 20,
        "--val-size", 8, "--init-epochs", 1, *COMMON)
    doc = read(RECIPE)
    c = recorded(ws, doc["experiment"]).config
    want, t = doc["init"], c["train"]
    assert (c["method"], c["seed"], c["data"]["dataset"]) == (
        want["method"], want["seed"], want["dataset"])
    assert (c["model"]["arch"], c["model"]["mode"]) == (want["arch"], want["mode"])
    assert (t["epochs"], t["real_epochs"], t["batch_size"], t["lr"], t["decay_round"],
            t["pn_weight"], t["pn_weighting"]) == (
        want["epochs"], want["real-epochs"], want["batch-size"], want["lr"],
        want["decay-round"], want["pn-weight"], want["pn-weighting"])
    s = c["sampler"]
    assert (s["count"], s["max_steps"], s["lr"], s["reference_std"], s["stop_rule"]) == (
        want["count"], want["max-steps"], want["sampler-lr"], want["reference-std"],
        want["stop-rule"])
    assert c["data"]["root"] == str(idx.resolve()) and c["data"]["train_size"] == 20
