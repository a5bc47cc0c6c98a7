"""Tools for the reliability tests: run ``icl`` in-process or as a separate process that
can be killed, and look at a workspace from the outside (files, hashes, catalog rows).

Separate processes come from a ``multiprocessing`` fork server that has imported torch
and icl once: each child is a fresh process running ``icl_cli.cli.icl()`` with its own
argv, stdout and stderr, exactly what the ``icl`` console script runs, but it starts in
milliseconds instead of the seconds an ``import torch`` takes on a loaded CPU. That is
what lets the default suite kill real processes at random moments within its time
budget; :func:`spawn_exec` starts a plain ``python -m icl_cli`` for the checks that must
go through the console entry point itself.

A workspace's catalog is its ``.icl/catalog.db`` unless :func:`use_catalog` gave it a
database on a PostgreSQL server: then every child started on it (``-w WS``) gets that
``ICL_CATALOG_URL``, :func:`copy_ws` copies the database with the folder, and the
catalog readers here (:func:`rows`, :func:`catalog`, :func:`outcome`...) query the server.
"""

from __future__ import annotations

import faulthandler
import hashlib
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import numpy as np

from tests.kit import COMMON, ROOT, TINY, Result

INIT = ["init", "-e", "icl", "--method", "icl", *TINY, *COMMON]  # the experiment most tests use
TABLES = ("experiments", "shards", "checkpoints", "evaluations", "attacks", "steps")
BACKENDS = ("sqlite", "postgresql")


# ------------------------------------------------------- where a catalog lives

_CATALOGS: dict[str, str] = {}  # resolved workspace folder -> its PostgreSQL catalog URL


def use_catalog(ws: Path, url: str) -> None:
    """The workspace at ``ws`` keeps its catalog at ``url`` (a PostgreSQL database)."""
    _CATALOGS[str(Path(ws).resolve())] = url


def catalog_url(ws) -> str | None:
    """The PostgreSQL catalog URL of the workspace at ``ws``; None: its SQLite file."""
    return _CATALOGS.get(str(Path(ws).resolve())) if _CATALOGS else None


def _argv_catalog(argv: list[str]) -> str | None:
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-w", "--workspace"):
            return catalog_url(value)
    return None


def pg_connect(url: str, dbname: str | None = None):
    """A psycopg (autocommit) connection to the database of a catalog ``url``, or to
    ``dbname`` on the same server."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return psycopg.connect(host=u.query.get("host"), port=int(u.query.get("port", 5432)),
                           user=u.username, dbname=dbname or u.database, autocommit=True)


def clone_catalog(url: str) -> str:
    """A new database on the same server holding a copy of the one at ``url``."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = f"c{uuid.uuid4().hex[:12]}"
    with pg_connect(url, "postgres") as con:
        con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{u.database}"')
    return u.set(database=name).render_as_string(hide_password=False)


# ----------------------------------------------------------------- running icl
# In this process: ``icl`` (tests.kit). As separate processes, below.


