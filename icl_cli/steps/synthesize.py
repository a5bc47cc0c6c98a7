"""The synthesis step (``icl synthesize --round t``): pseudo-negatives from checkpoint t-1.

A round's samples run in blocks of ``draw.BLOCK``, so the round can also be drawn in
parts (``steps.parts``: ``--part i/N``, ``--merge``). Under torchrun the ranks split the
round by themselves: rank r draws part r+1 of N, rank 0 joins them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from icl_cli import finished
from icl_cli.config import ExperimentConfig, SamplerChanges, check_sampler_fits
from icl_cli.models import arch_drift
from icl_cli.steps.common import (
    Deferred,
    Progress,
    Runtime,
    StepError,
    experiment_data,
    join_ranks,
    marked,
    new_model,
    workspace_identity,
)
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
)
from icl_cli.steps.parts import log_and_join, merge_round, part_file, synthesize_part

if TYPE_CHECKING:
    from store import Store


def synthesize_round(store: Store, name: str, round_: int, runtime: Runtime, *, force: bool = False,
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
        return synthesize_part(store, exp, cfg, t, runtime, force, changes, *part)
    if merge:
        return merge_round(store, exp, cfg, t, runtime, changes)
    with store.lock(exp.name):
        return _synthesize(store, exp, cfg, t, runtime, force, replay, changes)


def _num_classes(exp, store: Store) -> Callable[[], int]:
    return lambda: experiment_data(exp, store).num_classes


def _synthesize(store: Store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime, force: bool,
                replay: bool, changes: SamplerChanges) -> SynthesisResult:
    if not replay:
        planned = plan_round(store, exp, cfg, t, runtime, force, changes,
                             _num_classes(exp, store))
        if not isinstance(planned, Plan):
            summary = shard_summary(store, planned, reused=True)  # the shard's hash checked
            store.restamp_finished(exp.name, "synthesize", {"round": t})
            return summary
        later = Deferred()  # MLflow once the result is in the catalog
        result = _draw_round(store, exp, cfg, planned, runtime, tracker=later)
        _record(store, exp, t, changes.apply(cfg.sampler), runtime.amp, result)
        later.replay(store.tracker(exp.name, enabled=runtime.mlflow))
        return result
    source = round_source(store, exp, t)
    active = store.active_shard(exp.name, t)
    if active is None:
        raise StepError(f"round {t} of '{exp.name}' has no shard to replay")
    if active.source_checkpoint not in (None, source.sha256):
        raise StepError(f"checkpoint {t - 1} of '{exp.name}' changed since round {t} was "
                        "synthesized: it cannot be replayed")
    plan = Plan(t, active.version, active.seed, Sampling.from_record(active.sampler_config),
                source.sha256, active.count)  # as recorded, amp and block included, not as asked
    return _draw_round(store, exp, cfg, plan, runtime, replay=active)


def _record(store: Store, exp, t: int, sampler, amp: bool, result: SynthesisResult) -> None:
    """What a rerun with these settings answers (``icl_cli.finished``): this result, made
    from checkpoint t-1 into the round's active shard."""
    shard, source = store.active_shard(exp.name, t), store.checkpoint(exp.name, t - 1)
    finished.record(store, exp, "synthesize", finished.synthesize_key(store, exp, t, sampler,
                                                                      amp),
                    [(shard.path, shard.sha256), (source.path, source.sha256)], result)


def _draw_round(store: Store, exp, cfg: ExperimentConfig, plan: Plan, runtime: Runtime,
                replay=None, tracker=None) -> SynthesisResult:
    """Draw the whole round of ``plan`` in this process and record its shard (or, with
    ``replay``, the recorded shard, compare with it); the round's metrics go to
    ``tracker`` (None: not tracked)."""
    t, sc = plan.round, plan.sampler.config
    runtime = marked(runtime, "synthesize")
    device = runtime.apply()
    data = experiment_data(exp, store)
    # A --count that cannot fit in memory: refused before any work (exit 3, one line).
    check_sampler_fits(sc, lambda: new_model(cfg, data), data.num_classes, data.shape,
                       device, cfg.model.arch, BLOCK)
    step_cfg = {"round": t, "sampler": plan.sampler.record(), "seed": plan.seed,
                "source": plan.source, "device": str(device), "replay": replay is not None}
    with store.step(exp.name, "synthesize" if replay is None else "replay-synthesize", t,
                    step_cfg):
        arrays, seconds = draw_rows(store, exp, cfg, data, plan, runtime, device,
                                    [range(plan.count)], "synthesize round")
        if replay is not None:
            recorded = store.read_shard(replay)
            same = all(np.array_equal(recorded[k], v) for k, v in arrays.items())
            return replace(shard_summary(store, replay, reused=False, seconds=seconds,
                                         replay_match=same), replay_drift=arch_drift(cfg.model))
        info = store.write_shard(exp.name, t, arrays, shard_attrs(plan))
    return recorded_shard(store, exp, info, arrays, seconds, sc.max_steps,
                          tracker or Deferred())


def _synthesize_ranks(store: Store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime,
                      force: bool, replay: bool, changes: SamplerChanges) -> SynthesisResult:
    """Under torchrun: rank r draws part r+1 of N (N: the world size, or fewer where the
    round has fewer blocks) and writes its part file; rank 0, which holds the lock for the
    whole step, records the parts and joins them. A round of one block, and a replay, run
    on rank 0 alone. Every rank returns rank 0's result; a failure on one fails all."""
    from icl_cli import distributed

    def stated() -> dict:
        source = store.checkpoint(exp.name, t - 1)
        active = store.active_shard(exp.name, t)
        return {"step": "synthesize", "workspace": workspace_identity(store),
                "experiment": exp.name, "round": t,
                "settings": {"sampler": changes.apply(cfg.sampler).to_dict(), "force": force,
                             "replay": replay, "amp": runtime.amp},
                "inputs": {"config": exp.config_hash, "data": exp.data_fingerprint,
                           "source": source.sha256 if source else None,
                           "shard": active.sha256 if active else None}}

    world, device = join_ranks(runtime, stated)
    data = experiment_data(exp, store)
    with distributed.main_only(store.lock, exp.name):
        planned = None if replay else distributed.from_main(lambda: plan_round(
            store, exp, cfg, t, runtime, force, changes, lambda: data.num_classes))
        if planned is not None and not isinstance(planned, Plan):
            return distributed.from_main(lambda: shard_summary(store, planned, reused=True))
        parts = 1 if planned is None else min(world.size, max(1, -(-planned.count // BLOCK)))
        if parts == 1:
            return distributed.from_main(lambda: _synthesize(store, exp, cfg, t, runtime,
                                                             force, replay, changes))
        quiet = runtime if world.main else replace(runtime, progress=Progress())
        error, written = None, None
        if world.rank < parts:
            try:
                written = part_file(store, exp, cfg, data, planned, world.rank + 1, parts,
                                    quiet, device)
            except Exception as exc:
                error = exc
        try:
            distributed.agree(error)
        except BaseException:
            if written is not None:  # not recorded: not left behind
                written.path.unlink(missing_ok=True)
            raise
        return distributed.from_main(lambda: log_and_join(store, exp, planned, parts,
                                                          runtime))
