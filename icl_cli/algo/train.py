"""Reclassification (paper 3.2.1) and evaluation: plain tensor loops.

An epoch is one pass over the real training set in batches of ``batch_size``; each real
batch is joined by an equal share of the pseudo-negative pool, so every pseudo-negative is
also seen once per epoch. The real batch order comes from its own generator, untouched by
the pool, so baseline, ICL-noise and ICL started from the same C_0 and seed see exactly
the same real batches (SPEC, "Fair comparisons").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from icl_cli.algo.losses import LOSSES

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    """Mean losses of one epoch (over batches) and its cost."""

    epoch: int
    loss: float
    real_loss: float
    pn_loss: float
    samples: int
    seconds: float


def make_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.SGD:
    """SGD with momentum, as in the paper's reclassification step."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


def round_lr(lr: float, round_: int, decay_round: int, decay_factor: float) -> float:
    """Step decay: ``lr`` before ``decay_round``, ``lr * decay_factor`` from it on."""
    return lr * (decay_factor if round_ >= decay_round else 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def batch_plan(
    n_real: int, n_pn: int, batch_size: int,
    real_gen: torch.Generator, pn_gen: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Index pairs (real rows, pseudo-negative rows) for one epoch.

    The real permutation is drawn from ``real_gen`` alone; the pool's permutation from
    ``pn_gen``, split into as many nearly equal chunks as there are real batches.
    """
    real = torch.randperm(n_real, generator=real_gen).split(batch_size)
    pn_perm = torch.randperm(n_pn, generator=pn_gen) if n_pn else torch.empty(0, dtype=torch.long)
    return list(zip(real, pn_perm.tensor_split(len(real)), strict=True))


def reclassify(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    pn_x: torch.Tensor,
    pn_class: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    mode: str = "softmax",
    pn_weight: float = 1.0,
    real_epochs: int = 0,
    real_gen: torch.Generator,
    pn_gen: torch.Generator,
    transform: Transform | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` in place on S plus the pseudo-negative pool (ICL eq. 7 / eq. 11).

    ``epochs`` mixed epochs, then ``real_epochs`` on real data only. ``transform`` maps a
    batch of stored real images to network inputs (scaling, augmentation); pseudo-
    negatives are already inputs. Tensors must be on the model's device.

    Shape: real_x (N, C, H, W), real_y (N,), pn_x (P, C, H, W), pn_class (P,).
    """
    loss_fn = LOSSES[mode]
    device = real_x.device
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext())
    model.train()
    history = []
    for epoch in range(epochs + real_epochs):
        t0 = time.perf_counter()
        n_pn = len(pn_class) if epoch < epochs else 0
        plan = batch_plan(len(real_y), n_pn, batch_size, real_gen, pn_gen)
        sums = torch.zeros(3, device=device)  # summed on device: no sync per step
        for real_idx, pn_idx in plan:
            real_idx, pn_idx = real_idx.to(device), pn_idx.to(device)
            xr = real_x[real_idx]
            if transform is not None:
                xr = transform(xr)
            xb = torch.cat([xr, pn_x[pn_idx]]) if len(pn_idx) else xr
            with autocast:
                logits = model(xb).float()
            nr = len(real_idx)
            loss, real, pn = loss_fn(logits[:nr], real_y[real_idx], logits[nr:],
                                     pn_class[pn_idx], pn_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach(), real, pn])
            if progress is not None:
                progress(nr + len(pn_idx))
        mean = (sums / len(plan)).tolist()
        history.append(EpochStats(epoch, mean[0], mean[1], mean[2], len(real_y) + n_pn,
                                  time.perf_counter() - t0))
    return history


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = 1000,
    transform: Transform | None = None,
) -> torch.Tensor:
    """Logits (N, K) in eval mode, in batches; ``x`` on the model's device."""
    model.eval()
    out = []
    for xb in x.split(batch_size):
        out.append(model(transform(xb) if transform else xb).float())
    return torch.cat(out) if out else torch.empty(0)


@dataclass(frozen=True)
class ErrorReport:
    """Error rate (fraction, not %), per-class error and the number of samples."""

    error: float
    per_class: list[float]
    n: int


def error_rate(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> ErrorReport:
    """Prediction is argmax_k f_k(x) in both modes (paper 3.3)."""
    wrong = (logits.argmax(1) != y).float()
    per = torch.zeros(num_classes).index_add_(0, y.cpu(), wrong.cpu())
    counts = torch.bincount(y.cpu(), minlength=num_classes).clamp(min=1)
    return ErrorReport(float(wrong.mean()) if len(y) else float("nan"),
                       (per / counts).tolist(), len(y))
