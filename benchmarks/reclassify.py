"""Reclassification: ``icl_cli.algo.reclassify.reclassify`` against a bare training loop.

Both train mnist-cnn (softmax, ICL eq. 11) with SGD momentum 0.9, batch 64 real images
joined by 64 pseudo-negatives, from the same initial weights, on the same in-memory
tensors. ``reclassify`` does what ``icl reclassify`` does once the data is loaded: draws
the batch plan, gathers and scales each real batch (uint8 -> [-1, 1]), joins its share of
the pool, sums the losses on the device and calls a progress callback. The bare loop runs
``zero_grad, forward, loss, backward, step`` over batches built before the clock starts.

``details.minor_faults_per_epoch`` and ``system_ms_per_epoch`` count what the kernel did
for each loop: the same arithmetic can fault its memory in again every step or never, as
glibc's malloc decides from the process's allocation history (on the machine where this
was written, taking the gradient norm between the backward pass and the optimizer step
was enough to move 0 to 13,000 faults per epoch from one loop to the other).
``details.op_ms_per_batch`` splits one profiled epoch of each loop into the network's
convolutions (forward and backward, the bulk of a step) and everything else (batch
assembly, loss, the optimizer, and for ``reclassify`` the diagnostics: gradient norm,
largest logits, sums on the device): a gap in the first is the network running slower
in one loop (memory, the machine), a gap in the second is the loop's own cost.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F

from benchmarks.common import Result, Scale, interleave_until, median, paired_ratio, paired_result
from icl_cli.algo.ascent import reference_noise, targets_per_class
from icl_cli.algo.reclassify import batch_plan, make_optimizer, reclassify
from icl_cli.config import DataConfig
from icl_cli.data import load, to_input
from icl_cli.models import build_model

BATCH = 64


def mnist_tensors(n_real: int, n_pn: int, device: str = "cpu"):
    """Real embedded-MNIST images (uint8) and labels, and a pool of reference draws."""
    data = load(DataConfig())
    real_x, real_y = data.train.images[:n_real], data.train.labels[:n_real]
    pn_k = targets_per_class(10, n_pn // 10)
    pn_x = reference_noise(len(pn_k), (1, 28, 28), 0.3, torch.Generator().manual_seed(1))
    return tuple(t.to(device) for t in (real_x, real_y, pn_x, pn_k))


def run(scale: Scale) -> Result:
    n_real = scale.reclassify_batches * BATCH
    real_x, real_y, pn_x, pn_k = mnist_tensors(n_real, n_real, scale.device)
    torch.manual_seed(0)
    model = build_model("mnist-cnn", (1, 28, 28), 10).to(scale.device)
    result = _compare(model, scale, real_x, real_y, pn_x, pn_k)
    split = result.details.pop("profile")
    # The same comparison with a linear model: what remains is the loop's own cost per
    # batch (plan, gather, scaling, join, loss sums, callback), far below the ratio's noise.
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).to(scale.device)
    real_x, real_y, pn_x, pn_k = mnist_tensors(10 * BATCH, 10 * BATCH, scale.device)
    over = _compare(linear, replace(scale, reclassify_repeats=21), real_x, real_y, pn_x, pn_k)
    icl_ms = 1e3 * median(over.details["seconds_icl"]) / over.details["batches"]
    bare_ms = 1e3 * median(over.details["seconds_bare"]) / over.details["batches"]
    step_ms = 1e3 * median(result.details["seconds_bare"]) / result.details["batches"]
    result.details.update(op_ms_per_batch=split,
                          loop_overhead_ms_per_batch=icl_ms - bare_ms,
                          linear_model_ms_per_batch={"icl": icl_ms, "bare": bare_ms},
                          overhead_share_of_mnist_cnn_step=(icl_ms - bare_ms) / step_ms)
    return result


def _compare(model, scale: Scale, real_x, real_y, pn_x, pn_k) -> Result:
    n_real = len(real_y)
    icl_model, bare_model = copy.deepcopy(model), copy.deepcopy(model)
    icl_opt = make_optimizer(icl_model, 0.01)
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.01, momentum=0.9)
    real_gen, pn_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)

    plan = batch_plan(n_real, len(pn_k), BATCH, torch.Generator().manual_seed(2),
                      torch.Generator().manual_seed(3))
    plan = [(r.to(scale.device), p.to(scale.device)) for r, p in plan]
    batches = [(torch.cat([to_input(real_x[r]), pn_x[p]]), real_y[r], pn_k[p]) for r, p in plan]

    def bare() -> None:
        bare_model.train()
        for xb, y, k in batches:
            bare_opt.zero_grad(set_to_none=True)
            logits = bare_model(xb)
            nr = len(y)
            loss = F.cross_entropy(logits[:nr], y) + F.softplus(
                logits[nr:].gather(1, k[:, None])[:, 0]).mean()
            loss.backward()
            bare_opt.step()

    def icl() -> None:
        reclassify(icl_model, icl_opt, real_x, real_y, pn_x, pn_k, epochs=1,
                   batch_size=BATCH, mode="softmax", real_gen=real_gen, pn_gen=pn_gen,
                   transform=to_input, progress=lambda n: None)

    cpu: dict[str, list[float]] = {}
    faults: dict[str, list[tuple[int, float]]] = {"icl": [], "bare": []}
    # (samples/s icl) / (samples/s bare) = bare time / icl time, pair by pair
    times = interleave_until({"icl": _counting(icl, faults["icl"]),
                              "bare": _counting(bare, faults["bare"])},
                             "bare", "icl", scale, cpu=cpu)
    profile = {name: _profile_split(fn, len(plan)) for name, fn in (("icl", icl), ("bare", bare))}
    samples = n_real + len(pn_k)
    return paired_result(
        "reclassify", "samples/s icl / bare", samples / median(times["icl"]),
        samples / median(times["bare"]), "samples/s", times["bare"], times["icl"], ">= 0.95",
        details={"batches": len(plan), "batch": f"{BATCH} real + {BATCH} pseudo-negatives",
         "samples_per_epoch": samples,
         "ratio_cpu_time": paired_ratio(cpu["bare"], cpu["icl"]),
         "profile": profile,
         # page faults and system time per epoch: glibc hands freed memory back to the
         # system and faults it in again, as the allocation history of the process has it
         "minor_faults_per_epoch": {k: median([f for f, _ in v]) for k, v in faults.items()},
         "system_ms_per_epoch": {k: 1e3 * median([t for _, t in v]) for k, v in faults.items()},
         "seconds_icl": times["icl"],
         "seconds_bare": times["bare"]},
    )


def _counting(fn, into: list[tuple[int, float]]):
    """``fn``, appending the minor page faults and system CPU seconds of each call."""
    import resource

    def counted() -> None:
        a = resource.getrusage(resource.RUSAGE_SELF)
        fn()
        b = resource.getrusage(resource.RUSAGE_SELF)
        into.append((b.ru_minflt - a.ru_minflt, b.ru_stime - a.ru_stime))

    return counted


CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward",
            "aten::cudnn_convolution", "aten::_convolution")


def _profile_split(fn, batches: int) -> dict[str, float]:
    """Milliseconds per batch spent inside operators during one call of ``fn`` (after the
    timed pairs: warm), torch.profiler's self times: the convolutions' and the rest's."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    conv = other = 0.0
    for e in prof.key_averages():
        if e.key in CONV_OPS:
            conv += e.self_cpu_time_total
        else:
            other += e.self_cpu_time_total
    return {"convolutions": conv / 1e3 / batches, "rest": other / 1e3 / batches}


