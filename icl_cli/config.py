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
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from icl_cli.errors import StepError

Mode = Literal["softmax", "ova"]
Method = Literal["icl", "icl-noise", "baseline"]
StopRule = Literal["logit", "argmax"]
PnWeighting = Literal["per-sample", "batch-mean", "drawn"]

MODES = ("softmax", "ova")
METHODS = ("icl", "icl-noise", "baseline")
STOP_RULES = ("logit", "argmax")
PN_WEIGHTINGS = ("per-sample", "batch-mean", "drawn")
SAMPLER_KINDS = ("gradient", "noise")
DATASETS = ("mnist-embedded", "idx", "mnist", "cifar10", "svhn", "fake-cifar10", "fake-svhn",
            "imagefolder", "npz", "hf")
USER_DATASETS = ("imagefolder", "npz", "hf")  # a user's own files: --image-size applies
BUILTIN_ARCHS = ("mnist-cnn", "resnet32", "resnet8", "tiny")  # icl_cli.models.REGISTRY
ARCH_GROUP = "icl.architectures"
"""The entry-point group in which an installed package publishes networks for ``--arch``:
``[project.entry-points."icl.architectures"] my-net = "my_nets:build"``."""


class ConfigError(StepError, ValueError):
    """A setting out of its range, named by the flag that sets it (one line; exit 3)."""


