"""icl's persistent store: the only code that touches files, the catalog or MLflow.

A workspace is a folder::

    <ws>/.icl/catalog.db                      SQLite catalog (or $ICL_CATALOG_URL)
    <ws>/.icl/locks/<experiment>.lock         per-experiment advisory locks
    <ws>/.icl/mlflow.db, .icl/mlartifacts/    MLflow tracking (or $MLFLOW_TRACKING_URI)
    <ws>/experiments/<name>/shards/round-0007.v1.h5
    <ws>/experiments/<name>/checkpoints/round-0007.pt
    <ws>/experiments/<name>/figures/...

Steps use one :class:`Store` and get frozen dataclasses back. torch, h5py and MLflow are
imported only when a shard, checkpoint or tracker is used, so ``icl --help`` stays fast.

Example:
    >>> from store import Store
    >>> st = Store.open()          # the workspace around the current folder  # doctest: +SKIP
"""

from .errors import (
    BusyError,
    ConflictError,
    ExperimentNotFound,
    IntegrityError,
    NotAWorkspace,
    StoreError,
    Terminated,
)
from .infos import (
    AttackInfo,
    CheckpointInfo,
    EvaluationInfo,
    ExperimentInfo,
    ShardInfo,
    StepInfo,
    VerifyReport,
)
from .store import Store, config_hash
from .tracking import NullTracker, Tracker
from .workspace import atomic_write, find_workspace, sha256_file, validate_name

__all__ = [
    "AttackInfo",
    "BusyError",
    "CheckpointInfo",
    "ConflictError",
    "EvaluationInfo",
    "ExperimentInfo",
    "ExperimentNotFound",
    "IntegrityError",
    "NotAWorkspace",
    "NullTracker",
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
