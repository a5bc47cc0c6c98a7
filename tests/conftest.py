"""Shared test set-up: one torch thread (two collapse under a competing process);
``pg_server``, a throwaway PostgreSQL server for the catalog tests of both the store and
the reliability suites; ``small_pair``, one small paired workspace per test run, which
tests copy (``tests.kit.copy_workspace``) instead of training their own; and
``made_mlflow_db``, copies of one MLflow database made per test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
torch.set_num_threads(1)

PG_PORT = 54329


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under ``-n`` (pytest-xdist, ``--dist loadgroup``): a file's tests run in one worker,
    in order, as their module-scoped workspaces expect; and every reliability test runs in
    one worker, which makes their session-scoped workspaces and fork server once."""
    for item in items:
        path = item.nodeid.split("::")[0]
        group = "reliability" if path.startswith("tests/reliability/") else path
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def _made_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow database as MLflow makes it (its tables, by MLflow's migrations: seconds),
    holding nothing yet."""
    from store.tracking import _import_mlflow

    db = tmp_path_factory.mktemp("mlflow-made") / "mlflow.db"
    _import_mlflow()(tracking_uri=f"sqlite:///{db}").get_experiment_by_name("icl")
    return db


@pytest.fixture
def made_mlflow_db(_made_mlflow_db):
    """``made_mlflow_db(path)``: a copy of an MLflow database as MLflow makes it, at
    ``path``, for the tests whose subject is not how MLflow makes one (that is, for
    example, test_store_tracking's first test's and the half-made database's)."""

    def put(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_made_mlflow_db, path)
        return path

    return put


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory) -> Path:
    """A workspace with a baseline 'base' (``tests.kit.SMALL``) and an ICL experiment 'icl'
    started from its C_0 (``--from base:0``), both at round 0, built once per test run in
    this process. Read it, or change a copy: ``copy_workspace(small_pair, tmp_path / "ws")``."""
    from tests.kit import COMMON, SMALL, icl

    ws = tmp_path_factory.mktemp("small-pair") / "ws"
    icl("init", "-w", ws, "-e", "base", "--method", "baseline", *SMALL, *COMMON)
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", "--from", "base:0", *COMMON)
    return ws


class PgServer:
    """A running throwaway server: ``new_url()`` makes a fresh database, ``clone(url)`` a
    copy of one (``CREATE DATABASE ... TEMPLATE``: nobody may be connected to it)."""

    def __init__(self, folder: str, port: int = PG_PORT) -> None:
        self.folder, self.port = folder, port

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host=self.folder, port=self.port, user="icl", dbname=dbname,
                               autocommit=True)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://icl@/{name}?host={self.folder}&port={self.port}"

    def new_url(self, template: str | None = None) -> str:
        name = f"t{uuid.uuid4().hex[:12]}"
        with self.connect() as con:
            con.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template
                                                     else ""))
        return self.url(name)

    def clone(self, url: str) -> str:
        """A new database holding a copy of the one at ``url`` (of this server)."""
        from sqlalchemy.engine import make_url

        return self.new_url(template=make_url(url).database)


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server (unix socket in a temporary folder, trust auth) for
    the session, a :class:`PgServer`. Skipped where ``initdb`` or ``pg_ctl`` or the psycopg
    driver is missing. As root, the server runs as ``postgres`` (initdb refuses root)."""

    def unavailable(why: str) -> None:
        """Skip on a machine without PostgreSQL; fail where CI says it must be there
        (ICL_REQUIRE_POSTGRES=1 in .ci/run), so the suite cannot pass by skipping it."""
        if os.environ.get("ICL_REQUIRE_POSTGRES"):
            pytest.fail(f"ICL_REQUIRE_POSTGRES is set but {why}")
        pytest.skip(why)

    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the PostgreSQL driver psycopg is not installed (pip install "
                    "'psycopg[binary]')")
    tools = {t: shutil.which(t) for t in ("initdb", "pg_ctl")}
    if not all(tools.values()):
        unavailable(f"PostgreSQL tools missing: {[t for t, p in tools.items() if not p]}")
    folder = tempfile.mkdtemp(prefix="icl-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            unavailable("running as root without runuser: initdb refuses root")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(folder, "data")

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    run(tools["initdb"], "-D", data, "-A", "trust", "-U", "icl", "--no-sync")
    run(tools["pg_ctl"], "-D", data, "-l", os.path.join(folder, "log"), "-w", "-o",
        f"-k {folder} -c listen_addresses='' -c fsync=off -p {PG_PORT}", "start")
    try:
        yield PgServer(folder)
    finally:
        subprocess.run([*as_user, tools["pg_ctl"], "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
