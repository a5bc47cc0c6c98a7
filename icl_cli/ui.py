"""Terminal output: rich progress bars on stderr, results on stdout (tables or JSON).

Exit codes (also in ``icl --help``):
  0 done (or already done: a rerun with the same settings is a no-op)
  1 an unexpected internal error (set ICL_DEBUG=1 for the traceback)
  2 a command-line usage error (unknown option, bad value type)
  3 a problem with the request: wrong round, missing step, bad data, bad option value
  4 an integrity problem: a shard or checkpoint failed its checks
  5 busy: another icl process is running a step of the same experiment
  6 not an icl workspace
  130 interrupted (Ctrl-C); nothing half-written is left behind
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

EXIT_CODES_HELP = (
    "Exit codes: 0 done (or already done), 1 internal error, 2 usage error, 3 bad request "
    "(wrong round, missing step, bad data), 4 integrity failure, 5 busy, 6 not a workspace, "
    "130 interrupted."
)

out = Console(soft_wrap=True)  # results only
err = Console(stderr=True, soft_wrap=True)


class RichProgress:
    """The steps' ``Progress`` protocol as rich bars on stderr (silent when not a TTY)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and err.is_terminal
        self._bar: Progress | None = None

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        self.done()
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=err, transient=True)
        self._bar.start()
        task_id = self._bar.add_task(description, total=total)
        bar = self._bar
        return lambda n: bar.advance(task_id, n)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr; return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every expected failure into one stderr line and a documented exit code."""
    from icl_cli.data import DataError
    from icl_cli.steps.common import StepError
    from store import BusyError, IntegrityError, NotAWorkspace, StoreError

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except NotAWorkspace as exc:
        raise fail(str(exc), 6) from None
    except BusyError as exc:
        raise fail(str(exc), 5) from None
    except IntegrityError as exc:
        raise fail(str(exc), 4) from None
    except (StoreError, StepError, DataError) as exc:
        raise fail(str(exc), 3) from None
    except KeyboardInterrupt:
        raise fail("interrupted; the step was rolled back and nothing half-written was kept "
                   "(run the command again to resume)", 130) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 3) from None
    except Exception as exc:
        if os.environ.get("ICL_DEBUG"):
            raise
        line = str(exc).splitlines()[0] if str(exc) else ""
        raise fail(f"internal error: {type(exc).__name__}: {line} "
                   "(set ICL_DEBUG=1 for the traceback)", 1) from None


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(obj), indent=2, default=str) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["-" if v is None else str(v) for v in r])
    out.print(t)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def note(message: str) -> None:
    """A human remark on stderr (never part of the results)."""
    err.print(message, highlight=False)