def _default_sigint() -> None:
    """In a cold child before exec: SIGINT back to its default, so Python installs its
    KeyboardInterrupt handler (it leaves an inherited SIG_IGN alone)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child(argv: list[str], out: str, err: str, uid: int | None,
           url: str | None = None) -> None:
    """Body of a forked ``icl`` process: redirect stdout/stderr, run main() (with
    ``ICL_CATALOG_URL=url`` if given), exit. The output files appear just before main()
    runs (``Child.started`` waits for them)."""
    if url is not None:
        os.environ["ICL_CATALOG_URL"] = url
    # A child that hangs is sent SIGUSR1 before the test gives up on it (Child.wait): it
    # writes every thread's stack to its stderr, so that the failure shows where it hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Ctrl-C as in a terminal, even when the test runner itself was started in the
    # background (a shell's `cmd &` starts it with SIGINT ignored, and children inherit it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fds = [os.open(p, flags, 0o644) for p in (out + ".tmp", err + ".tmp")]
    sys.argv = ["icl", *argv]
    from icl_cli.cli import icl as main

    for fd, f in zip((1, 2), fds, strict=True):
        os.dup2(f, fd)
        os.close(f)
    os.rename(out + ".tmp", out)
    os.rename(err + ".tmp", err)
    if uid is not None:  # drop root, so that file permissions apply
        os.setgid(uid)
        os.setuid(uid)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a traceback: let the test see it on stderr
        import traceback

        traceback.print_exc()
        code = 99
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # icl is done: a late Ctrl-C changes nothing
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


FAULTS = ("tmp-written", "renamed", "recorded")
ELSEWHERE = "elsewhere"  # not a fault: an icl process "on another machine"


def _faulty_child(argv: list[str], out: str, err: str, fault: str,
                  url: str | None = None) -> None:
    """An ``icl`` process that kills itself (SIGKILL) at one of the narrowest moments:

    tmp-written: a shard or checkpoint is complete under its temporary name;
    renamed: it has its final name, but no catalog row yet;
    recorded: the row is committed, the step not yet marked finished;

    or (``ELSEWHERE``) one that runs as if on another machine mounting the workspace over
    NFS: its file locks hold nothing (``flock`` does nothing), its host name differs, so
    only the catalog server's advisory lock can keep it apart from other processes.
    """
    import store.checkpoints
    import store.shards
    import store.store
    import store.workspace

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def after(fn):
        def wrapped(*args, **kwargs):
            fn(*args, **kwargs)
            die()
        return wrapped

    if fault == ELSEWHERE:
        import fcntl
        import socket

        fcntl.flock = lambda *_args: None
        socket.gethostname = lambda: "elsewhere"
    elif fault == "tmp-written":
        store.shards.write_file = after(store.shards.write_file)
        store.checkpoints.write_file = after(store.checkpoints.write_file)
    elif fault == "renamed":
        store.workspace.fsync_dir = die  # called right after the rename
    elif fault == "recorded":
        finish = store.store.Store._finish
        store.store.Store._finish = lambda self, i, state, *a: (
            die() if state == "ok" else finish(self, i, state, *a))
    else:
        raise ValueError(fault)
    _child(argv, out, err, None, url)


_CTX = None


def start_server() -> None:
    """Start the fork server now; it imports and warms up icl in the background."""
    _context()


def _context():
    """The fork server, started on first use with icl imported and warmed up."""
    global _CTX
    if _CTX is None:
        from multiprocessing import forkserver

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["tests.reliability.relkit", "tests.reliability.relwarm",
                                    "icl_cli.steps.run",
                                    "icl_cli.steps.init", "store.verify", "h5py",
                                    "sqlalchemy.dialects.sqlite", "pytest",
                                    "sqlalchemy.dialects.postgresql", "psycopg"])
        # The server is a fresh `python -c` whose environment its children inherit: let
        # it import this checkout's tests package, and keep the user's icl settings out.
        saved = dict(os.environ)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), saved.get("PYTHONPATH")) if p)
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        for var in ("ICL_WORKSPACE", "ICL_CATALOG_URL", "MLFLOW_TRACKING_URI", "ICL_DEBUG"):
            os.environ.pop(var, None)
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _CTX = ctx
    return _CTX


class Child:
    """One ``icl`` process; ``wait()`` returns its Result, ``kill(sig)`` signals it."""

    def __init__(self, argv: list[str], logs: Path, uid: int | None = None,
                 exec_: bool = False, fault: str | None = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out, self.err = logs / f"{stamp}.out", logs / f"{stamp}.err"
        self.argv = [str(a) for a in argv]
        self.t0 = time.monotonic()
        url = _argv_catalog(self.argv)
        if exec_:
            env = dict(os.environ, **({"ICL_CATALOG_URL": url} if url else {}))
            with open(self.out, "wb") as o, open(self.err, "wb") as e:
                self._popen = subprocess.Popen([sys.executable, "-m", "icl_cli", *self.argv],
                                               stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                               preexec_fn=_default_sigint, env=env)
            self.pid, self._proc = self._popen.pid, None
        else:
            target, last = (_child, uid) if fault is None else (_faulty_child, fault)
            self._proc = _context().Process(
                target=target, args=(self.argv, str(self.out), str(self.err), last, url))
            self._proc.start()
            self.pid, self._popen = self._proc.pid, None

    def started(self, timeout: float = 60) -> bool:
        """Wait until the process runs icl's code (its output files exist)."""
        end = time.monotonic() + timeout
        while not self.err.exists() and time.monotonic() < end:
            time.sleep(0.005)
        return self.err.exists()

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self._proc.is_alive()

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` if the process still runs; True if it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float = 120) -> Result:
        if self._popen is not None:
            code = self._popen.wait(timeout)
        else:
            self._proc.join(timeout)
            if self._proc.exitcode is None:
                self.kill(signal.SIGUSR1)
                time.sleep(2)
            assert self._proc.exitcode is not None, (
                f"icl {self.argv} did not finish; its stderr ends: "
                f"{self.err.read_text()[-6000:] if self.err.exists() else ''}")
            code = self._proc.exitcode
        self.seconds = time.monotonic() - self.t0
        code = 128 - code if code < 0 else code  # -9 (killed by SIGKILL) -> 137
        text = [p.read_text() if p.exists() else "" for p in (self.out, self.err)]
        return Result(code, *text)


def spawn(argv, logs: Path, uid: int | None = None, fault: str | None = None) -> Child:
    """Start ``icl ARGV`` as a separate process forked from the warm fork server (as user
    ``uid``, or dying at ``fault``, one of FAULTS, or on another machine: ELSEWHERE)."""
    return Child(list(argv), logs, uid, fault=fault)


def spawn_exec(argv, logs: Path) -> Child:
    """Start ``python -m icl_cli ARGV`` (a cold interpreter, the console entry point)."""
    return Child(list(argv), logs, exec_=True)


def run_child(argv, logs: Path, code: int | None = 0) -> Result:
    child = spawn(argv, logs)
    res = child.wait()
    res.seconds = child.seconds
    if code is not None:
        assert res.code == code, (argv, res)
    return res


# ------------------------------------------------------------ looking at a workspace


def catalog(ws: Path) -> dict[str, list[tuple]]:
    """Every catalog row, table by table (read with plain sqlite3 or psycopg)."""
    return {t: sorted(rows(ws, f"SELECT * FROM {t}"), key=repr) for t in TABLES}


def rows(ws: Path, sql: str, *params) -> list[tuple]:
    """The rows of ``sql`` (``?`` placeholders) on the workspace's catalog, whichever
    backend it is on."""
    url = catalog_url(ws)
    if url is not None:
        with pg_connect(url) as con:
            return [tuple(r) for r in con.execute(sql.replace("?", "%s"), params).fetchall()]
    con = sqlite3.connect(Path(ws) / ".icl" / "catalog.db", timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def execute(ws: Path, sql: str, *params) -> None:
    url = catalog_url(ws)
    if url is not None:
        with pg_connect(url) as con:
            con.execute(sql.replace("?", "%s"), params)
        return
    con = sqlite3.connect(Path(ws) / ".icl" / "catalog.db", timeout=30)
    try:
        with con:
            con.execute(sql, params)
    finally:
        con.close()


def has_table(ws: Path, name: str) -> bool:
    """True if the workspace's catalog exists and holds the table ``name``."""
    if catalog_url(ws) is not None:
        return rows(ws, "SELECT to_regclass(?)", name)[0][0] is not None
    if not (Path(ws) / ".icl" / "catalog.db").is_file():
        return False
    return bool(rows(ws, "SELECT name FROM sqlite_master WHERE name = ?", name))


def _volatile(rel: str) -> bool:
    """Files that change without the workspace changing: SQLite's WAL and shared memory,
    the lock files (their holder note), and the catalog file (compared by its rows)."""
    return rel.startswith(".icl/locks/") or rel.startswith(".icl/catalog.db")


def files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``, and folders as 'dir'."""
    out = {}
    root = Path(root)
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if _volatile(rel):
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def snapshot(ws: Path) -> dict:
    """Files with their hashes plus every catalog row."""
    ws = Path(ws)
    has_db = catalog_url(ws) is not None or (ws / ".icl" / "catalog.db").is_file()
    return {"files": files(ws), "catalog": catalog(ws) if has_db else None}


def assert_unchanged(before: dict, after: dict, what) -> None:
    """The workspace is as it was, except that the step log may have gained ``failed``
    rows (a step that started and refused its input is logged, by design)."""
    assert after["files"] == before["files"], (what, _diff(before["files"], after["files"]))
    if before["catalog"] is None:
        assert after["catalog"] is None, what
        return
    for table in TABLES:
        old, new = before["catalog"][table], after["catalog"][table]
        if table == "steps":
            assert set(old) <= set(new), (what, "step rows changed")
            added = [r for r in new if r not in set(old)]
            assert all("failed" in r for r in added), (what, added)
        else:
            assert new == old, (what, table, old, new)


def _diff(a: dict, b: dict) -> dict:
    keys = set(a) | set(b)
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def array_digest(path: Path) -> str:
    """sha256 over a shard's arrays (names, dtypes, shapes, bytes), not the file: a shard
    file embeds its ``created_at`` time, so two equal draws differ as files."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for name in sorted(f):
            a = np.ascontiguousarray(f[name][()])
            h.update(f"{name}:{a.dtype}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def outcome(ws: Path, experiment: str) -> dict:
    """What a finished run left: array digests of the active shards by round, and the
    recorded errors by (round, split)."""
    ws = Path(ws)
    shards = rows(ws, "SELECT s.round, s.path FROM shards s JOIN experiments e "
                      "ON s.experiment_id = e.id WHERE e.name = ? AND s.active", experiment)
    errors = rows(ws, "SELECT v.round, v.split, v.error FROM evaluations v JOIN experiments e "
                      "ON v.experiment_id = e.id WHERE e.name = ?", experiment)
    return {"shards": {r: array_digest(ws / p) for r, p in sorted(shards)},
            "errors": {(r, s): e for r, s, e in sorted(errors)}}


def has_experiment(ws: Path, name: str) -> bool:
    if not has_table(ws, "experiments"):
        return False
    return bool(rows(ws, "SELECT id FROM experiments WHERE name = ?", name))


def check_after_crash(ws: Path, logs: Path) -> dict:
    """The guarantees after a process died at any moment, checked from outside:

    - every catalog row names a complete file whose sha256 matches (and a shard opens);
    - no two active shards for a round, no duplicate versions or checkpoints;
    - ``icl verify`` reports no integrity problem (only, possibly, the dead step and
      temporary leftovers), ``icl verify --repair`` cleans up, then ``icl verify`` says
      the workspace is consistent (exit 0).
    Returns the first ``verify --json`` report.
    """
    ws = Path(ws)
    if not has_table(ws, "schema_version"):
        # Killed before the catalog existed, or while it was being created: nothing to
        # check (`icl init` finishes it).
        return {}
    for table in ("shards", "checkpoints"):
        for path, digest in rows(ws, f"SELECT path, sha256 FROM {table}"):
            assert (ws / path).is_file(), f"{table} row names a missing file {path}"
            assert sha256(ws / path) == digest, f"{table} row names a partial file {path}"
    for path, in rows(ws, "SELECT path FROM shards"):
        with h5py.File(ws / path, "r") as f:
            assert f["samples"].shape[0] == len(f["target"])
    dup = rows(ws, "SELECT experiment_id, round, COUNT(*) FROM shards WHERE active "
                   "GROUP BY experiment_id, round HAVING COUNT(*) > 1")
    assert not dup, f"two active shards for one round: {dup}"
    report = run_child(["verify", "-w", ws, "--json"], logs, code=None)
    assert report.code in (0, 4) and "Traceback" not in report.stderr, report
    first = report.json()
    integrity = [p for p in first["problems"] if "died while running" not in p]
    assert not integrity, integrity
    assert all(".tmp-" in Path(t).name for t in first["temporary"]), first["temporary"]
    # --no-mlflow: the workspaces here track nothing (made with --no-mlflow), and without
    # it --repair would create an MLflow database to log them again (seconds of MLflow's
    # migrations per check; that repair is test_reliability_mlflow's subject).
    run_child(["verify", "-w", ws, "--repair", "--no-mlflow"], logs, code=0)
    clean = run_child(["verify", "-w", ws, "--json"], logs, code=0).json()
    assert clean["ok"] and not clean["temporary"] and not clean["problems"], clean
    assert not list(ws.rglob("*.tmp-*")), "temporary files left after --repair"
    return first


def copy_ws(src: Path, dst: Path) -> Path:
    """A copy of the workspace at ``src``: its folder, and its catalog database when that
    is on a server (nobody may be connected to it meanwhile)."""
    shutil.copytree(src, dst)
    url = catalog_url(src)
    if url is not None:
        use_catalog(dst, clone_catalog(url))
    return dst


def one_line(res: Result) -> str:
    """The single stderr line of a failed command (asserts there is exactly one and no
    traceback)."""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res
    assert "Traceback" not in res.stdout + res.stderr, res
    return lines[0]
