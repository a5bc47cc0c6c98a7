"""Every option of ``icl init`` does what it says: for each one, changing it changes what it
claims to change (and, where a control is needed, leaving it alone changes nothing).

All experiments run a tiny net on small slices of data with one CPU thread. Most share one
module workspace: a baseline ``base`` (C_0 trained on 200 embedded-MNIST images) and ``ref``,
an ICL experiment started ``--from base:0`` whose round 1 is synthesized and reclassified.
An option of the reclassify or synthesize step is tested by a second experiment started
``--from base:0`` that differs from ``ref`` in that option alone.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cli.config import DataConfig
from icl_cli.data import load
from icl_cli.models import build_model
from store import Store
from tests.kit import COMMON, flags, icl, icl_json, write_folder, write_idx

# Settings of a C_0 trained from scratch, and of the sampler of ``ref``-like experiments.
INIT = {"arch": "tiny", "train_size": 200, "val_size": 100, "init_epochs": 1, "epochs": 1}
SAMPLER = {"count": 2, "max_steps": 8, "sampler_lr": 0.05}
RUNTIME = ["--device", "cpu"]  # COMMON without --threads / --no-mlflow, for those tests
MNIST_SHAPE = (1, 28, 28)


def fresh(ws, name: str, *extra, method: str = "baseline", **changes):
    """A new experiment whose C_0 is trained from scratch with INIT plus ``changes``."""
    return icl("init", "-w", ws, "-e", name, "--method", method, *flags({**INIT, **changes}),
               *extra, *COMMON)


def paired(ws, name: str, *extra, method: str = "icl", synthesize: bool = True,
           reclassify: bool = True, **changes):
    """A new experiment started --from base:0 with SAMPLER plus ``changes`` (train and
    sampler options); round 1 synthesized and reclassified unless told otherwise."""
    icl("init", "-w", ws, "-e", name, "--method", method, "--from", "base:0",
        *flags({**SAMPLER, **changes}), *extra, *COMMON)
    if synthesize and method != "baseline":
        icl("synthesize", "-w", ws, "-e", name, "--round", 1, *COMMON)
    if reclassify:
        icl("reclassify", "-w", ws, "-e", name, "--round", 1, *COMMON)


def state(ws, name: str, round_: int = 0) -> dict:
    """The whole checkpoint dict of ``name`` at ``round_``."""
    with Store.open(ws) as st:
        info = st.checkpoint(name, round_)
        assert info is not None, f"{name} has no checkpoint {round_}"
        return st.load_checkpoint(info)


def weights(ws, name: str, round_: int = 0) -> dict[str, torch.Tensor]:
    return state(ws, name, round_)["model"]


def same(a: dict, b: dict) -> bool:
    """Bit-identical state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def shapes(sd: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def expected_shapes(arch: str, shape, k: int, mode: str = "softmax"):
    return shapes(build_model(arch, shape, k, mode).state_dict())


def group(ws, name: str, round_: int) -> dict:
    """The optimizer's param group stored with the checkpoint (lr, weight_decay, ...)."""
    [g] = state(ws, name, round_)["optimizer"]["param_groups"]
    return g


def fingerprint(ws, name: str) -> str:
    with Store.open(ws) as st:
        fp = st.experiment(name).data_fingerprint
    assert fp, f"{name} has no data fingerprint"
    return fp


def config(ws, name: str) -> dict:
    with Store.open(ws) as st:
        return st.experiment(name).config


def shard(ws, name: str, round_: int = 1) -> dict[str, np.ndarray]:
    with Store.open(ws) as st:
        info = st.active_shard(name, round_)
        assert info is not None, f"{name} has no shard for round {round_}"
        return st.read_shard(info)


def same_shard(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def evaluations(ws, name: str, round_: int = 0) -> dict[str, int]:
    """{split: n} of the evaluations recorded for ``round_``."""
    with Store.open(ws) as st:
        return {e.split: e.n for e in st.evaluations(name) if e.round == round_}


def write_idx_folder(root: Path, n_train: int, n_test: int, k: int, hw=(28, 28)) -> Path:
    """An MNIST-layout folder of random images, labels 0..k-1 in turn."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(k)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, *hw)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % k)
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("options")
    fresh(ws, "base")  # seed 0 (the default)
    paired(ws, "ref")
    return ws


@pytest.fixture(scope="module")
def seeded(ws):
    """C_0 of --seed 0 and --seed 1, ICL experiments trained from scratch (the module's
    baseline ``base`` is the other C_0 of seed 0)."""
    fresh(ws, "s0", method="icl", seed=0)
    fresh(ws, "s1", method="icl", seed=1)
    return ws


@pytest.fixture(scope="module")
def idx28(tmp_path_factory):
    """28x28, 10 classes: 40 training images (4 a class), 30 test images."""
    return write_idx_folder(tmp_path_factory.mktemp("idx28"), 40, 30, 10)


# ------------------------------------------------------------------- data options


def test_seed_draws_the_data_and_the_weights(seeded):
    ws = seeded
    # The same seed twice: the same images and bit-identical C_0 (the control for every
    # "differs" below). The baseline, of the default seed 0, trained that C_0 too.
    assert fingerprint(ws, "s0") == fingerprint(ws, "base")
    assert same(weights(ws, "s0"), weights(ws, "base"))
    # Another seed: another training subset / validation split, and other weights.
    assert fingerprint(ws, "s1") != fingerprint(ws, "s0")
    assert not same(weights(ws, "s1"), weights(ws, "s0"))
    assert config(ws, "s1")["seed"] == 1 and config(ws, "s1")["data"]["seed"] == 1
    s0, s1 = (load(DataConfig.from_dict(config(ws, n)["data"])) for n in ("s0", "s1"))
    assert not torch.equal(s0.train.images, s1.train.images)
    assert not torch.equal(s0.val.images, s1.val.images)
    # `icl status --json` carries the fingerprint the store recorded.
    rows = {r["experiment"]: r for r in icl_json("status", "-w", ws)["experiments"]}
    assert rows["s1"]["data_fingerprint"] == fingerprint(ws, "s1") == s1.fingerprint


def test_data_seed_draws_only_the_data(seeded):
    ws = seeded
    fresh(ws, "s0-data1", method="icl", seed=0, data_seed=1)
    assert fingerprint(ws, "s0-data1") == fingerprint(ws, "s1")
    assert fingerprint(ws, "s0-data1") != fingerprint(ws, "s0")
    # Same images as --seed 1, but weights and batch order still come from --seed 0.
    assert not same(weights(ws, "s0-data1"), weights(ws, "s1"))
    assert not same(weights(ws, "s0-data1"), weights(ws, "s0"))
    cfg = config(ws, "s0-data1")
    assert cfg["seed"] == 0 and cfg["data"]["seed"] == 1


@pytest.mark.parametrize("train_size, val_size", [(150, 50), (100, 0)])
def test_train_and_val_size(ws, train_size, val_size):
    name = f"size-{train_size}-{val_size}"
    fresh(ws, name, train_size=train_size, val_size=val_size)
    # Validation is evaluated on val_size images (no "val" row when there is none).
    assert evaluations(ws, name) == {"test": 2000, **({"val": val_size} if val_size else {})}
    # C_0 was trained on train_size real images per epoch.
    assert [h["samples"] for h in state(ws, name)["history"]] == [train_size]
    data = load(DataConfig.from_dict(config(ws, name)["data"]))
    assert len(data.train) == train_size
    assert (len(data.val) if data.val is not None else 0) == val_size
    assert fingerprint(ws, name) != fingerprint(ws, "base")


def test_dataset_picks_the_data(ws):
    names = {"mnist-embedded": "base"}
    for dataset in ("fake-cifar10", "fake-svhn"):
        name = names[dataset] = f"data-{dataset}"
        # fake-* hold 200 training and 100 test images of 3x32x32.
        fresh(ws, name, dataset=dataset, method="icl", train_size=100, val_size=50,
              count=1, max_steps=2)
        assert shapes(weights(ws, name)) == expected_shapes("tiny", (3, 32, 32), 10)
        assert evaluations(ws, name) == {"test": 100, "val": 50}
        icl("synthesize", "-w", ws, "-e", name, "--round", 1, *COMMON)
        assert shard(ws, name)["samples"].shape == (10, 3, 32, 32)
    assert shapes(weights(ws, "base")) == expected_shapes("tiny", MNIST_SHAPE, 10)
    assert shard(ws, "ref")["samples"].shape == (20, *MNIST_SHAPE)
    assert len({fingerprint(ws, n) for n in names.values()}) == 3


@pytest.mark.parametrize("dataset", ["idx", "mnist"])
def test_data_root_reads_that_folder(ws, tmp_path, dataset):
    # Two folders that differ in everything a network can see: image size, classes, counts.
    (tmp_path / "small").mkdir()
    small = write_folder(tmp_path / "small", n_train=40, n_test=20, k=4)  # 5x6, 4 classes
    large = write_idx_folder(tmp_path / "large", 40, 30, 10)  # 28x28, 10 classes
    for folder, shape, k, n_test in ((small, (1, 5, 6), 4, 20), (large, MNIST_SHAPE, 10, 30)):
        name = f"root-{dataset}-{folder.name}"
        fresh(ws, name, dataset=dataset, data_root=folder, train_size=20, val_size=8)
        assert shapes(weights(ws, name)) == expected_shapes("tiny", shape, k)
        assert evaluations(ws, name) == {"test": n_test, "val": 8}
        assert config(ws, name)["data"]["root"] == str(folder)
    assert fingerprint(ws, f"root-{dataset}-small") != fingerprint(ws, f"root-{dataset}-large")


def test_download_is_recorded_and_passed_to_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:  # never downloads: 40 training and 20 test images of 10 classes
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            n = 40 if train else 20
            self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), np.uint8)
            self.targets = [i % 10 for i in range(n)]

    # icl_cli.data imports torchvision.datasets.CIFAR10 when it loads cifar10: hand it this
    # one (a stand-in package also spares the test torchvision's import time).
    vision, datasets = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    vision.datasets, datasets.CIFAR10 = datasets, FakeCIFAR10
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    root, ws = tmp_path / "cifar", tmp_path / "ws"
    args = ["-w", ws, "--dataset", "cifar10", "--data-root", root,
            *flags({**INIT, "train_size": 20, "val_size": 10}), *COMMON]
    # Without --download the files must be there already: torchvision is not asked.
    out = icl("init", "-e", "offline", *args, code=3)
    assert "--download" in out.stderr and calls == []
    assert not (ws / ".icl").exists()
    icl("init", "-e", "online", "--download", *args)
    assert calls == [(str(root), True, True), (str(root), False, True)]
    assert config(ws, "online")["data"]["download"] is True
    assert evaluations(ws, "online") == {"test": 20, "val": 10}


# ------------------------------------------------------- C_0 (round-0) training options

ROUND_ZERO = {
    "augment": ({"augment": True}, None),
    "lr": ({"lr": 0.05}, ("lr", 0.05)),
    "batch-size": ({"batch_size": 32}, None),
    "weight-decay": ({"weight_decay": 0.01}, ("weight_decay", 0.01)),
    "clip-grad": ({"clip_grad": 0.01}, None),
}


@pytest.mark.parametrize("option", ROUND_ZERO)
def test_training_option_changes_c0(ws, option):
    changes, recorded = ROUND_ZERO[option]
    name = f"c0-{option}"
    fresh(ws, name, **changes)
    assert fingerprint(ws, name) == fingerprint(ws, "base")  # the same images ...
    assert not same(weights(ws, name), weights(ws, "base"))  # ... other weights
    if recorded:
        key, value = recorded
        assert group(ws, name, 0)[key] == pytest.approx(value)
        assert group(ws, "base", 0)[key] != pytest.approx(value)


def test_amp_trains_under_bf16_autocast(ws):
    # --amp claims bf16 autocast for reclassification (and synthesis); torch autocasts on
    # CPU too, so C_0 trained with it differs from the fp32 one. It is a run-time setting:
    # not part of the experiment's config.
    fresh(ws, "c0-amp", "--amp")
    assert not same(weights(ws, "c0-amp"), weights(ws, "base"))
    assert config(ws, "c0-amp") == config(ws, "base")


@pytest.mark.parametrize("epochs", [1, 2])
def test_init_epochs_is_the_length_of_c0_training(ws, epochs):
    name = f"init-epochs-{epochs}"
    fresh(ws, name, init_epochs=epochs)
    assert [h["samples"] for h in state(ws, name)["history"]] == [200] * epochs


@pytest.mark.parametrize("zero", ["init-epochs", "epochs"])
def test_zero_epochs_is_refused_up_front(ws, zero):
    if zero == "init-epochs":
        out = icl("init", "-w", ws, "-e", "zero-init", *flags({**INIT, "init_epochs": 0}),
                  *COMMON, code=None)
        words = "--init-epochs is out of range (0)"
    else:
        out = icl("init", "-w", ws, "-e", "zero-epochs", "--method", "baseline", "--from",
                  "base:0", "--epochs", 0, *COMMON, code=None)
        words = "--epochs and --real-epochs are both 0"
    assert out.code == 3 and words in out.stderr, out.stderr
    assert "zero" not in json.dumps(icl_json("status", "-w", ws)["experiments"])


# ----------------------------------------------------- round-t (reclassify) options


def test_paired_round_one_repeats_bit_for_bit(ws):
    # The control for the tests below: an experiment started --from the same C_0 with the
    # same options draws the same shard and trains the same round-1 weights.
    paired(ws, "ref-again")
    assert same(weights(ws, "ref-again"), weights(ws, "base"))
    assert same_shard(shard(ws, "ref-again"), shard(ws, "ref"))
    assert same(weights(ws, "ref-again", 1), weights(ws, "ref", 1))


RECLASSIFY = {
    "pn-weight": {"pn_weight": 3.0},
    "pn-weighting": {"pn_weighting": "batch-mean"},
    "pn-weighting-drawn": {"pn_weighting": "drawn"},
    "clip-grad": {"clip_grad": 0.01},
    "lr": {"lr": 0.05},
    "weight-decay": {"weight_decay": 0.01},
    "batch-size": {"batch_size": 32},
}


@pytest.mark.parametrize("option", list(RECLASSIFY))
def test_reclassify_option_changes_round_one(ws, option):
    changes = RECLASSIFY[option]
    name = f"r1-{option}"
    paired(ws, name, **changes)
    assert same_shard(shard(ws, name), shard(ws, "ref"))  # the same inputs ...
    assert not same(weights(ws, name, 1), weights(ws, "ref", 1)), \
        f"--{option} left the round-1 weights as they are without it"  # ... other weights
    (key, value), = changes.items()
    assert config(ws, name)["train"][key] == value != config(ws, "ref")["train"][key]
    if key in ("lr", "weight_decay"):  # what the round-1 optimizer ran with
        assert group(ws, name, 1)[key] == pytest.approx(value)


def test_pn_recency_weighs_the_rounds_of_the_drawn_pool(ws):
    """--pn-recency changes which pseudo-negatives are drawn once the pool holds two
    rounds; with one round it changes nothing (every draw is of that round)."""
    for name, extra in (("drawn-r05", {}), ("drawn-r1", {"pn_recency": 1.0})):
        paired(ws, name, pn_weighting="drawn", **extra)
        icl("synthesize", "-w", ws, "-e", name, "--round", 2, *COMMON)
        icl("reclassify", "-w", ws, "-e", name, "--round", 2, *COMMON)
    assert config(ws, "drawn-r1")["train"]["pn_recency"] == 1.0
    assert config(ws, "drawn-r05")["train"]["pn_recency"] == 0.5
    assert same(weights(ws, "drawn-r05", 1), weights(ws, "drawn-r1", 1))
    assert same_shard(shard(ws, "drawn-r05", 2), shard(ws, "drawn-r1", 2))
    assert not same(weights(ws, "drawn-r05", 2), weights(ws, "drawn-r1", 2))
    # Drawn: 200 real images and 200 pseudo-negatives an epoch, whatever the pool's size.
    assert [h["samples"] for h in state(ws, "drawn-r05", 2)["history"]] == [400]


def test_a_rounds_own_weighting_is_recorded_and_replays_bit_for_bit(ws):
    name = "round-drawn"
    paired(ws, name, reclassify=False)
    w = ["-w", ws, "-e", name]
    out = icl_json("reclassify", *w, "--round", 1, "--pn-weighting", "drawn",
                   "--pn-recency", 0.25, *COMMON)
    assert [e["samples"] for e in out["epochs"]] == [400]
    recorded = state(ws, name, 1)["inputs"]["train"]
    assert (recorded["pn_weighting"], recorded["pn_recency"]) == ("drawn", 0.25)
    assert config(ws, name)["train"]["pn_weighting"] == "per-sample"  # this round only
    assert not same(weights(ws, name, 1), weights(ws, "ref", 1))
    replay = icl("reclassify", *w, "--round", 1, "--replay", *COMMON)
    assert "matches bit for bit" in replay.stdout
    bad = icl("reclassify", *w, "--round", 1, "--pn-recency", 2, *COMMON, code=None)
    assert bad.code == 3 and "--pn-recency must be in (0, 1]" in bad.stderr


def test_an_experiment_recorded_before_a_setting_existed_is_the_same_experiment(ws):
    """A config recorded by an older icl lacks the settings added since (here
    pn_recency): `icl init` with the same options is the same experiment, and its rounds
    go on with what it recorded."""
    import sqlite3

    from store.hashing import config_hash

    fresh(ws, "old", method="icl")
    db = sqlite3.connect(ws / ".icl" / "catalog.db")
    with db:
        (raw,) = db.execute("select config from experiments where name = 'old'").fetchone()
        old = json.loads(raw)
        del old["train"]["pn_recency"]
        db.execute("update experiments set config = ?, config_hash = ? where name = 'old'",
                   (json.dumps(old), config_hash(old)))
    db.close()
    again = icl_json("init", "-w", ws, "-e", "old", "--method", "icl", *flags(INIT),
                     *COMMON)
    assert again["reused"] and "pn_recency" not in again["config"]["train"]
    other = icl("init", "-w", ws, "-e", "old", "--method", "icl",
                *flags({**INIT, "pn_weighting": "drawn"}), *COMMON, code=None)
    assert other.code != 0 and "another config" in other.stderr


@pytest.mark.parametrize("epochs, real_epochs", [(2, 0), (1, 2)])
def test_epochs_and_real_epochs_are_round_one_history(ws, epochs, real_epochs):
    name = f"epochs-{epochs}-{real_epochs}"
    paired(ws, name, epochs=epochs, real_epochs=real_epochs)
    # Mixed epochs see 200 real images plus the 20 pseudo-negatives; real epochs the 200.
    history = state(ws, name, 1)["history"]
    assert [h["samples"] for h in history] == [220] * epochs + [200] * real_epochs
    assert [h["samples"] for h in state(ws, "ref", 1)["history"]] == [220]


def test_decay_round_divides_the_lr_from_that_round_on(ws):
    name = "decay-2"
    paired(ws, name, method="baseline", reclassify=False, decay_round=2, lr=0.02)
    for t in (1, 2, 3):
        icl("reclassify", "-w", ws, "-e", name, "--round", t, *COMMON)
    lrs = [group(ws, name, t)["lr"] for t in (1, 2, 3)]
    assert lrs == pytest.approx([0.02, 0.002, 0.002])
    assert group(ws, "ref", 1)["lr"] == pytest.approx(0.01)  # default decay round 20


# ------------------------------------------------------------------ model options


def test_mode_ova_builds_one_network_per_class(ws):
    fresh(ws, "ova", mode="ova")
    ova = shapes(weights(ws, "ova"))
    assert ova == expected_shapes("tiny", MNIST_SHAPE, 10, "ova")
    assert ova != shapes(weights(ws, "base"))
    assert sum(np.prod(s) for s in ova.values()) > \
        sum(np.prod(s) for s in shapes(weights(ws, "base")).values())


@pytest.mark.parametrize("arch", ["tiny", "mnist-cnn", "resnet8", "resnet32"])
def test_arch_builds_that_network(ws, idx28, arch):
    name = f"arch-{arch}"
    fresh(ws, name, dataset="idx", data_root=idx28, train_size=20, val_size=10, arch=arch)
    got = shapes(weights(ws, name))
    assert got == expected_shapes(arch, MNIST_SHAPE, 10)
    if arch != "tiny":
        assert got != expected_shapes("tiny", MNIST_SHAPE, 10)


# ---------------------------------------------------------------- method and sampler


@pytest.mark.parametrize("method", ["baseline", "icl", "icl-noise"])
def test_method_decides_the_pseudo_negatives(ws, method):
    name = f"run-{method}"
    paired(ws, name, method=method, synthesize=False, reclassify=False)
    rows = icl_json("run", "-w", ws, "-e", name, "--rounds", 1, *COMMON)
    assert rows[1]["ran"][-2:] == ["reclassify", "evaluate"]
    with Store.open(ws) as st:
        shards = st.shards(name)
    pool = [h["samples"] for h in state(ws, name, 1)["history"]]
    if method == "baseline":
        assert shards == [] and pool == [200]
        return
    assert len(shards) == 1 and pool == [220]
    a = shard(ws, name)
    if method == "icl-noise":  # raw draws of p_r = N(0, 0.3^2): no gradient step
        assert (a["steps"] == 0).all()
        assert a["samples"].std() == pytest.approx(0.3, rel=0.1)
    else:
        assert a["steps"].max() > 0


@pytest.mark.parametrize("count", [1, 3])
def test_count_is_samples_per_class(ws, count):
    name = f"count-{count}"
    paired(ws, name, count=count, reclassify=False)
    a = shard(ws, name)
    assert len(a["samples"]) == 10 * count
    assert np.bincount(a["target"], minlength=10).tolist() == [count] * 10


@pytest.mark.parametrize("max_steps", [3, 6])
def test_max_steps_bounds_the_sampler(ws, max_steps):
    # A step size so small that some samples never pass: they stop at max_steps (the
    # parent's default would be 200).
    name = f"max-steps-{max_steps}"
    paired(ws, name, count=3, max_steps=max_steps, sampler_lr=1e-4, reclassify=False)
    a = shard(ws, name)
    assert a["steps"].max() == max_steps
    assert not a["passed"].all()


SAMPLER_OPTIONS = {
    "sampler-lr": {"sampler_lr": 0.5},
    "reference-std": {"reference_std": 0.6},
    "langevin-std": {"langevin_std": 0.1},
    "stop-rule": {"stop_rule": "argmax"},
}
SAMPLER_KEYS = {"sampler_lr": "lr"}


@pytest.mark.parametrize("option", SAMPLER_OPTIONS)
def test_sampler_option_changes_the_shard(ws, option):
    changes = SAMPLER_OPTIONS[option]
    name = f"sampler-{option}"
    paired(ws, name, reclassify=False, **changes)
    assert not np.array_equal(shard(ws, name)["samples"], shard(ws, "ref")["samples"])
    (key, value), = changes.items()
    with Store.open(ws) as st:
        recorded = st.active_shard(name, 1).sampler_config
    assert recorded[SAMPLER_KEYS.get(key, key)] == value


def test_clamp_keeps_sampler_steps_in_the_data_range(ws):
    # A big step size pushes pixels far out of [-1, 1]; --clamp holds them in.
    paired(ws, "clamp-off", sampler_lr=1.0, clamp=False, reclassify=False)
    paired(ws, "clamp-on", sampler_lr=1.0, clamp=True, reclassify=False)
    off, on = shard(ws, "clamp-off"), shard(ws, "clamp-on")
    assert config(ws, "clamp-off")["sampler"]["clamp"] is False
    assert config(ws, "clamp-on")["sampler"]["clamp"] is True
    stepped_off, stepped_on = off["steps"] > 0, on["steps"] > 0
    assert stepped_off.any() and stepped_on.any()
    assert np.abs(off["samples"][stepped_off]).max() > 1.5
    assert np.abs(on["samples"][stepped_on]).max() <= 1.0


def test_clamp_keeps_every_pseudo_negative_in_the_data_range(ws):
    paired(ws, "clamp-wide", sampler_lr=1.0, reference_std=1.0, clamp=True, reclassify=False)
    a = shard(ws, "clamp-wide")
    rows = {r["experiment"]: r for r in icl_json("report", "-w", ws, "--no-plot")}
    outside = rows["clamp-wide"]["diagnostics"]["1"]["outside_range"]
    assert np.abs(a["samples"]).max() <= 1.0 and outside == 0, (outside, a["steps"])


# ------------------------------------------------------- naming, pairing, workspace


@pytest.mark.parametrize("flag", ["-e", "--experiment"])
def test_experiment_names_it(ws, flag):
    name = f"named{flag.replace('-', '_')}"
    out = icl_json("init", "-w", ws, flag, name, "--from", "base:0", *COMMON)
    assert out["experiment"] == name
    with Store.open(ws) as st:
        assert st.experiment(name).name == name


def test_experiment_defaults_to_the_method_name(tmp_path):
    icl("init", "-w", tmp_path, "--method", "baseline", *flags(INIT), *COMMON)
    with Store.open(tmp_path) as st:
        assert [e.name for e in st.experiments()] == ["baseline"]


def test_from_copies_that_checkpoint_and_shares_the_data(ws):
    with Store.open(ws) as st:
        ref = st.experiment("ref")
    assert (ref.parent, ref.parent_round) == ("base", 0)
    assert same(weights(ws, "ref"), weights(ws, "base"))
    assert fingerprint(ws, "ref") == fingerprint(ws, "base")
    base_cfg = config(ws, "base")
    for key in ("data", "model", "seed", "init_epochs"):
        assert ref.config[key] == base_cfg[key]
    # EXPERIMENT:ROUND picks the round: C_0 is that round's weights, not round 0's.
    paired(ws, "src", method="baseline")
    icl("init", "-w", ws, "-e", "from-src-1", "--method", "icl", "--from", "src:1", *COMMON)
    assert same(weights(ws, "from-src-1"), weights(ws, "src", 1))
    assert not same(weights(ws, "from-src-1"), weights(ws, "src", 0))
    # What the pair must share cannot be changed.
    out = icl("init", "-w", ws, "-e", "from-clash", "--from", "base:0", "--seed", 1,
              *COMMON, code=3)
    assert "seed" in out.stderr


@pytest.mark.parametrize("how", ["-w", "--workspace", "ICL_WORKSPACE"])
def test_workspace_picks_the_folder(tmp_path, monkeypatch, how):
    chosen, cwd = tmp_path / "chosen", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    where = [how, chosen] if how != "ICL_WORKSPACE" else []
    if how == "ICL_WORKSPACE":
        monkeypatch.setenv("ICL_WORKSPACE", str(chosen))
    icl("init", *where, "-e", "w", "--method", "baseline", *flags(INIT), *COMMON)
    with Store.open(chosen) as st:
        assert st.experiment("w").name == "w"
    assert not (cwd / ".icl").exists()


def test_workspace_default_is_the_nearest_parent_workspace(tmp_path, monkeypatch):
    icl("init", "-w", tmp_path, "-e", "outer", "--method", "baseline", *flags(INIT),
        *COMMON)
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    icl("init", "-e", "inner", "--method", "baseline", *flags(INIT), *COMMON)
    assert not (sub / ".icl").exists()
    with Store.open(tmp_path) as st:
        assert {e.name for e in st.experiments()} == {"outer", "inner"}


def test_json_prints_one_json_document(ws):
    out = icl("init", "-w", ws, "-e", "json", "--from", "base:0", "--json", *COMMON)
    doc = json.loads(out.stdout)
    assert doc["experiment"] == "json" and doc["parent"] == "base:0"
    assert {e["split"]: e["n"] for e in doc["evaluations"]} == {"test": 2000, "val": 100}
    table = icl("init", "-w", ws, "-e", "no-json", "--from", "base:0", *COMMON)
    with pytest.raises(json.JSONDecodeError):
        json.loads(table.stdout)
    assert "no-json" in table.stdout


# -------------------------------------------------------------- run-time options


class RecordingTracker:
    """Stands in for store.tracking.Tracker: records what would go to MLflow."""

    made: list[RecordingTracker] = []

    def __init__(self, tracking_uri, artifact_location, run_name, run_id, save_run_id):
        self.tracking_uri, self.run_name, self.params = tracking_uri, run_name, {}
        self.metrics: list[dict] = []
        RecordingTracker.made.append(self)

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step):
        self.metrics.append(dict(metrics))

    def log_artifact(self, path, artifact_path=None):
        pass

    def close(self, status="FINISHED"):
        pass


def test_no_mlflow_logs_nothing(tmp_path, monkeypatch):
    import store.store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(store.store, "Tracker", RecordingTracker)
    monkeypatch.setattr(RecordingTracker, "made", [])
    args = ["-w", tmp_path, "--method", "baseline", *flags(INIT), "--threads", 1,
            *RUNTIME]
    icl("init", "-e", "quiet", "--no-mlflow", *args)
    assert RecordingTracker.made == []
    icl("init", "-e", "logged", *args)
    assert {t.run_name for t in RecordingTracker.made} == {"logged"}
    assert all(t.tracking_uri == f"sqlite:///{tmp_path / '.icl'}/mlflow.db"
               for t in RecordingTracker.made)
    assert any(t.params.get("train") == config(tmp_path, "logged")["train"]
               for t in RecordingTracker.made)
    assert any("test_error" in m for t in RecordingTracker.made for m in t.metrics)


@pytest.mark.slow  # real MLflow: ~10 s to create its database
def test_mlflow_database_written_unless_no_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    quiet, logged = tmp_path / "quiet", tmp_path / "logged"
    for folder, extra in ((quiet, ["--no-mlflow"]), (logged, [])):
        icl("init", "-w", folder, "--method", "baseline", *flags(INIT), "--threads", 1,
            *RUNTIME, *extra)
    assert not (quiet / ".icl" / "mlflow.db").exists()
    assert (logged / ".icl" / "mlflow.db").is_file()


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_sets_torch_threads(ws, threads):
    try:
        icl("init", "-w", ws, "-e", f"threads-{threads}", "--from", "base:0",
            "--threads", threads, "--no-mlflow", *RUNTIME)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(1)


def test_device_cpu_is_used_and_recorded(ws, monkeypatch):
    # Even where torch reports a GPU, --device cpu trains on the CPU (a GPU that is not
    # there would make any step that used it fail) and the step records it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fresh(ws, "device-cpu")
    with Store.open(ws) as st:
        [step] = st.steps("device-cpu", name="reclassify")
    assert step.config["device"] == "cpu" and step.state == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_device_cuda_without_a_gpu_is_refused(ws):
    out = icl("init", "-w", ws, "-e", "device-cuda", "--from", "base:0", "--no-mlflow",
              "--threads", 1, "--device", "cuda", code=3)
    assert "--device cuda" in out.stderr
    with Store.open(ws) as st:
        assert "device-cuda" not in {e.name for e in st.experiments()}


@pytest.mark.parametrize("option, value", [
    ("--method", "icl-plus"), ("--mode", "softmaxx"), ("--pn-weighting", "mean"),
    ("--stop-rule", "never"), ("--dataset", "imagenet"), ("--arch", "resnet999"),
])
def test_unknown_choice_is_refused_before_any_write(tmp_path, option, value):
    out = icl("init", "-w", tmp_path, "-e", "x", option, value, *COMMON, code=3)
    assert value in out.stderr
    assert not (tmp_path / ".icl").exists()
