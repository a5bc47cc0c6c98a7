"""``icl run``: the whole loop, resuming from whatever the catalog says is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icl_cli import distributed
from icl_cli.config import (
    ExperimentConfig,
    SamplerChanges,
    TrainChanges,
    TrainConfig,
    check_sampler_fits,
)
from icl_cli.steps.common import (
    Runtime,
    StepError,
    dataset,
    join_ranks,
    new_model,
    release_freed_memory,
    workspace_identity,
)
from icl_cli.steps.draw import BLOCK
from icl_cli.steps.evaluate import evaluate_round
from icl_cli.steps.inspect import inspect_round
from icl_cli.steps.reclassify import TrainingDiverged, train_round
from icl_cli.steps.report import errors_by_round, plot_errors
from icl_cli.steps.synthesize import synthesize_round
from store.tracking import sync_from_catalog
from store.workspace import disk_full_as_one_line

if TYPE_CHECKING:
    from store import Store


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
``icl run --parallel`` shows for each experiment), and ``{"step": "reclassify", "round": 2,
"retry": 1, "of": 3, "changes": {"lr": 0.005}, "after": "..."}`` as ``--recover`` retries
a diverged round."""

RECOVER_LIMIT = 10
"""``--recover N`` at most: the 10th retry trains at 1/1024 of the learning rate."""
RECOVERY_CLIP_GRAD = 10.0
"""The gradient clip a recovery adds from its second retry on (the lever that saved the
5x-learning-rate stress case, RESULTS.md "Stability")."""


def recovery_changes(train: TrainChanges, base: TrainConfig, attempt: int) -> TrainChanges:
    """The settings of retry ``attempt`` (1, 2, ...) of a round whose training diverged
    with ``train`` applied to ``base``: the learning rate halved ``attempt`` times, and from
    the second retry on the gradient clipped at ``RECOVERY_CLIP_GRAD`` (or at the round's
    own clip, when tighter). The other changes stay as given.

    Example:
        >>> recovery_changes(TrainChanges(epochs=2), TrainConfig(lr=0.05), 2).given()
        {'epochs': 2, 'lr': 0.0125, 'clip_grad': 10.0}
    """
    tc = train.apply(base)
    given = {**train.given(), "lr": tc.lr / 2 ** attempt}
    if attempt >= 2:
        given["clip_grad"] = min(tc.clip_grad or RECOVERY_CLIP_GRAD, RECOVERY_CLIP_GRAD)
    return TrainChanges(**given)


def run_rounds(store: Store, name: str, rounds: int, runtime: Runtime,
               sampler: SamplerChanges | None = None, train: TrainChanges | None = None,
               watch: Watch | None = None, recover: int = 0) -> list[RoundRow]:
    """Rounds 1..``rounds``: synthesize, reclassify, evaluate, each only if not done yet;
    the ``sampler`` and ``train`` changes apply to the rounds this call runs.

    ``recover`` (``--recover N``): a round whose training diverges is trained again from
    checkpoint t-1 (a diverged step saves nothing), at most N times, each retry with the
    changes of ``recovery_changes``; each attempt is a step of its own in the step log
    (its ``recovery`` record says which), and the round's ``recovery_attempts`` (with the
    kept ``recovery_lr`` and ``recovery_clip_grad``, or ``diverged`` 1 when every attempt
    diverged) go to the catalog's metrics and MLflow. 0: a divergence fails the loop, as
    without it."""
    if rounds < 0:
        raise StepError(f"--rounds must be >= 0, got {rounds}")
    if not 0 <= recover <= RECOVER_LIMIT:
        raise StepError(f"--recover must be in 0..{RECOVER_LIMIT}, got {recover}")
    exp = store.experiment(name)
    device = runtime.apply()
    if distributed.from_env().active:  # under torchrun: every step splits over the ranks
        _, device = join_ranks(runtime, lambda: {
            "step": "run", "workspace": workspace_identity(store), "experiment": exp.name,
            "round": rounds,
            "settings": {"sampler": (sampler or SamplerChanges()).given(),
                         "train": (train or TrainChanges()).given(), "recover": recover,
                         "amp": runtime.amp},
            "inputs": {"config": exp.config_hash, "data": exp.data_fingerprint,
                       "checkpoints": [[c.round, c.sha256]
                                       for c in store.checkpoints(exp.name)],
                       "shards": [[s.round, s.sha256] for s in store.shards(
                           exp.name, active_only=True)]}})
    cfg = ExperimentConfig.from_dict(exp.config)
    if cfg.method != "baseline" and rounds > 0:  # a --count that cannot fit: refused now
        data = dataset(cfg, store)  # (its fingerprint is checked by each step, under the lock)
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
                           train or TrainChanges(), watch or (lambda event: None), recover)
        if runtime.mlflow and main:
            sync_from_catalog(store, [exp.name])
        return rows


