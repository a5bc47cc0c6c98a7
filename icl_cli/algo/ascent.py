"""Gradient steps on the input of a frozen network: synthesis (paper 3.2.2), FGSM and PGD.

All three are one mechanism: hold the weights fixed, differentiate an objective of the
logits with respect to the input, move the input. ``input_gradient`` is that one step;
``fgsm`` takes it once, signed; ``pgd`` repeats the signed step inside an L-inf ball;
``synthesize`` loops it on f_k(x) with Adam and a per-sample early stop, keeping the rows
still moving in an ``Active`` batch that compacts as samples finish.

Pure tensor code: no I/O, no paths; randomness only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]  # inputs (B, C, H, W) -> logits (B, K)
Objective = Callable[[torch.Tensor], torch.Tensor]  # logits (B, K) -> per-sample value (B,)
DATA_RANGE = (-1.0, 1.0)  # the input scale of every dataset (``data.to_input``)


class AscentSettings(Protocol):
    """What :func:`synthesize` reads of its settings: ``icl_cli.config.SamplerConfig``
    (what ``icl synthesize`` records with each shard) is one, :class:`Ascent` another."""

    @property
    def kind(self) -> str: ...  # "gradient" (ICL), or "noise" (ICL-noise: no steps)
    @property
    def max_steps(self) -> int: ...
    @property
    def lr(self) -> float: ...  # Adam's step size on the input
    @property
    def beta1(self) -> float: ...
    @property
    def beta2(self) -> float: ...
    @property
    def stop_rule(self) -> str: ...  # logit, argmax or none (see ``passes``)
    @property
    def langevin_std(self) -> float: ...
    @property
    def clamp(self) -> bool: ...  # each step's samples clamped to DATA_RANGE
    @property
    def check_every(self) -> int: ...


@dataclass(frozen=True)
class Ascent:
    """Sampler settings as plain values, with the paper's defaults (Adam, betas (0.5,
    0.999), 200 steps at most): for code that samples outside an experiment (tests,
    benchmarks), where a ``SamplerConfig``'s checks and records are not wanted, e.g. the
    ``none`` stop rule of fixed-length sampling."""

    kind: str = "gradient"
    max_steps: int = 200
    lr: float = 0.01
    beta1: float = 0.5
    beta2: float = 0.999
    stop_rule: str = "logit"
    langevin_std: float = 0.0
    clamp: bool = False
    check_every: int = 1


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no weight gradients for the duration; restores both afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


def input_gradient(
    forward: Forward, x: torch.Tensor, objective: Objective
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one input-gradient step: logits at ``x``, objective(logits) and
    d sum(objective(logits)) / dx, all detached. Call inside ``frozen(model)``.

    Shape: x (B, C, H, W) -> logits (B, K), value (B,), grad (B, C, H, W).
    """
    x = x.detach().requires_grad_(True)
    logits = forward(x)
    value = objective(logits)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return logits.detach(), value.detach(), grad


def cross_entropy_of(y: torch.Tensor) -> Objective:
    """The attacks' objective: per-sample cross-entropy against labels ``y`` (B,)."""
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


