"""icl as a Python library, for notebooks and scripts: the step functions the ``icl``
command line calls, behind one :class:`Workspace` object, with the same settings, the same
results (the documents ``--json`` prints, as plain dicts and lists) and typed exceptions
in place of exit codes.

Nothing here is a second implementation: ``Workspace.init`` calls
``steps.init.init_experiment`` as ``icl init`` does, ``run`` calls ``steps.run.run_rounds``,
and so on; a checkpoint loads through the store (hash-checked, ``weights_only=True``).

Example:
    >>> from icl_cli.api import Workspace                            # doctest: +SKIP
    >>> with Workspace("ws", device="cpu", mlflow=False) as ws:
    ...     ws.init("icl", arch="tiny", train_size=200, init_epochs=1)
    ...     rows = ws.run("icl", rounds=2)
    ...     net = ws.load_model("icl", round=2)       # an nn.Module in eval mode
    ...     samples, target = ws.pseudo_negatives("icl", round=2)

Errors (each an :class:`IclError` with the one-line message the command line prints, and
``exit_code``, the code ``icl`` exits with for it)::

    IclError                   anything icl refuses or cannot do (exit_code 1: internal)
      Refused                  a bad request: wrong round, missing step, bad option (3)
        NotFound               no such experiment, checkpoint or shard (3)
        Conflict               done before with other settings or inputs: force=True (3)
        InvalidSetting         a setting out of its range or choices (3)
        DataError              the data cannot be read or is not what it should be (3)
        Diverged               a round's training diverged; nothing was saved (3)
      IntegrityFailure         a shard, checkpoint or the catalog failed its checks (4)
      Busy                     another process runs a step of the experiment (5)
      NotAWorkspace            no workspace at or above the folder (6)
      DiskFull                 no space left on the workspace's device (7)

Ctrl-C stays a ``KeyboardInterrupt``; as on the command line, the step is rolled back.
Messages name the command line's options (``--force``, ``--round``), whose keyword
arguments here have the same names (``force=True``, ``round=``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from icl_cli.steps.common import Progress
    from store import Store

__all__ = [
    "Busy", "Conflict", "DataError", "DiskFull", "Diverged", "IclError", "IntegrityFailure",
    "InvalidSetting", "NotAWorkspace", "NotFound", "Refused", "Workspace", "open_workspace",
]


# --------------------------------------------------------------------- errors
class IclError(Exception):
    """Base of every error this API raises: ``str(error)`` is the line ``icl`` prints,
    ``exit_code`` the code it exits with, ``__cause__`` the step's own exception."""

    exit_code = 1


class Refused(IclError):
    """A bad request: a wrong round, a step whose input is missing, a bad option value."""

    exit_code = 3


class NotFound(Refused):
    """No such experiment (the message lists the known ones), checkpoint or shard."""


class Conflict(Refused):
    """An experiment or artefact exists with other settings or inputs (``force=True``
    redoes a step; another name makes another experiment)."""


class InvalidSetting(Refused, ValueError):
    """A setting out of its range or choices, named by its option (``--lr``)."""


class DataError(Refused, ValueError):
    """The data cannot be read, or is not what the experiment was made with."""


