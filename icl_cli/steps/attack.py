"""The two-way attack experiment (``icl attack``, paper 4.1): adversarial examples made on
one model from the test images it gets right (FGSM or L-inf PGD), how many fool it and how
many of those also fool the other model; then the same the other way round."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from icl_cli import finished
from icl_cli.algo.ascent import fgsm, pgd
from icl_cli.data import PIXEL_SCALE
from icl_cli.steps.common import Runtime, StepError, experiment_data, inputs
from icl_cli.steps.evaluate import load_model

if TYPE_CHECKING:
    from store import Store


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
        """Adversarial examples of ``x`` on ``model``, in its [-1, 1] input scale. At
        ``eps`` 0 they are ``x`` itself: no step can move an image out of a ball of radius
        0, so PGD runs none (its steps and restarts would only cost time)."""
        if self.eps == 0:
            return x.clone()
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
    reused: bool = False  # answered from the record of an earlier run (icl_cli.finished)


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


def attack_round(store: Store, name: str, round_: int, against: str, against_round: int | None,
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
    data = experiment_data(store.experiment(a), store)
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
    exp_a, exp_b = store.experiment(a), store.experiment(b)
    made = [store.checkpoint(a, round_), store.checkpoint(b, b_round)]
    finished.record(store, exp_a, "attack", finished.attack_key(
        store, exp_a, round_, exp_b, b_round, dataclasses.asdict(settings)),
        [(c.path, c.sha256) for c in made], results, data=True)
    return results
