"""Terminal output: rich progress bars on stderr, results on stdout (tables or JSON).

Exit codes (also in ``icl --help``):
  0 done (or already done: a rerun with the same settings is a no-op)
  1 an unexpected internal error (set ICL_DEBUG=1 for the traceback)
  2 a command-line usage error (unknown option, bad value type)
  3 a problem with the request: wrong round, missing step, bad data, bad option value
  4 an integrity problem: a shard or checkpoint failed its checks
  5 busy: another icl process is running a step of the same experiment
  6 not an icl workspace
  7 no space left on the workspace's device (free some, rerun: it finishes what was missing)
  130 interrupted (Ctrl-C); nothing half-written is left behind
  143 terminated (SIGTERM, as Ctrl-C)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

if TYPE_CHECKING:
    from rich.progress import Progress

EXIT_CODES_HELP = (
    "Exit codes: 0 done (or already done), 1 internal error, 2 usage error, 3 bad request "
    "(wrong round, missing step, bad data), 4 integrity failure, 5 busy, 6 not a workspace, "
    "7 disk full, 130 interrupted, 143 terminated (SIGTERM)."
)

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


_reported: list[int] = []  # exit codes whose one-line message was printed (this command)
INTERRUPTED = ("interrupted; the step was rolled back and nothing half-written was kept "
               "(run the command again to resume)")
TERMINATED = "terminated (SIGTERM)" + INTERRUPTED.removeprefix("interrupted")
TERMINATED_BY: list[int] = []  # the SIGTERM handler (icl_cli.app) appends the signal


_json_mode: list[bool] = [False]  # this command was given --json


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr (and, under ``--json``, one JSON document on stdout, so a
    script parses every outcome); return the Exit to raise."""
    line = " ".join(str(message).split())
    err.print(f"[bold red]error:[/] {escape(line)}", highlight=False)
    if _json_mode[0] and code not in _reported:
        sys.stdout.write(json.dumps({"error": line, "exit_code": code}) + "\n")
    _reported.append(code)
    return typer.Exit(code)


def coerce_without_pydantic() -> bool:
    """Let Typer coerce flags and plain ``Path`` options (``--json``, ``--workspace``)
    without importing pydantic; True if installed (once per process).

    Typer 0.2x builds a pydantic TypeAdapter for every option it processes, even a flag
    left at its default, and importing pydantic costs ~0.15 s: a third of ``icl status``,
    whose options are a flag and ``--workspace``. Here a ``bool`` option's value that is
    already a bool is kept, and a ``Path`` option's string becomes ``Path(value)`` (what the
    adapter does) and then goes through Typer's own path check (``coerce_cli_path``:
    exists, resolve_path...). Every other value, and every other type, still goes to
    Typer's adapter, built when first needed. Under a Typer without these internals,
    nothing changes.
    """
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_path
        from typer.core import _TyperParameter
    except ImportError:
        return False
    typer_own = _TyperParameter.get_runtime_param
    if getattr(typer_own, "icl_light", False):
        return True

    from dataclasses import dataclass
    from pathlib import Path

    @dataclass(frozen=True)
    class LightParam(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.annotation is bool and isinstance(value, bool):
                return value
            if self.annotation is Path and isinstance(value, str | Path):
                return coerce_cli_path(Path(value), self.parameter_info, path_type=Path,
                                       param=param, ctx=ctx)
            full = build_runtime_param(param.type_descriptor)  # pydantic, now needed
            return full._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        desc = getattr(self, "type_descriptor", None)
        info = getattr(desc, "parameter_info", None)
        if (self._runtime_param is None and desc is not None
                and desc.annotation in (bool, Path) and desc.file_annotation is None
                and getattr(info, "parser", 1) is None
                and getattr(info, "path_type", 1) is None):
            self._runtime_param = LightParam(parameter_info=info, annotation=desc.annotation)
        return typer_own(self)

    get_runtime_param.icl_light = True
    _TyperParameter.get_runtime_param = get_runtime_param
    return True


class OneLineErrors(TyperGroup):
    """The app's click group: every way out is one line on stderr and a documented code.

    Usage errors (unknown option, missing ``--round``, ``--round abc``) print one line
    instead of click's usage box (exit 2), and Ctrl-C outside a step (while parsing,
    importing torch...) prints the interrupt line (exit 130) instead of nothing.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        coerce_without_pydantic()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        _reported.clear()
        _json_mode[0] = "--json" in (sys.argv[1:] if args is None else list(args))
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's usage errors (Typer vendors click)
            code = getattr(exc, "exit_code", 2)
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `icl`: the help page
                exc.show()
                sys.exit(code)
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "icl"
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            fail(f"{message} (see `{where} --help`)", code)
            sys.exit(code)
        except typer.Abort:  # EOF on a prompt
            fail(INTERRUPTED, 130)
            sys.exit(130)
        code = code if isinstance(code, int) else 0
        # An interrupt outside `user_errors` (e.g. while torch imports): Typer turns it
        # into exit 130; SIGTERM's handler left its mark in TERMINATED_BY.
        if code == 130 and TERMINATED_BY:
            code = 143
        if code in (130, 143) and code not in _reported:
            fail(TERMINATED if code == 143 else INTERRUPTED, code)
        sys.exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every expected failure into one stderr line and a documented exit code.

    The store's errors arrive typed (``store.errors``: a catalog that cannot be used is a
    StoreError, exit 3; a damaged one an IntegrityError, exit 4), never as SQLAlchemy's."""
    from icl_cli.errors import DataError, StepError
    from store import BusyError, IntegrityError, NotAWorkspace, StoreError, Terminated
    from store.workspace import DiskFull, no_space

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
    except DiskFull as exc:
        raise fail(str(exc), 7) from None
    except (StoreError, StepError, DataError) as exc:
        raise fail(str(exc), 3) from None
    except Terminated:
        raise fail(TERMINATED, 143) from None
    except KeyboardInterrupt:
        raise fail(INTERRUPTED, 130) from None
    except OSError as exc:
        full = no_space(None, exc)
        if full is not None:
            raise fail(str(full), 7) from None
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
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN or Infinity
    return obj


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(obj), indent=2, default=str, allow_nan=False) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
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
