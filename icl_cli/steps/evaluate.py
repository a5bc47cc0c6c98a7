"""Evaluation (``icl evaluate``: error, NLL, ECE) and the two-way attack experiment
(``icl attack``: FGSM or L-inf PGD)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icl_cli.algo.ascent import fgsm, pgd
from icl_cli.algo.evaluation import error_rate, predict_logits
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


def evaluate_round(store, name: str, round_: int, runtime: Runtime, bins: int = 15,
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
    data = experiment_data(exp)
    splits = [("test", data.test)] + ([("val", data.val)] if data.val is not None else [])
    results, curves = [], {}
    for split_name, split in splits:
        with torch.no_grad():
            logits = predict_logits(model, inputs(split.images, device))
        y = split.labels.to(device)
        rep = error_rate(logits, y, data.num_classes)
        cal = curves[split_name] = calibration(logits, y, bins)
        store.record_evaluation(exp.name, round_, split_name, rep.error, rep.per_class, rep.n)
        results.append(Evaluation(exp.name, round_, split_name, rep.error, rep.per_class,
                                  rep.n, cal.nll, cal.ece, bins))
    store.record_metrics(exp.name, round_, calibration_metrics(results))
    _track(store, exp.name, round_, results, runtime)
    if plot:
        from icl_cli.steps.report import plot_reliability

        plot_reliability(store, exp.name, round_, curves)
    return results


def calibration_metrics(results: list[Evaluation]) -> dict[str, float]:
    """The catalog's (and MLflow's) names for the calibration of each split."""
    out = {}
    for e in results:
        if e.nll is not None:
            out |= {f"{e.split}_nll": e.nll, f"{e.split}_ece": e.ece,
                    "ece_bins": float(e.ece_bins)}
    return out


def _track(store, name: str, round_: int, results: list[Evaluation], runtime: Runtime) -> None:
    metrics = {f"{e.split}_error": 100 * e.error for e in results}
    metrics |= {k: v for k, v in calibration_metrics(results).items() if k != "ece_bins"}
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
    cal = store.metrics(parent).get(parent_round, {})
    results = []
    for e in found:
        store.record_evaluation(name, 0, e.split, e.error, e.per_class, e.n)
        nll, ece = cal.get(f"{e.split}_nll"), cal.get(f"{e.split}_ece")
        bins = None if cal.get("ece_bins") is None else int(cal["ece_bins"])
        results.append(Evaluation(name, 0, e.split, e.error, e.per_class, e.n, nll, ece,
                                  bins if ece is not None else None))
    if any(e.nll is not None for e in results):
        store.record_metrics(name, 0, calibration_metrics(results))
    _track(store, name, 0, results, runtime)
    return results


@dataclass(frozen=True)
class AttackSettings:
    """Which attack ``icl attack`` runs. ``eps`` and ``step_size`` in [0, 1] pixel units;
    PGD only: ``steps``, ``step_size`` (None: 2.5 * eps / steps, Madry et al.),
    ``restarts``, ``random_start`` and the ``seed`` of the random starts; ``limit``: attack
    only the first ``limit`` test images (None: all of them)."""

    method: str = "fgsm"
    eps: float = 0.125
    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    seed: int = 0
    limit: int | None = None

    def check(self) -> None:
        if self.method not in ("fgsm", "pgd"):
            raise StepError(f"--method must be fgsm or pgd, got {self.method!r}")
        if not 0.0 <= self.eps <= 1.0:
            raise StepError(f"--eps is in pixel units and must lie in [0, 1], got {self.eps}")
        if self.limit is not None and self.limit < 1:
            raise StepError(f"--limit must be >= 1 test image, got {self.limit}")
        if self.method == "pgd":
            if self.steps < 1 or self.restarts < 1:
                raise StepError(f"--steps and --restarts must be >= 1, got {self.steps} and "
                                f"{self.restarts}")
            if self.step_size is not None and not 0.0 < self.step_size <= 1.0:
                raise StepError("--step-size is in pixel units and must lie in (0, 1], got "
                                f"{self.step_size}")

    def params(self) -> dict | None:
        """What the catalog keeps besides eps and the method (None for FGSM on the whole
        test set)."""
        out: dict = {}
        if self.method == "pgd":
            step = 2.5 * self.eps / self.steps if self.step_size is None else self.step_size
            out = {"steps": self.steps, "step_size": step, "restarts": self.restarts,
                   "random_start": self.random_start, "seed": self.seed}
        if self.limit is not None:
            out["limit"] = self.limit
        return out or None

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """Adversarial examples of ``x`` on ``model``, in its [-1, 1] input scale."""
        if self.method == "fgsm":
            return fgsm(model, x, y, self.eps * PIXEL_SCALE)
        p = self.params()
        return pgd(model, x, y, self.eps * PIXEL_SCALE, steps=self.steps,
                   step_size=p["step_size"] * PIXEL_SCALE, restarts=self.restarts,
                   random_start=self.random_start, generator=generator)


@dataclass(frozen=True)
class AttackResult:
    """Paper 4.1's two-way counts: examples made on ``source`` from test images it gets
    right, how many fool it, and how many of those also fool ``other``; ``n`` test images,
    so ``robust_accuracy`` = (correct - fool_source) / n is the source model's accuracy
    under the attack."""

    source: str
    other: str
    eps: float
    correct: int
    fool_source: int
    fool_both: int
    method: str = "fgsm"
    n: int = 0
    robust_accuracy: float = 0.0


def same_data(a, b) -> bool:
    """Whether two experiments saw the same images: by their data fingerprints, or, for
    experiments recorded before icl kept them, by their data settings."""
    if a.data_fingerprint and b.data_fingerprint:
        return a.data_fingerprint == b.data_fingerprint
    return a.config.get("data") == b.config.get("data")


def _one_way(src, dst, x, y, settings: AttackSettings,
             batch: int = 1000) -> tuple[int, int, int]:
    correct = fooled = both = 0
    g = torch.Generator().manual_seed(settings.seed)  # the random starts, on CPU
    for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
        with torch.no_grad():
            ok = src(xb).argmax(1) == yb
        xb, yb = xb[ok], yb[ok]
        adv = settings.perturb(src, xb, yb, g)
        with torch.no_grad():
            fool = src(adv).argmax(1) != yb
            fool_dst = dst(adv[fool]).argmax(1) != yb[fool]
        correct, fooled, both = correct + len(yb), fooled + int(fool.sum()), both + int(
            fool_dst.sum())
    return correct, fooled, both


def attack(store, name: str, round_: int, against: str, against_round: int | None,
           settings: AttackSettings, runtime: Runtime) -> list[AttackResult]:
    """FGSM or PGD both ways between (name, round) and (against, against_round) on the
    test set; ``settings.eps`` in [0, 1] pixel units, converted to the [-1, 1] input
    scale."""
    settings.check()
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
    if settings.limit is not None:
        x, y = x[:settings.limit], y[:settings.limit]
    n = len(y)
    results = []
    for (src_name, src), (dst_name, dst) in [((a, model_a), (b, model_b)),
                                             ((b, model_b), (a, model_a))]:
        c, f, both = _one_way(src, dst, x, y, settings)
        results.append(AttackResult(src_name, dst_name, settings.eps, c, f, both,
                                    settings.method, n, (c - f) / n))
    store.record_attack(a, round_, b, b_round, settings.eps, {
        "a_made": [results[0].correct, results[0].fool_source, results[0].fool_both],
        "b_made": [results[1].correct, results[1].fool_source, results[1].fool_both],
        "n": n}, method=settings.method, params=settings.params())
    m = settings.method if settings.method == "fgsm" else f"pgd_eps{settings.eps:g}"
    store.tracker(a, enabled=runtime.mlflow).log_metrics(
        {f"{m}_fool_self": results[0].fool_source, f"{m}_fool_other": results[0].fool_both,
         f"{m}_robust_accuracy": results[0].robust_accuracy}, step=round_)
    return results
