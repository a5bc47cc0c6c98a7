"""``icl inspect``: what a shard holds, and a PNG grid like the paper's Figure 3."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from icl_cli import finished
from icl_cli.data import to_input
from icl_cli.steps.common import StepError, experiment_data

if TYPE_CHECKING:
    from store import Store


@dataclass(frozen=True)
class ClassSummary:
    k: int
    count: int
    pass_rate: float
    mean_steps: float
    mean_logit: float
    nearest_train: float  # mean L2 distance (input scale) to the closest training image


@dataclass(frozen=True)
class InspectResult:
    experiment: str
    round: int
    version: int
    path: str
    sha256: str
    count: int
    pass_rate: float
    mean_steps: float
    steps_histogram: list[tuple[int, int, int]]  # (from, to, count)
    logit_range: tuple[float, float]
    nearest_train: float
    classes: list[ClassSummary]
    grid: str
    reused: bool = False  # answered from the record of an earlier run (icl_cli.finished)


def nearest_distances(samples: torch.Tensor, train: torch.Tensor, chunk: int = 512):
    """L2 distance of each sample to its nearest training image, flattened: (N,)."""
    flat = train.reshape(len(train), -1)
    out = [torch.cdist(s.reshape(len(s), -1), flat).min(1).values for s in samples.split(chunk)]
    return torch.cat(out) if out else torch.empty(0)


def histogram(steps: np.ndarray, bins: int = 8) -> list[tuple[int, int, int]]:
    hi = int(steps.max()) if len(steps) else 0
    edges = np.unique(np.linspace(0, hi + 1, bins + 1).astype(int))
    counts, _ = np.histogram(steps, bins=edges)
    return [(int(a), int(b) - 1, int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts,
                                                            strict=True)]


def grid_image(samples: torch.Tensor, target: torch.Tensor, real: torch.Tensor,
               real_y: torch.Tensor, num_classes: int, per_class: int = 8) -> torch.Tensor:
    """One column per class: a training image on top, then that class's samples.

    Inputs in [-1, 1]; returns an image tensor (C, H, W) in [0, 1].
    """
    counts = torch.bincount(target, minlength=num_classes) if len(target) else torch.zeros(1)
    per_class = max(1, min(per_class, int(counts.max())))
    columns = []
    blank = torch.full_like(samples[:1] if len(samples) else real[:1], -1.0)
    for k in range(num_classes):
        top = real[real_y == k][:1]
        mine = samples[target == k][:per_class]
        pad = blank.expand(per_class - len(mine), *blank.shape[1:])
        columns.append(torch.cat([top if len(top) else blank, mine, pad]))
    tiles = torch.stack(columns, 1).reshape(-1, *blank.shape[1:])  # row-major: rows first
    if tiles.shape[-1] < 64:  # MNIST-size tiles are too small to see: upscale, no blur
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=2, mode="nearest")
    return tile((tiles + 1) / 2, columns=num_classes)


def tile(images: torch.Tensor, columns: int, padding: int = 2,
         pad_value: float = 1.0) -> torch.Tensor:
    """Images (N, C, H, W) row by row, ``columns`` a row, ``padding`` pixels of
    ``pad_value`` around each; one channel becomes three. torchvision's ``make_grid`` for
    N >= 2, without importing torchvision (~1.5x ``import torch``, for a copy loop);
    ``tests/steps/test_inspect.py`` checks the two agree.

    Shape: (N, C, H, W) -> (3 or C, rows * (H + padding) + padding,
    min(columns, N) * (W + padding) + padding).
    """
    n, c, h, w = images.shape
    if c == 1:
        images, c = images.expand(n, 3, h, w), 3
    across = min(columns, n)
    down = -(-n // across)
    out = images.new_full((c, down * (h + padding) + padding,
                           across * (w + padding) + padding), pad_value)
    for i in range(n):
        y, x = divmod(i, across)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        out[:, top:top + h, left:left + w] = images[i]
    return out


def save_grid(image: torch.Tensor, path: Path) -> None:
    """An image (C, H, W) in [0, 1] as a PNG, rounded to 8 bits as torchvision's
    ``save_image`` rounds it (the same bytes)."""
    from PIL import Image

    pixels = image.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8)
    Image.fromarray(pixels.numpy()).save(path, format="png")


def _no_shard(store: Store, exp, t: int, version: int | None, shards: list) -> str:
    """Why round ``t`` (version ``version``) has nothing to inspect, with a command that
    runs as written: another round or version that has a shard, or the step that draws
    the missing one."""
    e = f"-e {exp.name}"
    if exp.config.get("method") == "baseline":
        return (f"'{exp.name}' is a baseline: it draws no pseudo-negatives, so it has no "
                "shard to inspect")
    rounds = sorted({s.round for s in store.shards(exp.name, active_only=True)})
    latest = f"`icl inspect --round {rounds[-1]} {e}`" if rounds else None
    if t < 1:
        where = f"; its latest shard is round {rounds[-1]}: {latest}" if rounds else \
            f"; draw round 1 with `icl synthesize --round 1 {e}`"
        return f"--round must be >= 1 to inspect (round {t} has no pseudo-negatives){where}"
    if shards and version is not None:
        have = sorted(s.version for s in shards)
        active = next((s.version for s in shards if s.active), have[-1])
        return (f"'{exp.name}' has no version {version} of round {t} (its shard versions: "
                f"{', '.join(f'v{v}' for v in have)}): "
                f"`icl inspect --round {t} --version {active} {e}`")
    if store.checkpoint(exp.name, t - 1) is not None:
        return (f"'{exp.name}' has no shard for round {t}: draw it with "
                f"`icl synthesize --round {t} {e}`")
    elsewhere = f"; or inspect a round that has one: {latest}" if latest else ""
    return (f"'{exp.name}' has no shard for round {t}: `icl run --rounds {t} {e}` makes it "
            f"(icl synthesize --round {t} needs round {t - 1}'s checkpoint first){elsewhere}")


def inspect_round(store: Store, name: str, round_: int, version: int | None = None
                  ) -> InspectResult:
    exp = store.experiment(name)
    shards = store.shards(exp.name, round_)
    if version is None:
        info = next((s for s in shards if s.active), None)
    else:
        info = next((s for s in shards if s.version == version), None)
    if info is None:
        raise StepError(_no_shard(store, exp, round_, version, shards))
    a = store.read_shard(info)
    data = experiment_data(exp, store)
    samples, target = torch.from_numpy(a["samples"]), torch.from_numpy(a["target"])
    train = to_input(data.train.images)
    dist = nearest_distances(samples, train).numpy()
    classes = []
    for k in range(data.num_classes):
        m = a["target"] == k
        if m.any():
            classes.append(ClassSummary(k, int(m.sum()), float(a["passed"][m].mean()),
                                        float(a["steps"][m].mean()),
                                        float(a["logit"][m].mean()), float(dist[m].mean())))
    grid_path = store.figure_path(exp.name, f"round-{round_:04d}.v{info.version}.png")
    store.write_figure(grid_path, lambda p: save_grid(
        grid_image(samples, target, train, data.train.labels, data.num_classes), p))
    result = InspectResult(
        exp.name, round_, info.version, str(info.path), info.sha256, len(target),
        float(a["passed"].mean()), float(a["steps"].mean()), histogram(a["steps"]),
        (float(a["logit"].min()), float(a["logit"].max())), float(dist.mean()), classes,
        str(grid_path))
    finished.record(store, exp, "inspect", finished.inspect_key(store, exp, round_, version),
                    [(info.path, info.sha256), (grid_path, None)], result, data=True)
    return result
