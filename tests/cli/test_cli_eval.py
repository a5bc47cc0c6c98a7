"""``icl evaluate`` (calibration), ``icl attack --method pgd`` and ``icl ood`` end to end on
a tiny net and the embedded MNIST subset."""

import numpy as np
import pytest

from store import Store
from tests.kit import COMMON, TINY, icl, icl_json, write_idx


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A baseline at round 0 and an ICL experiment started from it."""
    ws = tmp_path_factory.mktemp("ws")
    icl("init", "-w", ws, "-e", "base", "--method", "baseline", *TINY, *COMMON)
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", "--from", "base:0", *COMMON)
    return ws


def test_evaluate_reports_nll_and_ece_everywhere(ws):
    rows = icl_json("evaluate", "-w", ws, "-e", "base", "--round", "0", *COMMON)
    by = {r["split"]: r for r in rows}
    assert set(by) == {"test", "val"}
    for r in rows:
        assert r["nll"] > 0 and 0 <= r["ece"] <= 1 and r["ece_bins"] == 15
    recorded = Store.open(ws).metrics("base")[0]
    assert recorded["test_nll"] == pytest.approx(by["test"]["nll"])
    assert recorded["val_ece"] == pytest.approx(by["val"]["ece"])
    png = ws / "experiments" / "base" / "figures" / "reliability-round-0000.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --bins changes the ECE (the tiny net's confidences sit in one of 15 bins; NLL does
    # not depend on the bins) and is recorded.
    two = icl_json("evaluate", "-w", ws, "-e", "base", "--round", "0", "--bins", "200",
                   "--no-plot", *COMMON)
    assert two[0]["ece_bins"] == 200 and two[0]["nll"] == by["test"]["nll"]
    assert two[0]["ece"] != by["test"]["ece"]
    assert Store.open(ws).metrics("base")[0]["ece_bins"] == 200
    text = icl("report", "-w", ws, "--no-plot").stdout
    assert "test ECE %" in text and f"{100 * two[0]['ece']:.2f}" in text
    bad = icl("evaluate", "-w", ws, "-e", "base", "--round", "0", "--bins", "0", *COMMON,
              code=3)
    assert "--bins must be >= 1" in bad.stderr


def test_the_per_class_table_fits_80_columns(ws):
    """Ten classes' error % on one line per split, as a terminal of 80 columns shows it."""
    out = icl("evaluate", "-w", ws, "-e", "base", "--round", "0", "--no-plot", *COMMON,
              env={"COLUMNS": "80"}).stdout
    lines = out[out.index("per-class error %"):].splitlines()
    header = next(line for line in lines if line.split()[:1] == ["split"])
    assert header.split() == ["split", *map(str, range(10))]
    for split in ("test", "val"):
        [row] = [line for line in lines if line.split()[:1] == [split]]
        assert len(row.split()) == 11 and len(row.rstrip()) <= 80, row


def test_pgd_two_way_with_robust_accuracy_recorded(ws):
    common = ["-w", ws, "-e", "icl", "--round", "0", "--against", "base:0", *COMMON]
    fgsm = icl_json("attack", *common, "--eps", "0.3")
    # One PGD step of size eps from x itself is FGSM: the same counts both ways.
    one = icl_json("attack", *common, "--eps", "0.3", "--method", "pgd", "--steps", "1",
                   "--step-size", "0.3", "--no-random-start")
    for f, p in zip(fgsm, one, strict=True):
        assert (p["correct"], p["fool_source"], p["fool_both"]) == (
            f["correct"], f["fool_source"], f["fool_both"])
        assert p["method"] == "pgd" and f["method"] == "fgsm"
    pgd = icl_json("attack", *common, "--eps", "0.3", "--method", "pgd", "--steps", "5",
                   "--restarts", "2")
    for r in pgd:
        assert r["n"] == 2000
        assert r["robust_accuracy"] == pytest.approx((r["correct"] - r["fool_source"]) / 2000)
    # More steps find at least as many adversarial examples as the single signed step.
    assert pgd[0]["fool_source"] >= fgsm[0]["fool_source"]
    store = Store.open(ws)
    by = {(a.method, a.params and a.params["steps"]): a for a in store.attacks("icl")}
    rec = by[("pgd", 5)]
    assert rec.params == {"steps": 5, "step_size": pytest.approx(2.5 * 0.3 / 5),
                          "restarts": 2, "random_start": True, "seed": 0}
    assert rec.counts["a_made"] == [pgd[0]["correct"], pgd[0]["fool_source"],
                                    pgd[0]["fool_both"]]
    rows = {r["experiment"]: r for r in icl_json("report", "-w", ws, "--no-plot")}
    assert {a["method"] for a in rows["icl"]["attacks"]} == {"fgsm", "pgd"}


