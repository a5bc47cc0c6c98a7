"""Crash safety: ``icl init``, ``icl synthesize``, ``icl reclassify`` and ``icl run`` are
killed (SIGKILL) or interrupted (Ctrl-C, SIGINT) at random moments; afterwards

- every catalog row names a complete file whose sha256 matches, and ``icl verify``
  reports no integrity problem (only the dead step and temporary leftovers, which
  ``icl verify --repair`` cleans, after which the workspace is consistent);
- ``icl run`` resumes and finishes, and ends exactly where an uninterrupted run ends:
  the same active shards, compared by a hash of their arrays (not of the files: a shard
  file embeds its ``created_at`` time), and the same test and validation errors
  (CPU, one thread).

The moments are drawn from a seeded generator, uniformly over how long the command
takes when nobody interrupts it, so they fall anywhere: loading data, training, inside
an HDF5 or torch.save write, between the rename and the catalog row, in the catalog
transaction, while evaluating.

Each case runs on both catalog backends, SQLite in the workspace and a database on a
throwaway PostgreSQL server (``pg_server``). To stay in the default suite's time budget,
PostgreSQL runs every kind of fault there once (a random SIGKILL, each narrow window, a
Ctrl-C, SIGTERM through the console entry point); the rest of its matrix is ``slow``.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.kit import COMMON, tiny
from tests.reliability.relkit import (
    BACKENDS,
    INIT,
    check_after_crash,
    has_experiment,
    one_line,
    outcome,
    rows,
    run_child,
    spawn,
    spawn_exec,
    use_catalog,
)

SEED = 20240607
STAGE = {"init": None, "synthesize": "round0", "reclassify": "shard1", "run": "round0"}


def _cases(names: list, on_postgresql: list, ids=None, slow_on_sqlite=()) -> list:
    """``(backend, *case)`` for every case on SQLite (but those in ``slow_on_sqlite``:
    slow), and on PostgreSQL: those in ``on_postgresql`` in the default suite, the others
    marked slow."""
    names = [n if isinstance(n, tuple) else (n,) for n in names]
    ids = ids or ["-".join(str(x) for x in n) for n in names]
    out = [pytest.param("sqlite", *n, id=f"sqlite-{i}",
                        marks=(pytest.mark.slow,) if i in slow_on_sqlite else ())
           for n, i in zip(names, ids, strict=True)]
    for n, i in zip(names, ids, strict=True):
        marks = () if i in on_postgresql else (pytest.mark.slow,)
        out.append(pytest.param("postgresql", *n, id=f"postgresql-{i}", marks=marks))
    return out


def _command(name: str, ws) -> list:
    return {
        "init": [*INIT, "-w", ws],
        "synthesize": ["synthesize", "-w", ws, "--round", "1", *COMMON],
        "reclassify": ["reclassify", "-w", ws, "--round", "1", *COMMON],
        "run": ["run", "-w", ws, "--rounds", "1", *COMMON],
    }[name]


def _signal_somewhere(templates, name, tmp_path, logs, rng, sig):
    """Run ``name`` on a fresh copy of its input and send ``sig`` at a random moment of its
    uninterrupted duration; on a new copy again if it finished first, the moment then drawn
    within that run's own duration (the load changed since the template was timed)."""
    seconds = templates.seconds[name]
    for attempt in range(8):
        ws = tmp_path / f"{name}-{attempt}"
        if STAGE[name]:
            templates.copy(STAGE[name], ws)
        else:
            templates.fresh(ws)
        child = spawn(_command(name, ws), logs)
        child.started()
        time.sleep(rng.uniform(0.0, 0.9 * seconds))
        if child.kill(sig):
            res = child.wait()
            if res.code != 0:  # 0: it finished before the signal arrived
                return ws, res
        else:
            child.wait()
        seconds = min(seconds, child.seconds)
    pytest.fail(f"could not interrupt `icl {name}` in 8 tries")


