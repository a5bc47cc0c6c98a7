"""``icl ood``: how well a round's classifier tells test images from images that are not
digits, by three scores of its logits (``metrics.SCORES``), against generated sets that
need no download and any folder in MNIST's IDX layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from icl_cli import finished
from icl_cli.algo.evaluation import predict_logits
from icl_cli.config import ExperimentConfig
from icl_cli.data import read_idx
from icl_cli.errors import DataError
from icl_cli.steps.common import Runtime, StepError, experiment_data, inputs
from icl_cli.steps.evaluate import load_model

if TYPE_CHECKING:
    from store import Store

GENERATED = ("uniform", "gaussian", "constant", "rotate90", "flip", "invert", "blend")


def generated_sets(x: torch.Tensor, y: torch.Tensor, reference_std: float,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Out-of-distribution images in the input scale [-1, 1], as many as test images:
    uniform noise; Gaussian noise N(0, sigma_r^2) (the reference distribution p_r,
    unclipped, as synthesis starts from it); constant images (one uniform value each);
    the test images rotated 90 degrees, flipped left-right, pixel-inverted (-x, i.e. 1 - p
    in pixel units); blends (x_i + x_j) / 2 of two test images of different classes.
    Random draws on CPU from ``generator``, so a seed gives the same sets on any device.

    Shape: x (N, C, H, W) in [-1, 1], y (N,) -> {name: (M, C, H, W)}, M = N (blend: the
    pairs of different classes found, at most N).
    """
    n, shape = len(x), tuple(x.shape[1:])
    out = {"uniform": torch.rand((n, *shape), generator=generator) * 2 - 1,
           "gaussian": torch.randn((n, *shape), generator=generator) * reference_std,
           "constant": (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1)
           .expand(n, *shape).contiguous()}
    out = {k: v.to(x.device) for k, v in out.items()}
    if shape[1] == shape[2]:  # a quarter turn keeps the shape only for square images
        out["rotate90"] = torch.rot90(x, 1, dims=(2, 3))
    out["flip"] = torch.flip(x, dims=(3,))
    out["invert"] = -x
    partner = torch.randperm(n, generator=generator).to(x.device)
    other = y[partner] != y
    out["blend"] = (x[other] + x[partner[other]]) / 2
    return out


TEST_IMAGES = "t10k-images-idx3-ubyte"  # what --ood-root reads of an MNIST-layout folder


def idx_file(root: Path) -> Path | None:
    """The test-image file ``idx_set`` reads of an MNIST-layout folder, or None."""
    root = Path(root).expanduser()
    return next((c for folder in (root, root / "MNIST" / "raw")
                 for c in (folder / f"{TEST_IMAGES}.gz", folder / TEST_IMAGES)
                 if c.is_file()), None)