def test_attack_limit_uses_the_first_test_images_and_is_recorded(ws):
    common = ["-w", ws, "-e", "icl", "--round", "0", "--against", "base:0", "--eps", "0.3",
              *COMMON]
    whole = icl_json("attack", *common)
    part = icl_json("attack", *common, "--limit", "300")
    assert [r["n"] for r in whole] == [2000, 2000] and [r["n"] for r in part] == [300, 300]
    # FGSM is per image: the first 300 images' counts can only be fewer than all 2,000's.
    for w, p in zip(whole, part, strict=True):
        assert 0 < p["correct"] < w["correct"] and p["fool_source"] <= w["fool_source"]
    rec = [a for a in Store.open(ws).attacks("icl") if a.method == "fgsm"][0]
    assert rec.params == {"limit": 300} and rec.counts["n"] == 300


@pytest.mark.parametrize("args, message", [
    (["--method", "cw"], "--method must be fgsm or pgd"),
    (["--limit", "0"], "--limit must be >= 1 test image"),
    (["--method", "pgd", "--steps", "0"], "--steps and --restarts must be >= 1"),
    (["--method", "pgd", "--step-size", "2"], "--step-size is in pixel units"),
])
def test_pgd_bad_settings_are_one_line(ws, args, message):
    out = icl("attack", "-w", ws, "-e", "icl", "--round", "0", "--against", "base:0",
              *args, *COMMON, code=3)
    assert message in out.stderr and "Traceback" not in out.output


def write_images(folder, images):
    """A minimal MNIST-layout folder whose test images are ``images`` (N, 28, 28)."""
    folder.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.zeros(len(images)))


