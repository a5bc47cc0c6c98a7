"""``icl init`` with a user's own network and data, end to end: ``--arch module:factory``,
an installed entry point, ``timm:NAME``; ``--dataset imagefolder`` (decoded once, kept in
``.icl/data``) and ``npz``; every mistake one line, exit 3, the folder left as it was;
``--replay`` saying when the network's code changed since ``icl init``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icl_cli import data as D
from store import Store
from tests.kit import COMMON, ROOT, child_env, icl
from tests.test_user_data import image_folder, npz_file, write_image
from tests.test_user_models import NETS, distribution, forget_modules_in, module

SMALL = ["--train-size", "30", "--val-size", "6", "--init-epochs", "1", "--epochs", "1",
         "--count", "2", "--max-steps", "4", "--batch-size", "16", *COMMON]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """The current folder, sys.path and the per-process data caches as they were after
    the test, and the modules of ``tmp_path`` forgotten."""
    from icl_cli.steps import common

    monkeypatch.setattr(sys, "path", list(sys.path))
    common._load_cached.cache_clear()
    D._DECODED.clear()
    yield monkeypatch
    common._load_cached.cache_clear()
    D._DECODED.clear()
    forget_modules_in(tmp_path)


def config(ws: Path, name: str) -> dict:
    with Store.open(ws) as st:
        return st.experiment(name).config


def files(ws: Path) -> dict[str, bytes]:
    """The workspace's files and their bytes, the catalog aside (SQLite moves its journal
    into it as connections close: compared through the store instead)."""
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*"))
            if p.is_file() and not p.name.startswith("catalog.db")}


def one_line_exit_3(r, *says: str) -> None:
    assert r.code == 3, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for s in says:
        assert s in lines[0], lines[0]


# ---------------------------------------------------------------- your own network


def test_a_factory_from_the_current_folder_runs_a_round_and_replays(tmp_path, isolated):
    path = module(tmp_path, "usernets")
    isolated.chdir(tmp_path)
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "-e", "mine", "--arch", "usernets:build", *SMALL)
    model = config(ws, "mine")["model"]
    assert model["arch"] == "usernets:build" and model["source"].startswith("usernets.py sha256:")
    icl("synthesize", "-w", ws, "--round", 1, *COMMON)
    icl("reclassify", "-w", ws, "--round", 1, *COMMON)
    r = icl("reclassify", "-w", ws, "--round", 1, "--replay", *COMMON)
    assert "matches bit for bit" in r.stdout and "note" not in r.stdout
    path.write_text(path.read_text() + "\n# a comment: other code, same network\n")
    for step in ("synthesize", "reclassify"):
        r = icl(step, "-w", ws, "--round", 1, "--replay", *COMMON)
        assert "matches bit for bit; note: the code of --arch usernets:build changed" in r.stdout
    doc = json.loads(icl("reclassify", "-w", ws, "--round", 1, "--replay", "--json",
                         *COMMON).stdout)
    assert "changed since the experiment was made" in doc["replay_drift"]


def test_one_vs_all_with_a_users_network(tmp_path, isolated):
    isolated.syspath_prepend(str(module(tmp_path / "lib", "ovanets").parent))
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "--arch", "ovanets:build", "--mode", "ova", *SMALL)
    icl("synthesize", "-w", ws, "--round", 1, *COMMON)
    icl("reclassify", "-w", ws, "--round", 1, *COMMON)
    with Store.open(ws) as st:
        state = st.load_checkpoint(st.checkpoint("icl", 1))["model"]
    assert {k.split(".")[1] for k in state} == {str(k) for k in range(10)}  # 10 networks


@pytest.mark.parametrize("arch, says", [
    ("badnets:raises", "this net wants 3 channels"),
    ("badnets:wrong_shape", "icl needs (B, K) logits"),
    ("badnets:nothere", "has no 'nothere'"),
    ("nowhere_nets:build", "run icl from the folder that holds nowhere_nets.py"),
    ("not-an-installed-net", "unknown architecture"),
])
@pytest.mark.parametrize("method", ["baseline", "icl"])
def test_a_bad_network_is_one_line_exit_3_and_no_workspace(tmp_path, isolated, arch, says,
                                                            method):
    module(tmp_path, "badnets", NETS)
    isolated.chdir(tmp_path)
    r = icl("init", "-w", tmp_path / "ws", "--method", method, "--arch", arch, *SMALL, code=None)
    one_line_exit_3(r, says)
    assert not (tmp_path / "ws").exists()


def test_a_bad_network_leaves_an_existing_workspace_as_it_was(tmp_path, isolated):
    module(tmp_path, "badnets", NETS)
    isolated.chdir(tmp_path)
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "-e", "good", "--arch", "tiny", "--method", "baseline", *SMALL)
    before = files(ws)
    r = icl("init", "-w", ws, "-e", "bad", "--arch", "badnets:wrong_shape", *SMALL, code=None)
    one_line_exit_3(r, "icl needs (B, K) logits")
    assert files(ws) == before
    with Store.open(ws) as st:
        assert [e.name for e in st.experiments()] == ["good"]
        assert [s.experiment for s in st.steps()] == ["good"] * len(st.steps())


def test_status_and_report_never_import_the_users_module(tmp_path, isolated):
    path = module(tmp_path, "quietnets")
    isolated.chdir(tmp_path)
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "--arch", "quietnets:build", "--method", "baseline", *SMALL)
    path.write_text("raise SystemExit('imported by a read-only command')\n")
    for argv in (["status"], ["report", "--no-plot"], ["verify"]):
        done = subprocess.run([sys.executable, "-m", "icl_cli", *argv, "-w", str(ws)],
                              cwd=tmp_path, env=child_env(), capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr)


def test_an_installed_entry_point_in_help_and_init(tmp_path):
    site = distribution(tmp_path / "site", publishes="mynet = my_nets:build")
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]))
    out = subprocess.run([sys.executable, "-m", "icl_cli", "init", "--help"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert "installed: mynet" in " ".join(out.stdout.split()), out.stdout
    done = subprocess.run([sys.executable, "-m", "icl_cli", "init", "-w", str(tmp_path / "ws"),
                           "--arch", "mynet", "--method", "baseline", *SMALL, "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    source = json.loads(done.stdout)["config"]["model"]["source"]
    assert source.startswith("my-nets 1.0, my_nets.py sha256:")


def test_timm_network_with_batch_norm_runs_a_round(tmp_path, isolated):
    timm = pytest.importorskip("timm")
    rng = np.random.default_rng(1)
    f = npz_file(tmp_path / "d.npz", x_train=rng.integers(0, 256, (60, 12, 12, 3), np.uint8),
                 y_train=np.arange(60) % 3, x_test=rng.integers(0, 256, (9, 12, 12, 3), np.uint8),
                 y_test=np.arange(9) % 3)
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "--dataset", "npz", "--data-root", f, "--arch", "timm:test_resnet",
        *SMALL)
    assert config(ws, "icl")["model"]["source"] == f"timm {timm.__version__}"
    icl("synthesize", "-w", ws, "--round", 1, *COMMON)
    icl("reclassify", "-w", ws, "--round", 1, *COMMON)
    icl("evaluate", "-w", ws, "--round", 1, *COMMON)


# ---------------------------------------------------------------- your own data


def test_an_image_folder_is_decoded_once_and_checked_at_every_step(tmp_path, isolated):
    root = image_folder(tmp_path / "imgs", n_train=14, n_test=3, size=(10, 7))
    write_image(root / "train" / "cat" / "big.png", (30, 21), seed=77)
    ws = tmp_path / "ws"
    icl("init", "-w", ws, "--dataset", "imagefolder", "--data-root", root, "--image-size", 8,
        "--arch", "tiny", "--method", "baseline", "--train-size", "30", "--val-size", "6",
        "--init-epochs", "1", *COMMON)
    cached = list((ws / ".icl" / "data").glob("imagefolder-*.npz"))
    assert len(cached) == 1
    assert config(ws, "baseline")["data"]["image_size"] == 8
    from icl_cli.steps import common

    common._load_cached.cache_clear()  # as a new process: nothing decoded in memory
    D._DECODED.clear()
    decode = D.decode_image
    isolated.setattr(D, "decode_image", lambda *a: pytest.fail("decoded again"))
    icl("evaluate", "-w", ws, "--round", 0, *COMMON)
    write_image(root / "train" / "dog" / "0.png", (10, 7), seed=4321)  # other pixels
    common._load_cached.cache_clear()
    isolated.setattr(D, "decode_image", decode)
    r = icl("evaluate", "-w", ws, "--round", 0, *COMMON, code=4)
    assert "the data of experiment 'baseline' changed" in r.stderr


@pytest.mark.parametrize("case", ["mixed-size", "empty-class", "corrupt", "unknown-test-class"])
def test_a_bad_image_folder_is_one_line_exit_3_and_no_workspace(tmp_path, isolated, case):
    root = image_folder(tmp_path / "imgs")
    if case == "mixed-size":
        culprit = write_image(root / "train" / "dog" / "odd.png", (9, 9))
    elif case == "empty-class":
        culprit = root / "train" / "fox"
        culprit.mkdir()
    elif case == "corrupt":
        culprit = root / "test" / "emu" / "1.png"
        culprit.write_bytes(b"\x89PNG broken")
    else:
        culprit = write_image(root / "test" / "yak" / "0.png").parent
    r = icl("init", "-w", tmp_path / "ws", "--dataset", "imagefolder", "--data-root", root,
            "--arch", "tiny", *COMMON, code=None)
    one_line_exit_3(r, str(culprit))
    assert not (tmp_path / "ws").exists()


def test_npz_data_and_bad_labels(tmp_path, isolated):
    ws = tmp_path / "ws"
    good = npz_file(tmp_path / "good.npz", x_train=np.random.default_rng(2).integers(
        0, 256, (45, 9, 9), dtype=np.uint8), y_train=np.arange(45) % 3,
        x_test=np.zeros((6, 9, 9), np.uint8))
    icl("init", "-w", ws, "--dataset", "npz", "--data-root", good, "--arch", "tiny",
        "--method", "baseline", "--image-size", 12, *SMALL)
    bad = npz_file(tmp_path / "bad.npz", y_test=np.array([0, 1, 2, 5, 0, 1]))
    r = icl("init", "-w", tmp_path / "ws2", "--dataset", "npz", "--data-root", bad, *COMMON,
            code=None)
    one_line_exit_3(r, str(bad), "y_test holds label 5")
    r = icl("init", "-w", tmp_path / "ws3", "--image-size", 32, *COMMON, code=None)
    one_line_exit_3(r, "--image-size")
    assert not (tmp_path / "ws2").exists() and not (tmp_path / "ws3").exists()
