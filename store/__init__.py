"""icl's persistent store: the only code that touches files, the catalog or MLflow.

A workspace is a folder::

    <ws>/.icl/catalog.db                      SQLite catalog (or $ICL_CATALOG_URL)
    <ws>/.icl/locks/<experiment>.lock         per-experiment advisory locks
    <ws>/.icl/mlflow.db, .icl/mlartifacts/    MLflow tracking (or $MLFLOW_TRACKING_URI)
    <ws>/.icl/references/<key>.pt             reference nets (``icl quality``)
    <ws>/.icl/workspace-id                    the workspace's id, with a catalog elsewhere
    <ws>/experiments/<name>/shards/round-0007.v1.h5
    <ws>/experiments/<name>/checkpoints/round-0007.pt
    <ws>/experiments/<name>/figures/...
    <ws>/figures/, <ws>/cards/<name>.md|.json  figures of every experiment, reproducibility cards

Steps use one :class:`Store` and get frozen dataclasses back. The Store is made of
explicit parts (``store.store`` lists them): the catalog, the artefact files, the results,
the step log, the locks and the MLflow runs. torch, h5py and MLflow are
imported only when a shard, checkpoint or tracker is used, SQLAlchemy only when the
catalog is written (or lives on a server), and ``Store`` itself on first use, so ``icl
--help`` and the read-only commands stay fast.

Example:
    >>> from store import Store
    >>> st = Store.open()          # the workspace around the current folder  # doctest: +SKIP
"""

from .errors import (
    BusyError,
    CatalogDamaged,
    CatalogMissing,
    CatalogOfAnotherWorkspace,
    CatalogUnusable,
    ConflictError,
    ExperimentNotFound,
    IntegrityError,
    NotAWorkspace,
    OutsideWorkspace,
    StoreError,
    Terminated,
)
from .hashing import config_hash
from .infos import (
    AttackInfo,
    CheckpointInfo,
    EvaluationInfo,
    ExperimentInfo,
    ShardInfo,
    StepInfo,
    VerifyReport,
)
from .workspace import atomic_write, find_workspace, sha256_file, validate_name

_LAZY = {"Store": "store", "NullTracker": "tracking", "Tracker": "tracking"}


def __getattr__(name: str):
    """``Store``, ``Tracker`` and ``NullTracker``, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AttackInfo",
    "BusyError",
    "CatalogDamaged",
    "CatalogMissing",
    "CatalogOfAnotherWorkspace",
    "CatalogUnusable",
    "CheckpointInfo",
    "ConflictError",
    "EvaluationInfo",
    "ExperimentInfo",
    "ExperimentNotFound",
    "IntegrityError",
    "NotAWorkspace",
    "NullTracker",
    "OutsideWorkspace",
    "ShardInfo",
    "StepInfo",
    "Store",
    "StoreError",
    "Terminated",
    "Tracker",
    "VerifyReport",
    "atomic_write",
    "config_hash",
    "find_workspace",
    "sha256_file",
    "validate_name",
]
