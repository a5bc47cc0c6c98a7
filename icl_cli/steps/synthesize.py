"""The synthesis step (``icl synthesize --round t``): pseudo-negatives from checkpoint t-1.

A round's samples run in blocks of ``BLOCK`` (see there), so the round can also be drawn in
parts: ``--part i/N`` draws every N-th block, from block i, into a part file, recorded in
the step log (``synthesize-part``); the last part to be recorded joins the N parts into the
round's shard (``--merge`` does it by hand), which is recorded as every shard is. Under
torchrun the ranks split the round by themselves: rank r draws part r+1 of N, rank 0 joins
them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from icl_cli.algo.ascent import Synthesis, reference_noise, synthesize, targets_per_class
from icl_cli.config import ExperimentConfig, SamplerChanges, SamplerConfig, check_sampler_fits
from icl_cli.steps.common import (
    Progress,
    Runtime,
    StepError,
    derive_seed,
    experiment_data,
    join_ranks,
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
PART_STEP = "synthesize-part"


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


@dataclass(frozen=True)
class Plan:
    """What round t's next shard is to be: version, seed, sampler settings as recorded,
    source checkpoint (sha256) and the round's sample count. Every part must agree on all
    of it to be joined with the others."""

    round: int
    version: int
    seed: int
    sampler: dict
    source: str
    count: int

    def record(self) -> dict:
        return {"version": self.version, "seed": self.seed, "sampler": self.sampler,
                "source": self.source, "count": self.count}


def block_ranges(rows: range, block: int) -> list[range]:
    """``rows`` cut at multiples of ``block`` (the blocks of the round it covers).

    Example:
        >>> block_ranges(range(2, 9), 4)
        [range(2, 4), range(4, 8), range(8, 9)]
    """
    cuts = [rows.start, *range((rows.start // block + 1) * block, rows.stop, block), rows.stop]
    return [range(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def part_rows(n: int, index: int, parts: int, block: int = BLOCK) -> list[range]:
    """Rows of part ``index`` of ``parts`` of a round of ``n`` samples: every ``parts``-th
    block of the round, from block ``index`` - 1 (round robin). A round's rows are sorted
    by class, and the classes differ in how many ascent steps their samples need: parts of
    consecutive blocks got different classes and took different times (7.0 s against
    9.0 s for the two halves of a round of 1,030 samples at round 1), interleaved ones get
    every class alike. StepError where the round has fewer blocks than parts.

    Example:
        >>> part_rows(1000, 1, 2)
        [range(0, 256), range(512, 768)]
    """
    blocks = max(1, -(-n // block))
    if parts > blocks:
        raise StepError(f"round of {n} samples is {blocks} block(s) of {block}: it splits "
                        f"into {blocks} part(s) at most, not {parts}")
    return [range(b * block, min(n, (b + 1) * block)) for b in range(index - 1, blocks, parts)]


def rows_record(rows: list[range]) -> list[list[int]]:
    """Rows as a part file and the step log record them: [[start, stop], ...]."""
    return [[r.start, r.stop] for r in rows]


def parse_part(text: str) -> tuple[int, int]:
    """``"2/3"`` -> (2, 3); StepError unless 1 <= i <= N."""
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() \
            or not 1 <= int(i) <= int(n):
        raise StepError(f"--part must be i/N with 1 <= i <= N (for example 2/3), got {text!r}")
    return int(i), int(n)


def _block_seed(seed: int, block: int) -> int:
    """Block 0's Langevin stream is the round's seed itself (a one-block round draws as it
    always did); every other block has its own."""
    return seed if block == 0 else derive_seed("langevin-block", seed, block)


def draw(model, sc: SamplerConfig, num_classes: int, shape, seed: int, device,
         amp_dtype=None, progress=None, rows: range | list[range] | None = None,
         block: int | None = None) -> Synthesis:
    """Rows ``rows`` (a range or a list of them, in order; default: all) of the round's
    K * count pseudo-negatives: reference draws, then (gradient kind) Adam ascent, block by
    block (``block`` samples per batch; None: the whole round in one batch). Row i is the
    same whatever ``rows`` holds it; each range must therefore start and end on block
    boundaries (or the round's end)."""
    target = targets_per_class(num_classes, sc.count)
    n = len(target)
    ranges = [range(n)] if rows is None else [rows] if isinstance(rows, range) else rows
    size = block or max(n, 1)
    for r in ranges:
        if r.start % size or (r.stop % size and r.stop != n) or r.stop > n:
            raise ValueError(f"rows {r.start}-{r.stop} are not whole blocks of {size} "
                             f"of a round of {n}")
    x0 = reference_noise(n, shape, sc.reference_std, torch.Generator().manual_seed(seed))
    outs = []
    for b in [b for r in ranges for b in block_ranges(r, size)] or ranges[:1]:
        outs.append(_ascend(model, sc, x0[b.start:b.stop].to(device), target[b.start:b.stop],
                            _block_seed(seed, b.start // size), device, amp_dtype, progress))
    if len(outs) == 1:
        return outs[0]
    return Synthesis(*(torch.cat([getattr(o, f) for o in outs]) for f in
                       ("samples", "target", "steps", "logit", "passed")))


def _ascend(model, sc: SamplerConfig, x0, target, seed: int, device, amp_dtype,
            progress) -> Synthesis:
    steps = 0 if sc.kind == "noise" else sc.max_steps
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with autocast:
        return synthesize(
            model, x0, target, max_steps=steps, lr=sc.lr, betas=(sc.beta1, sc.beta2),
            stop_rule=sc.stop_rule, langevin_std=sc.langevin_std,
            clamp=(-1.0, 1.0) if sc.clamp else None, check_every=sc.check_every,
            generator=torch.Generator(device=device).manual_seed(seed), progress=progress,
        )


def _arrays(out: Synthesis) -> dict[str, np.ndarray]:
    return {"samples": out.samples.float().cpu().numpy(),
            "target": out.target.cpu().numpy().astype(np.int64),
            "steps": out.steps.cpu().numpy().astype(np.int32),
            "logit": out.logit.float().cpu().numpy(),
            "passed": out.passed.cpu().numpy()}


def synthesize_round(store, name: str, round_: int, runtime: Runtime, *, force: bool = False,
                     replay: bool = False, changes: SamplerChanges | None = None,
                     part: tuple[int, int] | None = None, merge: bool = False
                     ) -> SynthesisResult:
    """Draw round t's shard from checkpoint t-1 (a new version with ``force``), with the
    experiment's sampler settings and this round's ``changes`` (``--count``, ...).

    ``part=(i, N)`` draws part i of N into a part file and records it; the process that
    records the last missing part joins them into the shard. ``merge`` joins recorded parts
    by hand. Under torchrun (several ranks) the ranks split the round by themselves.

    The whole round runs under the experiment's lock from the first check to the last
    write, so two processes never both decide that the round is still to do (the second
    gets BusyError, or, once the first has finished, finds its shard and reports it). A
    part holds the lock only to plan and to record (it waits for it), and a claim on its
    part while it draws.
    """
    exp = store.experiment(name)
    cfg = ExperimentConfig.from_dict(exp.config)
    t = round_
    if cfg.method == "baseline":
        raise StepError(f"experiment '{exp.name}' is a baseline: it has no pseudo-negatives "
                        "to synthesize (reclassify it directly)")
    if t < 1:
        raise StepError(f"synthesize needs --round >= 1 (round 0 is `icl init`), got {t}")
    changes = changes or SamplerChanges()
    if sum([part is not None, merge, replay]) > 1:
        raise StepError("--part, --merge and --replay are one each: pass only one of them")
    if merge and force:
        raise StepError("--merge joins the parts recorded; --force goes with the parts "
                        "(`--part i/N --force` draws a new version)")
    from icl_cli import distributed

    if distributed.from_env().active:
        if part is not None or merge:
            raise StepError("under torchrun the ranks split the round by themselves: drop "
                            "--part/--merge")
        return _synthesize_ranks(store, exp, cfg, t, runtime, force, replay, changes)
    if part is not None:
        return _synthesize_part(store, exp, cfg, t, runtime, force, changes, *part)
    if merge:
        return _merge_command(store, exp, cfg, t, runtime, changes)
    with store.lock(exp.name):
        return _synthesize(store, exp, cfg, t, runtime, force, replay, changes)


def _source(store, exp, t: int):
    source = store.checkpoint(exp.name, t - 1)
    if source is None:
        raise StepError(f"round {t - 1} of '{exp.name}' has no checkpoint yet: run "
                        f"`icl reclassify --round {t - 1}` first" if t > 1 else
                        f"experiment '{exp.name}' has no round-0 checkpoint: run `icl init`")
    if t > 1 and store.active_shard(exp.name, t - 1) is None:
        raise StepError(f"round {t - 1} has no shard: run `icl synthesize --round {t - 1}`")
    return source


def _plan(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime, force: bool,
          changes: SamplerChanges, num_classes: Callable[[], int]):
    """The Plan of round t's next shard, or the active shard (ShardInfo) when it already
    holds these settings from this checkpoint (nothing to do). Call under the lock.
    ``num_classes`` is asked only when there is something to draw (it loads the data)."""
    source = _source(store, exp, t)
    sc = changes.apply(cfg.sampler)
    amp = runtime.amp
    active = store.active_shard(exp.name, t)
    if active is not None and not force:
        if _same(active.sampler_config, _recorded(sc, amp)) and \
                active.source_checkpoint == source.sha256:
            return active
        raise StepError(f"round {t} of '{exp.name}' already has shard v{active.version} "
                        f"from other settings or another checkpoint: pass --force to "
                        f"make a new version")
    version = 1 + max((s.version for s in store.shards(exp.name, t)), default=0)
    n = num_classes() * sc.count
    return Plan(t, version, derive_seed("synthesize", cfg.seed, t, version),
                _recorded(sc, amp, n), source.sha256, n)


def _num_classes(exp) -> Callable[[], int]:
    return lambda: experiment_data(exp).num_classes


def _synthesize(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime, force: bool,
                replay: bool, changes: SamplerChanges) -> SynthesisResult:
    if not replay:
        planned = _plan(store, exp, cfg, t, runtime, force, changes, _num_classes(exp))
        if not isinstance(planned, Plan):
            return _summary(store, planned, reused=True)
        return _draw_round(store, exp, cfg, planned, runtime)
    source = _source(store, exp, t)
    active = store.active_shard(exp.name, t)
    if active is None:
        raise StepError(f"round {t} of '{exp.name}' has no shard to replay")
    if active.source_checkpoint not in (None, source.sha256):
        raise StepError(f"checkpoint {t - 1} of '{exp.name}' changed since round {t} was "
                        "synthesized: it cannot be replayed")
    plan = Plan(t, active.version, active.seed, dict(active.sampler_config), source.sha256,
                active.count)  # as recorded, amp and block included, not as asked
    return _draw_round(store, exp, cfg, plan, runtime, replay=active)


def _draw_round(store, exp, cfg: ExperimentConfig, plan: Plan, runtime: Runtime,
                replay=None) -> SynthesisResult:
    """Draw the whole round of ``plan`` in this process and record its shard (or, with
    ``replay``, the recorded shard, compare with it)."""
    t, sc = plan.round, SamplerConfig.from_dict(plan.sampler)
    device = runtime.apply()
    data = experiment_data(exp)
    # A --count that cannot fit in memory: refused before any work (exit 3, one line).
    check_sampler_fits(sc, lambda: new_model(cfg, data), data.num_classes, data.shape,
                       device, cfg.model.arch, BLOCK)
    step_cfg = {"round": t, "sampler": plan.sampler, "seed": plan.seed,
                "source": plan.source, "device": str(device), "replay": replay is not None}
    # Made before the step, so the MLflow run follows it (RUNNING, then how it ended).
    tracker = store.tracker(exp.name, enabled=runtime.mlflow)
    with store.step(exp.name, "synthesize" if replay is None else "replay-synthesize", t,
                    step_cfg):
        arrays, seconds = _draw_rows(store, exp, cfg, data, plan, runtime, device,
                                     [range(plan.count)], "synthesize round")
        if replay is not None:
            recorded = store.read_shard(replay)
            same = all(np.array_equal(recorded[k], v) for k, v in arrays.items())
            return _summary(store, replay, reused=False, seconds=seconds, replay_match=same)
        info = store.write_shard(exp.name, t, arrays, _shard_attrs(plan))
    return _recorded_shard(store, exp, info, arrays, seconds, sc.max_steps, tracker)


def _draw_rows(store, exp, cfg, data, plan: Plan, runtime: Runtime, device,
               rows: list[range], what: str) -> tuple[dict[str, np.ndarray], float]:
    """Rows ``rows`` of round ``plan`` drawn from its source checkpoint: (arrays, seconds)."""
    sc = SamplerConfig.from_dict(plan.sampler)
    source = store.checkpoint(exp.name, plan.round - 1)
    if source is None or source.sha256 != plan.source:
        raise StepError(f"checkpoint {plan.round - 1} of '{exp.name}' changed meanwhile: "
                        "run the command again")
    model = new_model(cfg, data).to(device)
    load_weights(model, store, source, device)
    block = plan.sampler.get("block")
    t0 = time.perf_counter()
    size = block or max(plan.count, 1)
    total = sc.max_steps * max(1, sum(len(block_ranges(r, size)) for r in rows))
    advance = runtime.progress.task(f"{what} {plan.round}", total)
    out = draw(model, sc, data.num_classes, data.shape, plan.seed, device,
               torch.bfloat16 if plan.sampler.get("amp") else None,
               progress=lambda step, active: advance(1), rows=rows, block=block)
    runtime.progress.done()
    return _arrays(out), time.perf_counter() - t0


def _shard_attrs(plan: Plan) -> dict:
    return {"seed": plan.seed, "sampler_config": plan.sampler,
            "source_checkpoint": plan.source}


def _recorded_shard(store, exp, info, arrays, seconds: float, max_steps: int,
                    tracker) -> SynthesisResult:
    """A new shard's summary, with its round metrics recorded and tracked."""
    result = _summary(store, info, reused=False, seconds=seconds, arrays=arrays,
                      max_steps=max_steps)
    health = sample_health(arrays)
    store.record_metrics(exp.name, info.round, health)
    tracker.log_metrics(
        {"pass_rate": result.pass_rate, "mean_steps": result.mean_steps,
         "synthesize_seconds": seconds, **health}, step=info.round)
    return result


def _recorded(sc: SamplerConfig, amp: bool, n: int = 0) -> dict:
    """The sampler settings as a shard records them: with ``"amp": true`` when the samples
    were drawn under bf16 autocast (it changes them), so a replay draws them the same way,
    and ``"block"`` when the round of ``n`` samples runs in more than one block."""
    return {**sc.to_dict(), **({"amp": True} if amp else {}),
            **({"block": BLOCK} if n > BLOCK else {})}


def _same(recorded: dict, asked: dict) -> bool:
    """The same sampler settings, whatever the blocks: a shard drawn as one batch before
    blocks existed still holds this round's samples for its settings."""
    return {k: v for k, v in recorded.items() if k != "block"} == \
        {k: v for k, v in asked.items() if k != "block"}


# ----------------------------------------------------------------------------- parts
def _part_fix(exp: str, t: int, index: int, parts: int) -> str:
    return f"`icl synthesize --round {t} --part {index}/{parts} -e {exp}`"


def _recorded_parts(store, exp: str, plan: Plan, parts: int) -> dict[int, dict]:
    """{i: the step record of part i} for the parts of ``plan`` split in ``parts``, the
    latest record of each (from the step log: the catalog has no table for parts)."""
    found: dict[int, dict] = {}
    for s in store.steps(exp, name=PART_STEP, round=plan.round):
        c = s.config or {}
        if s.state == "ok" and c.get("plan") == plan.record() and \
                list(c.get("part") or [])[1:] == [parts]:
            found[int(c["part"][0])] = c
    return found


def _part_info(store, exp: str, plan: Plan, c: dict):
    from store.artifacts import PartInfo

    i, n = c["part"]
    return PartInfo(exp, plan.round, plan.version, i, n, store.root / c["path"], c["sha256"],
                    c["count"])


def _intact(store, exp: str, plan: Plan, c: dict) -> bool:
    """A recorded part whose file is there with its recorded sha256."""
    from store import IntegrityError

    info = _part_info(store, exp, plan, c)
    try:
        store.check_file(info.path, info.sha256, "part", "")
    except IntegrityError:
        return False
    return True


def _synthesize_part(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime,
                     force: bool, changes: SamplerChanges, index: int, parts: int
                     ) -> SynthesisResult:
    """Draw part ``index`` of ``parts`` of round t, write and record it, and join the
    round's shard when this part was the last one missing."""
    device = runtime.apply()
    data = experiment_data(exp)
    with store.lock(exp.name, wait=True):
        plan = _plan(store, exp, cfg, t, runtime, force, changes, lambda: data.num_classes)
    if not isinstance(plan, Plan):
        return _summary(store, plan, reused=True)
    rows = part_rows(plan.count, index, parts)
    what = f"{index}/{parts}"
    with store.files.part_claim(exp.name, t, index, parts):
        done = _recorded_parts(store, exp.name, plan, parts).get(index)
        if done is not None and _intact(store, exp.name, plan, done):
            seconds, reused = float(done.get("seconds", 0.0)), True
            info = _part_info(store, exp.name, plan, done)
            arrays = store.files.read_part(info, _part_expect(plan, index, parts, rows),
                                           _part_fix(exp.name, t, index, parts))
        else:
            arrays, seconds = _draw_rows(store, exp, cfg, data, plan, runtime, device, rows,
                                         f"synthesize part {what} of round")
            reused = False
        with store.lock(exp.name, wait=True):
            if not reused:
                again = _plan(store, exp, cfg, t, runtime, force, changes,
                              lambda: data.num_classes)
                if again != plan:
                    raise StepError(f"round {t} of '{exp.name}' changed while part {what} was "
                                    "drawn (a shard or checkpoint was written meanwhile); "
                                    "nothing was recorded: run "
                                    f"{_part_fix(exp.name, t, index, parts)} again")
                info = _record_part(store, exp.name, plan, index, parts, rows, arrays,
                                    seconds, device)
            recorded = _recorded_parts(store, exp.name, plan, parts)
            missing = tuple(i for i in range(1, parts + 1) if i not in recorded)
            shard = None if missing else _merge(store, exp, plan, parts, runtime)
    sc = SamplerConfig.from_dict(plan.sampler)
    summary = _summary_of(exp.name, t, plan.version, arrays, sc.max_steps, seconds, reused,
                          str(info.path))
    return replace(summary, part=what, missing=missing, shard=shard)


def _part_expect(plan: Plan, index: int, parts: int, rows: list[range]) -> dict:
    """What a part file of ``plan`` must say of itself."""
    return {"seed": plan.seed, "sampler_config": plan.sampler,
            "source_checkpoint": plan.source, "part_index": index, "part_count": parts,
            "rows": rows_record(rows), "round_count": plan.count}


def _write_part(store, exp: str, plan: Plan, index: int, parts: int, rows: list[range],
                arrays, seconds: float, device):
    """The part file, written atomically (not recorded yet)."""
    attrs = {**_shard_attrs(plan), "rows": rows_record(rows),
             "round_count": plan.count, "draw_seconds": seconds, "device": str(device)}
    return store.files.write_part(exp, plan.round, plan.version, index, parts, arrays, attrs)


def _log_part(store, exp: str, plan: Plan, info, rows: list[range], seconds: float,
              device: str) -> None:
    """Record a written part in the step log (the caller holds the lock); a part that
    could not be recorded is removed, so none is left behind unrecorded."""
    record = {"round": plan.round, "part": [info.index, info.parts],
              "rows": rows_record(rows), "plan": plan.record(),
              "path": store.rel(info.path), "sha256": info.sha256, "count": info.count,
              "seconds": seconds, "device": str(device)}
    try:
        with store.step(exp, PART_STEP, plan.round, record):
            pass
    except BaseException:
        info.path.unlink(missing_ok=True)
        raise


def _record_part(store, exp: str, plan: Plan, index: int, parts: int, rows: list[range],
                 arrays, seconds: float, device):
    """Write the part file, then record it in the step log (the caller holds the lock)."""
    info = _write_part(store, exp, plan, index, parts, rows, arrays, seconds, device)
    _log_part(store, exp, plan, info, rows, seconds, str(device))
    return info


def _merge(store, exp, plan: Plan, parts: int, runtime: Runtime) -> SynthesisResult:
    """Join the N recorded parts of ``plan`` into round t's shard and record it (the
    caller holds the lock). A part missing: StepError; one that fails its checks:
    IntegrityError; both name the part and the command that draws it again. Nothing is
    written or recorded then."""
    t = plan.round
    recorded = _recorded_parts(store, exp.name, plan, parts)
    missing = [i for i in range(1, parts + 1) if i not in recorded]
    if missing:
        more = "".join(f", {i}/{parts}" for i in missing[1:])
        raise StepError(f"part {missing[0]}/{parts}{more} of round {t} of '{exp.name}' "
                        f"{'is' if len(missing) == 1 else 'are'} missing (not drawn, or drawn "
                        f"for other settings): run "
                        f"{_part_fix(exp.name, t, missing[0], parts)}"
                        + (" and the others" if more else ""))
    pieces, devices, seconds = [], [], 0.0
    for i in range(1, parts + 1):
        c = recorded[i]
        rows = part_rows(plan.count, i, parts)  # a part of other rows fails its checks
        fix = f"draw it again with {_part_fix(exp.name, t, i, parts)}"
        info = _part_info(store, exp.name, plan, c)
        pieces.append((rows, store.files.read_part(info, _part_expect(plan, i, parts, rows),
                                                   fix)))
        devices.append(c.get("device", ""))
        seconds += float(c.get("seconds", 0.0))
    arrays = {k: np.empty((plan.count, *v.shape[1:]), v.dtype)
              for k, v in pieces[0][1].items()}
    for rows, piece in pieces:  # each part's blocks back in their places
        at = 0
        for r in rows:
            for k, v in piece.items():
                arrays[k][r.start:r.stop] = v[at:at + len(r)]
            at += len(r)
    step_cfg = {"round": t, "sampler": plan.sampler, "seed": plan.seed,
                "source": plan.source, "device": ",".join(sorted(set(devices))),
                "replay": False, "parts": parts}
    tracker = store.tracker(exp.name, enabled=runtime.mlflow)
    with store.step(exp.name, "synthesize", t, step_cfg):
        info = store.write_shard(exp.name, t, arrays, _shard_attrs(plan))
    store.files.remove_parts(exp.name, t, plan.version)
    sc = SamplerConfig.from_dict(plan.sampler)
    return _recorded_shard(store, exp, info, arrays, seconds, sc.max_steps, tracker)


def _merge_command(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime,
                   changes: SamplerChanges) -> SynthesisResult:
    """``--merge``: join the parts recorded last for round t's next version (with these
    sampler settings, when any are given); the shard itself if they were joined already."""
    with store.lock(exp.name, wait=True):
        source = _source(store, exp, t)
        rows = [s for s in store.steps(exp.name, name=PART_STEP, round=t) if s.state == "ok"
                and (s.config or {}).get("plan", {}).get("source") == source.sha256]
        if changes != SamplerChanges():
            sc = changes.apply(cfg.sampler)
            asked = _recorded(sc, runtime.amp)
            rows = [s for s in rows if _same(s.config["plan"]["sampler"], asked)]
        if not rows:
            raise StepError(f"round {t} of '{exp.name}' has no recorded parts to join (for "
                            f"these settings): draw them with `icl synthesize --round {t} "
                            f"--part i/N -e {exp.name}`")
        last = rows[-1].config
        plan = Plan(t, **last["plan"])
        active = store.active_shard(exp.name, t)
        if active is not None and active.seed == plan.seed and \
                active.source_checkpoint == plan.source and \
                _same(active.sampler_config, plan.sampler):
            return _summary(store, active, reused=True)  # joined already
        return _merge(store, exp, plan, int(last["part"][1]), runtime)


# ------------------------------------------------------------------------- torchrun
def _synthesize_ranks(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime,
                      force: bool, replay: bool, changes: SamplerChanges) -> SynthesisResult:
    """Under torchrun: rank r draws part r+1 of N (N: the world size, or fewer where the
    round has fewer blocks) and writes its part file; rank 0, which holds the lock for the
    whole step, records the parts and joins them. A round of one block, and a replay, run
    on rank 0 alone. Every rank returns rank 0's result; a failure on one fails all."""
    from icl_cli import distributed

    world, device = join_ranks(runtime)
    data = experiment_data(exp)
    with distributed.main_only(store.lock, exp.name):
        planned = None if replay else distributed.from_main(lambda: _plan(
            store, exp, cfg, t, runtime, force, changes, lambda: data.num_classes))
        if planned is not None and not isinstance(planned, Plan):
            return distributed.from_main(lambda: _summary(store, planned, reused=True))
        parts = 1 if planned is None else min(world.size, max(1, -(-planned.count // BLOCK)))
        if parts == 1:
            return distributed.from_main(lambda: _synthesize(store, exp, cfg, t, runtime,
                                                             force, replay, changes))
        quiet = runtime if world.main else replace(runtime, progress=Progress())
        error, written = None, None
        if world.rank < parts:
            try:
                written = _part_file(store, exp, cfg, data, planned, world.rank + 1, parts,
                                     quiet, device)
            except Exception as exc:
                error = exc
        try:
            distributed.agree(error)
        except BaseException:
            if written is not None:  # not recorded: not left behind
                written.path.unlink(missing_ok=True)
            raise
        return distributed.from_main(lambda: _log_and_merge(store, exp, planned, parts,
                                                            runtime))


def _part_file(store, exp, cfg, data, plan: Plan, index: int, parts: int, runtime: Runtime,
               device):
    """A rank's part: drawn and written (its PartInfo), unless its recorded file is intact
    already (None)."""
    with store.files.part_claim(exp.name, plan.round, index, parts):
        done = _recorded_parts(store, exp.name, plan, parts).get(index)
        if done is not None and _intact(store, exp.name, plan, done):
            return None
        rows = part_rows(plan.count, index, parts)
        arrays, seconds = _draw_rows(store, exp, cfg, data, plan, runtime, device, rows,
                                     f"synthesize part {index}/{parts} of round")
        return _write_part(store, exp.name, plan, index, parts, rows, arrays, seconds, device)


def _log_and_merge(store, exp, plan: Plan, parts: int, runtime: Runtime) -> SynthesisResult:
    """Rank 0: record the parts the ranks wrote (from their files' own attributes; the
    join checks them against the plan), then join them."""
    recorded = _recorded_parts(store, exp.name, plan, parts)
    for i in range(1, parts + 1):
        if i in recorded and _intact(store, exp.name, plan, recorded[i]):
            continue
        found = store.files.part_on_disk(exp.name, plan.round, plan.version, i, parts)
        if found is None:
            raise StepError(f"part {i}/{parts} of round {plan.round} of '{exp.name}' was not "
                            "written by its rank: run the command again")
        info, meta = found
        _log_part(store, exp.name, plan, info, part_rows(plan.count, i, parts),
                  meta.get("draw_seconds", 0.0), meta.get("device", ""))
    return _merge(store, exp, plan, parts, runtime)


# --------------------------------------------------------------------------- summaries
def sample_health(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Of a shard: the share of sample values outside the data range [-1, 1] and the
    share of samples that never passed (reached max_steps still classified negative)."""
    x, passed = arrays["samples"], arrays["passed"]
    return {"outside_range": float(np.mean(np.abs(x) > 1.0)) if x.size else 0.0,
            "never_passed": float(1.0 - passed.mean()) if passed.size else 0.0}


def _summary_of(experiment: str, round_: int, version: int, arrays, max_steps: int,
                seconds: float, reused: bool, path: str,
                replay_match: bool | None = None) -> SynthesisResult:
    steps = arrays["steps"].astype(np.float64)
    budget = len(steps) * max_steps
    saved = 1 - steps.sum() / budget if budget else 0.0
    return SynthesisResult(experiment, round_, version, len(steps),
                           float(arrays["passed"].mean()), float(steps.mean()), float(saved),
                           seconds, reused, replay_match, path)


def _summary(store, info, *, reused: bool, seconds: float = 0.0, arrays=None,
             max_steps: int | None = None, replay_match: bool | None = None) -> SynthesisResult:
    arrays = arrays if arrays is not None else store.read_shard(info)
    max_steps = max_steps if max_steps is not None else info.sampler_config.get("max_steps", 0)
    return _summary_of(info.experiment, info.round, info.version, arrays, max_steps, seconds,
                       reused, str(info.path), replay_match)
