"""Ctrl-C (SIGINT) and SIGTERM held during a catalog write: a write and its connection's
return to the pool are never torn in two by an interrupt, which comes right after.

An interrupt landing inside a write's commit or inside the pool's return of its
connection could leave that connection out of the pool with its transaction open,
holding SQLite's write lock; the process's next write (the interrupted step's own row)
then waited for itself until the busy timeout ran out, eight times.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Terminated


@contextmanager
def ctrl_c_held() -> Iterator[list]:
    """Hold Ctrl-C and SIGTERM for the ``with`` body. Yields a list of the signals that
    came meanwhile; the caller then raises ``interrupt(list)`` at a clean point. Inside
    another hold (or off the main thread) it holds nothing itself: the outer one collects."""
    pressed: list = []
    if (threading.current_thread() is not threading.main_thread()
            or getattr(signal.getsignal(signal.SIGINT), "icl_holds", False)):
        yield pressed
        return

    def hold(signum, _frame) -> None:
        pressed.append(signum)

    hold.icl_holds = True
    held = (signal.SIGINT, signal.SIGTERM)
    try:
        old = [signal.signal(sig, hold) for sig in held]
    except (ValueError, OSError):  # not allowed here (embedded interpreter...)
        yield pressed
        return
    try:
        yield pressed
    finally:
        for sig, handler in zip(held, old, strict=True):
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def interrupt(pressed: list) -> KeyboardInterrupt:
    """The interrupt to raise for the signals ``ctrl_c_held`` held."""
    return Terminated() if signal.SIGTERM in pressed else KeyboardInterrupt()