def _run_rounds(store: Store, exp, rounds: int, runtime: Runtime, sampler: SamplerChanges,
                train: TrainChanges, watch: Watch, recover: int = 0) -> list[RoundRow]:
    cfg = ExperimentConfig.from_dict(exp.config)
    # A combination that cannot run (--epochs 0 without real-data epochs) is refused
    # before any round runs; each value was checked as the changes were made.
    train.apply(cfg.train)
    sampler.apply(cfg.sampler)
    rows, main = [], distributed.current().main
    splits = {"test", "val"} if cfg.data.val_size else {"test"}
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
            _reclassify(store, exp, t, runtime, train, recover, watch)
            ran.append("reclassify")
        # Evaluated: on every split the data has (a record an older icl cut short between
        # its splits, test only, is evaluated again).
        if not splits <= errors_by_round(store, exp.name).get(t, {}).keys():
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


def _reclassify(store: Store, exp, t: int, runtime: Runtime, train: TrainChanges,
                recover: int, watch: Watch) -> None:
    """Round ``t``'s reclassification, retried after a divergence up to ``recover`` times
    (``run_rounds``); the attempts of a recovered round are recorded as its metric
    ``recovery_attempts`` (the catalog's and MLflow's)."""
    force = store.checkpoint(exp.name, t) is not None
    if not recover:
        train_round(store, exp.name, t, runtime, changes=train, force=force)
        return
    base = ExperimentConfig.from_dict(exp.config).train
    changes, attempt, record = train, 0, {"recover": recover, "attempt": 0}
    while True:
        try:
            train_round(store, exp.name, t, runtime, changes=changes, force=force,
                        recovery=record)
            break
        except TrainingDiverged as exc:
            if attempt >= recover:
                _record_attempts(store, exp.name, t, runtime, {
                    "recovery_attempts": float(attempt + 1), "diverged": 1.0})
                raise TrainingDiverged(
                    f"training round {t} of '{exp.name}' diverged in each of its "
                    f"{attempt + 1} attempts (the last with {_settings(changes, base)}: "
                    f"{exc.detail}); nothing was saved for round {t} (a lower --lr or "
                    f"--pn-weight, or --clip-grad, avoids it)", t, exc.detail) from None
            attempt += 1
            changes = recovery_changes(train, base, attempt)
            record = {"recover": recover, "attempt": attempt, "after": exc.detail}
            watch({"step": "reclassify", "round": t, "retry": attempt, "of": recover,
                   "changes": changes.given(), "after": exc.detail})
    if attempt:
        kept = changes.apply(base)
        _record_attempts(store, exp.name, t, runtime, {
            "recovery_attempts": float(attempt + 1), "recovery_lr": kept.lr,
            "recovery_clip_grad": float(kept.clip_grad or 0.0)})


def _record_attempts(store: Store, name: str, t: int, runtime: Runtime,
                     metrics: dict[str, float]) -> None:
    """A round's training attempts as its metrics, in the catalog and MLflow (rank 0)."""
    if distributed.current().main:
        store.record_metrics(name, t, metrics)
        store.tracker(name, enabled=runtime.mlflow).log_metrics(metrics, step=t)


def _settings(changes: TrainChanges, base: TrainConfig) -> str:
    """A retry's learning rate and clip in words, e.g. ``lr=0.0125, clip_grad=10.0``."""
    tc = changes.apply(base)
    return f"lr={tc.lr:g}, clip_grad={'off' if not tc.clip_grad else f'{tc.clip_grad:g}'}"
