"""The supervisor of ``icl run -e A -e B --parallel N``: one child process (a lane) per
experiment; the children report, the parent shows.

The parent (``icl run -e baseline -e icl --parallel 2``) starts one ``icl run -e NAME
--json`` child per experiment, at most ``parallel`` at a time. Each child writes its
progress as JSON lines on a pipe (the hidden ``--progress-fd``), one object per line::

    {"event": "loop", "step": "synthesize", "round": 2}
    {"event": "task", "description": "synthesize round 2", "total": 200}
    {"event": "advance", "completed": 57}
    {"event": "loop", "round": 2, "done": true, "test_error": 0.07, "val_error": 0.08}

and its results as one JSON document on its stdout. The parent draws a live table on
stderr (a line per event when stderr is not a terminal) and prints the results on stdout
once every child has ended. Ctrl-C or SIGTERM reaches the parent only (each child has its
own session) and is passed on to every running child, which logs its step interrupted.
No torch here: the parent never imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ADVANCE_EVERY_S = 0.2  # a child reports a bar's progress at most this often


class EventWriter:
    """The steps' ``Progress`` protocol (and ``run_rounds``' watch) as JSON lines on a
    pipe. A parent that went away is ignored: the step's work matters more than its bar."""

    def __init__(self, stream: IO[str]) -> None:
        self._out = stream
        self._broken = False

    @classmethod
    def to_fd(cls, fd: int) -> EventWriter:
        return cls(os.fdopen(fd, "w", buffering=1, encoding="utf-8"))

    def emit(self, event: str, **fields: Any) -> None:
        if self._broken:
            return
        try:
            self._out.write(json.dumps({"event": event, **fields}, default=str) + "\n")
            self._out.flush()
        except (OSError, ValueError):
            self._broken = True

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        self.emit("task", description=description, total=total)
        state = {"completed": 0, "sent": time.monotonic()}

        def advance(n: int) -> None:
            state["completed"] += n
            now = time.monotonic()
            if now - state["sent"] >= ADVANCE_EVERY_S or (
                    total is not None and state["completed"] >= total):
                state["sent"] = now
                self.emit("advance", completed=state["completed"])
        return advance

    def done(self) -> None:
        self.emit("task-done")

    def watch(self, event: dict[str, Any]) -> None:
        self.emit("loop", **event)


@dataclass
class Lane:
    """One experiment's child process and what it last reported."""

    name: str
    argv: list[str]
    state: str = "waiting"  # waiting, running, done, failed, interrupted
    round: int | None = None
    step: str = ""
    description: str = ""
    total: int | None = None
    completed: int = 0
    test_error: float | None = None
    val_error: float | None = None
    code: int | None = None
    stdout: str = ""
    stderr: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def error(self) -> str:
        """The child's one-line error (its last stderr line that says ``error:``)."""
        for line in reversed(self.stderr):
            if "error:" in line:
                return line.split("error:", 1)[1].strip()
        return self.stderr[-1].strip() if self.stderr else f"exit code {self.code}"

    def result(self) -> Any:
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except json.JSONDecodeError:
            return None