def test_ood_scores_every_set_and_records_them(ws, tmp_path, monkeypatch):
    import torch

    import icl_cli.steps.ood as ood_step

    drawn = []  # each run's generated sets, as the step made them
    made = ood_step.generated_sets
    monkeypatch.setattr(ood_step, "generated_sets",
                        lambda *a, **k: drawn.append(made(*a, **k)) or drawn[-1])
    rng = np.random.default_rng(0)
    write_images(tmp_path / "noise", rng.integers(0, 256, (50, 28, 28)))
    rows = icl_json("ood", "-w", ws, "-e", "icl", "--round", "0", "--ood-root",
                    tmp_path / "noise", *COMMON)
    sets = {r["set"] for r in rows}
    assert sets == {"uniform", "gaussian", "constant", "rotate90", "flip", "invert", "blend",
                    "idx_noise"}
    assert {r["score"] for r in rows} == {"max_softmax", "max_logit", "logsumexp"}
    for r in rows:
        assert 0 <= r["auroc"] <= 1 and 0 <= r["aupr"] <= 1 and 0 <= r["fpr95"] <= 1
    assert next(r for r in rows if r["set"] == "idx_noise")["n"] == 50
    m = Store.open(ws).metrics("icl")[0]
    one = next(r for r in rows if r["set"] == "uniform" and r["score"] == "logsumexp")
    assert m["ood_uniform_logsumexp_auroc"] == pytest.approx(one["auroc"])
    png = ws / "experiments" / "icl" / "figures" / "ood-round-0000.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| icl | 0 | uniform |" in icl("report", "-w", ws, "--no-plot").stdout
    # Another seed draws other noise: the generated sets follow --seed. (Not read from a
    # score: a net can tell uniform noise from digits perfectly at either seed.)
    other = icl_json("ood", "-w", ws, "-e", "icl", "--round", "0", "--seed", "1",
                     "--no-plot", *COMMON)
    first, second = drawn
    for name in ("uniform", "gaussian", "constant", "blend"):
        assert not torch.equal(first[name], second[name]), name
    assert torch.equal(first["flip"], second["flip"])  # the test images, no draw
    auroc = {(r["set"], r["score"]): r["auroc"] for r in rows}
    assert all(auroc[("flip", r["score"])] == r["auroc"] for r in other if r["set"] == "flip")
    # --limit: the first N test images against N of each set, recorded.
    few = icl_json("ood", "-w", ws, "-e", "icl", "--round", "0", "--limit", "300",
                   "--no-plot", *COMMON)
    n = {r["set"]: r["n"] for r in few}
    assert n["uniform"] == n["flip"] == 300 and 0 < n["blend"] <= 300
    assert Store.open(ws).metrics("icl")[0]["ood_test_images"] == 300
    assert any(r["auroc"] != auroc[(r["set"], r["score"])] for r in few)


def test_ood_root_of_another_shape_is_refused(ws, tmp_path):
    (tmp_path / "missing").mkdir()
    out = icl("ood", "-w", ws, "-e", "icl", "--round", "0", "--ood-root",
              tmp_path / "missing", *COMMON, code=3)
    assert "is missing" in out.stderr and "Traceback" not in out.output


def test_ood_root_needs_only_its_test_images(ws, tmp_path):
    """An IDX folder holding only ``t10k-images-idx3-ubyte`` is an OOD set: the training
    files and the labels are never read."""
    rng = np.random.default_rng(1)
    (tmp_path / "only-test").mkdir()
    write_idx(tmp_path / "only-test" / "t10k-images-idx3-ubyte.gz",
              rng.integers(0, 256, (30, 28, 28)))
    rows = icl_json("ood", "-w", ws, "-e", "icl", "--round", "0", "--ood-root",
                    tmp_path / "only-test", "--no-plot", *COMMON)
    assert {r["n"] for r in rows if r["set"] == "idx_only-test"} == {30}


def test_an_ood_set_with_no_images_is_refused_not_scored(ws, tmp_path):
    """No AUROC of 0.0 recorded for a set with nothing in it: an empty IDX folder, or a
    --limit that leaves no two test images of different classes to blend."""
    before = Store.open(ws).metrics("icl")
    write_images(tmp_path / "empty", np.zeros((0, 28, 28)))
    out = icl("ood", "-w", ws, "-e", "icl", "--round", "0", "--ood-root", tmp_path / "empty",
              *COMMON, code=3)
    assert "holds no images; an out-of-distribution set needs at least one" in out.stderr
    out = icl("ood", "-w", ws, "-e", "icl", "--round", "0", "--limit", "1", *COMMON, code=3)
    assert "the out-of-distribution set blend has no images" in out.stderr
    assert "Traceback" not in out.output and Store.open(ws).metrics("icl") == before


def test_pgd_at_eps_0_runs_no_steps_and_measures_the_clean_accuracy(ws):
    """At eps 0 no step can move an image: the attack is the clean test set, at once,
    whatever --steps and --restarts say (it ran steps x restarts passes before)."""
    import time

    t0 = time.monotonic()
    rows = icl_json("attack", "-w", ws, "-e", "icl", "--round", "0", "--against", "base:0",
                    "--method", "pgd", "--eps", "0", "--steps", "10000", "--restarts", "10",
                    *COMMON)
    assert time.monotonic() - t0 < 60
    [test] = [e for e in icl_json("evaluate", "-w", ws, "-e", "icl", "--round", "0",
                                  "--no-plot", *COMMON) if e["split"] == "test"]
    made = next(r for r in rows if r["source"] == "icl")
    assert made["fool_source"] == 0
    assert made["robust_accuracy"] == pytest.approx(1 - test["error"])


