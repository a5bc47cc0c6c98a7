"""Reclassification (paper 3.2.1): the training loop, plain tensors (the step around it
is ``icl_cli.steps.reclassify``; evaluation is ``icl_cli.algo.evaluation``).

An epoch is one pass over the real training set in batches of ``batch_size``. How the
pseudo-negative pool joins the real batches is the weighting's choice (``pn_weighting``):

- ``per-sample`` and ``batch-mean``: each real batch is joined by an equal share of the
  pool, so every pseudo-negative is seen once per epoch (``batch_plan``);
- ``drawn``, the authors' batches (their INN code): each real batch of B images is joined
  by B pseudo-negatives drawn with replacement, the pool's rounds weighted by recency
  (``recency_shares``; one-vs-all: B drawn for each network from its own class), so the
  pool is half of every batch whatever its size (``drawn_plan``).

The real batch order comes from its own generator, untouched by the pool, so baseline,
ICL-noise and ICL started from the same C_0 and seed see exactly the same real batches
whatever the weighting (SPEC, "Fair comparisons").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from icl_cli.algo.heap import steady_heap
from icl_cli.algo.losses import LOSSES, target_logit
from icl_cli.models import has_batch_norm

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    """Mean losses of one epoch (over batches), its cost, and what warns of divergence:
    the largest gradient norm of a step (before clipping) and the largest |logit| on a real
    image and on a pseudo-negative (its target logit f_k) in the epoch."""

    epoch: int
    loss: float
    real_loss: float
    pn_loss: float
    samples: int
    seconds: float
    grad_norm_max: float = 0.0
    real_logit_max: float = 0.0
    pn_logit_max: float = 0.0


class SGD:
    """SGD with momentum: ``torch.optim.SGD``'s arithmetic (its single-tensor path, step for
    step, bit for bit) and state-dict format, so checkpoints load into either.

    Why not ``torch.optim.SGD`` itself: its first use imports ``torch._dynamo`` (every
    ``torch.optim`` method is wrapped in ``torch._disable_dynamo``), 2-5 s of every
    ``icl init`` / ``icl reclassify`` process on a CPU machine (BENCHMARKS.md).

    ``foreach`` (default: when the parameters are on a GPU, as torch.optim.SGD does) updates
    all parameters with a few multi-tensor kernels instead of three per parameter: a small
    network's GPU step is bound by kernel launches, not arithmetic.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, foreach: bool | None = None) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.foreach = self.params[0].is_cuda if foreach is None else foreach
        # torch.optim.SGD's defaults, in its order (checkpoints hold this dict).
        self.param_groups = [{"lr": lr, "momentum": momentum, "dampening": 0,
                              "weight_decay": weight_decay, "nesterov": False,
                              "maximize": False, "foreach": foreach, "differentiable": False,
                              "fused": None, "params": self.params}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}  # param index -> buffers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        if self.foreach:
            return self._step_foreach()
        group = self.param_groups[0]
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        dampening = group["dampening"]
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
            if momentum != 0:
                buf = self.state.get(i, {}).get("momentum_buffer")
                if buf is None:
                    buf = grad.detach().clone()
                    self.state[i] = {"momentum_buffer": buf}
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                grad = buf
            p.add_(grad, alpha=-lr)

    def _step_foreach(self) -> None:
        """torch.optim.SGD's multi-tensor path, step for step."""
        group = self.param_groups[0]
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        dampening = group["dampening"]
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not index:
            return
        params = [self.params[i] for i in index]
        grads = [p.grad for p in params]
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum != 0:
            bufs = [self.state.get(i, {}).get("momentum_buffer") for i in index]
            if all(b is not None for b in bufs):
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads, alpha=1 - dampening)
            else:
                for k, (i, g) in enumerate(zip(index, grads, strict=True)):
                    if bufs[k] is None:
                        bufs[k] = g.detach().clone()
                        self.state[i] = {"momentum_buffer": bufs[k]}
                    else:
                        bufs[k].mul_(momentum).add_(g, alpha=1 - dampening)
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-lr)

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("loaded state dict does not match this optimizer's parameters")
        index = {saved: i for i, saved in enumerate(groups[0]["params"])}
        self.state = {}
        for saved, buffers in state_dict["state"].items():
            p = self.params[index[saved]]
            self.state[index[saved]] = {k: v.to(dtype=p.dtype, device=p.device)
                                        for k, v in buffers.items()}
        self.param_groups = [{**groups[0], "params": self.params}]


