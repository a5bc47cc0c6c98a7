"""``icl quality``: how convincing each round's pseudo-negatives are to a classifier that is
not the one that drew them.

A reference classifier of a different architecture (an MLP on the pixels, not a CNN) is
trained on the experiment's real training set (once: it is cached in the workspace, keyed by
the data fingerprint and its own settings, so the paired experiments of one subset share
it; ``store.references``); for each active shard it reports the share
of samples it assigns to their target class, its mean confidence in that class, and the
"classifier-feature Frechet distance" between the shard and the real test images in its
penultimate-layer features (FID's formula on this net's features; not FID, which needs
Inception weights and ImageNet-sized images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from icl_cli import finished
from icl_cli.steps.common import Runtime, StepError, experiment_data, inputs

if TYPE_CHECKING:
    from store import Store


class ReferenceMLP(nn.Module):
    """Flatten -> 512 -> 256 (features) -> K, ReLU: deliberately not a conv net, so it does
    not share the sampled network's inductive biases."""

    def __init__(self, in_features: int, num_classes: int, width: int = 512) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),
                                  nn.Linear(width, width // 2), nn.ReLU())
        self.head = nn.Linear(width // 2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_reference(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 10,
                    seed: int = 0, batch: int = 64) -> ReferenceMLP:
    """The reference classifier: Adam (lr 1e-3) on cross-entropy, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ReferenceMLP(x[0].numel(), num_classes).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            idx = idx.to(x.device)
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def _reference_spec(exp, x: torch.Tensor, num_classes: int, epochs: int, seed: int) -> dict:
    """What the reference net is a function of (its cache key is this spec's hash)."""
    return {"net": "reference-mlp", "width": 512, "in_features": x[0].numel(),
            "num_classes": num_classes, "epochs": epochs, "seed": seed,
            "data": exp.data_fingerprint or exp.name}


def reference_file(store: Store, exp, x: torch.Tensor, num_classes: int, epochs: int,
                   seed: int) -> Path:
    """Where the workspace caches this reference net."""
    from store.references import reference_key, reference_path

    spec = _reference_spec(exp, x, num_classes, epochs, seed)
    return reference_path(store.root, reference_key(spec))


def cached_reference(store: Store, exp, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                     epochs: int, seed: int) -> tuple[ReferenceMLP, str, bool]:
    """The experiment's reference net from the workspace's cache, trained and cached first
    when it is not there; returns (net, the file's sha256, whether it was trained now)."""
    from store.references import load_reference, reference_key, save_reference

    spec = _reference_spec(exp, x, num_classes, epochs, seed)
    key = reference_key(spec)
    net = ReferenceMLP(x[0].numel(), num_classes).to(x.device)
    cached = load_reference(store, key)
    if cached is not None:
        state, sha = cached
        net.load_state_dict(state["model"])
        return net.eval(), sha, False
    net = train_reference(x, y, num_classes, epochs, seed)
    state = {"model": {k: v.cpu() for k, v in net.state_dict().items()}, "meta": spec}
    return net, save_reference(store, key, state), True


@dataclass(frozen=True)
class RoundQuality:
    """One round's active shard as the reference sees it: target_share, the share of
    samples it assigns to their target class; confidence, its mean softmax probability of
    the target class; frechet, the classifier-feature Frechet distance to the test set."""

    round: int
    version: int
    count: int
    target_share: float
    confidence: float
    frechet: float


@dataclass(frozen=True)
class Quality:
    experiment: str
    reference: str  # the reference net, by name
    reference_sha256: str
    reference_test_error: float
    real_frechet: float  # train vs test features: the distance of real data to itself
    rounds: list[RoundQuality]
    reused: bool = False  # answered from the record of an earlier run (icl_cli.finished)


def quality(store: Store, name: str, runtime: Runtime, epochs: int = 10, seed: int = 0,
            plot: bool = True) -> Quality:
    """Per-round sample quality of ``name``'s active shards (catalog: round metrics
    ``quality_target_share``, ``quality_confidence``, ``quality_frechet``; MLflow; a PNG
    of the three against the round)."""
    from icl_cli.metrics import frechet_distance

    device = runtime.apply()
    exp = store.experiment(name)
    shards = store.shards(exp.name, active_only=True)
    if not shards:
        raise StepError(f"'{exp.name}' has no shards yet: run `icl synthesize --round 1`")
    data = experiment_data(exp, store)
    x_tr, y_tr = inputs(data.train.images, device), data.train.labels.to(device)
    x_te, y_te = inputs(data.test.images, device), data.test.labels.to(device)
    net, sha, _ = cached_reference(store, exp, x_tr, y_tr, data.num_classes, epochs, seed)
    with torch.no_grad():
        test_error = float((net(x_te).argmax(1) != y_te).float().mean())
        f_test = net.features(x_te)
        real = frechet_distance(net.features(x_tr), f_test)
        rounds = []
        for info in shards:
            a = store.read_shard(info)
            x = torch.from_numpy(a["samples"]).float().to(device)
            k = torch.from_numpy(a["target"]).long().to(device)
            p = net(x).softmax(1)
            rounds.append(RoundQuality(
                info.round, info.version, len(k), float((p.argmax(1) == k).float().mean()),
                float(p.gather(1, k[:, None]).mean()),
                frechet_distance(net.features(x), f_test)))
    tracker = store.tracker(exp.name, enabled=runtime.mlflow)
    tracker.log_params({"quality_reference_sha256": sha, "quality_reference_epochs": epochs,
                        "quality_reference_seed": seed})
    store.record_metrics(exp.name, 0, {"quality_reference_test_error": test_error,
                                       "quality_real_frechet": real})
    for r in rounds:
        m = {"quality_target_share": r.target_share, "quality_confidence": r.confidence,
             "quality_frechet": r.frechet}
        store.record_metrics(exp.name, r.round, m)
        tracker.log_metrics(m, step=r.round)
    read = [(info.path, info.sha256) for info in shards]
    read.append((reference_file(store, exp, x_tr, data.num_classes, epochs, seed), sha))
    if plot:
        from icl_cli.steps.report import plot_quality

        read.append((plot_quality(store, exp.name, rounds, real), None))
    result = Quality(exp.name, "reference-mlp", sha, test_error, real, rounds)
    finished.record(store, exp, "quality", finished.quality_key(store, exp, epochs, seed, plot),
                    read, result, data=True)
    return result
