"""Synthesis: ``icl_cli.algo.ascent.synthesize`` against a bare input-gradient loop, and
what early stopping saves in a realistic round.

Per-step: a batch of K x L reference draws through mnist-cnn, early stop off (``stop_rule
"none"``), so both sides take every step on the whole batch. The bare loop: ``forward,
logit sum, autograd.grad to the input, Adam update`` (``torch.optim.Adam`` on the input,
weights with ``requires_grad=False``), then one no-grad forward for the final logits,
which ``synthesize`` also computes (its last stop test).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Result,
    Scale,
    interleave,
    interleave_until,
    median,
    paired_ratio,
    paired_result,
    sync,
)
from benchmarks.reclassify import mnist_tensors
from icl_cli.algo.ascent import Ascent, reference_noise, synthesize, targets_per_class
from icl_cli.algo.reclassify import make_optimizer
from icl_cli.data import to_input
from icl_cli.models import build_model

K, SHAPE, LR, BETAS = 10, (1, 28, 28), 0.01, (0.5, 0.999)


def start(per_class: int, seed: int = 0, device: str = "cpu"):
    target = targets_per_class(K, per_class)
    x0 = reference_noise(len(target), SHAPE, 0.3, torch.Generator().manual_seed(seed))
    return x0.to(device), target.to(device)


def bare_sampler(model: torch.nn.Module, x0: torch.Tensor, target: torch.Tensor,
                 steps: int) -> torch.Tensor:
    model.eval().requires_grad_(False)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LR, betas=BETAS, maximize=True)
    for _ in range(steps):
        logits = model(x)
        (x.grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
        opt.step()
    with torch.no_grad():
        model(x)
    model.requires_grad_(True)
    return x.detach()


def run_per_step(scale: Scale) -> Result:
    torch.manual_seed(0)
    model = build_model("mnist-cnn", SHAPE, K).to(scale.device)
    x0, target = start(scale.synth_per_class, device=scale.device)
    s = scale.synth_steps
    outs = {}

    def icl() -> None:
        outs["icl"] = synthesize(model, x0, target, Ascent(
            max_steps=s, lr=LR, beta1=BETAS[0], beta2=BETAS[1], stop_rule="none"))

    cpu: dict[str, list[float]] = {}
    times = interleave_until({"icl": icl, "bare": lambda: bare_sampler(model, x0, target, s)},
                             "icl", "bare", scale, min_pairs=scale.repeats, cpu=cpu)
    no_grads = all(p.grad is None for p in model.parameters())
    return paired_result(
        "synthesis step", "s/step icl / bare", median(times["icl"]) / s,
        median(times["bare"]) / s, "s/step", times["icl"], times["bare"], "<= 1.10",
        valid=no_grads, details={"batch": f"K x L = {K} x {scale.synth_per_class}", "steps": s,
         "ratio_cpu_time": paired_ratio(cpu["icl"], cpu["bare"]),
         "weights_without_grad": no_grads, "all_steps_taken":
         bool((outs["icl"].steps == s).all()), "seconds_icl": times["icl"],
         "seconds_bare": times["bare"]},
    )


def train_c0(steps: int, device: str = "cpu") -> torch.nn.Module:
    """A briefly trained C_0 (softmax mnist-cnn on embedded MNIST), as a round 1 sees it."""
    real_x, real_y, _, _ = mnist_tensors(6000, 0, device)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", SHAPE, K).to(device)
    opt = make_optimizer(model, 0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(real_y), (64,), generator=g).to(device)
        opt.zero_grad()
        F.cross_entropy(model(to_input(real_x[idx])), real_y[idx]).backward()
        opt.step()
    return model


def run_early_stop(scale: Scale, max_steps: int = 200) -> list[Result]:
    """Round 1 as the sampler sees it (C_0 briefly trained): at the default step size most
    samples pass within a few steps; at 1/10 of it they need ~10x more steps. Either way a
    round should cost about the steps its samples used, not ``max_steps``."""
    model = train_c0(scale.c0_steps, scale.device)
    return [early_stop_case(scale, model, scale.early_per_class, LR, max_steps),
            early_stop_case(scale, model, max(10, scale.early_per_class // 4), LR / 10,
                            max_steps)]


def early_stop_case(scale: Scale, model: torch.nn.Module, per_class: int, lr: float,
                    max_steps: int) -> Result:
    x0, target = start(per_class, seed=1, device=scale.device)
    active: list[int] = []
    sync(scale.device)
    t0 = time.perf_counter()
    out = synthesize(model, x0, target, Ascent(max_steps=max_steps, lr=lr, beta1=BETAS[0],
                                               beta2=BETAS[1]),
                     progress=lambda step, n: active.append(n))
    sync(scale.device)
    wall = time.perf_counter() - t0
    # The cost of one full-batch step (plus the final forward) on the same model and batch.
    full = median(interleave({"full": lambda: synthesize(model, x0, target, Ascent(
        max_steps=2, lr=lr, beta1=BETAS[0], beta2=BETAS[1], stop_rule="none"))}, 1,
        warmup=0, device=scale.device)["full"]) / 2
    steps = out.steps.double()
    n = len(steps)
    rows = n + sum(active)  # rows through the network: n at step 0, then the active ones
    saved = 1 - float(steps.sum()) / (n * max_steps)
    equivalent = wall / full
    return Result(
        f"early stop lr {lr:g}", "round cost in full-batch steps", equivalent, float(max_steps),
        "steps", equivalent / max_steps, "<= 1.5 x rows computed / N + 2",
        equivalent <= 1.5 * rows / n + 2,
        {"samples": n, "max_steps": max_steps, "mean_steps": float(steps.mean()),
         "median_steps": float(steps.median()), "p90_steps": float(steps.quantile(0.9)),
         "max_used": int(steps.max()), "passed": float(out.passed.double().mean()),
         "steps_saved": saved, "full_batch_steps_of_rows": rows / n,
         "wall_s": wall, "full_batch_step_s": full, "c0_sgd_steps": scale.c0_steps,
         "sampler_lr": lr},
    )