class Active:
    """The rows of a batch still being stepped: ``idx`` (B,), their positions in the full
    batch, and named per-row tensors aligned with it (attributes, dim 0 = B).

    ``keep(mask)`` drops finished rows from every tensor at once; ``flush(full, mask)``
    writes rows back into full-size tensors at their positions.

    Example:
        >>> a = Active(torch.arange(4), x=torch.zeros(4, 2))
        >>> a.keep(torch.tensor([True, False, True, False])); a.idx.tolist()
        [0, 2]
    """

    def __init__(self, idx: torch.Tensor, **rows: torch.Tensor) -> None:
        self.idx = idx
        self._names = ("idx", *rows)
        for name, t in rows.items():
            setattr(self, name, t)

    def __len__(self) -> int:
        return int(self.idx.numel())

    def keep(self, mask: torch.Tensor) -> None:
        for name in self._names:
            setattr(self, name, getattr(self, name)[mask])

    def flush(self, full: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        at = self.idx[mask]
        for name, t in full.items():
            t[at] = getattr(self, name)[mask]


def passes(logits: torch.Tensor, target: torch.Tensor, rule: str) -> torch.Tensor:
    """Is each sample classified positive for its target class?

    ``logit``: f_k(x) > 0, i.e. sigmoid(f_k(x)) > 0.5, the boundary eq. 7 / eq. 11 train.
    ``argmax``: argmax_j f_j(x) == k. ``none``: never (every sample takes ``max_steps``;
    for fixed-length sampling and benchmarks).
    """
    if rule == "logit":
        return logits.gather(1, target[:, None])[:, 0] > 0
    if rule == "argmax":
        return logits.argmax(1) == target
    if rule == "none":
        return torch.zeros(len(target), dtype=torch.bool, device=logits.device)
    raise ValueError(f"unknown stop rule {rule!r} (choose logit or argmax)")


def _passes(logits: torch.Tensor | None, logit_k: torch.Tensor, target: torch.Tensor,
            rule: str) -> torch.Tensor:
    """``passes`` given f_k(x) (B,), and the full logits only where the rule needs them."""
    if rule == "logit":
        return logit_k > 0
    if rule == "none":
        return torch.zeros_like(logit_k, dtype=torch.bool)
    return passes(logits, target, rule)


@dataclass(frozen=True)
class Synthesis:
    """What the sampler returns, one entry per sample.

    samples (N, C, H, W) float32; target (N,) int64 class k; steps (N,) int32 gradient
    steps used; logit (N,) f_k at the final sample; passed (N,) bool, stop rule met.
    """

    samples: torch.Tensor
    target: torch.Tensor
    steps: torch.Tensor
    logit: torch.Tensor
    passed: torch.Tensor


def reference_noise(
    n: int, shape: tuple[int, ...], std: float, generator: torch.Generator
) -> torch.Tensor:
    """n draws of the reference distribution p_r = N(0, std^2) per input value (on CPU, so
    the same seed gives the same noise on any device)."""
    return torch.randn((n, *shape), generator=generator) * std


def targets_per_class(num_classes: int, count: int) -> torch.Tensor:
    """[0]*count + [1]*count + ...: ``count`` samples for each class k (the paper's l)."""
    return torch.arange(num_classes).repeat_interleave(count)


def synthesize(
    model: nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    settings: AscentSettings,
    *,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Synthesis:
    """Pseudo-negatives by gradient ascent on f_k(x) (ICL eq. 10), weights frozen.

    Every sample starts at its row of ``x0`` and takes Adam steps (per-sample moments,
    ``settings.beta1``/``beta2``, step size ``settings.lr``) to raise its target logit. A
    sample stops at the first step where the stop rule holds, or at ``max_steps``; from
    then on it is frozen, and every ``check_every`` steps frozen samples leave the batch,
    so a round where most samples stop early costs close to the steps actually needed.
    Results do not depend on ``check_every`` unless Langevin noise is on (its draws follow
    the batch size). ``generator`` (on x0's device) drives the Langevin noise only. A
    one-vs-all model (``heads`` > 1, with ``forward_heads``) under the ``logit`` or
    ``none`` rule evaluates network k_i alone on sample i: the cost of one network per
    sample, not K. ``max_steps=0``, or the ``noise`` kind, is ICL-noise: the draws
    themselves, scored.

    Shape: x0 (N, C, H, W), target (N,) -> Synthesis with N samples in the input order.
    Example:
        >>> out = synthesize(net, reference_noise(20, (1, 28, 28), 0.3, g), target,
        ...                  Ascent(max_steps=300, lr=0.05))
    """
    max_steps = 0 if settings.kind == "noise" else settings.max_steps
    lr, stop_rule, check_every = settings.lr, settings.stop_rule, settings.check_every
    langevin_std = settings.langevin_std
    clamp = DATA_RANGE if settings.clamp else None
    n, device = x0.shape[0], x0.device
    target = target.to(device)
    if clamp is not None:  # the starting draws too: a sample may pass at step 0
        x0 = x0.clamp(*clamp)
    # One-vs-all with the logit rule needs only f_k(x): sample i goes through network k_i
    # alone (``forward_heads``), rows kept sorted by class; 1/K of the full forward's cost.
    heads = getattr(model, "heads", 1)
    per_head = heads > 1 and stop_rule != "argmax" and hasattr(model, "forward_heads")
    # Full-size results, filled as samples leave the batch.
    full = {"x": x0.detach().clone(), "logit": torch.empty(n, device=device),
            "steps": torch.zeros(n, dtype=torch.int32, device=device),
            "passed": torch.zeros(n, dtype=torch.bool, device=device)}
    idx = (torch.argsort(target, stable=True) if per_head
           else torch.arange(n, device=device))
    xa = full["x"][idx]  # the active batch, with its Adam moments and last gradient
    a = Active(idx, x=xa, target=target[idx], logit=full["logit"][idx],
               steps=full["steps"][idx], passed=full["passed"][idx],
               done=torch.zeros(n, dtype=torch.bool, device=device), m=torch.zeros_like(xa),
               v=torch.zeros_like(xa), grad=torch.zeros_like(xa))
    counts = torch.bincount(a.target, minlength=heads).tolist() if per_head else None
    b1, b2 = settings.beta1, settings.beta2

    def forward(xin: torch.Tensor) -> torch.Tensor:
        """Logits (B, K), or f_k(x) alone (B, 1) on the per-head path."""
        if per_head:
            return torch.cat(model.forward_heads(list(xin.split(counts))))
        return model(xin)

    def logit_k(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0] if per_head else logits.gather(1, a.target[:, None])[:, 0]

    with frozen(model):
        for step in range(max_steps + 1):
            last = step == max_steps
            if last:  # only the stop test is left: no gradient needed
                with torch.no_grad():
                    logits = forward(a.x)
                    f_k = logit_k(logits)
            else:  # d f_k(x) / dx, weights frozen
                logits, f_k, a.grad = input_gradient(forward, a.x, logit_k)
            now = _passes(None if per_head else logits, f_k, a.target, stop_rule) & ~a.done
            stop = ~a.done if last else now
            a.steps = torch.where(stop, step, a.steps)
            a.logit = torch.where(stop, f_k, a.logit)
            a.passed, a.done = a.passed | now, a.done | stop
            if last:
                break
            if (step + 1) % check_every == 0:  # the only host sync of the loop
                keep = ~a.done
                n_keep = int(keep.sum())
                if n_keep < keep.numel():
                    a.flush(full, a.done)
                    a.keep(keep)
                    if per_head:
                        counts = torch.bincount(a.target, minlength=heads).tolist()
                if n_keep == 0:
                    break
            # Adam ascent on the input, bias-corrected; all active rows share the count t.
            t = step + 1
            a.m = b1 * a.m + (1 - b1) * a.grad
            a.v = b2 * a.v + (1 - b2) * a.grad * a.grad
            new = a.x + lr * (a.m / (1 - b1**t)) / ((a.v / (1 - b2**t)).sqrt() + 1e-8)
            if langevin_std > 0:  # SGLD (Welling & Teh 2011)
                new = new + langevin_std * torch.randn(a.x.shape, generator=generator,
                                                       device=device)
            if clamp is not None:
                new = new.clamp(*clamp)
            live = (~a.done).view(-1, *([1] * (a.x.dim() - 1)))
            a.x = torch.where(live, new, a.x)  # stopped samples stay where they stopped
            if progress is not None:
                progress(step + 1, len(a))
        a.flush(full, torch.ones_like(a.done))
    return Synthesis(full["x"], target, full["steps"], full["logit"], full["passed"])


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
    clamp: tuple[float, float] = DATA_RANGE,
) -> torch.Tensor:
    """Fast gradient sign (Goodfellow et al. 2014): clip(x + eps * sign(grad_x CE)).

    ``eps`` is in input units (convert pixel units first, see ``data.PIXEL_SCALE``).
    Shape: x (B, C, H, W), y (B,) -> (B, C, H, W).
    """
    with frozen(model):
        _, _, grad = input_gradient(model, x, cross_entropy_of(y))
    return (x + eps * grad.sign()).clamp(*clamp).detach()


def pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
    steps: int = 40, step_size: float | None = None, restarts: int = 1,
    random_start: bool = True, clamp: tuple[float, float] = DATA_RANGE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf projected gradient descent on the cross-entropy (Madry et al. 2018).

    Each restart starts at x (plus U(-eps, eps) per value with ``random_start``, clipped to
    ``clamp``) and takes ``steps`` steps x <- P(x + step_size * sign(grad_x CE)), P the
    projection on the eps ball around x and on ``clamp`` (foolbox 3's LinfPGD step).
    ``step_size`` defaults to 2.5 * eps / steps. Restarts after the first run only on
    samples the model still gets right; a sample keeps the first restart that fools the
    model, else the last. ``eps`` and ``step_size`` are in input units; ``generator`` (on
    CPU) draws the random starts, so a seed gives the same starts on any device.

    Shape: x (B, C, H, W), y (B,) -> (B, C, H, W).
    Example:
        >>> adv = pgd(net, x, y, eps=0.6, steps=40, restarts=5)
    """
    if steps < 1 or restarts < 1:
        raise ValueError(f"pgd needs steps >= 1 and restarts >= 1, got {steps}, {restarts}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    best = x.detach().clone()
    todo = torch.arange(len(x), device=x.device)  # rows not fooled yet
    with frozen(model):
        for _ in range(restarts if random_start else 1):  # a fixed start repeats itself
            x0, yr = x[todo].detach(), y[todo]
            adv = x0
            if random_start:
                noise = torch.rand(x0.shape, generator=generator) * 2 - 1
                adv = (x0 + eps * noise.to(x0.device)).clamp(*clamp)
            for _ in range(steps):
                _, _, grad = input_gradient(model, adv, cross_entropy_of(yr))
                adv = adv + alpha * grad.sign()
                adv = (x0 + (adv - x0).clamp(-eps, eps)).clamp(*clamp)
            best[todo] = adv
            with torch.no_grad():
                todo = todo[model(adv).argmax(1) == yr]
            if len(todo) == 0:
                break
    return best.detach()
