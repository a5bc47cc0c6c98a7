"""Drawing a round's pseudo-negatives, what the synthesis step (``steps.synthesize``) and
its parts (``steps.parts``) share: the plan of a round's next shard (version, seed,
sampler settings, source checkpoint), its rows drawn block by block from that
checkpoint, and the shard recorded with its metrics.

The sampler settings travel typed, from the command line's ``SamplerChanges`` applied to
the experiment's ``SamplerConfig`` down to Adam (``algo.ascent.synthesize``), as a
:class:`Sampling`; they become a plain dict only where they are recorded (a shard's
``sampler_config``, the step log) and are read back once from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from icl_cli.algo.ascent import Synthesis, reference_noise, synthesize, targets_per_class
from icl_cli.config import ExperimentConfig, SamplerChanges, SamplerConfig
from icl_cli.finished import prepared
from icl_cli.steps.common import (
    Runtime,
    StepError,
    derive_seed,
    load_weights,
    new_model,
)

BLOCK = 256
"""Samples per sampler batch. A round runs as independent batches of ``BLOCK`` samples (the
last one shorter), each with its own Langevin-noise stream, so that a sample's bits never
depend on which other samples shared its batch: CPU kernels are not batch-invariant (a
convolution of one row, or a linear layer with one output, rounds differently from the same
row inside a larger batch; the batch also shrinks as samples stop). Parts are runs of whole
blocks, hence bit-identical to the round drawn at once. A round of at most ``BLOCK`` samples
is one batch, exactly as before blocks existed; a larger one records ``"block"`` in its
sampler settings (a shard without it was drawn as one batch, and is replayed so)."""


@dataclass(frozen=True)
class SynthesisResult:
    experiment: str
    round: int
    version: int
    count: int
    pass_rate: float
    mean_steps: float
    steps_saved: float  # fraction of count * max_steps gradient steps not computed
    seconds: float
    reused: bool  # an identical shard (or part) existed; nothing ran
    replay_match: bool | None = None
    path: str = ""
    part: str | None = None  # "i/N" for a part; count etc. are then the part's
    missing: tuple[int, ...] = ()  # parts of N not recorded yet (after this one)
    shard: SynthesisResult | None = None  # the round's shard, when this part completed it
    replay_drift: str | None = None  # --replay: the network's code changed since init


@dataclass(frozen=True)
class Sampling:
    """How a round's samples are drawn: the sampler's settings (``config``), whether under
    bf16 autocast (``amp``: it changes the samples, so a replay draws them the same way),
    the samples per batch (``block``; None: the whole round in one batch, as a round
    of at most ``BLOCK`` samples, and every shard drawn before blocks existed) and whether
    the network was compiled or laid out channels_last (``compile``, ``channels_last``:
    floating-point order only, yet other bits, so kept like ``amp``).

    ``record()`` is the plain dict a shard keeps as its ``sampler_config`` (and the step
    log beside it): the config's fields, then ``"amp": true``, ``"block"``,
    ``"compile": true`` and ``"channels_last": true`` where they apply. One read back
    with ``from_record`` records that very dict again, so a shard recorded before a
    sampler setting existed keeps its record on replay and join.

    Example:
        >>> s = Sampling.of(SamplerConfig(count=30), amp=False, n=300)
        >>> s.block, s.record()["block"], Sampling.from_record(s.record()) == s
        (256, 256, True)
    """

    config: SamplerConfig
    amp: bool = False
    block: int | None = None
    recorded: dict | None = field(default=None, compare=False, repr=False)
    compile: bool = False
    channels_last: bool = False

    @classmethod
    def of(cls, config: SamplerConfig, amp: bool, n: int = 0, compile: bool = False,
           channels_last: bool = False) -> Sampling:
        """The settings of a round of ``n`` samples: in blocks when it has more than one."""
        return cls(config, amp, BLOCK if n > BLOCK else None, compile=compile,
                   channels_last=channels_last)

    @classmethod
    def asked(cls, config: SamplerConfig, runtime: Runtime, n: int = 0) -> Sampling:
        """``of(config, ...)`` with ``runtime``'s amp, compile and channels_last."""
        return cls.of(config, runtime.amp, n, runtime.compile, runtime.channels_last)

    @classmethod
    def from_record(cls, record: dict) -> Sampling:
        return cls(SamplerConfig.from_dict(record), bool(record.get("amp")),
                   record.get("block"), dict(record), bool(record.get("compile")),
                   bool(record.get("channels_last")))

    def record(self) -> dict:
        if self.recorded is not None:
            return dict(self.recorded)
        return {**self.config.to_dict(), **({"amp": True} if self.amp else {}),
                **({"block": self.block} if self.block else {}),
                **prepared(self.compile, self.channels_last)}

    def matches(self, recorded: dict) -> bool:
        """Whether a shard recorded with ``recorded`` settings holds samples for these,
        whatever its blocks: one drawn as one batch before blocks existed still does."""
        def unblocked(d: dict) -> dict:
            return {k: v for k, v in d.items() if k != "block"}

        return unblocked(recorded) == unblocked(self.record())


