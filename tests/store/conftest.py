"""Fixtures for the store tests: a fresh workspace in tmp_path, tiny shards, and an
environment that keeps MLflow, icl and anything else away from the real home folder.
(``pg_server``, the throwaway PostgreSQL server, is in tests/conftest.py: the reliability
tests use it too.)"""

from __future__ import annotations

import numpy as np
import pytest

from store import Store


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for var in ("ICL_WORKSPACE", "ICL_CATALOG_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def store(tmp_path):
    """A workspace at tmp_path/ws with one experiment, "icl"."""
    st = Store.init(tmp_path / "ws")
    st.create_experiment("icl", {"method": "icl", "seed": 0})
    yield st
    st.close()


def _make_arrays(n: int = 12, shape=(1, 8, 8), seed: int = 0) -> dict[str, np.ndarray]:
    """Shard arrays of ``n`` samples: samples (n, *shape) float32 and the per-sample
    target, steps, logit, passed."""
    rng = np.random.default_rng(seed)
    return {
        "samples": rng.normal(0, 0.3, (n, *shape)).astype(np.float32),
        "target": rng.integers(0, 10, n).astype(np.int64),
        "steps": rng.integers(0, 200, n).astype(np.int32),
        "logit": rng.normal(size=n).astype(np.float32),
        "passed": rng.random(n) > 0.5,
    }


@pytest.fixture
def make_arrays():
    """``make_arrays(n=12, shape=(1, 8, 8), seed=0)`` -> a dict of shard arrays."""
    return _make_arrays


@pytest.fixture
def attrs():
    """Shard attributes as a synthesize step passes them."""
    return {"seed": 7, "sampler_config": {"lr": 0.01, "count": 2}, "source_checkpoint": "ab" * 32}


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    """Like ``store``, on each catalog backend: SQLite in the workspace, and a fresh
    database on the throwaway PostgreSQL server."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_server").new_url()
    st = Store.init(tmp_path / "ws", url)
    st.create_experiment("icl", {"method": "icl", "seed": 0})
    yield st
    st.close()
