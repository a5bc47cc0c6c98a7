"""A round of synthesis in parts (``icl synthesize --round t --part i/N``): part i draws
every N-th block of the round, from block i, into a part file, recorded in the step log
(``synthesize-part``); the last part to be recorded joins the N parts into the round's
shard (``--merge`` does it by hand), which is recorded as every shard is. Parts are runs
of whole blocks, hence bit-identical to the round drawn at once. Under torchrun the ranks
draw the parts (``steps.synthesize``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from icl_cli.config import ExperimentConfig, SamplerChanges
from icl_cli.steps.common import Runtime, StepError, experiment_data, marked
from icl_cli.steps.draw import (
    BLOCK,
    Plan,
    Sampling,
    SynthesisResult,
    draw_rows,
    plan_round,
    recorded_shard,
    round_source,
    shard_attrs,
    shard_summary,
    summary_of,
)

if TYPE_CHECKING:
    from store import Store

PART_STEP = "synthesize-part"


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


def _part_fix(exp: str, t: int, index: int, parts: int) -> str:
    return f"`icl synthesize --round {t} --part {index}/{parts} -e {exp}`"


def _recorded_parts(store: Store, exp: str, plan: Plan, parts: int) -> dict[int, dict]:
    """{i: the step record of part i} for the parts of ``plan`` split in ``parts``, the
    latest record of each (from the step log: the catalog has no table for parts)."""
    found: dict[int, dict] = {}
    for s in store.steps(exp, name=PART_STEP, round=plan.round):
        c = s.config or {}
        if s.state == "ok" and c.get("plan") == plan.record() and \
                list(c.get("part") or [])[1:] == [parts]:
            found[int(c["part"][0])] = c
    return found


def _part_info(store: Store, exp: str, plan: Plan, c: dict):
    from store.artifacts import PartInfo

    i, n = c["part"]
    return PartInfo(exp, plan.round, plan.version, i, n, store.root / c["path"], c["sha256"],
                    c["count"])


def _intact(store: Store, exp: str, plan: Plan, c: dict) -> bool:
    """A recorded part whose file is there with its recorded sha256."""
    from store import IntegrityError

    info = _part_info(store, exp, plan, c)
    try:
        store.check_file(info.path, info.sha256, "part", "")
    except IntegrityError:
        return False
    return True


def synthesize_part(store: Store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime,
                    force: bool, changes: SamplerChanges, index: int, parts: int
                    ) -> SynthesisResult:
    """Draw part ``index`` of ``parts`` of round t, write and record it, and join the
    round's shard when this part was the last one missing."""
    runtime = marked(runtime, "synthesize")
    device = runtime.apply()
    data = experiment_data(exp, store)
    with store.lock(exp.name, wait=True):
        plan = plan_round(store, exp, cfg, t, runtime, force, changes, lambda: data.num_classes)
    if not isinstance(plan, Plan):
        return shard_summary(store, plan, reused=True)
    rows = part_rows(plan.count, index, parts)
    what = f"{index}/{parts}"
    with store.part_claim(exp.name, t, index, parts):
        done = _recorded_parts(store, exp.name, plan, parts).get(index)
        if done is not None and _intact(store, exp.name, plan, done):
            seconds, reused = float(done.get("seconds", 0.0)), True
            info = _part_info(store, exp.name, plan, done)
            arrays = store.read_part(info, _part_expect(plan, index, parts, rows),
                                           _part_fix(exp.name, t, index, parts))
        else:
            arrays, seconds = draw_rows(store, exp, cfg, data, plan, runtime, device, rows,
                                        f"synthesize part {what} of round")
            reused = False
        with store.lock(exp.name, wait=True):
            if not reused:
                again = plan_round(store, exp, cfg, t, runtime, force, changes,
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
            shard = None if missing else join_parts(store, exp, plan, parts, runtime)
    summary = summary_of(exp.name, t, plan.version, arrays, plan.sampler.config.max_steps,
                         seconds, reused,
                         str(info.path))
    return replace(summary, part=what, missing=missing, shard=shard)


def _part_expect(plan: Plan, index: int, parts: int, rows: list[range]) -> dict:
    """What a part file of ``plan`` must say of itself."""
    return {"seed": plan.seed, "sampler_config": plan.sampler.record(),
            "source_checkpoint": plan.source, "part_index": index, "part_count": parts,
            "rows": rows_record(rows), "round_count": plan.count}


def _write_part(store: Store, exp: str, plan: Plan, index: int, parts: int, rows: list[range],
                arrays, seconds: float, device):
    """The part file, written atomically (not recorded yet)."""
    attrs = {**shard_attrs(plan), "rows": rows_record(rows),
             "round_count": plan.count, "draw_seconds": seconds, "device": str(device)}
    return store.write_part(exp, plan.round, plan.version, index, parts, arrays, attrs)


def _log_part(store: Store, exp: str, plan: Plan, info, rows: list[range], seconds: float,
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


def _record_part(store: Store, exp: str, plan: Plan, index: int, parts: int, rows: list[range],
                 arrays, seconds: float, device):
    """Write the part file, then record it in the step log (the caller holds the lock)."""
    info = _write_part(store, exp, plan, index, parts, rows, arrays, seconds, device)
    _log_part(store, exp, plan, info, rows, seconds, str(device))
    return info


def join_parts(store: Store, exp, plan: Plan, parts: int, runtime: Runtime) -> SynthesisResult:
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
        pieces.append((rows, store.read_part(info, _part_expect(plan, i, parts, rows),
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
    step_cfg = {"round": t, "sampler": plan.sampler.record(), "seed": plan.seed,
                "source": plan.source, "device": ",".join(sorted(set(devices))),
                "replay": False, "parts": parts}
    with store.step(exp.name, "synthesize", t, step_cfg):
        info = store.write_shard(exp.name, t, arrays, shard_attrs(plan))
    store.remove_parts(exp.name, t, plan.version)
    return recorded_shard(store, exp, info, arrays, seconds, plan.sampler.config.max_steps,
                          store.tracker(exp.name, enabled=runtime.mlflow))


def merge_round(store: Store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime,
                changes: SamplerChanges) -> SynthesisResult:
    """``--merge``: join the parts recorded last for round t's next version (with these
    sampler settings, when any are given); the shard itself if they were joined already."""
    with store.lock(exp.name, wait=True):
        source = round_source(store, exp, t)
        rows = [s for s in store.steps(exp.name, name=PART_STEP, round=t) if s.state == "ok"
                and (s.config or {}).get("plan", {}).get("source") == source.sha256]
        if changes != SamplerChanges():
            asked = Sampling.asked(changes.apply(cfg.sampler), runtime)
            rows = [s for s in rows if asked.matches(s.config["plan"]["sampler"])]
        if not rows:
            raise StepError(f"round {t} of '{exp.name}' has no recorded parts to join (for "
                            f"these settings): draw them with `icl synthesize --round {t} "
                            f"--part i/N -e {exp.name}`")
        last = rows[-1].config
        plan = Plan.from_record(t, last["plan"])
        active = store.active_shard(exp.name, t)
        if active is not None and active.seed == plan.seed and \
                active.source_checkpoint == plan.source and \
                plan.sampler.matches(active.sampler_config):
            return shard_summary(store, active, reused=True)  # joined already
        return join_parts(store, exp, plan, int(last["part"][1]), runtime)


def part_file(store: Store, exp, cfg, data, plan: Plan, index: int, parts: int, runtime: Runtime,
              device):
    """A rank's part: drawn and written (its PartInfo), unless its recorded file is intact
    already (None)."""
    with store.part_claim(exp.name, plan.round, index, parts):
        done = _recorded_parts(store, exp.name, plan, parts).get(index)
        if done is not None and _intact(store, exp.name, plan, done):
            return None
        rows = part_rows(plan.count, index, parts)
        arrays, seconds = draw_rows(store, exp, cfg, data, plan, runtime, device, rows,
                                    f"synthesize part {index}/{parts} of round")
        return _write_part(store, exp.name, plan, index, parts, rows, arrays, seconds, device)


def log_and_join(store: Store, exp, plan: Plan, parts: int, runtime: Runtime) -> SynthesisResult:
    """Rank 0: record the parts the ranks wrote (from their files' own attributes; the
    join checks them against the plan), then join them."""
    recorded = _recorded_parts(store, exp.name, plan, parts)
    for i in range(1, parts + 1):
        if i in recorded and _intact(store, exp.name, plan, recorded[i]):
            continue
        # The part of this plan's set: never one drawn with other settings (a newer file
        # of that number, from `--part i/N` with another seed or sampler, say).
        found = store.part_on_disk(exp.name, plan.round, plan.version, i, parts,
                                   attrs={**shard_attrs(plan), "round_count": plan.count})
        if found is None:
            raise StepError(f"part {i}/{parts} of round {plan.round} of '{exp.name}' was not "
                            "written by its rank: run the command again")
        info, meta = found
        _log_part(store, exp.name, plan, info, part_rows(plan.count, i, parts),
                  meta.get("draw_seconds", 0.0), meta.get("device", ""))
    return join_parts(store, exp, plan, parts, runtime)