def _resume(ws, logs) -> None:
    """``icl run`` picks up where the dead process stopped (after ``icl init`` again when
    the process died before the experiment was recorded)."""
    if not has_experiment(ws, "icl"):
        run_child([*INIT, "-w", ws], logs)
    run_child(["run", "-w", ws, "--rounds", "1", *COMMON], logs)


@pytest.mark.parametrize("backend,name", _cases(["init", "synthesize", "reclassify"],
                                                ["reclassify"]))
def test_sigkill_at_a_random_moment_then_verify_and_resume(templates, name, tmp_path, logs):
    rng = random.Random(f"{SEED}-{name}")
    ws, res = _signal_somewhere(templates, name, tmp_path, logs, rng, signal.SIGKILL)
    assert res.code == 137  # killed: no chance to clean up anything
    check_after_crash(ws, logs)
    _resume(ws, logs)
    assert outcome(ws, "icl") == templates.reference


@pytest.mark.parametrize("backend,name,fault", _cases(
    [("synthesize", "tmp-written"), ("synthesize", "renamed"), ("reclassify", "renamed"),
     ("reclassify", "recorded")],
    ["synthesize-tmp-written", "reclassify-renamed", "reclassify-recorded"]))
def test_sigkill_in_the_narrowest_windows(templates, name, fault, tmp_path, logs):
    """Random moments rarely land in the microseconds between writing a file, renaming it
    and recording it; these kills land there on purpose."""
    ws = templates.copy(STAGE[name], tmp_path / "ws")
    res = spawn(_command(name, ws), logs, fault=fault).wait()
    assert res.code == 137
    report = check_after_crash(ws, logs)
    left = {"tmp-written": "temporary", "renamed": "orphans", "recorded": "problems"}[fault]
    assert report[left], report  # the cut-short work is visible to `icl verify`...
    _resume(ws, logs)  # ...and never used: the resumed run ends as an uninterrupted one
    assert outcome(ws, "icl") == templates.reference


@pytest.mark.parametrize("backend,name", _cases(["init", "synthesize", "reclassify", "run"],
                                                ["run"]))
def test_ctrl_c_exits_cleanly_with_one_line(templates, name, tmp_path, logs):
    rng = random.Random(f"{SEED}-int-{name}")
    ws, res = _signal_somewhere(templates, name, tmp_path, logs, rng, signal.SIGINT)
    assert res.code == 130, res
    assert "interrupted" in one_line(res)
    # Ctrl-C, unlike SIGKILL, lets icl clean up: no temporary file is left over. (That a
    # resumed run ends as an uninterrupted one is checked below and after SIGKILL.)
    assert check_after_crash(ws, logs).get("temporary", []) == []


@pytest.mark.parametrize("backend,sig,code,words", _cases(
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ["sigterm"], ids=["ctrl-c", "sigterm"], slow_on_sqlite=["sigterm"]))
def test_ctrl_c_through_the_console_entry_point(templates, tmp_path, logs, sig, code, words):
    """A cold ``python -m icl_cli synthesize``, interrupted once its step is running: by
    Ctrl-C, or by SIGTERM (what ``timeout`` and Slurm send), which is handled the same.
    By default: Ctrl-C on SQLite and SIGTERM on PostgreSQL (each cold start costs seconds);
    SIGTERM on SQLite, whose paths those two cover, is slow."""
    rng = random.Random(SEED)
    for attempt in range(8):  # the step takes ~0.3 s: on an idle machine it may finish first
        ws = templates.copy("round0", tmp_path / f"ws{attempt}")
        child = spawn_exec(_command("synthesize", ws), logs)
        end = time.monotonic() + 120
        while not rows(ws, "SELECT id FROM steps WHERE state = 'running'"):
            assert child.alive() and time.monotonic() < end, child.wait()
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        assert child.kill(sig)
        res = child.wait()
        if res.code != 0:
            break
        # Finished before the signal: a clean exit, no traceback from the late signal.
        assert "Traceback" not in res.stderr, res
    assert res.code == code, res
    assert words in one_line(res)
    assert not rows(ws, "SELECT id FROM steps WHERE state = 'running'")  # marked interrupted
    how = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert rows(ws, "SELECT message FROM steps WHERE state = 'interrupted'") == [
        (f"interrupted ({how})",)]
    assert check_after_crash(ws, logs).get("temporary", []) == []
    _resume(ws, logs)
    assert outcome(ws, "icl") == templates.reference


