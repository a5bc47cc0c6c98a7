"""The hardware limit beside the ratios: GFLOP/s of the mnist-cnn training step (batch 64
real + 64 pseudo-negatives) and of one sampler step, against a large matmul's GFLOP/s,
timed interleaved in the same process. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward and
backward; element-wise work is not counted)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Result, Scale, interleave, median
from icl_cli.models import build_model


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def run(scale: Scale) -> Result:
    n = scale.matmul_n
    dev = scale.device
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28, device=dev), torch.randint(0, 10, (128,), device=dev)
    xs = torch.randn(200, 1, 28, 28, device=dev)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def sampler_step() -> None:
        xg = xs.clone().requires_grad_(True)
        model(xg)[:, 0].sum().backward()  # (FlopCounterMode cannot see autograd.grad)

    def frozen_sampler_step() -> None:
        model.requires_grad_(False)
        sampler_step()
        model.requires_grad_(True)

    matmul = 2 * n**3
    train = flops(train_step)
    model.requires_grad_(False)
    sample = flops(sampler_step)
    model.requires_grad_(True)
    times = interleave({"matmul": lambda: a @ b, "train": train_step,
                        "sample": frozen_sampler_step}, scale.repeats, device=dev)
    peak = matmul / median(times["matmul"]) / 1e9
    train_gflops = train / median(times["train"]) / 1e9
    sample_gflops = sample / median(times["sample"]) / 1e9
    return Result(
        "hardware", "train-step GFLOP/s / matmul GFLOP/s", train_gflops, peak, "GFLOP/s",
        train_gflops / peak, "(reported)", None,
        {"matmul_n": n, "matmul_gflops": peak, "train_step_gflops": train_gflops,
         "train_step_gflop": train / 1e9, "train_step_s": median(times["train"]),
         "sampler_step_gflops": sample_gflops, "sampler_step_gflop_200": sample / 1e9,
         "sampler_step_s_200": median(times["sample"]),
         "sampler_over_matmul": sample_gflops / peak},
    )