def make_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> SGD:
    """SGD with momentum, as in the paper's reclassification step."""
    return SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def round_lr(lr: float, round_: int, decay_round: int, decay_factor: float) -> float:
    """Step decay: ``lr`` before ``decay_round``, ``lr * decay_factor`` from it on."""
    return lr * (decay_factor if round_ >= decay_round else 1.0)


def set_lr(optimizer: SGD | torch.optim.Optimizer, lr: float) -> None:
    set_hyper(optimizer, lr=lr)


def set_hyper(optimizer: SGD | torch.optim.Optimizer, **values: float) -> None:
    """Set hyperparameters (lr, momentum, weight_decay) of every parameter group, e.g.
    after ``load_state_dict`` brought back the ones a checkpoint was trained with."""
    for group in optimizer.param_groups:
        group.update(values)


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


def recency_shares(rounds: list[int], recency: float) -> dict[int, float]:
    """Each round's share of the drawn pseudo-negatives: ``recency ** age``, age 0 for the
    newest round present, normalised over the rounds present (INN's ``np.logspace(age, 1,
    num=age, base=0.5)``, ``inn/batch.py``).

    Example:
        >>> recency_shares([1, 2], 0.5)
        {1: 0.3333333333333333, 2: 0.6666666666666666}
        >>> recency_shares([3], 0.5)
        {3: 1.0}
    """
    present = sorted(set(rounds))
    if not present:
        return {}
    newest = present[-1]
    raw = {t: recency ** (newest - t) for t in present}
    total = sum(raw.values())
    return {t: w / total for t, w in raw.items()}


def draw_probabilities(pn_round: torch.Tensor, recency: float) -> torch.Tensor:
    """The probability of drawing each pseudo-negative (P,), float64: its round's share
    (``recency_shares``) split evenly among that round's samples."""
    rounds, inverse, counts = torch.unique(pn_round.cpu(), return_inverse=True,
                                           return_counts=True)
    shares = recency_shares(rounds.tolist(), recency)
    per = torch.tensor([shares[t] for t in rounds.tolist()], dtype=torch.float64)
    return (per / counts.double())[inverse]