def config_hash(d: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``d``, first 16 hex digits: the store's one
    definition, imported on first use (``store`` pulls in SQLAlchemy, which a config does
    not otherwise need)."""
    from store.hashing import config_hash as store_hash

    return store_hash(d)


# Range rules, checked by each config on itself: field -> (lowest allowed, strict?).
# ``None`` values (an option left unset, an optional lever off) are not checked.
Rule = tuple[float, bool]
POSITIVE: Rule = (0, True)
NON_NEGATIVE: Rule = (0, False)
AT_LEAST_ONE: Rule = (1, False)


class _Config:
    """Mixin: self-checks, a plain-dict round trip and a stable hash.

    A subclass lists ``RULES`` (numeric ranges) and ``CHOICES`` (allowed strings) for its
    fields; ``__post_init__`` refuses a value outside them (and NaN or inf anywhere) with
    a :class:`ConfigError` naming the command-line flag, e.g. ``--lr is out of range (0)``.
    """

    FLAGS: dict[str, str] = {}  # field -> the command-line flag that sets it, where not --name
    RULES: dict[str, Rule] = {}
    CHOICES: dict[str, tuple[str, ...]] = {}

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def flag(cls, name: str) -> str:
        return cls.FLAGS.get(name, "--" + name.replace("_", "-"))

    def _check(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            self.check_field(f.name, getattr(self, f.name))

    @classmethod
    def check_field(cls, name: str, value: Any) -> None:
        """Refuse ``value`` for field ``name`` if it breaks the class's rules."""
        if value is None or isinstance(value, bool):
            return
        flag = cls.flag(name)
        if isinstance(value, float) and not math.isfinite(value):
            # NaN would train or sample garbage, and print as non-JSON ``NaN``.
            raise ConfigError(f"{flag} must be a finite number, got {value}")
        choices = cls.CHOICES.get(name)
        if choices is not None and value not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        rule = cls.RULES.get(name)
        if rule is not None:
            low, strict = rule
            if not (value > low if strict else value >= low):
                raise ConfigError(f"{flag} is out of range ({value})")
        if name == "count" and value < 1:  # (the sampler's l)
            raise ConfigError(f"{flag} must be a positive number of samples per class, "
                              f"got {value}")

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
    ``fake-svhn`` (random data of the right shape, for smoke tests), ``imagefolder`` (a
    folder ``root`` with ``train/<class>/`` and ``test/<class>/`` images), ``npz`` (a
    file ``root`` holding ``x_train, y_train, x_test, y_test``) or ``hf`` (a Hugging Face
    ``DatasetDict`` saved in ``root`` with ``save_to_disk``, train and test splits: the
    optional ``datasets`` package); see ``icl_cli.data``.
    image_size: imagefolder, npz and hf only: resize every image to N x N (None: as
    stored, all of one size).
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
    image_size: int | None = None

    RULES = {"train_size": AT_LEAST_ONE, "val_size": NON_NEGATIVE, "image_size": AT_LEAST_ONE}
    CHOICES = {"dataset": DATASETS}
    FLAGS = {"seed": "--data-seed", "root": "--data-root"}

    def __post_init__(self) -> None:
        self._check()
        if self.image_size is not None and self.dataset not in USER_DATASETS:
            raise ConfigError(f"--image-size resizes --dataset {' or '.join(USER_DATASETS)}, "
                              f"not {self.dataset}")


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Network by name; ``mode`` picks softmax (one net, K logits) or one-vs-all (K
    one-logit nets, trained and sampled together).

    arch: a built-in name (``BUILTIN_ARCHS``), ``module.path:factory``, a name an installed
    package publishes in ``ARCH_GROUP``, or ``timm:NAME`` (``icl_cli.models.resolve_arch``;
    checked by ``icl init``, which needs torch: reading a config stays torch-free).
    source: what ``icl init`` recorded of a user's network's code (``models.arch_source``:
    a file's sha256, a package's version); None for a built-in network.
    """

    arch: str = "mnist-cnn"
    mode: Mode = "softmax"
    source: str | None = None

    CHOICES = {"mode": MODES}


def installed_architectures() -> list[str]:
    """The ``--arch`` names installed packages publish in the entry-point group
    ``icl.architectures``, sorted (a built-in name wins over a published one).

    Read from the ``entry_points.txt`` of every distribution on ``sys.path``, the files
    ``importlib.metadata`` reads, without importing it or torch: ``icl --help`` lists them
    for a few milliseconds."""
    names: set[str] = set()
    for folder in sys.path:
        try:
            entries = os.scandir(folder or ".")
        except OSError:
            continue
        with entries:
            for entry in entries:
                if not entry.name.endswith((".dist-info", ".egg-info")):
                    continue
                try:
                    with open(os.path.join(entry.path, "entry_points.txt"),
                              encoding="utf-8") as f:
                        names.update(_group_names(f.read(), ARCH_GROUP))
                except (OSError, UnicodeDecodeError):
                    continue
    return sorted(names - set(BUILTIN_ARCHS))


def _group_names(text: str, group: str) -> list[str]:
    """The entry-point names of ``[group]`` in an ``entry_points.txt`` (INI layout)."""
    names, inside = [], False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == group
        elif inside and "=" in line and not line.startswith(("#", ";")):
            names.append(line.split("=", 1)[0].strip())
    return names


def arch_help() -> str:
    """``icl init --arch``'s help: the built-in networks, the installed ones, the forms
    a user's network takes."""
    installed = installed_architectures()
    listed = ", ".join(BUILTIN_ARCHS) + (f"; installed: {', '.join(installed)}"
                                         if installed else "")
    return (f"{listed}; or your own: module.path:factory, called as factory(input_shape=(C, "
            "H, W), num_outputs=K) and returning an nn.Module that maps (B, C, H, W) to (B, "
            "K) logits (the module found as python -m finds it: the current folder, then "
            "PYTHONPATH); timm:NAME (pip install 'icl-toolkit[timm]'; timm:NAME@FILE for "
            "local weights, nothing downloads). With --mode ova your own network is built K "
            "times (K one-logit networks: K times the parameters and the cost).")


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
    over the batch's pseudo-negatives, which makes one pseudo-negative weigh B / P images)
    or ``drawn`` (the authors' batches: each real batch of B images joined by B pseudo-
    negatives drawn with replacement, per network in one-vs-all; mean cross-entropy + w *
    mean softplus over the drawn rows, so the pool is half of every batch at any size).
    pn_recency: ``drawn`` only: round t of the pool is drawn with weight r^(newest - t),
    normalised over the rounds present (0.5: the newest half of the draws, the one before
    a quarter, ..., as the authors' INN code; 1: every round alike).
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
    pn_recency: float = 0.5
    clip_grad: float | None = None
    max_batch: int | None = None

    RULES = {"epochs": NON_NEGATIVE, "real_epochs": NON_NEGATIVE, "batch_size": POSITIVE,
             "lr": POSITIVE, "momentum": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
             "decay_round": NON_NEGATIVE, "decay_factor": POSITIVE,
             "pn_weight": NON_NEGATIVE, "pn_recency": POSITIVE, "clip_grad": NON_NEGATIVE,
             "max_batch": POSITIVE}
    CHOICES = {"pn_weighting": PN_WEIGHTINGS}

    @classmethod
    def check_field(cls, name: str, value: Any) -> None:
        super().check_field(name, value)
        if name == "pn_recency" and value is not None and value > 1:
            raise ConfigError(f"--pn-recency must be in (0, 1] (1: every round alike), "
                              f"got {value}")

    def __post_init__(self) -> None:
        self._check()
        if self.epochs + self.real_epochs < 1:
            raise ConfigError("--epochs and --real-epochs are both 0: a round would not train")

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
    RULES = {"lr": POSITIVE, "beta1": NON_NEGATIVE, "beta2": NON_NEGATIVE,
             "max_steps": NON_NEGATIVE, "reference_std": POSITIVE,
             "langevin_std": NON_NEGATIVE, "check_every": AT_LEAST_ONE}
    CHOICES = {"kind": SAMPLER_KINDS, "stop_rule": STOP_RULES}



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

    RULES = {"init_epochs": AT_LEAST_ONE}
    CHOICES = {"method": METHODS}
    # (data, model, train and sampler checked themselves when they were built)


_NESTED = {
    ("ExperimentConfig", "data"): DataConfig,
    ("ExperimentConfig", "model"): ModelConfig,
    ("ExperimentConfig", "train"): TrainConfig,
    ("ExperimentConfig", "sampler"): SamplerConfig,
}


class _Changes:
    """One round's settings given on the command line (``None``: the experiment's own).

    Each given value is checked as the full config checks that field, with the same flag
    and message; ``apply`` checks the combination again (``--epochs 0`` is fine only with
    real-data epochs).
    """

    TARGET: ClassVar[type[_Config]]

    def __post_init__(self) -> None:
        for name, value in self.given().items():
            self.TARGET.check_field(name, value)

    def given(self) -> dict[str, Any]:
        """The options that were set, e.g. ``{"epochs": 1}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if getattr(self, f.name) is not None}

    def apply(self, base):
        """``base`` (the experiment's config of this step) with these changes."""
        return base.replace(**self.given())


@dataclass(frozen=True)
class TrainChanges(_Changes):
    """``icl reclassify`` / ``icl run`` options that change one round's reclassification."""

    epochs: int | None = None
    real_epochs: int | None = None
    lr: float | None = None
    pn_weight: float | None = None
    pn_weighting: str | None = None
    pn_recency: float | None = None
    clip_grad: float | None = None
    weight_decay: float | None = None
    max_batch: int | None = None

    TARGET: ClassVar[type[_Config]] = TrainConfig


@dataclass(frozen=True)
class SamplerChanges(_Changes):
    """``icl synthesize`` / ``icl run`` options that change one round's sampler."""

    count: int | None = None
    max_steps: int | None = None
    lr: float | None = None  # --sampler-lr
    reference_std: float | None = None
    stop_rule: str | None = None
    langevin_std: float | None = None
    clamp: bool | None = None
    check_every: int | None = None

    TARGET: ClassVar[type[_Config]] = SamplerConfig


# ------------------------------------------------------- the sampler's batch in memory
# Synthesis takes Adam steps on all K * count samples at once (steps.draw.draw), so
# its memory grows with --count; a batch that cannot fit is refused before any work.
# Measured peak on CPU per MNIST sample (float32, 784 values, 3 KiB): tiny 53 KiB,
# mnist-cnn 290 KiB; about 10 copies of the input (the start, the results, the active
# batch, Adam's two moments, the gradient, temporaries, the arrays written) plus 1.3 times
# the network's activations (kept for the backward pass). The rule takes 1.5 times.
INPUT_COPIES = 10
ACTIVATION_FACTOR = 1.5


ROUND_COPIES = 4
"""Copies of a whole round's samples held while it is drawn in blocks (its starting
points, the samples, the shard's arrays; measured 2.3 a sample: tiny, 50,000 samples)."""


def sampler_bytes(samples: int, input_bytes: int, activation_bytes: int,
                  block: int | None = None) -> int:
    """Estimated peak bytes of synthesising ``samples``, each ``input_bytes`` large,
    through a network whose activations for one sample take ``activation_bytes``: a batch
    of ``block`` samples at a time (None: all at once) works through the network, and the
    whole round's samples are held beside it.

    Example:
        >>> sampler_bytes(10, 3136, 18984)  # tiny on MNIST: ~59 KiB a sample
        723800
        >>> sampler_bytes(1000, 3136, 18984, block=256)  # blocks: ~27 KiB a sample
        27862016
    """
    batch = samples if block is None else min(samples, block)
    per = INPUT_COPIES * input_bytes + ACTIVATION_FACTOR * activation_bytes
    return int(batch * per + samples * ROUND_COPIES * input_bytes)


def activation_bytes(model, shape: tuple[int, ...], heads_alone: bool) -> int:
    """Bytes of every leaf module's output for one sample of ``shape`` (float32), i.e.
    what a forward pass keeps for the backward; ``heads_alone``: a one-vs-all sampler
    runs network k alone on a sample of class k (1/heads of the full forward)."""
    import torch

    sizes: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(
        lambda _m, _i, out: sizes.append(out.numel() * out.element_size())
        if torch.is_tensor(out) else None) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    heads = getattr(model, "heads", 1)
    return sum(sizes) // (heads if heads_alone and heads > 1 else 1)


def available_memory(device) -> tuple[int | None, str]:
    """(bytes a new batch may take on ``device``, where the figure comes from): the GPU's
    free memory, else MemAvailable of /proc/meminfo, else the free physical pages."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0]), f"free on {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free memory"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def check_sampler_fits(sc: SamplerConfig, make_model, num_classes: int,
                       shape: tuple[int, ...], device, arch: str,
                       block: int | None = None) -> None:
    """Refuse (ConfigError, exit 3) a ``--count`` whose synthesis would not fit in the
    memory available on ``device`` now, by the estimate of :func:`sampler_bytes` (batches
    of ``block`` samples, the round's size by default).
    ``make_model()`` builds the network (on the CPU; torch's global RNG is left as it
    was, so nothing downstream draws other numbers)."""
    import math

    import torch

    samples = num_classes * sc.count
    act = 0
    if sc.kind != "noise":
        with torch.random.fork_rng(devices=[]):
            act = activation_bytes(make_model(), shape, heads_alone=sc.stop_rule != "argmax")
    need = sampler_bytes(samples, 4 * math.prod(shape), act, block)
    have, source = available_memory(device)
    if have is None or need <= have:
        return
    per = need / samples / 1024
    raise ConfigError(
        f"--count {sc.count} does not fit in memory: synthesis of {samples} samples "
        f"takes about {need / 2**30:.1f} GiB ({per:.0f} KiB a sample for {arch}, "
        f"estimated), and {have / 2**30:.1f} GiB is available ({source}); use a smaller "
        f"--count (at most about {sc.count * have // need})")
