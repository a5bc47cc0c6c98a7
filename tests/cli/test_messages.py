"""One-line errors that name the option at fault and suggest commands that run as written,
and figures that live where their content belongs."""

import shlex

import pytest

from tests.kit import COMMON, TINY, icl


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A baseline and a paired ICL experiment; ICL at round 1 (shard and checkpoint)."""
    ws = tmp_path_factory.mktemp("ws")
    icl("init", "-w", ws, "-e", "base", "--method", "baseline", *TINY, *COMMON)
    icl("init", "-w", ws, "-e", "icl", "--method", "icl", "--from", "base:0", *COMMON)
    icl("run", "-w", ws, "-e", "icl", "--rounds", "1", *COMMON)
    return ws


def one_line(res) -> str:
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error:") and "Traceback" not in res.output
    return line


def suggested(line: str) -> list[str]:
    """The command quoted in a message (`icl ...`), as arguments after ``icl``."""
    quoted = line.split("`")[1]
    argv = shlex.split(quoted)
    assert argv[0] == "icl", line
    return argv[1:]


def test_attack_names_against_when_its_round_is_not_a_number(ws):
    line = one_line(icl("attack", "-w", ws, "-e", "icl", "--round", "1", "--against",
                        "base:1:2", *COMMON, code=3))
    assert "--against takes EXPERIMENT:ROUND" in line and "'base:1:2'" in line
    assert "--from" not in line


@pytest.mark.parametrize("args, expected", [
    (["--round", "-1"], "--round must be >= 1 to inspect"),
    (["--round", "0"], "--round must be >= 1 to inspect"),
    (["--round", "1", "--version", "0"], "no version 0 of round 1 (its shard versions: v1)"),
    (["--round", "1", "--version", "7"], "no version 7 of round 1 (its shard versions: v1)"),
])
def test_inspect_suggests_a_command_that_runs(ws, args, expected):
    line = one_line(icl("inspect", "-w", ws, "-e", "icl", *args, code=3))
    assert expected in line
    argv = suggested(line)
    assert argv[:1] == ["inspect"] and "-1" not in argv and "0" not in argv
    icl(*argv, "-w", ws)  # as written


def test_inspect_of_a_round_still_to_draw_names_the_step_that_draws_it(ws, tmp_path):
    import shutil

    copy = shutil.copytree(ws, tmp_path / "copy")
    line = one_line(icl("inspect", "-w", copy, "-e", "icl", "--round", "2", code=3))
    assert suggested(line) == ["synthesize", "--round", "2", "-e", "icl"]
    icl(*suggested(line), "-w", copy, *COMMON)
    line = one_line(icl("inspect", "-w", copy, "-e", "icl", "--round", "4", code=3))
    assert suggested(line) == ["run", "--rounds", "4", "-e", "icl"]
    line = one_line(icl("inspect", "-w", copy, "-e", "base", "--round", "1", code=3))
    assert "is a baseline" in line


def test_report_draws_its_plot_of_every_experiment_at_the_workspace_top(ws):
    out = icl("report", "-w", ws)
    plot = ws / "figures" / "report-error-vs-round.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(plot) in out.stderr
    assert not list((ws / "experiments").rglob("report-error-vs-round.png"))
    assert "workspace consistent" in icl("verify", "-w", ws).stdout


def test_sigterm_under_torchrun_names_the_rank_and_where_the_signal_came_from(monkeypatch):
    from icl_cli.cli.main import terminated

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = terminated()
    assert alone.startswith("terminated (SIGTERM); the step was rolled back")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    ranked = terminated()
    assert ranked.startswith("rank 1 of 4: terminated (SIGTERM); torchrun also sends it to "
                             "every rank once one fails")
    assert ranked.endswith(alone.removeprefix("terminated (SIGTERM)"))


@pytest.mark.parametrize("raised,caught", [("KeyboardInterrupt", "KeyboardInterrupt"),
                                           ("Terminated", "Terminated")])
def test_an_interrupt_that_lands_in_a_finalizer_is_not_lost(raised, caught):
    """Ctrl-C (or SIGTERM) raised inside a garbage collector's callback is dropped by
    Python ("Exception ignored in ..."), and the command ran on to exit 0; icl delivers
    it again to the code that runs next."""
    import subprocess
    import sys

    from tests.kit import child_env

    code = f"""
import signal, time, weakref
from icl_cli.cli.main import _redeliver_lost_interrupts, _terminated
from store.errors import Terminated
signal.signal(signal.SIGTERM, _terminated)
_redeliver_lost_interrupts()
class Thing: pass
def finalizer(ref): raise {raised}()
thing = Thing(); ref = weakref.ref(thing, finalizer)
try:
    del thing  # the callback raises: Python reports it as unraisable
    for _ in range(200): time.sleep(0.01)
    print("ran on")
except KeyboardInterrupt as exc:
    print(type(exc).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), timeout=120)
    assert out.stdout.strip() == caught, out
    assert "Exception ignored" not in out.stderr, out.stderr
