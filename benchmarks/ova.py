"""One-vs-all: K one-logit mnist-cnn networks held as ONE module (stacked parameters,
grouped convolutions), against K separate networks run one after another.

The separate networks get the same weights (sliced out of the stacked module). Training:
``reclassify`` (mode ova, eq. 7) on the stacked module against, per batch, K bare steps
(network k: logistic loss on the real batch with class k positive, plus softplus on its own
pseudo-negatives). Sampling: ``synthesize`` on the stacked module against ``synthesize``
on each network for its own class. Outputs, gradients and samples are compared.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from benchmarks.common import Result, Scale, interleave, median, paired_ratio, paired_result
from benchmarks.reclassify import BATCH, mnist_tensors
from icl_cli.algo.ascent import Ascent, reference_noise, synthesize, targets_per_class
from icl_cli.algo.losses import ova_loss
from icl_cli.algo.reclassify import batch_plan, make_optimizer, reclassify
from icl_cli.data import to_input
from icl_cli.models import REGISTRY, build_model

K, SHAPE = 10, (1, 28, 28)


def split(stacked: torch.nn.Module) -> list[torch.nn.Module]:
    """K separate one-logit networks with network k's slice of the stacked weights."""
    state = stacked.state_dict()
    nets = []
    for k in range(K):
        net = REGISTRY["mnist-cnn"](SHAPE, 1, 1)
        mine = {}
        for name in net.state_dict():
            whole = state[name]
            mine[name] = whole[k : k + 1] if name.startswith("head.") else whole.chunk(K)[k]
        net.load_state_dict(mine)
        nets.append(net)
    return nets


def agreement(stacked: torch.nn.Module, nets: list[torch.nn.Module], xr, yr, pn_x, pn_k):
    """Max |difference| of logits and of the loss gradient, stacked vs separate."""
    logits = stacked(xr)
    sep = torch.cat([net(xr) for net in nets], dim=1)
    out_diff = float((logits - sep).detach().abs().max())
    loss, _, _ = ova_loss(logits, yr, stacked(pn_x), pn_k)
    grads = dict(zip([n for n, _ in stacked.named_parameters()],
                     torch.autograd.grad(loss, list(stacked.parameters())), strict=True))
    grad_diff, scale = 0.0, 0.0
    for k, net in enumerate(nets):
        own = pn_k == k
        f = net(xr)[:, 0]
        lk = F.binary_cross_entropy_with_logits(f, (yr == k).float())
        if own.any():
            lk = lk + F.softplus(net(pn_x[own])[:, 0]).mean()
        names = [name for name, _ in net.named_parameters()]
        for name, g in zip(names, torch.autograd.grad(lk, list(net.parameters())),
                           strict=True):
            whole = grads[name]
            mine = whole[k : k + 1] if name.startswith("head.") else whole.chunk(K)[k]
            grad_diff = max(grad_diff, float((mine - g).abs().max()))
            scale = max(scale, float(g.abs().max()))
    return out_diff, grad_diff / scale