VARIANTS = {"default": {}, "channels_last": {"channels_last": True},
            "compile": {"compile": True},
            "compile+channels_last": {"compile": True, "channels_last": True}}


def variants(device: str = "cpu", batches: int = 16, pairs: int = 7,
             names: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, dict[str, float]]:
    """samples/s of ``reclassify`` epochs (mnist-cnn, softmax, 64 + 64 rows a batch) with
    each way of running the network (``icl_cli.algo.prepare``), interleaved with the
    default: per variant its median samples/s and the median of its paired ratios to the
    default (> 1: faster). Each variant's first two epochs (compilation, cuDNN's choice of
    algorithms) are left out."""
    import statistics
    import time

    from benchmarks.common import sync
    from icl_cli.algo.prepare import prepare

    n_real = batches * BATCH
    real_x, real_y, pn_x, pn_k = mnist_tensors(n_real, n_real, device)
    torch.manual_seed(0)
    base = build_model("mnist-cnn", (1, 28, 28), 10).to(device)
    epochs = {}
    for name in names:
        model = prepare(copy.deepcopy(base), **VARIANTS[name])
        opt = make_optimizer(model, 0.01)
        gens = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)

        def epoch(model=model, opt=opt, gens=gens) -> None:
            reclassify(model, opt, real_x, real_y, pn_x, pn_k, epochs=1, batch_size=BATCH,
                       mode="softmax", real_gen=gens[0], pn_gen=gens[1], transform=to_input)

        for _ in range(2):
            epoch()
        epochs[name] = epoch
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(pairs):
        for name in (names if i % 2 == 0 else names[::-1]):
            sync(device)
            t = time.perf_counter()
            epochs[name]()
            sync(device)
            seconds[name].append(time.perf_counter() - t)
    rows = n_real + len(pn_k)
    return {name: {"samples_per_s": rows / statistics.median(s),
                   "ratio_to_default": statistics.median(
                       d / x for d, x in zip(seconds["default"], s, strict=True))}
            for name, s in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.reclassify --variants [--device cuda] [--names a,b]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m benchmarks.reclassify",
                                description=variants.__doc__.split("\n\n")[0])
    p.add_argument("--variants", action="store_true", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--names", default=",".join(VARIANTS),
                   help="the variants to time, comma-separated (default: all; the "
                   "torch.compile ones take a minute to compile on a CPU)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(1)  # as python -m benchmarks times the CPU
    names = tuple(a.names.split(","))
    if "default" not in names or not set(names) <= VARIANTS.keys():
        p.error(f"--names: default and any of {', '.join(VARIANTS)}")
    out = variants(a.device, a.batches, a.pairs, names)
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"reclassify on {a.device}: mnist-cnn, {a.batches} batches of {BATCH} real + "
          f"{BATCH} pseudo-negatives an epoch, {a.pairs} epochs each, interleaved")
    print("| variant | samples/s | paired ratio to default |")
    print("| --- | --- | --- |")
    for name, r in out.items():
        print(f"| {name} | {r['samples_per_s']:.0f} | {r['ratio_to_default']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