def drawn_plan(
    n_real: int, pn_class: torch.Tensor, pn_round: torch.Tensor, batch_size: int,
    recency: float, per_network: bool, real_gen: torch.Generator, pn_gen: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Index pairs (real rows, pseudo-negative rows) for one epoch of the authors' batches.

    The real permutation is ``batch_plan``'s, from ``real_gen`` alone. Each real batch of B
    rows gets B pseudo-negatives drawn with replacement from ``pn_gen`` by
    ``draw_probabilities``; ``per_network`` (one-vs-all, eq. 7): B for each class present in
    the pool, drawn from that class's pseudo-negatives alone.

    Shape: pn_class (P,), pn_round (P,) on the CPU; P may be 0 (no rows drawn).
    """
    real = torch.randperm(n_real, generator=real_gen).split(batch_size)
    sizes = [len(r) for r in real]
    if not len(pn_class):
        return [(r, torch.empty(0, dtype=torch.long)) for r in real]
    groups = ([torch.nonzero(pn_class == k)[:, 0] for k in torch.unique(pn_class).tolist()]
              if per_network else [torch.arange(len(pn_class))])
    drawn = []
    for rows in groups:  # one draw of the whole epoch per network: batches are its pieces
        p = draw_probabilities(pn_round[rows], recency)
        pick = torch.multinomial(p, sum(sizes), replacement=True, generator=pn_gen)
        drawn.append(rows[pick].split(sizes))
    return [(r, torch.cat([d[i] for d in drawn])) for i, r in enumerate(real)]


def epoch_rows(n_real: int, pn_class: torch.Tensor, pn_weighting: str, mode: str) -> int:
    """Rows (real plus pseudo-negative) one mixed epoch trains on: the pool once
    (``per-sample``, ``batch-mean``), or as many drawn as there are real rows, per
    network in one-vs-all (``drawn``)."""
    if pn_weighting != "drawn" or not len(pn_class):
        return n_real + len(pn_class)
    networks = len(torch.unique(pn_class)) if mode == "ova" else 1
    return n_real * (1 + networks)


def _by_class(pn_idx: torch.Tensor, pn_class: torch.Tensor, heads: int):
    """A batch's pseudo-negative rows sorted by class, and how many of each (on CPU)."""
    k = pn_class[pn_idx]
    return pn_idx[torch.argsort(k, stable=True)], torch.bincount(k, minlength=heads).tolist()


def _on_device(plan: list[tuple[torch.Tensor, ...]], device: torch.device):
    """The epoch's index tuples (and loss shares) on ``device``: one copy per dtype for the
    whole epoch, from pinned memory on CUDA (asynchronous), never small copies per batch.

    Shape: every tensor 1-D; the tuples come back in order, each of the same length."""
    if device.type == "cpu" or not plan:
        return plan
    n = len(plan[0])
    flat = [t for batch in plan for t in batch]
    moved: list[torch.Tensor | None] = [None] * len(flat)
    for dtype in dict.fromkeys(t.dtype for t in flat):  # first-seen order
        at = [i for i, t in enumerate(flat) if t.dtype == dtype]
        sizes = [len(flat[i]) for i in at]
        host = torch.empty(sum(sizes), dtype=dtype, pin_memory=device.type == "cuda")
        torch.cat([flat[i] for i in at], out=host)
        for i, part in zip(at, host.to(device, non_blocking=True).split(sizes), strict=True):
            moved[i] = part
    return [tuple(moved[i:i + n]) for i in range(0, len(moved), n)]


class Diverged(FloatingPointError):
    """The training loss stopped being finite: the weights are garbage from then on."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"the training loss was {loss} in epoch {epoch + 1}")
        self.epoch, self.loss = epoch, loss


def reclassify(
    model: nn.Module,
    optimizer: SGD | torch.optim.Optimizer,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    pn_x: torch.Tensor,
    pn_class: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    mode: str = "softmax",
    pn_weight: float = 1.0,
    pn_weighting: str = "per-sample",
    pn_round: torch.Tensor | None = None,
    pn_recency: float = 0.5,
    clip_grad: float | None = None,
    max_batch: int | None = None,
    real_epochs: int = 0,
    real_gen: torch.Generator,
    pn_gen: torch.Generator,
    transform: Transform | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
    distributed: bool = False,
) -> list[EpochStats]:
    """Train ``model`` in place on S plus the pseudo-negative pool (ICL eq. 7 / eq. 11).

    ``epochs`` mixed epochs, then ``real_epochs`` on real data only. ``transform`` maps a
    batch of stored real images to network inputs (scaling, augmentation); pseudo-
    negatives are already inputs. Tensors must be on the model's device. In one-vs-all
    mode a pseudo-negative of class k goes through network k alone (``forward_heads``,
    for networks without batch norm), not through all K: 1/K of its cost.
    ``pn_weighting`` picks eq. 11's per-sample sum, the batch-mean ablation (see
    ``icl_cli.algo.losses``) or the authors' drawn batches (the module's docstring;
    ``pn_round`` gives each pseudo-negative's round, default all one round, and
    ``pn_recency`` the weight r of ``recency_shares``); ``clip_grad`` clips each step's
    global gradient norm.
    ``max_batch`` bounds the rows one forward pass sees: a batch with more real plus
    pseudo-negative rows is run as its real rows, then its pseudo-negatives in pieces of
    ``max_batch``, with the gradients accumulated (the same step up to floating-point
    order), so peak memory stays bounded whatever the pool (networks without batch norm).

    ``distributed``: this process is one rank of an open torch.distributed group (under
    torchrun, see ``icl_cli.distributed``); every rank calls this with the same arguments
    and generators, draws the same epoch plans, and trains on its slice of each batch
    (real rows and pseudo-negatives alike) through DistributedDataParallel, so the ranks
    together take the one-process steps up to floating-point order (``_ddp_step``), and the
    returned stats are the global ones on every rank. A batch-norm network becomes
    SyncBatchNorm in place (CUDA only).

    On a CPU it fixes glibc's malloc thresholds for the process first (``algo.heap``), so
    that each step's memory stays mapped instead of being faulted in again.

    Shape: real_x (N, C, H, W), real_y (N,), pn_x (P, C, H, W), pn_class (P,).
    """
    loss_fn = LOSSES[mode]
    device = real_x.device
    if device.type == "cpu":  # each step's memory stays mapped, not faulted in again
        steady_heap()
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext())
    heads = getattr(model, "heads", 1)
    if max_batch is not None and (max_batch < 1 or has_batch_norm(model)):
        raise ValueError("max_batch needs a positive size and a network without batch norm "
                         "(batch statistics would change with the split)")
    per_head = (mode == "ova" and heads > 1 and hasattr(model, "forward_heads")
                and not has_batch_norm(model) and max_batch is None)
    drawn = pn_weighting == "drawn"
    # one sync per call, not per batch
    pn_class_cpu = pn_class.cpu() if per_head or distributed or drawn else None
    if drawn:
        pn_round = (torch.zeros(len(pn_class), dtype=torch.long) if pn_round is None
                    else pn_round.cpu())
    ddp = _wrap(model, device) if distributed else None
    model.train()
    history = []
    for epoch in range(epochs + real_epochs):
        t0 = time.perf_counter()
        n_pn = len(pn_class) if epoch < epochs else 0
        if drawn:
            plan = drawn_plan(len(real_y), pn_class_cpu[:n_pn], pn_round[:n_pn], batch_size,
                              pn_recency, mode == "ova", real_gen, pn_gen)
        else:
            plan = batch_plan(len(real_y), n_pn, batch_size, real_gen, pn_gen)
        counts: list[list[int] | None] = [None] * len(plan)
        sizes = [len(r) + len(p) for r, p in plan]  # rows of each global batch
        if ddp is not None:
            plan, counts = _rank_plan(plan, pn_class_cpu, heads, mode, pn_weighting,
                                      per_head and n_pn > 0)
        elif per_head and n_pn:
            for i, (real_idx, pn_idx) in enumerate(plan):
                pn_idx, counts[i] = _by_class(pn_idx, pn_class_cpu, heads)
                plan[i] = (real_idx, pn_idx)
        sums = torch.zeros(3, device=device)  # summed on device: no sync per step
        peaks = torch.zeros(3, device=device)  # grad norm, |real logit|, |pn logit|: max
        for batch, pn_counts, rows in zip(_on_device(plan, device), counts, sizes, strict=True):
            real_idx, pn_idx = batch[0], batch[1]
            xr = real_x[real_idx]
            if transform is not None:
                xr = transform(xr)  # the whole batch on every rank: the same random draws
            nr = len(real_idx)
            if ddp is not None:
                optimizer.zero_grad(set_to_none=True)
                terms, real_peak, pn_peak = _ddp_step(
                    ddp, mode, xr, real_y[real_idx], pn_x, pn_idx, pn_class, batch[2],
                    pn_counts, pn_weight, max_batch, autocast)
                norm = grad_norm(model, clip_grad)  # of the all-reduced gradients: global
                optimizer.step()
                sums += terms
                peaks = torch.maximum(peaks, torch.stack([norm, real_peak, pn_peak]))
                if progress is not None:
                    progress(rows)
                continue
            if max_batch is not None and nr + len(pn_idx) > max_batch:
                optimizer.zero_grad(set_to_none=True)
                loss, real, pn, real_logits, pn_f = _accumulate(
                    model, loss_fn, xr, real_y[real_idx], pn_x, pn_idx, pn_class, heads,
                    pn_weight, pn_weighting, mode, max_batch, autocast)
                norm = grad_norm(model, clip_grad)
                optimizer.step()
                sums += torch.stack([loss, real, pn])
                peaks = torch.maximum(peaks, torch.stack([
                    norm, _abs_max(real_logits), pn_f]))
                if progress is not None:
                    progress(nr + len(pn_idx))
                continue
            with autocast:
                if pn_counts is not None:  # ova: network k sees the real batch + its own pn
                    own = pn_x[pn_idx].split(pn_counts)
                    outs = model.forward_heads([torch.cat([xr, p]) for p in own])
                    real_logits = torch.cat([o[:nr] for o in outs], dim=1).float()
                    pn_logits = torch.cat([o[nr:, 0] for o in outs]).float()
                else:
                    xb = torch.cat([xr, pn_x[pn_idx]]) if len(pn_idx) else xr
                    logits = model(xb).float()
                    real_logits, pn_logits = logits[:nr], logits[nr:]
            loss, real, pn = loss_fn(real_logits, real_y[real_idx], pn_logits,
                                     pn_class[pn_idx], pn_weight, pn_weighting)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = grad_norm(model, clip_grad)
            optimizer.step()
            sums += torch.stack([loss.detach(), real, pn])
            peaks = torch.maximum(peaks, torch.stack([
                norm, _abs_max(real_logits), _abs_max(target_logit(pn_logits, pn_class[pn_idx]))]))
            if progress is not None:
                progress(nr + len(pn_idx))
        if ddp is not None:  # each rank holds its rows' share: the global values
            import torch.distributed as dist

            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        mean = (sums / len(plan)).tolist()
        if not math.isfinite(mean[0]):  # checked once per epoch: the .tolist() syncs anyway
            raise Diverged(epoch, mean[0])
        history.append(EpochStats(epoch, mean[0], mean[1], mean[2], sum(sizes),
                                  time.perf_counter() - t0, *peaks.tolist()))
    return history


def _accumulate(model, loss_fn, xr, yr, pn_x, pn_idx, pn_class, heads: int,
                weight: float, weighting: str, mode: str, max_batch: int, autocast):
    """One batch's gradient in pieces: the real rows' term, then each piece of at most
    ``max_batch`` pseudo-negatives with its share of the pseudo-negative term, each
    backpropagated at once (only one piece's activations live at a time). Every form of
    the loss is a weighted sum over the pseudo-negatives: 1 / B each (per-sample), 1 / P
    (batch-mean, softmax), 1 / (count of its class) (batch-mean, one-vs-all).

    Returns (loss, real term, pn term, real logits, largest |f_k| of a pseudo-negative),
    detached, as the one-pass step would give them."""
    nr, k = len(yr), pn_class[pn_idx]
    share = _pn_shares(k, nr, heads, mode, weighting)
    empty = torch.empty(0, dtype=torch.long, device=xr.device)
    with autocast:
        real_logits = model(xr).float()
    total, real, _ = loss_fn(real_logits, yr, real_logits[:0], empty, weight, weighting)
    total.backward()
    pn = torch.zeros((), device=xr.device)
    peak = torch.zeros((), device=xr.device)
    for rows, part in zip(pn_idx.split(max_batch), share.split(max_batch), strict=True):
        with autocast:
            f = target_logit(model(pn_x[rows]).float(), pn_class[rows])
        term = (torch.nn.functional.softplus(f) * part).sum()
        (weight * term).backward()
        pn, peak = pn + term.detach(), torch.maximum(peak, _abs_max(f))
    return total.detach() + weight * pn, real, pn, real_logits.detach(), peak


def _pn_shares(k: torch.Tensor, n_real: int, heads: int, mode: str,
               weighting: str) -> torch.Tensor:
    """What each pseudo-negative's softplus(f_k) counts for in its batch's loss, given the
    batch's n_real real rows and the classes ``k`` of all its pseudo-negatives: 1 / B
    (per-sample), 1 / P (batch-mean, softmax), 1 / (count of its class) (batch-mean, ova)."""
    if weighting == "per-sample":
        return torch.full((len(k),), 1.0 / n_real, device=k.device)
    if mode == "softmax":
        return torch.full((len(k),), 1.0 / max(len(k), 1), device=k.device)
    counts = torch.zeros(heads, device=k.device).index_add_(
        0, k, torch.ones(len(k), device=k.device))
    return 1.0 / counts[k]


class _Forward(nn.Module):
    """What DistributedDataParallel wraps: the network's forward on a batch, or its
    ``forward_heads`` on a list of per-network batches (one-vs-all), so that both go
    through DDP's forward and have their gradients all-reduced."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_heads(x) if isinstance(x, list) else self.net(x)


def _wrap(model: nn.Module, device: torch.device):
    """``model`` in DistributedDataParallel (the ranks' parameters checked equal and
    broadcast from rank 0 on the way in)."""
    from torch.nn.parallel import DistributedDataParallel

    if has_batch_norm(model):
        if device.type != "cuda":
            raise ValueError("a batch-norm network needs CUDA to train on several ranks "
                             "(SyncBatchNorm); on CPU train it in one process")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # children replaced in place
    # No buffer sync per forward: forward passes per step differ between ranks with
    # --max-batch, and only batch norm has buffers (kept equal by SyncBatchNorm).
    import inspect

    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(
        _Forward(model), device_ids=[device.index] if device.type == "cuda" else None,
        **no_sync)


def _rank_plan(plan, pn_class_cpu: torch.Tensor, heads: int, mode: str, weighting: str,
               per_head: bool):
    """This rank's part of an epoch plan: each batch's real rows whole (sliced after the
    transform, which draws for the whole batch) and its slice of the pseudo-negatives,
    with their loss shares computed over the whole batch; one-vs-all: sorted by class,
    with the counts per class."""
    import torch.distributed as dist

    rank, size = dist.get_rank(), dist.get_world_size()
    out, counts = [], []
    for real_idx, pn_idx in plan:
        share = _pn_shares(pn_class_cpu[pn_idx], len(real_idx), heads, mode, weighting)
        mine, share = pn_idx.tensor_split(size)[rank], share.tensor_split(size)[rank]
        count = None
        if per_head:
            order = torch.argsort(pn_class_cpu[mine], stable=True)
            mine, share = mine[order], share[order]
            count = torch.bincount(pn_class_cpu[mine], minlength=heads).tolist()
        out.append((real_idx, mine, share))
        counts.append(count)
    return out, counts


def _real_sum(mode: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The real rows' loss summed over the rows (their mean times B in ``LOSSES``)."""
    if mode == "softmax":
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    onehot = torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot,
                                                                reduction="sum")


def _ddp_step(ddp, mode: str, xr_all, yr_all, pn_x, pn_idx, pn_class, share, counts,
              weight: float, max_batch: int | None, autocast):
    """This rank's gradient of one global batch (B real rows ``xr_all``, already inputs;
    this rank's pseudo-negatives ``pn_idx`` with their ``share``), all-reduced by DDP.

    Every form of the loss is a sum over rows: real row i adds l_i / B (cross-entropy, or
    its K binary terms), pseudo-negative j adds w * share_j * softplus(f_k(x_j)). A rank
    backpropagates the sum over its own rows times the world size N, and DDP averages
    the N gradients: their mean is the gradient of the one-process loss. With
    ``max_batch`` the rank's rows run in pieces (real rows, then pseudo-negatives), the
    gradient accumulating locally (``no_sync``) until the last piece all-reduces it.

    Returns the rank's part of (loss, real term, pn term) and its largest |real logit|
    and |f_k| of a pseudo-negative, detached (summed / maxed over the ranks later)."""
    import torch.distributed as dist

    rank, size = dist.get_rank(), dist.get_world_size()
    n_all = len(yr_all)
    xr, yr = xr_all.tensor_split(size)[rank], yr_all.tensor_split(size)[rank]
    nr = len(yr)
    if counts is not None:  # one-vs-all: network k sees the rank's real rows + its own pn
        passes = [([torch.cat([xr, p]) for p in pn_x[pn_idx].split(counts)], nr,
                   pn_idx, share)]
    elif max_batch is not None and nr + len(pn_idx) > max_batch:
        passes = [(xr, nr, pn_idx[:0], share[:0])] if nr else []
        passes += [(pn_x[rows], 0, rows, part) for rows, part in
                   zip(pn_idx.split(max_batch), share.split(max_batch), strict=True)]
    else:
        xb = torch.cat([xr, pn_x[pn_idx]]) if len(pn_idx) else xr
        passes = [(xb, nr, pn_idx, share)]
    terms = torch.zeros(2, device=xr.device)
    real_peak = torch.zeros((), device=xr.device)
    pn_peak = torch.zeros((), device=xr.device)
    for i, (inputs, n_real, rows, part) in enumerate(passes):
        last = i == len(passes) - 1
        with (nullcontext() if last else ddp.no_sync()):
            with autocast:
                out = ddp(inputs)
            if isinstance(out, list):
                real_logits = torch.cat([o[:n_real] for o in out], dim=1).float()
                f = torch.cat([o[n_real:, 0] for o in out]).float()
            else:
                out = out.float()
                real_logits = out[:n_real]
                f = target_logit(out[n_real:], pn_class[rows])
            real = _real_sum(mode, real_logits, yr[:n_real]) / n_all
            pn = (torch.nn.functional.softplus(f) * part).sum()
            ((real + weight * pn) * size).backward()
        terms += torch.stack([real.detach(), pn.detach()])
        real_peak = torch.maximum(real_peak, _abs_max(real_logits))
        pn_peak = torch.maximum(pn_peak, _abs_max(f))
    return torch.stack([terms[0] + weight * terms[1], terms[0], terms[1]]), real_peak, pn_peak


def grad_norm(model: nn.Module, clip: float | None = None) -> torch.Tensor:
    """The global L2 norm of the gradients (a 0-d tensor, no host sync); with ``clip``
    (not None, not 0), scale them down to that norm first if larger
    (``torch.nn.utils.clip_grad_norm_``)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), device=next(model.parameters()).device)
    if clip:
        return torch.nn.utils.clip_grad_norm_(params, clip).detach()
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))


def _abs_max(x: torch.Tensor) -> torch.Tensor:
    return x.detach().abs().max() if x.numel() else torch.zeros((), device=x.device)