def run(scale: Scale) -> list[Result]:
    n_real = scale.ova_batches * BATCH
    dev = scale.device
    real_x, real_y, pn_x, pn_k = mnist_tensors(n_real, n_real, dev)
    torch.manual_seed(0)
    stacked = build_model("mnist-cnn", SHAPE, K, "ova").to(dev)
    nets = [net.to(dev) for net in split(stacked)]
    out_diff, grad_rel = agreement(stacked, nets, to_input(real_x[:32]), real_y[:32],
                                   pn_x[:40], pn_k[:40])

    # --- training: one epoch of n_real real + n_real pseudo-negatives ---
    icl_model = copy.deepcopy(stacked)
    icl_opt = make_optimizer(icl_model, 0.01)
    loop_nets = [copy.deepcopy(n) for n in nets]
    loop_opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for n in loop_nets]
    plan = batch_plan(n_real, len(pn_k), BATCH, torch.Generator().manual_seed(2),
                      torch.Generator().manual_seed(3))
    plan = [(r.to(dev), p.to(dev)) for r, p in plan]
    batches = [(to_input(real_x[r]), real_y[r], pn_x[p], pn_k[p]) for r, p in plan]
    real_gen, pn_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)

    def train_stacked() -> None:
        reclassify(icl_model, icl_opt, real_x, real_y, pn_x, pn_k, epochs=1,
                   batch_size=BATCH, mode="ova", real_gen=real_gen, pn_gen=pn_gen,
                   transform=to_input)

    def train_loop() -> None:
        for xr, yr, xp, kp in batches:
            for k, (net, opt) in enumerate(zip(loop_nets, loop_opts, strict=True)):
                opt.zero_grad(set_to_none=True)
                own = xp[kp == k]
                f = net(torch.cat([xr, own]))[:, 0]
                loss = F.binary_cross_entropy_with_logits(f[: len(xr)], (yr == k).float())
                loss = loss + F.softplus(f[len(xr):]).mean()
                loss.backward()
                opt.step()

    # The same module with grouped convolutions (the GPU form) on this CPU, for the record.
    grouped_model = copy.deepcopy(stacked)
    grouped_model._sliceable = False
    grouped_opt = make_optimizer(grouped_model, 0.01)

    def train_grouped() -> None:
        reclassify(grouped_model, grouped_opt, real_x, real_y, pn_x, pn_k, epochs=1,
                   batch_size=BATCH, mode="ova", real_gen=real_gen, pn_gen=pn_gen,
                   transform=to_input)

    variants = {"stacked": train_stacked, "loop": train_loop}
    if not scale.quick:
        variants["grouped"] = train_grouped
    repeats = 2 if scale.smoke else 4 if scale.quick else 6  # K networks: 10x a plain step
    c_train: dict[str, list[float]] = {}
    t_train = interleave(variants, repeats, device=dev, cpu=c_train)

    # --- sampling: K x L samples, every step on every sample (early stop off) ---
    steps, per = 2, scale.ova_per_class
    target = targets_per_class(K, per).to(dev)
    x0 = reference_noise(len(target), SHAPE, 0.3, torch.Generator().manual_seed(4)).to(dev)
    res = {}

    def sample_stacked() -> None:
        res["stacked"] = synthesize(stacked, x0, target,
                                    Ascent(max_steps=steps, stop_rule="none"))

    def sample_loop() -> None:
        res["loop"] = [synthesize(net, x0[target == k],
                                  torch.zeros(per, dtype=torch.long, device=dev),
                                  Ascent(max_steps=steps, stop_rule="none"))
                       for k, net in enumerate(nets)]

    c_sample: dict[str, list[float]] = {}
    t_sample = interleave({"stacked": sample_stacked, "loop": sample_loop}, repeats,
                          device=dev, cpu=c_sample)
    sample_diff = float((res["stacked"].samples - torch.cat(
        [o.samples for o in res["loop"]])).abs().max())
    same = out_diff < 1e-4 and grad_rel < 1e-4 and sample_diff < 1e-4
    details = {"logit_max_abs_diff": out_diff, "grad_max_rel_diff": grad_rel,
               "sample_max_abs_diff": sample_diff, "same_results": same}
    train = {**details, "batches": len(plan), "batch": f"{BATCH} real + {BATCH} pn",
             "ratio_cpu_time": paired_ratio(c_train["loop"], c_train["stacked"]),
             "loop_over_grouped_conv_form": paired_ratio(t_train["loop"], t_train["grouped"])
             if "grouped" in t_train else None,
             "seconds_grouped_conv_form": t_train.get("grouped"),
             "seconds_stacked": t_train["stacked"], "seconds_loop": t_train["loop"]}
    sample = {**details, "batch": f"K x L = {K} x {per}", "steps": steps,
              "ratio_cpu_time": paired_ratio(c_sample["loop"], c_sample["stacked"]),
              "seconds_stacked": t_sample["stacked"], "seconds_loop": t_sample["loop"]}
    return [
        paired_result("ova train", "time loop / stacked", median(t_train["stacked"]),
                      median(t_train["loop"]), "s/epoch", t_train["loop"], t_train["stacked"],
                      ">= 3", valid=same, details=train),
        paired_result("ova sample", "time loop / stacked", median(t_sample["stacked"]),
                      median(t_sample["loop"]), "s", t_sample["loop"], t_sample["stacked"],
                      ">= 3", valid=same, details=sample),
    ]
