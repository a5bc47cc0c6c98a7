"""Evaluation (``icl evaluate``) and the two-way FGSM experiment (``icl attack``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icl_cli.algo.ascent import fgsm
from icl_cli.algo.train import error_rate, predict_logits
from icl_cli.config import ExperimentConfig
from icl_cli.data import PIXEL_SCALE
from icl_cli.steps.common import (
    Runtime,
    StepError,
    experiment_data,
    inputs,
    load_weights,
    new_model,
)


@dataclass(frozen=True)
class Evaluation:
    experiment: str
    round: int
    split: str
    error: float  # fraction
    per_class: list[float]
    n: int


def load_model(store, name: str, round_: int, device: torch.device):
    """(config, model in eval mode) of an experiment's checkpoint at ``round_``."""
    exp = store.experiment(name)
    if round_ < 0:
        raise StepError(f"--round must be >= 0, got {round_}")
    info = store.checkpoint(exp.name, round_)
    if info is None:
        raise StepError(f"round {round_} of '{exp.name}' has no checkpoint: run "
                        f"`icl reclassify --round {round_} -e {exp.name}`" if round_ > 0 else
                        f"experiment '{exp.name}' has no round-0 checkpoint: run `icl init`")
    cfg = ExperimentConfig.from_dict(exp.config)
    model = new_model(cfg, experiment_data(exp)).to(device)
    load_weights(model, store, info, device)
    return cfg, model.eval()


def evaluate_round(store, name: str, round_: int, runtime: Runtime) -> list[Evaluation]:
    """Test error (and validation error when a validation split exists) at round t."""
    device = runtime.apply()
    exp = store.experiment(name)
    _, model = load_model(store, exp.name, round_, device)
    data = experiment_data(exp)
    splits = [("test", data.test)] + ([("val", data.val)] if data.val is not None else [])
    results = []
    for split_name, split in splits:
        logits = predict_logits(model, inputs(split.images, device))
        rep = error_rate(logits, split.labels.to(device), data.num_classes)
        store.record_evaluation(exp.name, round_, split_name, rep.error, rep.per_class, rep.n)
        results.append(Evaluation(exp.name, round_, split_name, rep.error, rep.per_class, rep.n))
    _track(store, exp.name, round_, results, runtime)
    return results


def _track(store, name: str, round_: int, results: list[Evaluation], runtime: Runtime) -> None:
    metrics = {f"{e.split}_error": 100 * e.error for e in results}
    store.tracker(name, enabled=runtime.mlflow).log_metrics(metrics, step=round_)


def copy_parent_evaluations(store, name: str, parent: str, parent_round: int,
                            runtime: Runtime) -> list[Evaluation] | None:
    """Round 0 of ``name`` is the bytes of ``parent``'s checkpoint at ``parent_round`` on the
    same data (``--from`` shares both), so the parent's current evaluations of it are exact:
    record them for ``name`` instead of running the test set again. None when the parent
    has none (or only stale ones, from before a retrain)."""
    trained = store.checkpoint(parent, parent_round)
    found = [e for e in store.evaluations(parent)
             if e.round == parent_round and e.created_at >= trained.created_at]
    if not any(e.split == "test" for e in found):
        return None
    results = []
    for e in found:
        store.record_evaluation(name, 0, e.split, e.error, e.per_class, e.n)
        results.append(Evaluation(name, 0, e.split, e.error, e.per_class, e.n))
    _track(store, name, 0, results, runtime)
    return results


@dataclass(frozen=True)
class AttackResult:
    """Paper 4.1's two-way counts: examples made on ``source`` from test images it gets
    right, how many fool it, and how many of those also fool ``other``."""

    source: str
    other: str
    eps: float
    correct: int
    fool_source: int
    fool_both: int


def same_data(a, b) -> bool:
    """Whether two experiments saw the same images: by their data fingerprints, or, for
    experiments recorded before icl kept them, by their data settings."""
    if a.data_fingerprint and b.data_fingerprint:
        return a.data_fingerprint == b.data_fingerprint
    return a.config.get("data") == b.config.get("data")


def _one_way(src, dst, x, y, eps_input: float, batch: int = 1000) -> tuple[int, int, int]:
    correct = fooled = both = 0
    for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
        with torch.no_grad():
            ok = src(xb).argmax(1) == yb
        xb, yb = xb[ok], yb[ok]
        adv = fgsm(src, xb, yb, eps_input)
        with torch.no_grad():
            fool = src(adv).argmax(1) != yb
            fool_dst = dst(adv[fool]).argmax(1) != yb[fool]
        correct, fooled, both = correct + len(yb), fooled + int(fool.sum()), both + int(
            fool_dst.sum())
    return correct, fooled, both


def attack(store, name: str, round_: int, against: str, against_round: int | None,
           eps: float, runtime: Runtime) -> list[AttackResult]:
    """FGSM both ways between (name, round) and (against, against_round) on the test set;
    ``eps`` in [0, 1] pixel units, converted to the [-1, 1] input scale."""
    if not 0.0 <= eps <= 1.0:
        raise StepError(f"--eps is in pixel units and must lie in [0, 1], got {eps}")
    device = runtime.apply()
    a = store.experiment(name).name
    b = store.experiment(against).name
    b_round = round_ if against_round is None else against_round
    cfg_a, model_a = load_model(store, a, round_, device)
    cfg_b, model_b = load_model(store, b, b_round, device)
    if not same_data(store.experiment(a), store.experiment(b)):
        raise StepError(f"'{a}' and '{b}' use different data (their data fingerprints "
                        "differ); attack compares models on one test set")
    data = experiment_data(store.experiment(a))
    x, y = inputs(data.test.images, device), data.test.labels.to(device)
    eps_input = eps * PIXEL_SCALE
    results = []
    for (src_name, src), (dst_name, dst) in [((a, model_a), (b, model_b)),
                                             ((b, model_b), (a, model_a))]:
        results.append(AttackResult(src_name, dst_name, eps, *_one_way(src, dst, x, y,
                                                                       eps_input)))
    store.record_attack(a, round_, b, b_round, eps, {
        "a_made": [results[0].correct, results[0].fool_source, results[0].fool_both],
        "b_made": [results[1].correct, results[1].fool_source, results[1].fool_both]})
    store.tracker(a, enabled=runtime.mlflow).log_metrics(
        {"fgsm_fool_self": results[0].fool_source, "fgsm_fool_other": results[0].fool_both},
        step=round_)
    return results
