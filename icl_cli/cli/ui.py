"""Terminal output: results on stdout (tables, or one JSON document), remarks and rich
progress bars on stderr. Errors and exit codes are :mod:`icl_cli.cli.main`'s."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["RichProgress", "emit_json", "err", "escape", "note", "out", "pct", "table",
           "to_plain"]

out = Console(soft_wrap=True)  # results only
err = Console(stderr=True, soft_wrap=True)


class RichProgress:
    """The steps' ``Progress`` protocol as rich bars on stderr (silent when not a TTY;
    ``rich.progress`` is imported when the first bar is drawn)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and err.is_terminal
        self._bar: Progress | None = None

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN or Infinity
    return obj


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(obj), indent=2, default=str, allow_nan=False) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]],
          dense: bool = False) -> None:
    """A table on stdout; ``dense``: no rules but the header's, two spaces between columns,
    for many narrow columns (a per-class table of 10 classes fits 80 columns unwrapped)."""
    from rich import box
    from rich.table import Table

    t = (Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
               padding=(0, 1, 0, 0)) if dense else Table(title=title, title_justify="left"))
    for c in columns:
        t.add_column(c, overflow="fold")  # names in full, wrapped, never cut
    for r in rows:
        t.add_row(*["-" if v is None else str(v) for v in r])
    out.print(t)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def note(message: str) -> None:
    """A human remark on stderr (never part of the results)."""
    err.print(message, highlight=False)
