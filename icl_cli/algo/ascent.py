"""Gradient steps on the input of a frozen network: synthesis (paper 3.2.2) and FGSM.

Both are the same mechanism: hold the weights fixed, differentiate an objective of the
logits with respect to the input, move the input. ``input_gradient`` is that one step and
``fgsm`` takes it once, signed; ``synthesize`` loops the same step on f_k(x) with Adam and
a per-sample early stop.

Pure tensor code: no I/O, no paths; randomness only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Objective = Callable[[torch.Tensor], torch.Tensor]  # logits (B, K) -> per-sample value (B,)


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
    model: nn.Module, x: torch.Tensor, objective: Objective
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at ``x`` and d sum(objective(logits)) / dx. Call inside ``frozen(model)``.

    Shape: x (B, C, H, W) -> logits (B, K), grad (B, C, H, W).
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(objective(logits).sum(), x)
    return logits.detach(), grad


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

    @property
    def sampler_steps(self) -> int:
        """Sum of per-sample gradient steps actually computed (for steps-saved reports)."""
        return int(self.steps.sum())


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
    *,
    max_steps: int = 200,
    lr: float = 0.01,
    betas: tuple[float, float] = (0.5, 0.999),
    stop_rule: str = "logit",
    langevin_std: float = 0.0,
    clamp: tuple[float, float] | None = None,
    check_every: int = 1,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Synthesis:
    """Pseudo-negatives by gradient ascent on f_k(x) (ICL eq. 10), weights frozen.

    Every sample starts at its row of ``x0`` and takes Adam steps (per-sample moments,
    ``betas``) to raise its target logit. A sample stops at the first step where the stop
    rule holds, or at ``max_steps``; from then on it is frozen, and every ``check_every``
    steps frozen samples leave the batch, so a round where most samples stop early costs
    close to the steps actually needed. Results do not depend on ``check_every`` unless
    Langevin noise is on (its draws follow the batch size). ``generator`` (on x0's
    device) drives the Langevin noise only. A one-vs-all model (``heads`` > 1, with
    ``forward_heads``) under the ``logit`` or ``none`` rule evaluates network k_i alone on
    sample i: the cost of one network per sample, not K.

    Shape: x0 (N, C, H, W), target (N,) -> Synthesis with N samples in the input order.
    Example:
        >>> out = synthesize(net, reference_noise(20, (1, 28, 28), 0.3, g), target)
    """
    n, device = x0.shape[0], x0.device
    target = target.to(device)
    if clamp is not None:  # the starting draws too: a sample may pass at step 0
        x0 = x0.clamp(*clamp)
    # One-vs-all with the logit rule needs only f_k(x): sample i goes through network k_i
    # alone (``forward_heads``), rows kept sorted by class; 1/K of the full forward's cost.
    heads = getattr(model, "heads", 1)
    per_head = heads > 1 and stop_rule != "argmax" and hasattr(model, "forward_heads")
    # Full-size results, filled as samples leave the batch.
    x = x0.detach().clone()
    logit = torch.empty(n, device=device)
    steps = torch.zeros(n, dtype=torch.int32, device=device)
    passed = torch.zeros(n, dtype=torch.bool, device=device)
    # The active batch: rows ``idx`` of the full arrays, with their Adam moments.
    if per_head:
        idx = torch.argsort(target, stable=True)
        xa, ta = x[idx], target[idx]
        counts = torch.bincount(ta, minlength=heads).tolist()
    else:
        idx = torch.arange(n, device=device)
        xa, ta = x.clone(), target
    m, v = torch.zeros_like(xa), torch.zeros_like(xa)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps_a, logit_a, passed_a = steps.clone(), logit.clone(), passed.clone()
    b1, b2 = betas

    def score(xin: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits (B, K) or None where not computed, f_k(x) (B,))."""
        if per_head:
            outs = model.forward_heads(list(xin.split(counts)))
            return None, torch.cat([o[:, 0] for o in outs])
        logits = model(xin)
        return logits, logits.gather(1, ta[:, None])[:, 0]

    def flush(rows: torch.Tensor) -> None:
        at = idx[rows]
        x[at], logit[at] = xa[rows], logit_a[rows]
        steps[at], passed[at] = steps_a[rows], passed_a[rows]

    with frozen(model):
        for step in range(max_steps + 1):
            last = step == max_steps
            if last:  # only the stop test is left: no gradient needed
                with torch.no_grad():
                    logits, logit_k = score(xa)
                grad = None
            else:  # d f_k(x) / dx, weights frozen
                xg = xa.detach().requires_grad_(True)
                logits, logit_k = score(xg)
                (grad,) = torch.autograd.grad(logit_k.sum(), xg)
                logit_k = logit_k.detach()
                logits = None if logits is None else logits.detach()
            now = _passes(logits, logit_k, ta, stop_rule) & ~done
            stop = ~done if last else now
            steps_a = torch.where(stop, step, steps_a)
            logit_a = torch.where(stop, logit_k, logit_a)
            passed_a, done = passed_a | now, done | stop
            if last:
                break
            if (step + 1) % check_every == 0:  # the only host sync of the loop
                keep = ~done
                n_keep = int(keep.sum())
                if n_keep < keep.numel():
                    flush(done)
                    idx, xa, ta, m, v, grad, done, steps_a, logit_a, passed_a = (
                        t[keep] for t in (idx, xa, ta, m, v, grad, done, steps_a, logit_a,
                                          passed_a)
                    )
                    if per_head:
                        counts = torch.bincount(ta, minlength=heads).tolist()
                if n_keep == 0:
                    break
            # Adam ascent on the input, bias-corrected; all active rows share the count t.
            t = step + 1
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            new = xa + lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
            if langevin_std > 0:  # SGLD (Welling & Teh 2011)
                new = new + langevin_std * torch.randn(xa.shape, generator=generator,
                                                       device=device)
            if clamp is not None:
                new = new.clamp(*clamp)
            live = (~done).view(-1, *([1] * (xa.dim() - 1)))
            xa = torch.where(live, new, xa)  # stopped samples stay where they stopped
            if progress is not None:
                progress(step + 1, int(idx.numel()))
        flush(torch.ones_like(done))
    return Synthesis(x, target, steps, logit, passed)


def noise_samples(
    model: nn.Module, x0: torch.Tensor, target: torch.Tensor, stop_rule: str = "logit"
) -> Synthesis:
    """ICL-noise ablation: pseudo-negatives are raw reference draws, no gradient steps."""
    return synthesize(model, x0, target, max_steps=0, stop_rule=stop_rule)


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
    clamp: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Fast gradient sign (Goodfellow et al. 2014): clip(x + eps * sign(grad_x CE)).

    ``eps`` is in input units (convert pixel units first, see ``data.PIXEL_SCALE``).
    Shape: x (B, C, H, W), y (B,) -> (B, C, H, W).
    """
    with frozen(model):
        _, grad = input_gradient(
            model, x, lambda logits: F.cross_entropy(logits, y, reduction="none")
        )
    return (x + eps * grad.sign()).clamp(*clamp).detach()