@dataclass(frozen=True)
class Plan:
    """What round t's next shard is to be: version, seed, sampler settings, source
    checkpoint (sha256) and the round's sample count. Every part must agree on all of it
    to be joined with the others."""

    round: int
    version: int
    seed: int
    sampler: Sampling
    source: str
    count: int

    def record(self) -> dict:
        """The plan as the step log keeps it with each part."""
        return {"version": self.version, "seed": self.seed, "sampler": self.sampler.record(),
                "source": self.source, "count": self.count}

    @classmethod
    def from_record(cls, round_: int, record: dict) -> Plan:
        return cls(round_, record["version"], record["seed"],
                   Sampling.from_record(record["sampler"]), record["source"], record["count"])


def block_ranges(rows: range, block: int) -> list[range]:
    """``rows`` cut at multiples of ``block`` (the blocks of the round it covers).

    Example:
        >>> block_ranges(range(2, 9), 4)
        [range(2, 4), range(4, 8), range(8, 9)]
    """
    cuts = [rows.start, *range((rows.start // block + 1) * block, rows.stop, block), rows.stop]
    return [range(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _block_seed(seed: int, block: int) -> int:
    """Block 0's Langevin stream is the round's seed itself (a one-block round draws as it
    always did); every other block has its own."""
    return seed if block == 0 else derive_seed("langevin-block", seed, block)


def draw(model, sampling: Sampling, num_classes: int, shape, seed: int, device,
         progress=None, rows: range | list[range] | None = None) -> Synthesis:
    """Rows ``rows`` (a range or a list of them, in order; default: all) of the round's
    K * count pseudo-negatives: reference draws, then (gradient kind) Adam ascent, block by
    block (``sampling.block`` samples per batch; None: the whole round in one batch). Row
    i is the same whatever ``rows`` holds it; each range must therefore start and end on
    block boundaries (or the round's end)."""
    sc = sampling.config
    target = targets_per_class(num_classes, sc.count)
    n = len(target)
    ranges = [range(n)] if rows is None else [rows] if isinstance(rows, range) else rows
    size = sampling.block or max(n, 1)
    for r in ranges:
        if r.start % size or (r.stop % size and r.stop != n) or r.stop > n:
            raise ValueError(f"rows {r.start}-{r.stop} are not whole blocks of {size} "
                             f"of a round of {n}")
    x0 = reference_noise(n, shape, sc.reference_std, torch.Generator().manual_seed(seed))
    outs = []
    for b in [b for r in ranges for b in block_ranges(r, size)] or ranges[:1]:
        outs.append(_ascend(model, sampling, x0[b.start:b.stop].to(device),
                            target[b.start:b.stop], _block_seed(seed, b.start // size), device,
                            progress))
    if len(outs) == 1:
        return outs[0]
    return Synthesis(*(torch.cat([getattr(o, f) for o in outs]) for f in
                       ("samples", "target", "steps", "logit", "passed")))


def _ascend(model, sampling: Sampling, x0, target, seed: int, device,
            progress) -> Synthesis:
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if sampling.amp
                else nullcontext())
    with autocast:
        return synthesize(model, x0, target, sampling.config,
                          generator=torch.Generator(device=device).manual_seed(seed),
                          progress=progress)


def _arrays(out: Synthesis) -> dict[str, np.ndarray]:
    return {"samples": out.samples.float().cpu().numpy(),
            "target": out.target.cpu().numpy().astype(np.int64),
            "steps": out.steps.cpu().numpy().astype(np.int32),
            "logit": out.logit.float().cpu().numpy(),
            "passed": out.passed.cpu().numpy()}


def round_source(store, exp, t: int):
    source = store.checkpoint(exp.name, t - 1)
    if source is None:
        raise StepError(f"round {t - 1} of '{exp.name}' has no checkpoint yet: run "
                        f"`icl reclassify --round {t - 1}` first" if t > 1 else
                        f"experiment '{exp.name}' has no round-0 checkpoint: run `icl init`")
    if t > 1 and store.active_shard(exp.name, t - 1) is None:
        raise StepError(f"round {t - 1} has no shard: run `icl synthesize --round {t - 1}`")
    return source


def plan_round(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime, force: bool,
               changes: SamplerChanges, num_classes: Callable[[], int]):
    """The Plan of round t's next shard, or the active shard (ShardInfo) when it already
    holds these settings from this checkpoint (nothing to do). Call under the lock.
    ``num_classes`` is asked only when there is something to draw (it loads the data)."""
    source = round_source(store, exp, t)
    sc = changes.apply(cfg.sampler)
    active = store.active_shard(exp.name, t)
    if active is not None and not force:
        if Sampling.asked(sc, runtime).matches(active.sampler_config) and \
                active.source_checkpoint == source.sha256:
            return active
        raise StepError(f"round {t} of '{exp.name}' already has shard v{active.version} "
                        f"from other settings or another checkpoint: pass --force to "
                        f"make a new version")
    version = 1 + max((s.version for s in store.shards(exp.name, t)), default=0)
    n = num_classes() * sc.count
    return Plan(t, version, derive_seed("synthesize", cfg.seed, t, version),
                Sampling.asked(sc, runtime, n), source.sha256, n)


def draw_rows(store, exp, cfg, data, plan: Plan, runtime: Runtime, device,
              rows: list[range], what: str) -> tuple[dict[str, np.ndarray], float]:
    """Rows ``rows`` of round ``plan`` drawn from its source checkpoint: (arrays, seconds)."""
    source = store.checkpoint(exp.name, plan.round - 1)
    if source is None or source.sha256 != plan.source:
        raise StepError(f"checkpoint {plan.round - 1} of '{exp.name}' changed meanwhile: "
                        "run the command again")
    # compiled or channels_last as the plan says (a replay: as the shard records)
    model = runtime.prepare(new_model(cfg, data).to(device), plan.sampler.compile,
                            plan.sampler.channels_last)
    load_weights(model, store, source, device)
    t0 = time.perf_counter()
    size = plan.sampler.block or max(plan.count, 1)
    total = plan.sampler.config.max_steps * max(1, sum(len(block_ranges(r, size))
                                                       for r in rows))
    advance = runtime.progress.task(f"{what} {plan.round}", total)
    out = draw(model, plan.sampler, data.num_classes, data.shape, plan.seed, device,
               progress=lambda step, active: advance(1), rows=rows)
    runtime.progress.done()
    return _arrays(out), time.perf_counter() - t0


def shard_attrs(plan: Plan) -> dict:
    return {"seed": plan.seed, "sampler_config": plan.sampler.record(),
            "source_checkpoint": plan.source}


def recorded_shard(store, exp, info, arrays, seconds: float, max_steps: int,
                   tracker) -> SynthesisResult:
    """A new shard's summary, with its round metrics recorded and tracked."""
    result = shard_summary(store, info, reused=False, seconds=seconds, arrays=arrays,
                           max_steps=max_steps)
    health = sample_health(arrays)
    store.record_metrics(exp.name, info.round, health)
    tracker.log_metrics(
        {"pass_rate": result.pass_rate, "mean_steps": result.mean_steps,
         "synthesize_seconds": seconds, **health}, step=info.round)
    return result


def sample_health(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Of a shard: the share of sample values outside the data range [-1, 1] and the
    share of samples that never passed (reached max_steps still classified negative)."""
    x, passed = arrays["samples"], arrays["passed"]
    return {"outside_range": float(np.mean(np.abs(x) > 1.0)) if x.size else 0.0,
            "never_passed": float(1.0 - passed.mean()) if passed.size else 0.0}


def summary_of(experiment: str, round_: int, version: int, arrays, max_steps: int,
               seconds: float, reused: bool, path: str,
               replay_match: bool | None = None) -> SynthesisResult:
    steps = arrays["steps"].astype(np.float64)
    budget = len(steps) * max_steps
    saved = 1 - steps.sum() / budget if budget else 0.0
    return SynthesisResult(experiment, round_, version, len(steps),
                           float(arrays["passed"].mean()), float(steps.mean()), float(saved),
                           seconds, reused, replay_match, path)


def shard_summary(store, info, *, reused: bool, seconds: float = 0.0, arrays=None,
                  max_steps: int | None = None, replay_match: bool | None = None
                  ) -> SynthesisResult:
    arrays = arrays if arrays is not None else store.read_shard(info)
    max_steps = max_steps if max_steps is not None else info.sampler_config.get("max_steps", 0)
    return summary_of(info.experiment, info.round, info.version, arrays, max_steps, seconds,
                      reused, str(info.path), replay_match)