class Diverged(Refused):
    """A round's training loss stopped being finite; nothing was saved. ``round``: the
    round; ``detail``: the loss and epoch (``Workspace.run(recover=N)`` retries)."""

    def __init__(self, message: str, round_: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.round, self.detail = round_, detail


class IntegrityFailure(IclError):
    """A shard, checkpoint or the catalog failed its checks (altered, truncated, missing)."""

    exit_code = 4


class Busy(IclError):
    """Another process holds the experiment's lock (runs a step of it)."""

    exit_code = 5


class NotAWorkspace(IclError):
    """No icl workspace at (or above) the folder."""

    exit_code = 6


class DiskFull(IclError):
    """No space left on the workspace's device (free some, run again: it resumes)."""

    exit_code = 7


def translate(exc: BaseException) -> IclError | None:
    """The API's error for an exception a step or the store raised (None: not one of
    theirs, let it through). ``icl`` prints its line and exits with its ``exit_code``
    (``icl_cli.cli.main.user_errors`` calls this), so both speak alike."""
    from icl_cli.config import ConfigError
    from icl_cli.errors import DataError as StepDataError
    from icl_cli.errors import StepError
    from store import (
        BusyError,
        ConflictError,
        ExperimentNotFound,
        IntegrityError,
        StoreError,
    )
    from store import NotAWorkspace as NoWorkspace
    from store.workspace import DiskFull as NoSpace
    from store.workspace import no_space

    line = " ".join(str(exc).split())
    diverged = getattr(sys.modules.get("icl_cli.steps.reclassify"), "TrainingDiverged", ())
    if isinstance(exc, IclError | KeyboardInterrupt):
        return None
    if isinstance(exc, NoWorkspace):
        return NotAWorkspace(line)
    if isinstance(exc, BusyError):
        return Busy(line)
    if isinstance(exc, IntegrityError):
        return IntegrityFailure(line)
    if isinstance(exc, NoSpace):
        return DiskFull(line)
    if isinstance(exc, ExperimentNotFound):
        return NotFound(line)
    if isinstance(exc, ConflictError):
        return Conflict(line)
    if diverged and isinstance(exc, diverged):
        return Diverged(line, exc.round, exc.detail)
    if isinstance(exc, ConfigError):
        return InvalidSetting(line)
    if isinstance(exc, StepDataError):
        return DataError(line)
    if isinstance(exc, StepError | StoreError):
        # The steps refuse a redo with other settings or inputs by asking for --force.
        return Conflict(line) if "--force" in line else Refused(line)
    if isinstance(exc, OSError):
        full = no_space(None, exc)
        if full is not None:
            return DiskFull(" ".join(str(full).split()))
        return Refused(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    return None


@contextmanager
def errors() -> Iterator[None]:
    """Raise the API's typed error (``translate``) for a step's or the store's, chained."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


# ------------------------------------------------------------------ documents
def document(obj: Any) -> Any:
    """A step's result as the document ``icl ... --json`` prints, as plain Python
    (dataclasses as dicts, keys as strings, NaN and infinities as None, the rest as
    JSON reads it back)."""
    return json.loads(json.dumps(_plain(obj), default=str, allow_nan=False))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------- settings
def init_settings() -> dict[str, tuple[str | None, str]]:
    """``Workspace.init``'s keyword settings, each ``icl init``'s option of the same name
    (``train_size`` is ``--train-size``), and the config field it sets: ``{"train_size":
    ("data", "train_size"), "sampler_lr": ("sampler", "lr"), ...}``."""
    from icl_cli.card import INIT_SETTINGS, init_option

    return {init_option(g, f)[2:].replace("-", "_"): (g, f) for g, f in INIT_SETTINGS}


def _overrides(config: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``icl init``'s config overrides from a config (an ExperimentConfig, or a nested
    dict of overrides) and keyword settings; as with ``icl init``, the method is icl
    unless given, and ``seed`` also seeds the data unless ``data_seed`` is given."""
    known = init_settings()
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TypeError(f"init() got unknown settings {', '.join(unknown)}; known: "
                        f"{', '.join(known)} (or config=)")
    out: dict[str, Any] = {}
    if config is not None:
        base = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        for key, value in base.items():
            out[key] = dict(value) if isinstance(value, dict) else value
        if isinstance(out.get("model"), dict):
            out["model"].pop("source", None)  # recorded by init itself
    out.setdefault("method", "icl")  # icl init's --method default, also with --from
    given = {k: v for k, v in settings.items() if v is not None}
    if "seed" in given and "data_seed" not in given:
        given["data_seed"] = given["seed"]
    for key, value in given.items():
        group, field = known[key]
        if key == "data_root":
            value = str(Path(value).expanduser().resolve())
        if group is None:
            out[field] = value
        else:
            out.setdefault(group, {})[field] = value
    return out


def _changes(kind: type, given: dict[str, Any], renamed: dict[str, str] | None = None):
    """``kind`` (TrainChanges, SamplerChanges) from keyword settings named as the
    command's options (``renamed``: option name -> field, e.g. sampler_lr -> lr)."""
    renamed = renamed or {}
    fields = {f.name for f in dataclasses.fields(kind)}
    values = {renamed.get(k, k): v for k, v in given.items()}
    unknown = sorted(k for k, v in given.items() if renamed.get(k, k) not in fields)
    if unknown:
        names = sorted({*(k for k in fields if k not in renamed.values()), *renamed})
        raise TypeError(f"unknown settings {', '.join(unknown)}; known: {', '.join(names)}")
    return kind(**values)


# ------------------------------------------------------------------ workspace
class Workspace:
    """An icl workspace (a folder, as ``icl -w FOLDER``), for use from Python.

    ``path``: the workspace's folder, as ``-w`` takes it (None: ``$ICL_WORKSPACE``, else
    the current folder or the nearest parent holding one). Nothing is opened or
    written until a method needs it: ``init`` makes the workspace if there is none (as
    ``icl init`` does), every other method needs one (``NotAWorkspace``).

    ``device`` (auto, cpu, cuda), ``threads``, ``amp``, ``compile``, ``channels_last`` and
    ``mlflow`` are the runtime options every step command takes (``--device``,
    ``--threads``, ``--amp``, ``--compile``, ``--channels-last``, ``--no-mlflow``);
    ``progress``: a ``steps.common.Progress`` (default: silent).
    Use it as a context manager, or ``close()`` it.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, device: str = "auto",
                 threads: int | None = None, amp: bool = False, compile: bool = False,
                 channels_last: bool = False, mlflow: bool = True,
                 progress: Progress | None = None) -> None:
        self.path = None if path is None else Path(path).expanduser()
        self.device, self.threads, self.amp, self.mlflow = device, threads, amp, mlflow
        self.compile, self.channels_last = compile, channels_last
        self.progress = progress
        self._store: Store | None = None

    # ------------------------------------------------------------ plumbing
    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._store.root if self._store is not None else self.path or "(found)"
        return f"Workspace({str(where)!r})"

    def close(self) -> None:
        """Close the catalog (the workspace opens again on the next call)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> Store:
        """The workspace's ``store.Store`` (what the steps use; opened on first use)."""
        if self._store is None:
            from store import Store
            from store.workspace import find_workspace

            with errors():
                self._store = Store.open(find_workspace(self.path))
        return self._store

    @property
    def root(self) -> Path:
        """The workspace's folder."""
        return self.store.root

    def runtime(self, command: tuple[str, ...] = ()):
        """The steps' ``Runtime`` of this workspace's runtime options."""
        from icl_cli.steps.common import Progress, Runtime

        return Runtime(device=self.device, threads=self.threads, amp=self.amp,
                       compile=self.compile, channels_last=self.channels_last,
                       mlflow=self.mlflow, progress=self.progress or Progress(),
                       command=command)

    def _create(self) -> Store:
        """The workspace, made at ``path`` if it is none yet (``icl init``'s rule: without
        a path, the enclosing workspace, else the current folder)."""
        if self._store is None:
            from store import NotAWorkspace as NoWorkspace
            from store import Store
            from store.workspace import find_workspace

            where = self.path
            if where is None:
                try:
                    where = find_workspace(None)
                except NoWorkspace:
                    where = Path.cwd()
            self._store = Store.init(Path(where).resolve())
        return self._store

    # ------------------------------------------------------------- reading
    def experiments(self) -> list[str]:
        """The experiments' names, oldest first."""
        with errors():
            return [e.name for e in self.store.experiments()]

    def experiment(self, name: str | None = None) -> dict[str, Any]:
        """An experiment's record: name, method, config, config_hash, parent,
        parent_round, data_fingerprint... (None: the only one, or the latest)."""
        with errors():
            return document(self.store.experiment(name))

    def report(self) -> list[dict[str, Any]]:
        """``icl report --json``: one row per experiment (errors per round, best round on
        validation, attacks, diagnostics, recovery...)."""
        from icl_cli.steps.report import experiment_rows

        with errors():
            return document(experiment_rows(self.store))

    def status(self) -> dict[str, Any]:
        """``icl status --json``: the experiments and the 5 most recent steps."""
        from icl_cli.steps.report import experiment_rows

        with errors():
            return document({"workspace": str(self.store.root),
                             "experiments": experiment_rows(self.store),
                             "recent_steps": self.store.steps(last=5)})

    def card(self, name: str | None = None, write: bool = True) -> dict[str, Any]:
        """Experiment ``name``'s reproducibility card (``icl report --card``), written as
        ``cards/<name>.md`` and ``cards/<name>.json`` in the workspace unless ``write`` is
        False; the card's JSON document."""
        from icl_cli.card import experiment_card, write_cards

        with errors():
            exp = self.store.experiment(name).name
            if write:
                write_cards(self.store, [exp])
            return document(experiment_card(self.store, exp))

    def load_model(self, name: str | None = None, round: int = 0, *,
                   device: str | None = "cpu") -> nn.Module:
        """Round ``round``'s checkpoint of experiment ``name`` as the experiment's network
        (an ``nn.Module`` in eval mode, on ``device``; None: the workspace's device),
        its file hash-checked and loaded with ``weights_only=True``."""
        import torch

        from icl_cli.steps.evaluate import load_model

        with errors():
            exp = self.store.experiment(name)
            if self.store.checkpoint(exp.name, round) is None:
                have = [c.round for c in self.store.checkpoints(exp.name)]
                raise NotFound(f"experiment '{exp.name}' has no checkpoint of round {round} "
                               f"(rounds with one: {', '.join(map(str, have)) or 'none'})")
            where = torch.device(device) if device else self.runtime().apply()
            return load_model(self.store, exp.name, round, where)[1]

    def pseudo_negatives(self, name: str | None = None, round: int = 1,
                         version: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Round ``round``'s pseudo-negatives (its active shard, or ``version``), as
        tensors: samples (N, C, H, W) float32 in the network's input scale [-1, 1], and
        the class k each was drawn for (N,) int64. The file is hash-checked."""
        import torch

        with errors():
            exp = self.store.experiment(name)
            shards = self.store.shards(exp.name, round)
            found = [s for s in shards if (s.version == version if version is not None
                                           else s.active)]
            if not found:
                what = f"version {version} of round {round}" if version else f"round {round}"
                have = ", ".join(f"v{s.version}" for s in shards) or "none"
                raise NotFound(f"experiment '{exp.name}' has no shard of {what} (versions "
                               f"of round {round}: {have})")
            arrays = self.store.read_shard(found[0])
        return torch.from_numpy(arrays["samples"]), torch.from_numpy(arrays["target"]).long()

    # ------------------------------------------------------------ the steps
    def init(self, name: str | None = None, *, from_: str | None = None,
             config: Any = None, **settings: Any) -> dict[str, Any]:
        """``icl init``: record an experiment's config and train C_0 (or, ``from_=
        "EXP:ROUND"``, share that checkpoint, data subset and seeds: a paired comparison).

        Settings are ``icl init``'s options as keywords (``method="baseline",
        arch="tiny", train_size=500, pn_weight=0.5, sampler_lr=0.05, seed=1``...; the
        list: ``init_settings()``), over ``config``: an ``ExperimentConfig`` or a nested
        dict of overrides (``{"train": {"momentum": 0.5}}``), which may also set what no
        option does. ``name`` defaults to the method. Makes the workspace if there is
        none; a refused request writes nothing. Returns ``icl init --json``'s document
        (experiment, parent, reused, evaluations, config)."""
        from icl_cli.steps.init import init_experiment

        overrides = _overrides(config, settings)
        name = name or overrides.get("method") or "icl"
        with errors():
            result = init_experiment(self._create if from_ is None else lambda: self.store,
                                     name, overrides, self.runtime(), from_=from_)
        return document(result)

    def run(self, name: str | None = None, rounds: int = 1, *, recover: int = 0,
            watch: Callable[[dict[str, Any]], None] | None = None,
            **changes: Any) -> list[dict[str, Any]]:
        """``icl run --rounds T``: rounds 1..T, each step only if not done yet (resumes).
        ``changes``: ``count`` and the reclassify settings (``epochs``, ``lr``,
        ``pn_weight``...) for the rounds it runs; ``recover``: retry a diverged round up
        to N times; ``watch(event)`` is told each step as it starts. Returns ``icl run
        --json``'s rows (round, test_error, val_error, pass_rate, mean_steps, ran)."""
        from icl_cli.config import SamplerChanges, TrainChanges
        from icl_cli.steps.run import run_rounds

        count = changes.pop("count", None)
        with errors():
            train = _changes(TrainChanges, changes)
            exp = self.store.experiment(name).name
            rows = run_rounds(self.store, exp, rounds, self.runtime(),
                              SamplerChanges(count=count), train, watch, recover)
        return document(rows)

    def synthesize(self, name: str | None = None, round: int = 1, *, force: bool = False,
                   replay: bool = False, **changes: Any) -> dict[str, Any]:
        """``icl synthesize --round t``: draw round t's pseudo-negatives from checkpoint
        t-1 into a new shard. ``changes``: ``count``, ``max_steps``, ``sampler_lr``,
        ``reference_std``, ``stop_rule``, ``langevin_std``, ``clamp``, ``check_every``
        (this round only); ``force``: a new version; ``replay``: draw the recorded one
        again and compare (``replay_match``). Returns ``--json``'s document."""
        from icl_cli.config import SamplerChanges
        from icl_cli.steps.synthesize import synthesize_round

        with errors():
            sampler = _changes(SamplerChanges, changes, {"sampler_lr": "lr"})
            exp = self.store.experiment(name).name
            result = synthesize_round(self.store, exp, round, self.runtime(), force=force,
                                      replay=replay, changes=sampler)
        return document(result)

    def reclassify(self, name: str | None = None, round: int = 1, *, force: bool = False,
                   replay: bool = False, **changes: Any) -> dict[str, Any]:
        """``icl reclassify --round t``: warm start from checkpoint t-1, train on the data
        plus shards 1..t, save checkpoint t. ``changes``: ``epochs``, ``real_epochs``,
        ``lr``, ``pn_weight``, ``pn_weighting``, ``pn_recency``, ``clip_grad``,
        ``weight_decay``, ``max_batch`` (this round only). Returns ``--json``'s document
        (checkpoint sha256, epochs with their losses, ...)."""
        from icl_cli.config import TrainChanges
        from icl_cli.steps.reclassify import train_round

        with errors():
            train = _changes(TrainChanges, changes)
            exp = self.store.experiment(name).name
            result = train_round(self.store, exp, round, self.runtime(), force=force,
                                 replay=replay, changes=train)
        return document(result)

    def evaluate(self, name: str | None = None, round: int = 0, *, bins: int = 15,
                 plot: bool = False) -> list[dict[str, Any]]:
        """``icl evaluate --round t``: test (and validation) error, NLL and ECE of round
        t's checkpoint, recorded in the catalog; ``--json``'s list, one per split."""
        from icl_cli.steps.evaluate import evaluate_round

        with errors():
            exp = self.store.experiment(name).name
            return document(evaluate_round(self.store, exp, round, self.runtime(), bins,
                                           plot))


def open_workspace(path: str | os.PathLike | None = None, **runtime: Any) -> Workspace:
    """An existing workspace (``NotAWorkspace`` at once where there is none), with the
    runtime options of :class:`Workspace` (device, threads, amp, compile, channels_last,
    mlflow, progress)."""
    ws = Workspace(path, **runtime)
    ws.store  # noqa: B018 (opens it, or raises NotAWorkspace)
    return ws