def test_each_measure_goes_to_the_steps_tracker(ws, monkeypatch):
    logged = []

    class Recorder:
        def log_metrics(self, metrics, step):
            logged.append((step, dict(metrics)))

        def __getattr__(self, name):  # anything else a step asks of a tracker: a no-op
            return lambda *a, **k: None

    monkeypatch.setattr(Store, "tracker", lambda self, name, enabled=True: Recorder())
    # --force: the step runs (and logs) even where an earlier test recorded its result.
    common = ["-w", ws, "-e", "icl", "--round", "0", "--threads", "1", "--device", "cpu",
              "--force"]
    icl("evaluate", *common, "--no-plot")
    icl("ood", *common, "--no-plot")
    icl("attack", *common, "--against", "base:0", "--method", "pgd", "--eps", "0.2",
        "--steps", "2")
    names = {k for step, m in logged for k in m if step == 0}
    assert {"test_nll", "test_ece", "val_nll", "val_ece", "test_error"} <= names
    assert {"ood_uniform_max_softmax_auroc", "ood_blend_logsumexp_fpr95"} <= names
    assert {"pgd_eps0.2_robust_accuracy", "pgd_eps0.2_fool_self"} <= names


def test_quality_scores_each_shard_with_a_reference_net(ws):
    empty = icl("quality", "-w", ws, "-e", "base", *COMMON, code=3)
    assert "has no shards yet" in empty.stderr
    icl("synthesize", "-w", ws, "-e", "icl", "--round", "1", *COMMON)
    q = icl_json("quality", "-w", ws, "-e", "icl", "--epochs", "2", *COMMON)
    [r] = q["rounds"]
    assert r["round"] == 1 and r["count"] == 40
    assert 0 <= r["target_share"] <= 1 and 0 < r["confidence"] < 1
    assert r["frechet"] > q["real_frechet"] > 0  # noise-born samples are further than data
    assert len(q["reference_sha256"]) == 64 and q["reference_test_error"] < 0.9  # > chance
    m = Store.open(ws).metrics("icl")
    assert m[1]["quality_frechet"] == pytest.approx(r["frechet"])
    assert m[0]["quality_reference_test_error"] == pytest.approx(q["reference_test_error"])
    png = ws / "experiments" / "icl" / "figures" / "quality-vs-round.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The reference is trained once and cached: the same settings reuse its file (also
    # for the baseline, which shares the subset), --epochs trains another.
    [cached] = (ws / ".icl" / "references").glob("*.pt")
    made = cached.stat().st_mtime_ns
    again = icl_json("quality", "-w", ws, "-e", "icl", "--epochs", "2", "--no-plot", *COMMON)
    assert again["reference_sha256"] == q["reference_sha256"]
    assert again["reference_test_error"] == q["reference_test_error"]
    assert cached.stat().st_mtime_ns == made
    one = icl_json("quality", "-w", ws, "-e", "icl", "--epochs", "1", "--no-plot", *COMMON)
    assert one["reference_sha256"] != q["reference_sha256"]
    assert len(list((ws / ".icl" / "references").glob("*.pt"))) == 2
    # A cached net that no longer matches its hash is refused, not used.
    cached.write_bytes(cached.read_bytes()[:-8] + bytes(8))
    bad = icl("quality", "-w", ws, "-e", "icl", "--epochs", "2", "--no-plot", *COMMON, code=4)
    assert "does not match its recorded sha256" in bad.stderr and "delete" in bad.stderr
