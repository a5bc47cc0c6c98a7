"""Evaluation (``icl evaluate``): test and validation error, NLL and ECE of a round's
checkpoint; ``load_model`` gives the other measuring steps (attack, ood) that checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from icl_cli import finished
from icl_cli.algo.evaluation import error_rate, predict_logits
from icl_cli.config import ExperimentConfig
from icl_cli.steps.common import (
    Runtime,
    StepError,
    experiment_data,
    inputs,
    load_weights,
    mark_work_start,
    new_model,
)

if TYPE_CHECKING:
    from store import Store


@dataclass(frozen=True)
class Evaluation:
    """One split at one round: error (fraction) and per-class error, and the calibration
    of softmax(logits): nll (mean -log p_y) and ece (``ece_bins`` equal-width bins)."""

    experiment: str
    round: int
    split: str
    error: float  # fraction
    per_class: list[float]
    n: int
    nll: float | None = None
    ece: float | None = None
    ece_bins: int | None = None
    reused: bool = False  # answered from the record of an earlier run (icl_cli.finished)


def load_model(store: Store, name: str, round_: int, device: torch.device):
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
    model = new_model(cfg, experiment_data(exp, store)).to(device)
    load_weights(model, store, info, device)
    return cfg, model.eval()


def evaluate_round(store: Store, name: str, round_: int, runtime: Runtime, bins: int = 15,
                   plot: bool = False) -> list[Evaluation]:
    """Test error (and validation error when a validation split exists) at round t, with
    NLL and ECE over ``bins`` bins (catalog: ``{split}_nll``, ``{split}_ece``); ``plot``
    writes the reliability diagram ``reliability-round-TTTT.png`` among the figures."""
    from icl_cli.metrics import calibration

    if bins < 1:
        raise StepError(f"--bins must be >= 1, got {bins}")
    device = runtime.apply()
    exp = store.experiment(name)
    _, model = load_model(store, exp.name, round_, device)
    data = experiment_data(exp, store)
    splits = [("test", data.test)] + ([("val", data.val)] if data.val is not None else [])
    results, curves = [], {}
    mark_work_start("evaluate")
    for split_name, split in splits:
        with torch.no_grad():
            logits = predict_logits(model, inputs(split.images, device))
        y = split.labels.to(device)
        rep = error_rate(logits, y, data.num_classes)
        cal = curves[split_name] = calibration(logits, y, bins)
        results.append(Evaluation(exp.name, round_, split_name, rep.error, rep.per_class,
                                  rep.n, cal.nll, cal.ece, bins))
    _record(store, exp.name, round_, results)
    made = [(store.checkpoint(exp.name, round_).path, store.checkpoint(exp.name, round_).sha256)]
    if plot:
        from icl_cli.steps.report import plot_reliability

        made.append((plot_reliability(store, exp.name, round_, curves), None))
    finished.record(store, exp, "evaluate", finished.evaluate_key(store, exp, round_, bins, plot),
                    made, results, data=True)
    _track(store, exp.name, round_, results, runtime)  # MLflow once the catalog has it
    return results


def calibration_metrics(results: list[Evaluation]) -> dict[str, float]:
    """The catalog's (and MLflow's) names for the calibration of each split."""
    out = {}
    for e in results:
        if e.nll is not None:
            out |= {f"{e.split}_nll": e.nll, f"{e.split}_ece": e.ece,
                    "ece_bins": float(e.ece_bins)}
    return out


def _record(store: Store, name: str, round_: int, results: list[Evaluation]) -> None:
    """A round's evaluations of every split and their calibration, in one transaction:
    never a round recorded on one split and not the other (``icl run`` would count it as
    evaluated)."""
    store.record_evaluations(name, round_, [(e.split, e.error, e.per_class, e.n)
                                            for e in results], calibration_metrics(results))


def _track(store: Store, name: str, round_: int, results: list[Evaluation],
           runtime: Runtime) -> None:
    metrics = {f"{e.split}_error": 100 * e.error for e in results}
    metrics |= {k: v for k, v in calibration_metrics(results).items() if k != "ece_bins"}
    store.tracker(name, enabled=runtime.mlflow).log_metrics(metrics, step=round_)


def copy_parent_evaluations(store: Store, name: str, parent: str, parent_round: int,
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
    cal = store.metrics(parent).get(parent_round, {})
    results = []
    for e in found:
        nll, ece = cal.get(f"{e.split}_nll"), cal.get(f"{e.split}_ece")
        bins = None if cal.get("ece_bins") is None else int(cal["ece_bins"])
        results.append(Evaluation(name, 0, e.split, e.error, e.per_class, e.n, nll, ece,
                                  bins if ece is not None else None))
    _record(store, name, 0, results)
    _track(store, name, 0, results, runtime)
    return results
