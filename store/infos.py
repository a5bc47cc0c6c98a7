"""Frozen dataclasses the store returns: plain values, never ORM rows.

Timestamps are timezone-aware UTC datetimes; paths are absolute. The write path makes
them from ORM rows with :func:`to_info`; the read path (``store.reader``) from plain SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

InfoT = TypeVar("InfoT")


@dataclass(frozen=True)
class ExperimentInfo:
    """An experiment: its config as a plain dict and the hash that identifies it.

    ``parent``/``parent_round``: the experiment and round it was started ``--from``.
    ``data_fingerprint``: sha256 of the dataset's identity and the chosen train and
    validation images (None for experiments recorded before icl kept it).
    """

    id: int
    name: str
    config: dict[str, Any]
    config_hash: str
    method: str | None
    parent: str | None
    created_at: datetime
    mlflow_run_id: str | None
    parent_round: int | None = None
    data_fingerprint: str | None = None


@dataclass(frozen=True)
class ShardInfo:
    """One shard file of round ``round``; ``active`` marks the version training uses."""

    experiment: str
    round: int
    version: int
    active: bool
    path: Path
    sha256: str
    count: int
    sampler_config: dict[str, Any]
    seed: int | None
    source_checkpoint: str | None
    created_at: datetime


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint after round ``round`` (round 0: ``init``)."""

    experiment: str
    round: int
    path: Path
    sha256: str
    parent_sha256: str | None
    config_hash: str | None
    created_at: datetime


@dataclass(frozen=True)
class EvaluationInfo:
    """Error rate in [0, 1] on ``split`` ("test", "val", ...); ``per_class`` has K entries."""

    experiment: str
    round: int
    split: str
    error: float
    per_class: list[float]
    n: int
    created_at: datetime


@dataclass(frozen=True)
class AttackInfo:
    """Attack counts for examples made on (experiment, round) and tried on the ``against``
    model, e.g. ``{"made": 9000, "fool_self": 6876, "fool_other": 4661}``.

    ``method``: "fgsm" (every record before schema 3), "pgd", ...; ``params``: its
    settings, e.g. ``{"steps": 40, "step_size": 0.01, "restarts": 1, "random_start": True}``
    (None for FGSM, which has none besides ``eps``).
    """

    experiment: str
    round: int
    against_experiment: str
    against_round: int
    eps: float
    counts: dict[str, Any]
    created_at: datetime
    method: str = "fgsm"
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class StepInfo:
    """One run of a step. ``state``: running | ok | failed | interrupted (a ``running`` row
    whose process is gone is reported as interrupted)."""

    experiment: str
    name: str
    round: int | None
    state: str
    seconds: float | None
    started_at: datetime
    finished_at: datetime | None
    message: str | None
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    id: int | None = None
    # Where it ran (schema 6; None: recorded before, or by a store with no describer):
    # device, device_model, cpu_model, gpu_model, icl, torch, python, platform, threads,
    # determinism (``store.steplog.describe_steps_with``).
    environment: dict[str, Any] | None = None


@dataclass(frozen=True)
class VerifyReport:
    """What ``Store.verify`` found.

    problems: one line each (missing or altered files, stale running steps);
    temporary: leftover ``*.tmp-*`` files still on disk (after ``repair``, only those a
    live process may still be writing); orphans: shard/checkpoint files no catalog row
    names (never deleted); parts: part files of rounds drawn ``--part i/N`` whose parts
    are not all drawn yet (joined by the last part, or ``icl synthesize --merge``);
    obsolete: a line for each part file that will never be joined (its round has a shard
    of its version now, or its part was drawn again), with the command that deletes it;
    repaired: what ``repair=True`` did;
    ok: no problems and no temporaries left by a dead writer (orphans, and a file a live
    icl process is writing right now, do not make it fail).
    """

    problems: list[str]
    temporary: list[Path]
    orphans: list[Path]
    ok: bool
    repaired: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # rounds downstream of a replaced file
    rebuilt: list[str] = field(default_factory=list)  # what ``Store.rebuild`` recorded
    parts: list[Path] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)  # part files never to be joined


def to_info(cls: type[InfoT], row: Any, **given: Any) -> InfoT:
    """The frozen dataclass ``cls`` from an ORM ``row``: each field from ``given``, else the
    row's column of the same name (JSON dicts and lists copied, so no caller shares them)."""
    values = {}
    for f in fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
        elif hasattr(row, f.name):
            v = getattr(row, f.name)
            values[f.name] = dict(v) if isinstance(v, dict) else list(v) if isinstance(
                v, list) else v
    return cls(**values)
