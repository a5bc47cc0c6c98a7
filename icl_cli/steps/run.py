"""``icl run``: the whole loop, resuming from whatever the catalog says is done."""

from __future__ import annotations

from dataclasses import dataclass

from icl_cli.config import ExperimentConfig
from icl_cli.steps.common import Runtime, StepError, release_freed_memory
from icl_cli.steps.evaluate import evaluate_round
from icl_cli.steps.inspect import inspect_round
from icl_cli.steps.report import errors_by_round, plot_errors
from icl_cli.steps.synthesize import synthesize_round
from icl_cli.steps.train import round_settings, train_round


@dataclass(frozen=True)
class RoundRow:
    round: int
    test_error: float | None
    val_error: float | None
    pass_rate: float | None
    mean_steps: float | None
    ran: list[str]  # the steps this invocation ran for the round (empty: all done before)


def run_rounds(store, name: str, rounds: int, runtime: Runtime,
               count: int | None = None, changes: dict | None = None) -> list[RoundRow]:
    """Rounds 1..``rounds``: synthesize, reclassify, evaluate, each only if not done yet;
    ``count`` and the reclassify ``changes`` apply to the rounds this call runs."""
    if rounds < 0:
        raise StepError(f"--rounds must be >= 0, got {rounds}")
    exp = store.experiment(name)
    runtime.apply()
    # One lock for the whole loop: a second `icl run` of this experiment gets BusyError
    # at once instead of interleaving its steps with ours.
    # The MLflow run stays RUNNING for the whole loop and ends as the command does
    # (FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED), also when cut between two steps.
    with store.lock(exp.name), store.tracker(exp.name, enabled=runtime.mlflow):
        return _run_rounds(store, exp, rounds, runtime, count, changes)


def _run_rounds(store, exp, rounds: int, runtime: Runtime, count: int | None,
                changes: dict | None) -> list[RoundRow]:
    cfg = ExperimentConfig.from_dict(exp.config)
    round_settings(cfg.train, changes)  # a bad value is refused before any round runs
    rows = []
    for t in range(0, rounds + 1):
        ran, synth = [], None
        if t == 0 and store.checkpoint(exp.name, 0) is None:
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
            synth = synthesize_round(store, exp.name, t, runtime, count=count,
                                     force=shard is not None)
            ran.append("synthesize")
        if t > 0 and (store.checkpoint(exp.name, t) is None
                      or t in store.stale_rounds(exp.name)):
            train_round(store, exp.name, t, runtime, changes=changes,
                        force=store.checkpoint(exp.name, t) is not None)
            ran.append("reclassify")
        if t not in errors_by_round(store, exp.name):
            evaluate_round(store, exp.name, t, runtime)
            ran.append("evaluate")
        errs = errors_by_round(store, exp.name).get(t, {})
        shard = store.active_shard(exp.name, t) if t > 0 else None
        rows.append(RoundRow(t, errs.get("test"), errs.get("val"),
                             synth.pass_rate if synth else None,
                             synth.mean_steps if synth else None, ran))
        if ran and shard is not None:
            grid = store.figure_path(exp.name, f"round-{t:04d}.v{shard.version}.png")
            if not grid.is_file():  # also after a run cut short between synthesis and grid
                inspect_round(store, exp.name, t)
            store.tracker(exp.name, enabled=runtime.mlflow).log_artifact(grid)
        release_freed_memory()
    plot = plot_errors(store, [exp.name])
    store.tracker(exp.name, enabled=runtime.mlflow).log_artifact(plot)
    return rows
