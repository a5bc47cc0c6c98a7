"""Round 0 (``icl init``) and the reclassification step (``icl reclassify --round t``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from icl_cli import distributed, finished
from icl_cli.algo.reclassify import (
    Diverged,
    epoch_rows,
    make_optimizer,
    reclassify,
    round_lr,
    set_hyper,
)
from icl_cli.config import ExperimentConfig, TrainChanges, TrainConfig
from icl_cli.data import augment, to_input
from icl_cli.models import arch_drift, has_batch_norm
from icl_cli.steps.common import (
    Progress,
    Runtime,
    StepError,
    experiment_data,
    generator,
    join_ranks,
    load_weights,
    marked,
    new_model,
    real_tensors,
    workspace_identity,
)
from icl_cli.steps.report import DIVERGED

if TYPE_CHECKING:
    from store import Store


@dataclass(frozen=True)
class TrainResult:
    experiment: str
    round: int
    checkpoint: str  # sha256
    reused: bool  # True: an identical checkpoint existed, nothing ran
    epochs: list[dict[str, float]]
    seconds: float
    pseudo_negatives: int
    replay_match: bool | None = None  # --replay: retrained weights equal the record
    # --replay at another world size than the record's: weights compared within
    # REPLAY_TOLERANCE (allclose), not bit for bit; the largest |difference| found.
    replay_tolerance: dict[str, float] | None = None
    replay_max_diff: float | None = None
    replay_note: str | None = None  # the verdict in words when not bit for bit
    replay_drift: str | None = None  # --replay: the network's code changed since init
    world_size: int = 1  # ranks that trained it (torchrun), 1: one process


class TrainingDiverged(StepError):
    """A round's training loss stopped being finite (``algo.reclassify.Diverged``); nothing
    was saved. ``round``: the round; ``detail``: the loss and the epoch where it happened.
    ``icl run --recover N`` catches it and retries the round (``steps.run``)."""

    def __init__(self, message: str, round_: int, detail: str) -> None:
        super().__init__(message)
        self.round, self.detail = round_, detail


REPLAY_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}
"""How close a replay at another world size must come to the record: ranks sum the
gradients in another order, so the weights agree to floating-point order, not bits."""


def _transform(cfg: ExperimentConfig, gen: torch.Generator):
    if cfg.data.augment:
        return lambda b: augment(to_input(b), gen)
    return to_input


_inputs_record = finished.train_inputs  # what a checkpoint records it was trained from


def train_round(store: Store, name: str, round_: int, runtime: Runtime, *,
                force: bool = False, replay: bool = False,
                changes: TrainChanges | None = None,
                recovery: dict[str, Any] | None = None) -> TrainResult:
    """Reclassify round ``round_`` (>= 1): warm start from checkpoint t-1, train on S plus
    the active shards 1..t, save checkpoint t. Round 0 trains C_0 from scratch on S (or,
    for an experiment started ``--from``, copies the parent's checkpoint again).

    ``changes`` (``icl reclassify --epochs 1`` ...) override the experiment's reclassify settings
    for this round only; they are recorded with the checkpoint's inputs and the step, and
    ``--replay`` uses them again. ``recovery`` (``icl run --recover N``: ``{"recover": N,
    "attempt": k, ...}``) is recorded with the step, so the step log says which attempt
    this was; a diverged training raises ``TrainingDiverged``.

    Runs under the experiment's lock from the first check to the last write, so two
    processes never both decide that the round is still to do (the second gets BusyError).

    Under torchrun every rank calls this: rank 0 holds the lock and makes every write
    (step record, checkpoint, metrics, MLflow) after the others finished training; all
    ranks return the same result or fail with one line (``icl_cli.distributed``).
    """
    exp = store.experiment(name)
    if round_ < 0:
        raise StepError(f"--round must be >= 0, got {round_}")
    cfg = ExperimentConfig.from_dict(exp.config)
    tc = (changes or TrainChanges()).apply(cfg.train)
    if round_ == 0 and tc != cfg.train:
        raise StepError("round 0 (C_0) trains with the experiment's settings; change them "
                        "with a new `icl init`, or for rounds >= 1 only")
    world, device = distributed.from_env(), None
    if world.active:  # the process group opens before the lock: the ranks wait for it
        world, device = join_ranks(runtime, lambda: {
            "step": "reclassify", "workspace": workspace_identity(store),
            "experiment": exp.name, "round": round_,
            "settings": {"train": tc.to_dict(), "force": force, "replay": replay,
                         "amp": runtime.amp, "recovery": recovery},
            "inputs": _stated_inputs(store, exp, cfg, round_)})
    with distributed.main_only(store.lock, exp.name):
        if round_ == 0 and exp.parent is not None and not replay:
            return distributed.from_main(lambda: _copy_round_zero(store, exp, force))
        return _train_round(store, exp, round_, runtime, force, replay, tc, world, device,
                            recovery)


def _stated_inputs(store: Store, exp, cfg: ExperimentConfig, t: int) -> dict[str, Any]:
    """What round ``t`` of ``exp`` would train from, by hash: the experiment's config and
    data, checkpoint t-1 and the active shards 1..t (what torchrun's ranks must agree on)."""
    parent = store.checkpoint(exp.name, t - 1) if t > 0 else None
    shards = store.active_shards(exp.name, t) if t > 0 and cfg.method != "baseline" else []
    return {"config": exp.config_hash, "data": exp.data_fingerprint,
            "parent": parent.sha256 if parent else None,
            "shards": [s.sha256 for s in shards]}


def _copy_round_zero(store: Store, exp, force: bool) -> TrainResult:
    """C_0 of a paired experiment: the parent's checkpoint (``--from EXP:ROUND``)."""
    from_ = f"{exp.parent}:{exp.parent_round or 0}"
    inputs = {"parent": None, "shards": [], "from": from_}
    existing = store.checkpoint(exp.name, 0)
    if existing is not None and not force:
        if store.load_checkpoint(existing).get("inputs") == inputs:
            return TrainResult(exp.name, 0, existing.sha256, True, [], 0.0, 0)
        raise StepError(f"round 0 of '{exp.name}' does not come from {from_}: pass --force "
                        "to copy it again")
    source = store.checkpoint(exp.parent, exp.parent_round or 0)
    if source is None:
        raise StepError(f"'{exp.parent}' has no checkpoint for round {exp.parent_round or 0}")
    state = store.load_checkpoint(source)
    state.update(experiment=exp.name, round=0, config=exp.config, inputs=inputs)
    with store.step(exp.name, "init", 0, {"from": from_, "source": source.sha256}):
        info = store.save_checkpoint(exp.name, 0, state, parent=source,
                                     replace=existing is not None)
    return TrainResult(exp.name, 0, info.sha256, False, [], 0.0, 0)


def _train_round(store: Store, exp, t: int, runtime: Runtime, force: bool, replay: bool,
                 tc: TrainConfig, world: distributed.World, device: torch.device | None,
                 recovery: dict[str, Any] | None = None) -> TrainResult:
    cfg = ExperimentConfig.from_dict(exp.config)
    parent = store.checkpoint(exp.name, t - 1) if t > 0 else None
    if t > 0 and parent is None:
        raise StepError(f"round {t - 1} has no checkpoint in experiment '{exp.name}': "
                        f"run `icl reclassify --round {t - 1}` first")
    existing = store.checkpoint(exp.name, t)
    if replay:
        shards, inputs = _recorded_inputs(store, exp.name, t, existing, parent)
        tc = TrainConfig.from_dict(inputs["train"]) if "train" in inputs else cfg.train
        amp = bool(inputs.get("amp", False))  # as recorded, not as asked
        compile_, channels_last = (bool(inputs.get(k, False)) for k in finished.PREPARED)
    else:
        active = t > 0 and cfg.method != "baseline"
        shards = store.active_shards(exp.name, t) if active else []
        amp, compile_, channels_last = runtime.amp, runtime.compile, runtime.channels_last
        inputs = _inputs_record(parent.sha256 if parent else None, shards,
                                tc.to_dict() if tc != cfg.train else None, amp, compile_,
                                channels_last)
    if existing is not None and not force and not replay:
        state = store.load_checkpoint(existing)
        if state.get("inputs") == inputs:  # its hash checked: a rerun may answer at once
            if world.main:  # rank 0 alone writes
                store.restamp_finished(exp.name, "reclassify", {"round": t})
            return TrainResult(exp.name, t, existing.sha256, True, state.get("history", []),
                               0.0, sum(s.count for s in shards))
        raise StepError(f"round {t} of '{exp.name}' was trained from other inputs (a shard, "
                        f"checkpoint or setting changed since): pass --force to retrain it")

    device = runtime.apply() if device is None else device
    data = experiment_data(exp, store)
    step_cfg = {"round": t, "train": tc.to_dict(), "inputs": inputs,
                "device": str(device), "replay": replay, "world_size": world.size}
    if recovery:
        step_cfg["recovery"] = recovery
    if world.active and device.type != "cuda" and has_batch_norm(new_model(cfg, data)):
        raise StepError(f"'{exp.name}' has a batch-norm network ({cfg.model.arch}): on "
                        f"several ranks it needs CUDA (SyncBatchNorm); on CPU run it without "
                        f"torchrun")
    progress = marked(runtime, "reclassify").progress if world.main else Progress()
    with distributed.main_only(store.step, exp.name,
                               "replay-reclassify" if replay else "reclassify", t, step_cfg):
        # compiled or channels_last before the optimizer sees its parameters (in place:
        # the same parameters and state_dict keys, so the weights load as they are)
        model = runtime.prepare(new_model(cfg, data).to(device), compile_, channels_last)
        lr = round_lr(tc.lr, t, tc.decay_round, tc.decay_factor)
        optimizer = make_optimizer(model, lr, tc.momentum, tc.weight_decay)
        if parent is not None:
            state = load_weights(model, store, parent, device)
            optimizer.load_state_dict(state["optimizer"])  # momentum buffers, and the
            # parent's hyperparameters, which this experiment's own config overrides
            set_hyper(optimizer, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        pn_x, pn_k, pn_t = _pool(store, shards, data.shape, data.num_classes, device)
        real_x, real_y = real_tensors(data, device)
        real_gen = generator("real", cfg.seed, t)
        epochs = cfg.init_epochs if t == 0 else tc.epochs
        total = (epoch_rows(len(real_y), pn_k.cpu(), tc.pn_weighting, cfg.model.mode) * epochs
                 + len(real_y) * (tc.real_epochs if t else 0))
        advance = progress.task(f"reclassify round {t}", total)
        try:
            history = reclassify(
                model, optimizer, real_x, real_y, pn_x, pn_k,
                epochs=epochs, batch_size=tc.batch_size, mode=cfg.model.mode,
                pn_weight=tc.pn_weight, pn_weighting=tc.pn_weighting, pn_round=pn_t,
                pn_recency=tc.pn_recency, clip_grad=tc.clip_grad,
                max_batch=tc.max_batch,
                real_epochs=tc.real_epochs if t else 0,
                real_gen=real_gen, pn_gen=generator("pn", cfg.seed, t),
                transform=_transform(cfg, real_gen),
                amp_dtype=torch.bfloat16 if amp else None,
                progress=advance, distributed=world.active,
            )
        except ValueError as e:  # --max-batch with a batch-norm network
            raise StepError(f"--max-batch: {e}") from None
        except RuntimeError as e:
            if world.active and distributed.is_collective_error(e):
                raise distributed.lost_peer(e) from None
            raise
        except Diverged as e:
            raise TrainingDiverged(
                f"training round {t} of '{exp.name}' {DIVERGED}{e}); nothing was saved (a "
                "lower --lr or --pn-weight, or --clip-grad, avoids it; `icl run --recover N` "
                "retries a diverged round by itself)", t, str(e)) from None
        progress.done()
        epochs_log = [asdict(h) for h in history]
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "config": exp.config, "experiment": exp.name, "round": t,
                 "inputs": inputs, "history": epochs_log}
        if world.active:  # not part of ``inputs``: a rerun at another size is a no-op
            state["world_size"] = world.size
        if replay:
            return distributed.from_main(lambda: replace(_compare_replay(
                store, existing, state, exp.name, t, epochs_log, world.size),
                replay_drift=arch_drift(cfg.model)))
        # Rank 0 writes once every rank is done (from_main's barrier).
        sha = distributed.from_main(lambda: store.save_checkpoint(
            exp.name, t, state, parent=parent, replace=existing is not None).sha256)
    seconds = sum(h.seconds for h in history)
    peaks = training_peaks(history)
    result = TrainResult(exp.name, t, sha, False, epochs_log, seconds, len(pn_k),
                         world_size=world.size)
    if world.main:
        store.record_metrics(exp.name, t, peaks)
        saved = store.checkpoint(exp.name, t)  # what a rerun answers (icl_cli.finished)
        finished.record(store, exp, "reclassify",
                        finished.reclassify_key(store, exp, t, tc, amp, compile_,
                                                channels_last),
                        [(saved.path, saved.sha256)], result)
        # MLflow once the result is in the catalog (its import alone costs seconds)
        store.tracker(exp.name, enabled=runtime.mlflow).log_metrics(
            {"train_loss": history[-1].loss, "real_loss": history[-1].real_loss,
             "pn_loss": history[-1].pn_loss, "reclassify_seconds": seconds,
             "pseudo_negatives": float(len(pn_k)), **peaks}, step=t)
    return result


def training_peaks(history) -> dict[str, float]:
    """A round's warning signs, the largest over its epochs: gradient norm (before any
    clipping) and |logit| on real data and on the pool."""
    return {"grad_norm_max": max(h.grad_norm_max for h in history),
            "real_logit_max": max(h.real_logit_max for h in history),
            "pool_logit_max": max(h.pn_logit_max for h in history)}


def _recorded_inputs(store: Store, name: str, t: int, existing, parent):
    """The shards and parent a recorded checkpoint was trained from (for ``--replay``)."""
    if existing is None:
        raise StepError(f"round {t} of '{name}' has no checkpoint to replay")
    inputs = store.load_checkpoint(existing).get("inputs", {})
    if "from" in inputs:
        raise StepError(f"round {t} of '{name}' was copied from {inputs['from']}, not trained")
    if inputs.get("parent") != (parent.sha256 if parent else None):
        raise StepError(f"checkpoint {t - 1} of '{name}' changed since round {t} was trained: "
                        "it cannot be replayed")
    by_sha = {s.sha256: s for s in store.shards(name)}
    missing = [sha[:12] for sha in inputs["shards"] if sha not in by_sha]
    if missing:
        raise StepError(f"round {t} of '{name}' was trained on shards no longer in the "
                        f"catalog ({', '.join(missing)})")
    return [by_sha[sha] for sha in inputs["shards"]], inputs


def _pool(store: Store, shards: list, shape, num_classes: int, device: torch.device):
    """Every active pseudo-negative of rounds 1..t: samples (P, C, H, W) and class (P,) on
    ``device``, and the round each was drawn in (P,) on the CPU."""
    from store import IntegrityError
    from store.artifacts import shard_fix

    xs, ks = [torch.empty(0, *shape)], [torch.empty(0, dtype=torch.long)]
    ts = [torch.empty(0, dtype=torch.long)]
    for info in shards:
        arrays = store.read_shard(info)
        fix = shard_fix(info.experiment, info.round)
        if tuple(arrays["samples"].shape[1:]) != tuple(shape):
            raise IntegrityError(f"shard {store.rel(info.path)} holds samples of shape "
                                 f"{tuple(arrays['samples'].shape[1:])}, the data is "
                                 f"{tuple(shape)}: {fix}")
        if len(arrays["target"]) and int(arrays["target"].max()) >= num_classes:
            raise IntegrityError(f"shard {store.rel(info.path)} targets class "
                                 f"{int(arrays['target'].max())}, the data has {num_classes}: "
                                 f"{fix}")
        xs.append(torch.from_numpy(arrays["samples"]))
        ks.append(torch.from_numpy(arrays["target"]).long())
        ts.append(torch.full((len(arrays["target"]),), info.round, dtype=torch.long))
    return torch.cat(xs).to(device), torch.cat(ks).to(device), torch.cat(ts)


def _compare_replay(store: Store, existing, state, name: str, t: int, epochs_log,
                    world_size: int = 1) -> TrainResult:
    """Re-trained weights against the recorded checkpoint: bit for bit when trained at the
    recorded world size, within ``REPLAY_TOLERANCE`` at another (then ``replay_tolerance``
    says so)."""
    record = store.load_checkpoint(existing)
    recorded, ranks = record["model"], int(record.get("world_size", 1))
    pairs = [(recorded[k].cpu(), v.cpu()) for k, v in state["model"].items()]
    seconds = sum(e["seconds"] for e in epochs_log)
    if ranks == world_size:
        same = all(torch.equal(a, b) for a, b in pairs)
        return TrainResult(name, t, existing.sha256, False, epochs_log, seconds, 0,
                           replay_match=same, world_size=world_size)
    close = all(a.shape == b.shape and torch.allclose(a.float(), b.float(), **REPLAY_TOLERANCE)
                for a, b in pairs)
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in pairs
                if a.shape == b.shape and a.numel()), default=0.0)
    tol = ", ".join(f"{k} {v:g}" for k, v in REPLAY_TOLERANCE.items())
    note = (f"{'matches' if close else 'DIFFERS from'} the record within {tol} (trained on "
            f"{ranks} rank{'s' * (ranks > 1)}, replayed on {world_size}: not bit for bit; "
            f"largest weight difference {diff:.1e})")
    return TrainResult(name, t, existing.sha256, False, epochs_log, seconds, 0,
                       replay_match=close, replay_tolerance=dict(REPLAY_TOLERANCE),
                       replay_max_diff=diff, replay_note=note, world_size=world_size)