def idx_set(root: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The test images (``t10k-images-idx3-ubyte[.gz]``, in ``root`` or ``root/MNIST/raw``)
    of an MNIST-layout folder, uint8 (N, 1, H, W), read as ``--dataset idx`` reads them;
    nothing else of the folder is needed (no training files, no labels). They must have
    the model's input shape, and there must be at least one."""
    root = Path(root).expanduser()
    places = (root, root / "MNIST" / "raw")
    found = idx_file(root)
    if found is None:
        raise DataError(f"--ood-root {root} is missing {TEST_IMAGES}[.gz] (looked in "
                        f"{places[0]} and {places[1]}; only the test images are read)")
    raw = read_idx(found)
    if raw.ndim != 3:
        raise DataError(f"--ood-root {root}: {found.name} holds an array of shape "
                        f"{raw.shape}, not images (N, H, W)")
    images = torch.from_numpy(raw).unsqueeze(1)
    if len(images) == 0:
        raise StepError(f"--ood-root {root}: {found.name} holds no images; an "
                        "out-of-distribution set needs at least one")
    if tuple(images.shape[1:]) != tuple(shape):
        raise StepError(f"--ood-root {root}: images are {tuple(images.shape[1:])}, the "
                        f"model takes {tuple(shape)}")
    return images


def set_name(root: Path) -> str:
    """A metric-safe name for an IDX folder: idx_<folder>, at most 30 characters."""
    return "idx_" + re.sub(r"[^A-Za-z0-9]+", "-", root.expanduser().resolve().name)[:26]


@dataclass(frozen=True)
class OodResult:
    """One set against the test images, one score: auroc, aupr (in-distribution as the
    positive class) and fpr95 (share of the set above the 95 %-TPR threshold); n images."""

    experiment: str
    round: int
    set: str
    score: str
    auroc: float
    aupr: float
    fpr95: float
    n: int
    reused: bool = False  # answered from the record of an earlier run (icl_cli.finished)


def ood(store: Store, name: str, round_: int, runtime: Runtime, roots: list[Path] | None = None,
        seed: int = 0, plot: bool = True, limit: int | None = None) -> list[OodResult]:
    """AUROC, AUPR, FPR95 of each score for each set at round t, recorded as round metrics
    ``ood_<set>_<score>_<auroc|aupr|fpr95>`` (catalog, MLflow); a histogram PNG.
    ``limit``: the first ``limit`` test images (and as many of each set), None: all."""
    from icl_cli.metrics import detection, ood_scores

    if limit is not None and limit < 1:
        raise StepError(f"--limit must be >= 1 test image, got {limit}")
    device = runtime.apply()
    exp = store.experiment(name)
    cfg, model = load_model(store, exp.name, round_, device)
    data = experiment_data(exp, store)
    x, y = inputs(data.test.images[:limit], device), data.test.labels[:limit].to(device)
    sets = generated_sets(x, y, ExperimentConfig.from_dict(exp.config).sampler.reference_std,
                          torch.Generator().manual_seed(seed))
    for root in roots or []:
        sets[set_name(Path(root))] = inputs(idx_set(Path(root), data.shape)[:limit], device)
    read = [(store.checkpoint(exp.name, round_).path, store.checkpoint(exp.name, round_).sha256)]
    read += [(idx_file(Path(root)), None) for root in roots or []]
    empty = [k for k, v in sets.items() if len(v) == 0]
    if empty:  # a score against no images is no result (AUROC would read 0.0)
        why = " (no two of the test images taken are of different classes)" \
            if empty == ["blend"] else ""
        raise StepError(f"the out-of-distribution set {', '.join(empty)} has no images"
                        f"{why}; use a larger --limit: nothing was recorded")
    with torch.no_grad():
        s_in = ood_scores(predict_logits(model, x))
        s_out = {k: ood_scores(predict_logits(model, v)) for k, v in sets.items()}
    results = []
    for set_, scores in s_out.items():
        for score, values in scores.items():
            d = detection(s_in[score], values)
            results.append(OodResult(exp.name, round_, set_, score, d.auroc, d.aupr,
                                     d.fpr95, len(values)))
    metrics = {f"ood_{r.set}_{r.score}_{m}": getattr(r, m)
               for r in results for m in ("auroc", "aupr", "fpr95")}
    metrics["ood_test_images"] = len(y)
    store.record_metrics(exp.name, round_, metrics)
    store.tracker(exp.name, enabled=runtime.mlflow).log_metrics(metrics, step=round_)
    if plot:
        from icl_cli.steps.report import plot_histograms

        def cpu(d):
            return {k: v.cpu().numpy() for k, v in d.items()}

        read.append((plot_histograms(store, exp.name, round_, cpu(s_in),
                                     {k: cpu(v) for k, v in s_out.items()},
                                     f"ood-round-{round_:04d}.png"), None))
    finished.record(store, exp, "ood",
                    finished.ood_key(store, exp, round_, roots, seed, plot, limit), read,
                    results, data=True)
    return results
