"""What every step needs: the run-time settings, data, models from checkpoints, seeds.

Steps orchestrate: they read from the store, call pure tensor code in ``icl_cli.algo``,
write back through the store, and return a plain result dataclass for the CLI to render.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from icl_cli.config import DataConfig, ExperimentConfig
from icl_cli.data import CACHED_DATASETS, Dataset, load, to_input
from icl_cli.errors import StepError
from icl_cli.models import build_model

if TYPE_CHECKING:
    from store import Store

Advance = Callable[[int], None]


class Progress:
    """Progress reporting seen by steps; the CLI passes a rich implementation."""

    def task(self, description: str, total: int | None) -> Advance:
        return lambda n: None

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class Runtime:
    """Settings that change how fast a step runs, not what it computes (on one device).

    device: ``auto`` (cuda when available), ``cpu`` or ``cuda``. threads: torch CPU threads
    (None: leave torch's default). amp: bf16 autocast for synthesis and reclassification.
    compile, channels_last: the network that reclassifies and samples compiled by
    ``torch.compile``, laid out channels_last (``prepare``; both change floating-point
    order only, ``icl_cli.algo.prepare``).
    """

    device: str = "auto"
    threads: int | None = None
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    mlflow: bool = True
    progress: Progress = field(default_factory=Progress, compare=False)
    # The command line as given (after ``icl``): what torchrun's ranks state first, with
    # what their step resolved it to (``join_ranks``).
    command: tuple[str, ...] = field(default=(), compare=False)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise StepError("--device cuda asked for, but torch sees no CUDA GPU here; "
                            "use --device cpu")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise StepError(f"unknown device {self.device!r} (choose auto, cpu or cuda)")
        return torch.device(self.device)

    def apply(self) -> torch.device:
        """Check and apply these settings; the device the step runs on (also what this
        process's step records say it ran on, ``step_environment``)."""
        if self.threads is not None and self.threads < 1:
            raise StepError(f"--threads must be >= 1, got {self.threads}")
        cores = os.cpu_count() or 1
        if self.threads is not None and self.threads > 4 * cores:
            raise StepError(f"--threads {self.threads} is more than 4 per core of this "
                            f"machine ({cores} cores)")
        device = self.torch_device()
        if self.threads:
            torch.set_num_threads(self.threads)
        if device.type == "cpu":  # a CPU loop's memory stays mapped from step to step
            from icl_cli.algo.heap import steady_heap

            steady_heap()  # once a process; later calls return at once
        _applied[:] = [str(device), self.compile, self.channels_last]
        return device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.amp else None

    def prepare(self, model: nn.Module, compile: bool | None = None,
                channels_last: bool | None = None) -> nn.Module:
        """``model`` (on its device) made ready to train or sample with these settings'
        ``compile`` and ``channels_last`` (or the ones given: a replay's, as recorded), in
        place: the same parameters and state_dict keys (``icl_cli.algo.prepare``)."""
        from icl_cli.algo.prepare import prepare

        return prepare(model, compile=self.compile if compile is None else compile,
                       channels_last=self.channels_last if channels_last is None
                       else channels_last)


# --- when a step's work starts: for the benchmarks ---------------------------------
WORK_START_ENV = "ICL_MARK_WORK_START"
"""Set to a file name, every step appends one line ``<what> <wall-clock seconds> <CPU
seconds of this process>`` to it at the moment its work starts: after the imports, the
workspace and catalog, the checkpoint and the data, right before the sampler's or the
training loop's first step, or the first forward pass of a measurement
(``benchmarks.fixed_cost`` reads it). Unset: nothing."""


def mark_work_start(what: str) -> None:
    """Append ``what``, the wall-clock time and this process's CPU time so far to
    ``$ICL_MARK_WORK_START``, if set."""
    path = os.environ.get(WORK_START_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{what} {time.time():.6f} {time.process_time():.6f}\n")


class MarkedProgress(Progress):
    """``progress``, with ``mark_work_start(what)`` at its first task: a step opens its
    first progress bar when its loop starts, after everything it loads."""

    def __init__(self, progress: Progress, what: str) -> None:
        self._progress, self._what, self._marked = progress, what, False

    def task(self, description: str, total: int | None) -> Advance:
        if not self._marked:
            self._marked = True
            mark_work_start(self._what)
        return self._progress.task(description, total)

    def done(self) -> None:
        self._progress.done()


def marked(runtime: Runtime, what: str) -> Runtime:
    """``runtime`` whose progress marks the start of the work (``MarkedProgress``) when
    ``$ICL_MARK_WORK_START`` is set; ``runtime`` itself otherwise."""
    if not os.environ.get(WORK_START_ENV):
        return runtime
    return replace(runtime, progress=MarkedProgress(runtime.progress, what))


# --- MLflow after the catalog -------------------------------------------------------
class Deferred:
    """A tracker's calls (``log_metrics``, ``log_params``, ``log_artifact``) held until
    ``replay(tracker)`` makes them. A step logs into one while it works and replays it
    once its result is recorded in the catalog: MLflow's import and its database (seconds
    a process) come after the work and its record, never before the work starts."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def log_metrics(self, metrics, step: int) -> None:
        self.calls.append(("log_metrics", (dict(metrics), step)))

    def log_params(self, params) -> None:
        self.calls.append(("log_params", (params,)))

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self.calls.append(("log_artifact", (path, artifact_path)))

    def replay(self, tracker) -> None:
        """Make the held calls on ``tracker`` (a store tracker), in order."""
        for name, args in self.calls:
            getattr(tracker, name)(*args)
        self.calls.clear()


# --- where a step ran: recorded with each step (the catalog's steps.environment) -------
_applied: list[Any] = []  # [device, compile, channels_last] of this process's last
# Runtime.apply()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """This machine's CPU model, e.g. "AMD EPYC 7763 64-Core Processor" (Linux: the
    ``model name`` of /proc/cpuinfo; elsewhere what ``platform`` says)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def determinism() -> dict[str, Any]:
    """The settings that decide whether a step's numbers come out bit for bit the same
    (torch's deterministic algorithms, cuDNN's choices, TF32, cuBLAS's workspace)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def step_environment(config: dict[str, Any]) -> dict[str, Any]:
    """Where a step with ``config`` runs: its device (the config's ``device``, else this
    process's last ``Runtime.apply()``, else cpu) and that device's model (the GPU's name
    for a CUDA device, the CPU's otherwise), the CPU model, the GPU models, icl's, torch's
    and Python's versions, the platform, torch's CPU threads, ``determinism()`` and the
    runtime options that change floating-point order only (``compile``, ``channels_last``:
    ``prepared_with``). Kept with every step this process records
    (``store.steplog.describe_steps_with``)."""
    import platform

    from icl_cli import __version__

    device = str(config.get("device") or (_applied[0] if _applied else "cpu"))
    gpus = []
    for name in dict.fromkeys(d.strip() for d in device.split(",")):
        if name.startswith("cuda") and torch.cuda.is_available():
            gpus.append(torch.cuda.get_device_name(torch.device(name)))
    return {"device": device, "device_model": ", ".join(gpus) or cpu_model(),
            "cpu_model": cpu_model(), "gpu_model": ", ".join(gpus) or None,
            "icl": __version__, "torch": torch.__version__,
            "cuda": torch.version.cuda if gpus else None,
            "python": platform.python_version(), "platform": platform.platform(),
            "threads": torch.get_num_threads(), "determinism": determinism(),
            **prepared_with(config)}


def prepared_with(config: dict[str, Any]) -> dict[str, bool]:
    """``compile`` and ``channels_last`` of a step with ``config``: as its config records
    them where it records what its network ran with (a checkpoint's ``inputs``, a shard's
    ``sampler`` settings, a part's ``plan``: a replay's are the record's), else this
    process's last ``Runtime.apply()``'s (False before any)."""
    plan = config.get("plan")
    for made in (config.get("inputs"), config.get("sampler"),
                 plan.get("sampler") if isinstance(plan, dict) else None):
        if isinstance(made, dict):
            return {k: bool(made.get(k, False)) for k in ("compile", "channels_last")}
    return {"compile": bool(_applied[1]) if _applied else False,
            "channels_last": bool(_applied[2]) if _applied else False}


def _describe_steps() -> None:
    from store.steplog import describe_steps_with

    describe_steps_with(step_environment)


_describe_steps()  # every step module imports this one: each step it records says where


def join_ranks(runtime: Runtime, identity: Callable[[], dict[str, Any]] | None = None):
    """``runtime.apply()``, then, under torchrun, its process group joined (gloo on CPU,
    nccl on CUDA): (``distributed.World``, this rank's device). Every step that may run
    on several ranks calls it before its first collective, so that rank 0's lock and
    writes and the others' waits line up (``icl_cli.distributed``). First the ranks agree
    on what they run: the command line and ``identity()`` (the step, workspace,
    experiment, round, settings and inputs' hashes it resolved), or they all fail in one
    line (``distributed.handshake``)."""
    from icl_cli import distributed

    def stated() -> dict[str, Any]:
        return {"command": list(runtime.command), **(identity() if identity else {})}

    return distributed.join(runtime.apply(), stated)


def workspace_identity(store: Store) -> str:
    """What names a workspace for ranks that must agree on it: its id (``.icl/
    workspace-id``), else its folder."""
    return store.workspace_id or str(store.root)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS. glibc keeps freed tensors in its heap: an
    ``icl run`` process grew ~44 MiB per round without this (BENCHMARKS.md, Memory)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of plain values: independent streams per purpose."""
    blob = repr(parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def generator(*parts: Any, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


@lru_cache(maxsize=2)
def _load_cached(cfg: DataConfig, root: str | None = None) -> Dataset:
    from store.datacache import DataCache

    return load(cfg, DataCache(root) if root is not None else None)


def dataset(cfg: ExperimentConfig, store=None) -> Dataset:
    """The experiment's data (cached per process: ``icl run`` loads it once); with
    ``store``, a folder of images is decoded once and kept in its workspace (.icl/data)."""
    cached = store is not None and cfg.data.dataset in CACHED_DATASETS
    return _load_cached(cfg.data, str(store.root) if cached else None)


def experiment_data(exp, store=None) -> Dataset:
    """The data of experiment ``exp`` (a store ExperimentInfo), checked against the
    fingerprint recorded at ``icl init``: if the images under it changed (a data folder
    edited or replaced), the step refuses instead of training or scoring on other data.
    ``store``: the workspace that keeps a decoded image folder (``dataset``)."""
    from store import IntegrityError

    cfg = ExperimentConfig.from_dict(exp.config)
    data = dataset(cfg, store)
    if exp.data_fingerprint and data.fingerprint != exp.data_fingerprint:
        where = f" in {cfg.data.root}" if cfg.data.root else ""
        raise IntegrityError(
            f"the data of experiment '{exp.name}' changed since it was made ({cfg.data.dataset}"
            f"{where}: data fingerprint {exp.data_fingerprint[:12]}, now "
            f"{data.fingerprint[:12]}); restore those files, or start a new experiment")
    return data


def new_model(cfg: ExperimentConfig, data: Dataset) -> nn.Module:
    torch.manual_seed(derive_seed("init-weights", cfg.seed))
    return build_model(cfg.model.arch, data.shape, data.num_classes, cfg.model.mode)


def load_weights(model: nn.Module, store: Store, info, device: torch.device | str = "cpu"
                 ) -> dict:
    """Load checkpoint ``info`` (hash-checked by the store) into ``model``; a state that
    does not fit the experiment's architecture is refused with one line naming the file.
    Returns the checkpoint's state dict."""
    from store import IntegrityError
    from store.artifacts import checkpoint_fix

    state = store.load_checkpoint(info, map_location=device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise IntegrityError(
            f"checkpoint {store.rel(info.path)} does not fit this experiment's network "
            f"({first}): {checkpoint_fix(info.experiment, info.round)}") from None
    return state


def real_tensors(data: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images as stored (uint8) and labels, on ``device``."""
    return data.train.images.to(device), data.train.labels.to(device)


def inputs(images: torch.Tensor, device: torch.device, batch: int = 4096) -> torch.Tensor:
    """Stored images -> network inputs in [-1, 1] on ``device``."""
    return torch.cat([to_input(b.to(device)) for b in images.split(batch)])
