"""Configuration as frozen dataclasses, one per step.

Every artefact (checkpoint, shard, catalog row) carries its config as a plain dict
(``asdict``) and a short hash of it, never a pickled object, so that checkpoints load
under ``torch.load(weights_only=True)`` and a config can be compared across machines.

Example:
    >>> cfg = ExperimentConfig(method="icl")
    >>> ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["softmax", "ova"]
Method = Literal["icl", "icl-noise", "baseline"]
StopRule = Literal["logit", "argmax"]
PnWeighting = Literal["per-sample", "batch-mean"]

MODES = ("softmax", "ova")
METHODS = ("icl", "icl-noise", "baseline")
STOP_RULES = ("logit", "argmax")
PN_WEIGHTINGS = ("per-sample", "batch-mean")


def config_hash(d: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``d``, first 16 hex digits."""
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class _Config:
    """Mixin: plain-dict round trip, a stable hash, and finite numbers only."""

    FLAGS: dict[str, str] = {}  # field -> the command-line flag that sets it, where not --name

    def _check_finite(self) -> None:
        """NaN or inf in any number field is refused, naming its flag (it would train or
        sample garbage, and print as non-JSON ``NaN`` in ``--json`` output)."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                flag = self.FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
                raise ValueError(f"{flag} must be a finite number, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in d:
                continue
            value = d[f.name]
            sub = _NESTED.get((cls.__name__, f.name))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def hash(self) -> str:
        return config_hash(self.to_dict())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class DataConfig(_Config):
    """Which data, which subset.

    dataset: ``mnist-embedded`` (ships with the package), ``idx`` (an MNIST-layout folder
    given by ``root``), ``mnist`` (alias of idx), ``cifar10``, ``svhn``, ``fake-cifar10``,
    ``fake-svhn`` (random data of the right shape, for smoke tests).
    train_size: class-balanced subset of the training set fixed by ``seed`` (None: all).
    val_size: class-balanced validation split held out of the training set (0: none).
    seed: draws the validation split and the training subset (``icl init --seed`` sets it,
    ``--data-seed`` overrides it).
    """

    dataset: str = "mnist-embedded"
    root: str | None = None
    train_size: int | None = None
    val_size: int = 0
    seed: int = 0
    augment: bool = False
    download: bool = False


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Network by registry name; ``mode`` picks softmax (one net, K logits) or one-vs-all
    (K one-logit nets, trained and sampled together)."""

    arch: str = "mnist-cnn"
    mode: Mode = "softmax"


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Reclassification step (ICL eq. 7 / eq. 11).

    epochs: passes over the real training set per round; each pass also visits every
    pseudo-negative of the pool once, in mixed batches.
    real_epochs: extra epochs on real data only at the end of each round (the SPEC's pilot
    found one such epoch steadies the error after hard negatives arrive).
    pn_weight: weight w of the pseudo-negative term.
    pn_weighting: ``per-sample`` (eq. 11 as written: a sum in which every sample counts
    once, divided by the real batch size, so with w = 1 a pseudo-negative weighs what a
    real image weighs) or ``batch-mean`` (the ablation: mean over the real rows + w * mean
    over the batch's pseudo-negatives, which makes one pseudo-negative weigh B / P images).
    clip_grad: clip the gradient's global L2 norm to this before each step (None or 0: off).
    max_batch: run a mixed batch with more rows than this in pieces, gradients accumulated
    (same step up to floating-point order, bounded memory; None: one pass).
    decay_round: from this round on the learning rate is ``lr * decay_factor``.
    """

    epochs: int = 5
    real_epochs: int = 0
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_round: int = 20
    decay_factor: float = 0.1
    pn_weight: float = 1.0
    pn_weighting: PnWeighting = "per-sample"
    clip_grad: float | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        self._check_finite()

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        # Recorded before ``pn_weighting`` existed: those experiments trained (and resume)
        # with the batch-mean form, whatever today's default is.
        if "pn_weight" in d and "pn_weighting" not in d:
            d = {**d, "pn_weighting": "batch-mean"}
        return super().from_dict(d)


@dataclass(frozen=True)
class SamplerConfig(_Config):
    """Synthesis step (paper 3.2.2): gradient ascent on the input.

    count: samples per class (the paper's l).
    kind: ``gradient`` (ICL) or ``noise`` (ICL-noise: raw draws of the reference distribution).
    reference_std: sigma_r of the reference distribution N(0, sigma_r^2).
    stop_rule: ``logit`` stops once f_k(x) > 0 (sigmoid > 0.5); ``argmax`` once argmax == k.
    langevin_std: std of Gaussian noise added to x after each step (0: none).
    clamp: clamp x to the data range [-1, 1] after each step.
    check_every: compact the batch (drop passed samples) every this many steps; results do
    not depend on it, only speed (a GPU avoids a host sync per step).
    """

    count: int = 20
    kind: Literal["gradient", "noise"] = "gradient"
    lr: float = 0.01
    beta1: float = 0.5
    beta2: float = 0.999
    max_steps: int = 200
    reference_std: float = 0.3
    stop_rule: StopRule = "logit"
    langevin_std: float = 0.0
    clamp: bool = False
    check_every: int = 1

    FLAGS = {"lr": "--sampler-lr"}

    def __post_init__(self) -> None:
        self._check_finite()


@dataclass(frozen=True)
class ExperimentConfig(_Config):
    """Everything an experiment fixes at ``icl init``."""

    method: Method = "icl"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init_epochs: int = 5
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.model.mode not in MODES:
            raise ValueError(f"unknown mode {self.model.mode!r} (choose from {', '.join(MODES)})")
        if self.sampler.stop_rule not in STOP_RULES:
            raise ValueError(f"unknown stop rule {self.sampler.stop_rule!r}")
        if self.train.pn_weighting not in PN_WEIGHTINGS:
            raise ValueError(f"unknown --pn-weighting {self.train.pn_weighting!r} "
                             f"(choose from {', '.join(PN_WEIGHTINGS)})")


_NESTED = {
    ("ExperimentConfig", "data"): DataConfig,
    ("ExperimentConfig", "model"): ModelConfig,
    ("ExperimentConfig", "train"): TrainConfig,
    ("ExperimentConfig", "sampler"): SamplerConfig,
}