def die_with_parent() -> None:
    """Called by a child: SIGTERM when the parent dies (Linux), so a parent killed with
    -9 does not leave children running on their own; they stop as on ``timeout``."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Board:
    """Runs the lanes, at most ``parallel`` at once, and shows them on ``console``
    (a rich Console on stderr)."""

    def __init__(self, lanes: list[Lane], parallel: int, console, live: bool | None = None):
        self.lanes = lanes
        self.parallel = max(1, parallel)
        self.console = console
        self.live = console.is_terminal if live is None else live
        self._lock = threading.Lock()

    # --- the children ----------------------------------------------------------------
    def _start(self, lane: Lane) -> None:
        read, write = os.pipe()
        argv = [*lane.argv, "--progress-fd", str(write)]
        lane.proc = subprocess.Popen(
            argv, env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(write,), start_new_session=True, text=True)
        os.close(write)
        lane.state = "running"
        self._say(lane, "started")
        events = os.fdopen(read, encoding="utf-8")
        lane.readers = [
            threading.Thread(target=self._read_events, args=(lane, events), daemon=True),
            threading.Thread(target=self._read_stdout, args=(lane,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(lane,), daemon=True)]
        for t in lane.readers:
            t.start()

    def _read_events(self, lane: Lane, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                with self._lock:
                    self._apply(lane, event)

    def _read_stdout(self, lane: Lane) -> None:
        assert lane.proc is not None and lane.proc.stdout is not None
        lane.stdout = lane.proc.stdout.read()

    def _read_stderr(self, lane: Lane) -> None:
        assert lane.proc is not None and lane.proc.stderr is not None
        for line in lane.proc.stderr:
            lane.stderr.append(line.rstrip("\n"))

    def _apply(self, lane: Lane, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "task":
            lane.description, lane.total, lane.completed = \
                event.get("description", ""), event.get("total"), 0
        elif kind == "advance":
            lane.completed = int(event.get("completed", 0))
        elif kind == "task-done":
            lane.completed = lane.total or lane.completed
        elif kind == "loop":
            lane.round = event.get("round", lane.round)
            if event.get("done"):
                lane.step = "done"
                lane.test_error = event.get("test_error", lane.test_error)
                lane.val_error = event.get("val_error", lane.val_error)
                lane.description, lane.total, lane.completed = "", None, 0
                self._say(lane, f"round {lane.round} done (test {_pct(lane.test_error)} %, "
                                f"val {_pct(lane.val_error)} %)")
            else:
                lane.step = event.get("step", "")
                lane.description, lane.total, lane.completed = "", None, 0
                if "retry" in event:  # --recover: a diverged round trained again
                    self._say(lane, f"round {lane.round} diverged ({event.get('after')}); "
                                    f"retry {event['retry']} of {event.get('of')} with "
                                    f"{event.get('changes')}")

    def _finish(self, lane: Lane, code: int) -> None:
        for t in lane.readers:
            t.join(timeout=10)
        lane.code = code
        lane.state = ("done" if code == 0 else
                      "interrupted" if code in (130, 143) else "failed")
        self._say(lane, "finished" if code == 0 else f"{lane.state} (exit {code}): "
                  f"{lane.error}" if lane.state == "failed" else lane.state)

    def run(self) -> list[Lane]:
        """Start, watch and reap every lane. On Ctrl-C or SIGTERM (raised here as
        KeyboardInterrupt, or store's Terminated), every running child gets the same
        signal and is waited for; then the interrupt goes on up."""
        waiting = list(self.lanes)
        running: list[Lane] = []
        live = self._live()
        try:
            with live:
                while waiting or running:
                    while waiting and len(running) < self.parallel:
                        lane = waiting.pop(0)
                        self._start(lane)
                        running.append(lane)
                    for lane in list(running):
                        assert lane.proc is not None
                        code = lane.proc.poll()
                        if code is not None:
                            self._finish(lane, code)
                            running.remove(lane)
                    live.update(self.render())
                    time.sleep(0.1)
                live.update(self.render())
        except KeyboardInterrupt as exc:
            sig = signal.SIGTERM if type(exc).__name__ == "Terminated" else signal.SIGINT
            self._stop(running, sig)
            raise
        return self.lanes

    def _stop(self, running: list[Lane], sig: int) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still wait
        try:
            for lane in running:
                assert lane.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    lane.proc.send_signal(sig)
            for lane in running:
                assert lane.proc is not None
                try:
                    code = lane.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    lane.proc.kill()
                    code = lane.proc.wait()
                self._finish(lane, code)
        finally:
            signal.signal(signal.SIGINT, old)

    # --- the view ----------------------------------------------------------------------
    def _say(self, lane: Lane, what: str) -> None:
        """A plain line per event when stderr is not a terminal (logs, CI)."""
        if not self.live:
            self.console.print(f"{lane.name}: {what}", highlight=False, markup=False)

    def _live(self):
        if not self.live:
            return _NoLive()
        from rich.live import Live

        return Live(self.render(), console=self.console, refresh_per_second=4,
                    transient=False)

    def render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        t = Table(title="icl run", title_justify="left")
        for c, width in (("experiment", None), ("round", None), ("step", 10),
                         ("progress", 24), ("", 11), ("test %", None), ("val %", None),
                         ("state", None)):
            t.add_column(c, min_width=width)  # fixed where it moves: the table stays still
        with self._lock:
            for lane in self.lanes:
                bar: Any = ""
                count = ""
                if lane.total:
                    bar = ProgressBar(total=lane.total, completed=min(lane.completed,
                                                                      lane.total), width=24)
                    count = f"{lane.completed}/{lane.total}"
                state = lane.state if lane.state != "failed" else f"failed: {lane.error}"
                t.add_row(lane.name, "-" if lane.round is None else str(lane.round),
                          lane.step or "-", bar, count, _pct(lane.test_error),
                          _pct(lane.val_error), state)
        return t


def _child_env() -> dict[str, str]:
    """The parent's environment, with this icl first on the path: a child runs the same
    code as its parent, wherever it was imported from."""
    here = str(Path(__file__).resolve().parents[2])  # the folder holding icl_cli
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + path if path else "")}


class _NoLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, renderable) -> None:
        pass


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"