SLOW = tiny(train_size=1000, init_epochs=2, epochs=2, count=20, max_steps=60,
            sampler_lr=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_kills_at_random_moments(backend, tmp_path, logs, request):
    """At least 20 SIGKILLs (and some Ctrl-Cs) across init, synthesize, reclassify and run
    on larger steps; each workspace is driven to round 3 through the kills and must end
    exactly as an uninterrupted one."""
    server = request.getfixturevalue("pg_server") if backend == "postgresql" else None

    def fresh(ws):
        if server is not None:
            use_catalog(ws, server.new_url())
        return ws

    rng = random.Random(SEED + 1)
    init = ["init", "-e", "icl", "--method", "icl", *SLOW, *COMMON]
    ref = fresh(tmp_path / "ref")
    seconds = {"init": run_child([*init, "-w", ref], logs).seconds}
    seconds["run"] = run_child(["run", "-w", ref, "--rounds", "3", *COMMON], logs).seconds
    seconds["step"] = seconds["run"] / 6
    reference = outcome(ref, "icl")

    kills = interrupts = 0
    left = {"temporary": 0, "orphans": 0, "dead step": 0}  # what the kills cut short
    for n in range(100):
        ws = fresh(tmp_path / f"ws{n}")
        while not (rows(ws, "SELECT id FROM evaluations WHERE round = 3")
                   if has_experiment(ws, "icl") else False):
            argv, kind = _next_command(ws, init, rng)
            child = spawn(argv, logs)
            child.started()
            time.sleep(rng.uniform(0.0, seconds[kind]))
            sig = signal.SIGINT if rng.random() < 0.2 else signal.SIGKILL
            sent = child.kill(sig)
            res = child.wait()
            if sent and res.code == 137:
                kills += 1
            elif sent and res.code == 130:
                interrupts += 1
                assert "interrupted" in one_line(res)
            else:  # finished before the signal; an interrupt it dropped would show here
                assert res.code == 0 and "KeyboardInterrupt" not in res.stderr, res
            report = check_after_crash(ws, logs)
            left["temporary"] += bool(report.get("temporary"))
            left["orphans"] += bool(report.get("orphans"))
            left["dead step"] += bool(report.get("problems"))
        assert outcome(ws, "icl") == reference, ws
        if kills >= 20:
            break
    assert kills >= 20
    print(f"{kills} kills, {interrupts} interrupts, {n + 1} workspaces; left behind: {left}")


def _next_command(ws, init: list, rng: random.Random) -> tuple[list, str]:
    """What a user would run next: ``icl init`` until the experiment exists, then either
    ``icl run`` or the next single step."""
    if not has_experiment(ws, "icl"):
        return [*init, "-w", ws], "init"
    run = (["run", "-w", ws, "--rounds", "3", *COMMON], "run")
    if rng.random() < 0.5:
        return run
    ckpts = {r for r, in rows(ws, "SELECT round FROM checkpoints")}
    shards = {r for r, in rows(ws, "SELECT round FROM shards WHERE active")}
    for t in range(1, 4):
        if 0 in ckpts and t not in shards and t - 1 in ckpts:
            return ["synthesize", "-w", ws, "--round", t, *COMMON], "step"
        if t in shards and t not in ckpts and t - 1 in ckpts:
            return ["reclassify", "-w", ws, "--round", t, *COMMON], "step"
    return run
