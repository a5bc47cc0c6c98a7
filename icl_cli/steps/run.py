"""``icl run``: the whole loop, resuming from whatever the catalog says is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icl_cli import distributed
from icl_cli.config import ExperimentConfig, SamplerChanges, TrainChanges, check_sampler_fits
from icl_cli.steps.common import (
    Runtime,
    StepError,
    dataset,
    join_ranks,
    new_model,
    release_freed_memory,
)
from icl_cli.steps.draw import BLOCK
from icl_cli.steps.evaluate import evaluate_round
from icl_cli.steps.inspect import inspect_round
from icl_cli.steps.reclassify import train_round
from icl_cli.steps.report import errors_by_round, plot_errors
from icl_cli.steps.synthesize import synthesize_round
from store.tracking import sync_from_catalog
from store.workspace import disk_full_as_one_line


@dataclass(frozen=True)
class RoundRow:
    round: int
    test_error: float | None
    val_error: float | None
    pass_rate: float | None
    mean_steps: float | None
    ran: list[str]  # the steps this invocation ran for the round (empty: all done before)


Watch = Callable[[dict[str, Any]], None]
"""Told what the loop does: ``{"step": "synthesize", "round": 2}`` as a step starts, and
``{"round": 2, "done": true, "test_error": ..., "val_error": ...}`` as a round ends (what
``icl run --parallel`` shows for each experiment)."""


def run_rounds(store, name: str, rounds: int, runtime: Runtime,
               sampler: SamplerChanges | None = None, train: TrainChanges | None = None,
               watch: Watch | None = None) -> list[RoundRow]:
    """Rounds 1..``rounds``: synthesize, reclassify, evaluate, each only if not done yet;
    the ``sampler`` and ``train`` changes apply to the rounds this call runs."""
    if rounds < 0:
        raise StepError(f"--rounds must be >= 0, got {rounds}")
    exp = store.experiment(name)
    device = runtime.apply()
    if distributed.from_env().active:  # under torchrun: every step splits over the ranks
        _, device = join_ranks(runtime)
    cfg = ExperimentConfig.from_dict(exp.config)
    if cfg.method != "baseline" and rounds > 0:  # a --count that cannot fit: refused now
        data = dataset(cfg)  # (its fingerprint is checked by each step, under the lock)
        check_sampler_fits((sampler or SamplerChanges()).apply(cfg.sampler),
                           lambda: new_model(cfg, data), data.num_classes, data.shape, device,
                           cfg.model.arch, BLOCK)
    # One lock for the whole loop: a second `icl run` of this experiment gets BusyError
    # at once instead of interleaving its steps with ours.
    # The MLflow run stays RUNNING for the whole loop and ends as the command does
    # (FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED), also when cut between two steps.
    # A full disk is one line (DiskFull); the next `icl run` resumes, and logs to MLflow
    # what it missed meanwhile (from the catalog).
    # Under torchrun rank 0 alone holds the lock and talks to MLflow; each step inside
    # (synthesize, reclassify) splits over the ranks, and rank 0 evaluates and draws.
    main = distributed.current().main
    with (disk_full_as_one_line(store.root), distributed.main_only(store.lock, exp.name),
          store.tracker(exp.name, enabled=runtime.mlflow and main)):
        rows = _run_rounds(store, exp, rounds, runtime, sampler or SamplerChanges(),
                           train or TrainChanges(), watch or (lambda event: None))
        if runtime.mlflow and main:
            sync_from_catalog(store, [exp.name])
        return rows


def _run_rounds(store, exp, rounds: int, runtime: Runtime, sampler: SamplerChanges,
                train: TrainChanges, watch: Watch) -> list[RoundRow]:
    cfg = ExperimentConfig.from_dict(exp.config)
    # A combination that cannot run (--epochs 0 without real-data epochs) is refused
    # before any round runs; each value was checked as the changes were made.
    train.apply(cfg.train)
    sampler.apply(cfg.sampler)
    rows, main = [], distributed.current().main
    for t in range(0, rounds + 1):
        ran, synth = [], None
        if t == 0 and store.checkpoint(exp.name, 0) is None:
            watch({"step": "init", "round": 0})
            train_round(store, exp.name, 0, runtime)  # `icl init` was cut short: finish it
            ran.append("init")
        # A round downstream of a replaced shard or checkpoint is stale: redone here, its
        # shard as a new version, its checkpoint retrained (store.stale_rounds says why).
        redo = t > 0 and t in store.stale_rounds(exp.name)
        shard = store.active_shard(exp.name, t) if t > 0 else None
        before = store.checkpoint(exp.name, t - 1) if t > 0 else None
        if t > 0 and cfg.method != "baseline" and (
                shard is None or (redo and before is not None
                                  and shard.source_checkpoint != before.sha256)):
            watch({"step": "synthesize", "round": t})
            synth = synthesize_round(store, exp.name, t, runtime, changes=sampler,
                                     force=shard is not None)
            ran.append("synthesize")
        if t > 0 and (store.checkpoint(exp.name, t) is None
                      or t in store.stale_rounds(exp.name)):
            watch({"step": "reclassify", "round": t})
            train_round(store, exp.name, t, runtime, changes=train,
                        force=store.checkpoint(exp.name, t) is not None)
            ran.append("reclassify")
        if t not in errors_by_round(store, exp.name):
            watch({"step": "evaluate", "round": t})
            distributed.from_main(lambda t=t: evaluate_round(store, exp.name, t, runtime),
                                  send=lambda r: None)
            ran.append("evaluate")
        errs = errors_by_round(store, exp.name).get(t, {})
        shard = store.active_shard(exp.name, t) if t > 0 else None
        watch({"round": t, "done": True, "test_error": errs.get("test"),
               "val_error": errs.get("val")})
        rows.append(RoundRow(t, errs.get("test"), errs.get("val"),
                             synth.pass_rate if synth else None,
                             synth.mean_steps if synth else None, ran))
        if ran and shard is not None and main:
            grid = store.figure_path(exp.name, f"round-{t:04d}.v{shard.version}.png")
            if not grid.is_file():  # also after a run cut short between synthesis and grid
                inspect_round(store, exp.name, t)
            store.tracker(exp.name, enabled=runtime.mlflow).log_artifact(grid)
        release_freed_memory()
    if main:
        plot = plot_errors(store, [exp.name])
        store.tracker(exp.name, enabled=runtime.mlflow).log_artifact(plot)
    return rows
