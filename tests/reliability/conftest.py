"""Shared workspaces for the reliability tests, each built once per session (and per
catalog backend) by real ``icl`` processes and copied by the tests that change them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kit import COMMON, TINY
from tests.reliability.relkit import INIT, copy_ws, outcome, run_child, start_server, use_catalog

if "PYTEST_XDIST_WORKER" not in os.environ:
    start_server()  # warms up in the background while the rest of the suite runs
# (Under -n, no core is idle to warm it up on: the worker that runs these tests starts it
# on first use, and the other never does.)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("ICL_WORKSPACE", "ICL_CATALOG_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def logs(tmp_path) -> Path:
    """Where child processes write their stdout and stderr."""
    return tmp_path / "logs"


@pytest.fixture
def backend() -> str:
    """The catalog backend of ``templates`` and ``pair``: SQLite unless a test
    parametrises ``backend`` (over ``relkit.BACKENDS``)."""
    return "sqlite"


@dataclass
class Templates:
    """Workspaces of experiment 'icl' (tiny net, tiny data) at known stages, and what an
    uninterrupted ``icl run --rounds 1`` ends with. On PostgreSQL each has a database of
    its own, copied along with the folder (``relkit.copy_ws``)."""

    root: Path
    server: object = None  # the PostgreSQL server (tests/conftest.py's pg_server), or None
    round0: Path = None  # C_0 only
    shard1: Path = None  # C_0 and the round-1 shard
    done: Path = None  # rounds 0 and 1 complete and evaluated (the reference)
    reference: dict = None  # outcome(done, "icl")
    seconds: dict = field(default_factory=dict)  # how long each command ran, uninterrupted

    @property
    def backend(self) -> str:
        return "sqlite" if self.server is None else "postgresql"

    def copy(self, stage: str, dst: Path) -> Path:
        return copy_ws(getattr(self, stage), dst)

    def fresh(self, ws: Path) -> Path:
        """``ws``, not yet a workspace: on PostgreSQL, given an empty database."""
        if self.server is not None:
            use_catalog(ws, self.server.new_url())
        return ws


def _build(root: Path, server) -> Templates:
    logs = root / "logs"
    run_child(["--help"], logs)  # start the warm fork server before timing anything
    t = Templates(root, server)
    t.round0 = t.fresh(root / "round0")
    t.seconds["init"] = run_child([*INIT, "-w", t.round0], logs).seconds
    t.shard1 = copy_ws(t.round0, root / "shard1")
    t.seconds["synthesize"] = run_child(
        ["synthesize", "-w", t.shard1, "--round", "1", *COMMON], logs).seconds
    t.done = copy_ws(t.shard1, root / "done")
    t.seconds["reclassify"] = run_child(
        ["reclassify", "-w", t.done, "--round", "1", *COMMON], logs).seconds
    evaluate = run_child(["evaluate", "-w", t.done, "--round", "1", *COMMON], logs).seconds
    t.seconds["run"] = t.seconds["synthesize"] + t.seconds["reclassify"] + evaluate
    t.reference = outcome(t.done, "icl")
    assert sorted(t.reference["shards"]) == [1] and (1, "test") in t.reference["errors"]
    return t


@pytest.fixture(scope="session")
def _built() -> dict:
    return {}  # backend -> Templates, pair workspace


@pytest.fixture
def templates(backend, _built, tmp_path_factory, request) -> Templates:
    if ("templates", backend) not in _built:
        server = request.getfixturevalue("pg_server") if backend == "postgresql" else None
        _built["templates", backend] = _build(
            tmp_path_factory.mktemp(f"templates-{backend}"), server)
    return _built["templates", backend]


@pytest.fixture(scope="session")
def sqlite_templates(_built, tmp_path_factory) -> Templates:
    """``templates`` on SQLite, for fixtures of a wider scope than a test's."""
    if ("templates", "sqlite") not in _built:
        _built["templates", "sqlite"] = _build(tmp_path_factory.mktemp("templates-sqlite"),
                                               None)
    return _built["templates", "sqlite"]


@pytest.fixture
def pair(backend, _built, tmp_path_factory, request) -> Path:
    """A workspace with a baseline 'base' and an ICL experiment 'icl' started from it
    (``--from base:0``), both at round 0: the paired set-up of the recipes."""
    server = request.getfixturevalue("pg_server") if backend == "postgresql" else None
    return _pair(_built, tmp_path_factory, backend, server)


@pytest.fixture(scope="session")
def sqlite_pair(_built, tmp_path_factory) -> Path:
    """``pair`` on SQLite, for fixtures of a wider scope than a test's."""
    return _pair(_built, tmp_path_factory, "sqlite", None)


def _pair(_built: dict, tmp_path_factory, backend: str, server) -> Path:
    if ("pair", backend) not in _built:
        ws = tmp_path_factory.mktemp(f"pair-{backend}") / "ws"
        if server is not None:
            use_catalog(ws, server.new_url())
        logs = ws.parent / "logs"
        run_child(["init", "-w", ws, "-e", "base", "--method", "baseline", *TINY, *COMMON],
                  logs)
        run_child(["init", "-w", ws, "-e", "icl", "--method", "icl", "--from", "base:0",
                   *COMMON], logs)
        _built["pair", backend] = ws
    return _built["pair", backend]
