"""The data an experiment was made with is pinned by its data fingerprint: when the images
under it change, every step refuses with one line instead of using other data."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from icl_cli.data import EMBEDDED_DIR
from tests.kit import COMMON, tiny
from tests.reliability.relkit import one_line, rows, run_child

TINY_IDX = tiny(count=2, max_steps=3, sampler_lr=None)


@pytest.fixture(scope="module")
def edited_once(tmp_path_factory) -> tuple[Path, Path]:
    """A workspace whose experiment 'icl' (round 0 on an IDX copy of the embedded data) then
    sees one training pixel changed under it; and that data folder. Made once: every test
    below is refused and changes nothing, and each works on a copy of the workspace."""
    root = tmp_path_factory.mktemp("edited")
    data = root / "data"
    shutil.copytree(EMBEDDED_DIR, data)
    ws = root / "ws"
    run_child(["init", "-w", ws, "-e", "icl", "--method", "icl", "--dataset", "idx",
               "--data-root", data, *TINY_IDX, *COMMON], root / "logs")
    images = data / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[16:16 + 28 * 28 * 6000] = bytes(255 - b for b in raw[16:16 + 28 * 28 * 6000])
    images.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    return ws, data


@pytest.fixture
def edited(edited_once, tmp_path) -> tuple[Path, Path]:
    """A copy of ``edited_once``'s workspace (its data: the edited folder), and its logs."""
    ws = shutil.copytree(edited_once[0], tmp_path / "ws")
    return ws, tmp_path / "logs"


@pytest.mark.parametrize("argv", [
    ["synthesize", "--round", "1"], ["reclassify", "--round", "0", "--force"],
    ["evaluate", "--round", "0"], ["run", "--rounds", "1"],
    ["init", "-e", "pair", "--method", "baseline", "--from", "icl:0"],
], ids=["synthesize", "reclassify", "evaluate", "run", "init --from"])
def test_every_step_refuses_changed_data(edited, edited_once, argv):
    ws, logs = edited
    before = rows(ws, "select count(*) from checkpoints")
    res = run_child([argv[0], "-w", ws, *([] if "-e" in argv else ["-e", "icl"]), *argv[1:],
                     *COMMON], logs, code=4)
    line = one_line(res)
    assert "the data of experiment 'icl' changed since it was made" in line
    assert str(edited_once[1]) in line  # the data folder
    assert rows(ws, "select count(*) from checkpoints") == before
    assert rows(ws, "select count(*) from shards") == [(0,)]
