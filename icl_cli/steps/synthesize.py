"""The synthesis step (``icl synthesize --round t``): pseudo-negatives from checkpoint t-1."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from icl_cli.algo.ascent import Synthesis, reference_noise, synthesize, targets_per_class
from icl_cli.config import ExperimentConfig, SamplerChanges, SamplerConfig
from icl_cli.steps.common import (
    Runtime,
    StepError,
    derive_seed,
    experiment_data,
    load_weights,
    new_model,
)


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
    reused: bool  # an identical shard existed; nothing ran
    replay_match: bool | None = None
    path: str = ""


def draw(model, sc: SamplerConfig, num_classes: int, shape, seed: int, device,
         amp_dtype=None, progress=None) -> Synthesis:
    """K * count pseudo-negatives: reference draws, then (gradient kind) Adam ascent."""
    target = targets_per_class(num_classes, sc.count)
    x0 = reference_noise(len(target), shape, sc.reference_std,
                         torch.Generator().manual_seed(seed)).to(device)
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
                     replay: bool = False, changes: SamplerChanges | None = None
                     ) -> SynthesisResult:
    """Draw round t's shard from checkpoint t-1 (a new version with ``force``), with the
    experiment's sampler settings and this round's ``changes`` (``--count``, ...).

    Runs under the experiment's lock from the first check to the last write, so two
    processes never both decide that the round is still to do (the second gets BusyError,
    or, once the first has finished, finds its shard and reports it).
    """
    exp = store.experiment(name)
    cfg = ExperimentConfig.from_dict(exp.config)
    t = round_
    if cfg.method == "baseline":
        raise StepError(f"experiment '{exp.name}' is a baseline: it has no pseudo-negatives "
                        "to synthesize (reclassify it directly)")
    if t < 1:
        raise StepError(f"synthesize needs --round >= 1 (round 0 is `icl init`), got {t}")
    with store.lock(exp.name):
        return _synthesize(store, exp, cfg, t, runtime, force, replay,
                           changes or SamplerChanges())


def _synthesize(store, exp, cfg: ExperimentConfig, t: int, runtime: Runtime, force: bool,
                replay: bool, changes: SamplerChanges) -> SynthesisResult:
    source = store.checkpoint(exp.name, t - 1)
    if source is None:
        raise StepError(f"round {t - 1} of '{exp.name}' has no checkpoint yet: run "
                        f"`icl reclassify --round {t - 1}` first" if t > 1 else
                        f"experiment '{exp.name}' has no round-0 checkpoint: run `icl init`")
    if t > 1 and store.active_shard(exp.name, t - 1) is None:
        raise StepError(f"round {t - 1} has no shard: run `icl synthesize --round {t - 1}`")
    active = store.active_shard(exp.name, t)
    if replay:
        if active is None:
            raise StepError(f"round {t} of '{exp.name}' has no shard to replay")
        if active.source_checkpoint not in (None, source.sha256):
            raise StepError(f"checkpoint {t - 1} of '{exp.name}' changed since round {t} was "
                            "synthesized: it cannot be replayed")
        sc, seed = SamplerConfig.from_dict(active.sampler_config), active.seed
        amp = bool(active.sampler_config.get("amp", False))  # as recorded, not as asked
    else:
        sc = changes.apply(cfg.sampler)
        amp = runtime.amp
        if active is not None and not force:
            if active.sampler_config == _recorded(sc, amp) and \
                    active.source_checkpoint == source.sha256:
                return _summary(store, active, reused=True)
            raise StepError(f"round {t} of '{exp.name}' already has shard v{active.version} "
                            f"from other settings or another checkpoint: pass --force to "
                            f"make a new version")
        version = 1 + max((s.version for s in store.shards(exp.name, t)), default=0)
        seed = derive_seed("synthesize", cfg.seed, t, version)

    device = runtime.apply()
    data = experiment_data(exp)
    step_cfg = {"round": t, "sampler": _recorded(sc, amp), "seed": seed,
                "source": source.sha256, "device": str(device), "replay": replay}
    # Made before the step, so the MLflow run follows it (RUNNING, then how it ended).
    tracker = store.tracker(exp.name, enabled=runtime.mlflow)
    with store.step(exp.name, "replay-synthesize" if replay else "synthesize", t, step_cfg):
        model = new_model(cfg, data).to(device)
        load_weights(model, store, source, device)
        t0 = time.perf_counter()
        advance = runtime.progress.task(f"synthesize round {t}", sc.max_steps)
        out = draw(model, sc, data.num_classes, data.shape, seed, device,
                   torch.bfloat16 if amp else None, progress=lambda step, active: advance(1))
        runtime.progress.done()
        seconds = time.perf_counter() - t0
        arrays = _arrays(out)
        if replay:
            recorded = store.read_shard(active)
            same = all(np.array_equal(recorded[k], v) for k, v in arrays.items())
            return _summary(store, active, reused=False, seconds=seconds, replay_match=same)
        info = store.write_shard(exp.name, t, arrays, {
            "seed": seed, "sampler_config": _recorded(sc, amp),
            "source_checkpoint": source.sha256})
    result = _summary(store, info, reused=False, seconds=seconds, arrays=arrays,
                      max_steps=sc.max_steps)
    health = sample_health(arrays)
    store.record_metrics(exp.name, t, health)
    tracker.log_metrics(
        {"pass_rate": result.pass_rate, "mean_steps": result.mean_steps,
         "synthesize_seconds": seconds, **health}, step=t)
    return result


def _recorded(sc: SamplerConfig, amp: bool) -> dict:
    """The sampler settings as a shard records them: with ``"amp": true`` when the samples
    were drawn under bf16 autocast (it changes them), so a replay draws them the same way."""
    return {**sc.to_dict(), **({"amp": True} if amp else {})}


def sample_health(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Of a shard: the share of sample values outside the data range [-1, 1] and the
    share of samples that never passed (reached max_steps still classified negative)."""
    x, passed = arrays["samples"], arrays["passed"]
    return {"outside_range": float(np.mean(np.abs(x) > 1.0)) if x.size else 0.0,
            "never_passed": float(1.0 - passed.mean()) if passed.size else 0.0}


def _summary(store, info, *, reused: bool, seconds: float = 0.0, arrays=None,
             max_steps: int | None = None, replay_match: bool | None = None) -> SynthesisResult:
    arrays = arrays if arrays is not None else store.read_shard(info)
    steps = arrays["steps"].astype(np.float64)
    max_steps = max_steps if max_steps is not None else info.sampler_config.get("max_steps", 0)
    budget = len(steps) * max_steps
    saved = 1 - steps.sum() / budget if budget else 0.0
    return SynthesisResult(info.experiment, info.round, info.version, len(steps),
                           float(arrays["passed"].mean()), float(steps.mean()), float(saved),
                           seconds, reused, replay_match, str(info.path))
