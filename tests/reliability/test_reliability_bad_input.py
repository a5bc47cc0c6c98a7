"""Bad input: each user mistake gives a non-zero exit code, exactly one line on stderr,
no traceback, and leaves the workspace as it was (every file by sha256, every catalog
row; the step log may only gain a ``failed`` row for a step that refused its input)."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cli.data import EMBEDDED_DIR, read_idx
from tests.kit import COMMON, icl, idx_bytes
from tests.reliability.relkit import (
    assert_unchanged,
    execute,
    files,
    one_line,
    rows,
    run_child,
    sha256,
    snapshot,
    spawn,
)

INIT_D = ["init", "-e", "d", "--method", "icl", "--arch", "tiny", "--init-epochs", "1",
          *COMMON]
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def ws(sqlite_pair, tmp_path_factory) -> Path:
    """The paired workspace with 'icl' at round 1 (shard and checkpoint)."""
    ws = tmp_path_factory.mktemp("mistakes") / "ws"
    shutil.copytree(sqlite_pair, ws)
    logs = ws.parent / "logs"
    run_child(["synthesize", "-w", ws, "-e", "icl", "--round", "1", *COMMON], logs)
    run_child(["reclassify", "-w", ws, "-e", "icl", "--round", "1", *COMMON], logs)
    return ws


def _write(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for name, a in arrays.items():
        (folder / name).write_bytes(idx_bytes(a))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """IDX folders, one good and one per kind of damage."""
    root = tmp_path_factory.mktemp("data")
    full = {n: read_idx(EMBEDDED_DIR / f"{n}.gz") for n in IDX}
    keep = np.concatenate([np.flatnonzero(full[IDX[1]] == k)[:10] for k in range(10)])
    good = {IDX[0]: full[IDX[0]][keep], IDX[1]: full[IDX[1]][keep],
            IDX[2]: full[IDX[2]][:50], IDX[3]: full[IDX[3]][:50]}
    out = {"good": _write(root / "good", good), "missing": root / "nowhere"}
    (root / "empty").mkdir()
    out["empty"] = root / "empty"

    def variant(name: str, **changes) -> None:
        arrays = {**good, **{k: v for k, v in changes.items() if isinstance(v, np.ndarray)}}
        out[name] = _write(root / name, arrays)

    variant("magic")
    blob = bytearray((out["magic"] / IDX[0]).read_bytes())
    blob[:4] = b"\x12\x34\x56\x78"
    (out["magic"] / IDX[0]).write_bytes(bytes(blob))
    variant("truncated")
    (out["truncated"] / IDX[0]).write_bytes((out["truncated"] / IDX[0]).read_bytes()[:-784])
    variant("nan")
    floats = good[IDX[0]].astype(">f4")
    floats[0, 0, 0] = math.nan
    (out["nan"] / IDX[0]).write_bytes(idx_bytes(floats, 0x0D))
    variant("gzip")
    (out["gzip"] / IDX[0]).unlink()
    (out["gzip"] / f"{IDX[0]}.gz").write_bytes(gzip.compress(b"x" * 100)[:-12])
    labels = good[IDX[3]].copy()
    labels[0] = 12
    variant("label-range", **{IDX[3]: labels})
    labels = good[IDX[1]].copy()
    labels[labels == 3] = 4
    variant("missing-class", **{IDX[1]: labels})
    variant("count", **{IDX[1]: good[IDX[1]][:-1]})
    variant("one-class", **{IDX[1]: np.zeros_like(good[IDX[1]])})
    variant("image-size", **{IDX[2]: np.zeros((50, 32, 32), np.uint8)})
    return out


def _cases(ws: Path, data: dict[str, Path], tmp: Path) -> list[tuple]:
    """(what, argv, exit code, words the one line must hold)."""
    w = ["-w", ws]
    idx = [*INIT_D, *w, "--dataset", "idx", "--data-root"]
    return [
        ("zero --count", ["synthesize", *w, "-e", "icl", "-r", 2, "--count", 0, *COMMON], 3,
         "--count"),
        ("negative --count", ["synthesize", *w, "-e", "icl", "-r", 2, "--count", -5, *COMMON],
         3, "--count"),
        ("zero --count at init", [*INIT_D, *w, "--count", 0], 3, "--count"),
        ("--round 0 for synthesize", ["synthesize", *w, "-e", "icl", "-r", 0, *COMMON], 3,
         "round >= 1"),
        ("negative round", ["reclassify", *w, "-e", "icl", "-r", -1, *COMMON], 3, ">= 0"),
        ("skipped round (synthesize)", ["synthesize", *w, "-e", "icl", "-r", 3, *COMMON], 3,
         "reclassify --round 2"),
        ("skipped round (reclassify)", ["reclassify", *w, "-e", "icl", "-r", 3, *COMMON], 3,
         "reclassify --round 2"),
        ("round exists, other settings", ["synthesize", *w, "-e", "icl", "-r", 1, "--count",
                                          7, *COMMON], 3, "--force"),
        ("experiment exists, other config", [*INIT_D[:2], "icl", *INIT_D[3:], *w], 3,
         "another config"),
        ("baseline has no synthesis", ["synthesize", *w, "-e", "base", "-r", 1, *COMMON], 3,
         "baseline"),
        ("unknown dataset", [*INIT_D, *w, "--dataset", "imagenet"], 3, "imagenet"),
        ("unknown architecture", [*INIT_D, *w, "--arch", "resnet999"], 3, "resnet999"),
        ("unknown mode", [*INIT_D, *w, "--mode", "sideways"], 3, "sideways"),
        ("unknown method", [*INIT_D[:4], "magic", *INIT_D[5:], *w], 3, "magic"),
        ("unknown stop rule", ["synthesize", *w, "-e", "icl", "-r", 2, "--stop-rule", "maybe",
                               *COMMON], 3, "stop-rule"),
        ("zero learning rate", [*INIT_D, *w, "--lr", 0], 3, "--lr"),
        ("NaN learning rate", [*INIT_D, *w, "--lr", "nan"], 3, "--lr"),
        ("negative pn weight", [*INIT_D, *w, "--pn-weight", -1], 3, "--pn-weight"),
        ("zero --train-size", [*INIT_D, *w, "--train-size", 0], 3, "--train-size"),
        ("negative --val-size", [*INIT_D, *w, "--val-size", -1], 3, "--val-size"),
        ("more images than exist", [*INIT_D, *w, "--train-size", 999999], 3, "only"),
        ("idx without --data-root", [*INIT_D, *w, "--dataset", "idx"], 3, "--data-root"),
        ("data folder missing", [*idx, data["missing"]], 3, "does not exist"),
        ("data folder empty", [*idx, data["empty"]], 3, "is missing"),
        ("IDX wrong magic", [*idx, data["magic"]], 3, "not an IDX file"),
        ("IDX truncated body", [*idx, data["truncated"]], 3, "truncated"),
        ("IDX of floats with NaN", [*idx, data["nan"]], 3, "only uint8"),
        ("IDX bad gzip", [*idx, data["gzip"]], 3, "cannot read"),
        ("test label out of range", [*idx, data["label-range"]], 3, "labels must lie in"),
        ("a class with no image", [*idx, data["missing-class"]], 3, "no image of class"),
        ("one class only", [*idx, data["one-class"]], 3, "K >= 2"),
        ("labels and images disagree", [*idx, data["count"]], 3, "labels"),
        ("test images of another size", [*idx, data["image-size"]], 3, "test images"),
        ("CIFAR-10 folder missing", [*INIT_D, *w, "--dataset", "cifar10", "--data-root",
                                     data["missing"]], 3, "CIFAR-10 not found"),
        ("not a workspace", ["evaluate", "-w", tmp, *COMMON], 6, "icl init"),
        ("workspace is a file", ["status", "-w", data["good"] / IDX[0]], 6,
         "not an icl workspace"),
        ("experiment name with /", ["evaluate", *w, "-e", "a/b", *COMMON], 3,
         "experiment name"),
        ("experiment name ..", ["evaluate", *w, "-e", "..", *COMMON], 3, "experiment name"),
        ("init name climbing out", [*INIT_D[:2], "../evil", *INIT_D[3:], *w], 3,
         "experiment name"),
        ("empty experiment name", ["evaluate", *w, "-e", "", *COMMON], 3, "experiment name"),
        ("unknown experiment", ["reclassify", *w, "-e", "nope", "-r", 1, *COMMON], 3,
         "known: base, icl"),
        ("--from unknown", [*INIT_D[:2], "e2", "--from", "nope:0", *COMMON, *w], 3, "nope"),
        ("--from missing round", [*INIT_D[:2], "e2", "--from", "base:7", *COMMON, *w], 3,
         "round 7"),
        ("--from bad syntax", [*INIT_D[:2], "e2", "--from", "base:x", *COMMON, *w], 3,
         "EXPERIMENT:ROUND"),
        ("--from with shared option", [*INIT_D[:2], "e2", "--from", "base:0", "--arch", "tiny",
                                       *COMMON, *w], 3, "paired"),
        ("--from climbing out", [*INIT_D[:2], "e2", "--from", "../x:0", *COMMON, *w], 3,
         "experiment name"),
        ("eps above 1", ["attack", *w, "-e", "icl", "-r", 1, "--against", "base:0", "--eps", 2,
                         *COMMON], 3, "[0, 1]"),
        ("negative eps", ["attack", *w, "-e", "icl", "-r", 1, "--against", "base:0", "--eps",
                          -0.1, *COMMON], 3, "[0, 1]"),
        ("NaN eps", ["attack", *w, "-e", "icl", "-r", 1, "--against", "base:0", "--eps", "nan",
                     *COMMON], 3, "[0, 1]"),
        ("attack against ../x", ["attack", *w, "-e", "icl", "-r", 1, "--against", "../x",
                                 *COMMON], 3, "experiment name"),
        ("NaN --langevin-std", [*INIT_D[:2], "e2", "--langevin-std", "nan", *COMMON, *w], 3,
         "--langevin-std must be a finite number"),
        ("inf --sampler-lr", ["synthesize", *w, "-e", "icl", "-r", 2, "--sampler-lr", "inf",
                              *COMMON], 3, "--sampler-lr must be a finite number"),
        ("NaN --pn-weight this round", ["reclassify", *w, "-e", "icl", "-r", 2, "--pn-weight",
                                        "nan", *COMMON], 3,
         "--pn-weight must be a finite number"),  # as at init: one check, one message
        ("NaN --clip-grad", [*INIT_D[:2], "e2", "--clip-grad", "nan", *COMMON, *w], 3,
         "--clip-grad must be a finite number"),
        ("--device tpu", ["evaluate", *w, "-e", "icl", "--device", "tpu", "--no-mlflow"], 3,
         "unknown device"),
        ("--threads 0", ["evaluate", *w, "-e", "icl", "--threads", 0, "--no-mlflow"], 3,
         "--threads"),
        ("inspect a missing round", ["inspect", *w, "-e", "icl", "-r", 5], 3,
         "synthesize --round 5"),
        ("inspect a missing version", ["inspect", *w, "-e", "icl", "-r", 1, "--version", 9],
         3, "version 9"),
        ("evaluate a missing round", ["evaluate", *w, "-e", "icl", "-r", 9, *COMMON], 3,
         "reclassify --round 9"),
        ("negative --rounds", ["run", *w, "-e", "icl", "--rounds", -1, *COMMON], 3,
         "--rounds"),
        ("misspelt option", ["synthesize", *w, "-e", "icl", "-r", 2, "--cont", 5], 2,
         "No such option"),
        ("round not a number", ["synthesize", *w, "-e", "icl", "-r", "two"], 2,
         "valid integer"),
        ("missing --round", ["synthesize", *w, "-e", "icl"], 2, "--round"),
        ("unknown command", ["synthesise", *w], 2, "No such command"),
        ("round beyond int64", ["synthesize", *w, "-e", "icl", "-r", "9" * 20, *COMMON], 3,
         "--round must be below"),
        ("--rounds beyond int64", ["run", *w, "-e", "icl", "--rounds", "9" * 20, *COMMON], 3,
         "--rounds must be below"),
        ("--threads 100000", ["evaluate", *w, "-e", "icl", "--threads", 100000,
                              "--no-mlflow"], 3, "more than 4 per core"),
        ("evaluate round -1", ["evaluate", *w, "-e", "icl", "-r", -1, *COMMON], 3,
         "--round must be >= 0"),
        ("inspect version 0", ["inspect", *w, "-e", "icl", "-r", 1, "--version", 0], 3,
         "version 0 of round 1"),
        ("attack a missing round", ["attack", *w, "-e", "icl", "-r", 1, "--against",
                                    "base:999", *COMMON], 3,
         "`icl reclassify --round 999 -e base`"),
    ]


def test_user_mistakes_get_one_line_and_change_nothing(ws, data, tmp_path):
    (tmp_path / "plain").mkdir()
    cases = _cases(ws, data, tmp_path / "plain")
    if not torch.cuda.is_available():
        cases.append(("--device cuda without a GPU",
                      ["evaluate", "-w", ws, "-e", "icl", "--device", "cuda", "--no-mlflow"],
                      3, "no CUDA GPU"))
    assert len(cases) >= 30
    def beside():  # what lies next to the workspace
        return {k: v for k, v in files(ws.parent).items() if k.split("/")[0] != ws.name}

    outside = beside()
    for what, argv, code, words in cases:
        before = snapshot(ws)
        res = icl(*argv, code=None)
        assert res.code == code, (what, res)
        line = one_line(res)
        assert words in line, (what, line)
        assert_unchanged(before, snapshot(ws), what)
    assert beside() == outside  # nothing appeared beside the workspace either


@pytest.mark.parametrize("url,words", [
    ("garbage", "is not a database URL"),
    ("postgresql+nosuchdriver://u@/db", "needs the database driver"),
], ids=["malformed", "no driver"])
def test_a_bad_catalog_url_is_one_line(ws, url, words):
    before = snapshot(ws)
    res = icl("status", "-w", ws, code=3, env={"ICL_CATALOG_URL": url})
    assert words in one_line(res)
    assert_unchanged(before, snapshot(ws), url)


def test_a_folder_in_place_of_a_checkpoint_is_named(sqlite_templates, tmp_path):
    ws = sqlite_templates.copy("round0", tmp_path / "ws")  # C_0 of relkit.INIT
    ckpt = ws / "experiments" / "icl" / "checkpoints" / "round-0000.pt"
    ckpt.unlink()
    ckpt.mkdir()
    res = icl("reclassify", "-w", ws, "--round", "0", "--force", *COMMON, code=3)
    assert "is a folder where icl keeps a file" in one_line(res)
    assert ckpt.is_dir() and not list(ckpt.parent.glob("*.tmp-*"))


def test_icl_workspace_variable_pointing_nowhere(tmp_path):
    res = icl("status", code=6, env={"ICL_WORKSPACE": str(tmp_path)})
    assert "not an icl workspace" in one_line(res)
    assert list(tmp_path.iterdir()) == []


def test_a_mistake_in_init_does_not_create_a_workspace(tmp_path):
    for argv in (["--arch", "resnet999"], ["-e", "../x"], ["--device", "tpu"],
                 ["--dataset", "idx", "--data-root", tmp_path / "none"]):
        icl("init", "-w", tmp_path / "new", *argv, "--no-mlflow", code=3)
        assert not (tmp_path / "new").exists(), argv


def test_a_checkpoint_of_another_architecture_is_refused(ws, tmp_path):
    """Copied over from elsewhere (its hash differs from the catalog's), or with the catalog
    edited to match (then its weights do not fit the network): refused either way."""
    from icl_cli.models import build_model

    rel = "experiments/icl/checkpoints/round-0001.pt"
    ckpt = ws / rel
    saved = ckpt.read_bytes()
    (old_sha,) = rows(ws, "SELECT sha256 FROM checkpoints WHERE path = ?", rel)[0]
    state = torch.load(ckpt, weights_only=True)
    state["model"] = build_model("resnet8", (1, 28, 28), 10).state_dict()
    try:
        torch.save(state, ckpt)
        before = snapshot(ws)
        line = one_line(icl("evaluate", "-w", ws, "-e", "icl", "-r", 1, *COMMON, code=4))
        assert rel in line and "reclassify --round 1 --force -e icl" in line
        execute(ws, "UPDATE checkpoints SET sha256 = ? WHERE path = ?", sha256(ckpt), rel)
        before = snapshot(ws)
        line = one_line(icl("evaluate", "-w", ws, "-e", "icl", "-r", 1, *COMMON, code=4))
        assert "does not fit" in line and rel in line
        assert_unchanged(before, snapshot(ws), "checkpoint of another architecture")
    finally:
        ckpt.write_bytes(saved)
        execute(ws, "UPDATE checkpoints SET sha256 = ? WHERE path = ?", old_sha, rel)


def test_a_read_only_workspace_is_refused_in_one_line(ws, tmp_path):
    """chmod -R a-w; as root (who ignores permissions) the command runs as 'nobody'."""
    parent = Path(tempfile.mkdtemp(prefix="icl-ro-", dir="/tmp"))
    try:
        ro = parent / "ws"
        shutil.copytree(ws, ro)
        os.chmod(parent, 0o755)
        for p in [ro, *ro.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        before = snapshot(ro)
        child = spawn(["synthesize", "-w", ro, "-e", "icl", "-r", 2, *COMMON],
                      tmp_path / "logs", uid=65534 if os.geteuid() == 0 else None)
        res = child.wait()
        assert res.code == 3, res
        line = one_line(res)
        assert "permission" in line.lower() or "read-only" in line.lower() or \
            "readonly" in line.lower(), line
        assert_unchanged(before, snapshot(ro), "read-only workspace")
    finally:
        for p in [parent, *parent.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(parent)
