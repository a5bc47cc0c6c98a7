"""The ``icl`` Typer app: its options shared by several commands, the helpers every command
uses (a store, a runtime), and the way out of a command: one line on stderr and a
documented exit code.

Exit codes (also in ``icl --help``):
  0 done (or already done: a rerun with the same settings is a no-op)
  1 an unexpected internal error (set ICL_DEBUG=1 for the traceback)
  2 a command-line usage error (unknown option, bad value type), on the line or in the
    file of --config (a key no command takes, a file missing or not TOML)
  3 a problem with the request: wrong round, missing step, bad data, bad option value
  4 an integrity problem: a shard or checkpoint failed its checks
  5 busy: another icl process is running a step of the same experiment
  6 not an icl workspace
  7 no space left on the workspace's device (free some, rerun: it finishes what was missing)
  130 interrupted (Ctrl-C); nothing half-written is left behind
  143 terminated (SIGTERM, as Ctrl-C)

The commands live in the modules beside this one and register themselves on ``app`` when
imported (``icl_cli.cli.register``); this module imports none of them. torch is imported
only inside commands, so ``icl --help`` is instant.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from icl_cli.cli import ui

EXIT_CODES_HELP = (
    "Exit codes: 0 done (or already done), 1 internal error, 2 usage error (also in a "
    "--config file), 3 bad request "
    "(wrong round, missing step, bad data), 4 integrity failure, 5 busy, 6 not a workspace, "
    "7 disk full, 130 interrupted, 143 terminated (SIGTERM)."
)


# --- one line and an exit code ------------------------------------------------------
_reported: list[int] = []  # exit codes whose one-line message was printed (this command)
INTERRUPTED = ("interrupted; the step was rolled back and nothing half-written was kept "
               "(run the command again to resume)")
TERMINATED = "terminated (SIGTERM)" + INTERRUPTED.removeprefix("interrupted")
TERMINATED_BY: list[int] = []  # the SIGTERM handler (main) appends the signal


def terminated() -> str:
    """SIGTERM's line. Under torchrun it names the rank and says where a SIGTERM nobody
    sent by hand may come from: the launcher stops every rank once one of them fails."""
    rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    if rank is None or size == "1":
        return TERMINATED
    return (f"rank {rank} of {size}: terminated (SIGTERM); torchrun also sends it to every "
            f"rank once one fails (its report names which)"
            + INTERRUPTED.removeprefix("interrupted"))


_json_mode: list[bool] = [False]  # this command was given --json
_command_line: list[str] = []  # this command's arguments after `icl`, as given


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr (and, under ``--json``, one JSON document on stdout, so a
    script parses every outcome); return the Exit to raise."""
    line = " ".join(str(message).split())
    ui.err.print(f"[bold red]error:[/] {ui.escape(line)}", highlight=False)
    if _json_mode[0] and code not in _reported:
        sys.stdout.write(json.dumps({"error": line, "exit_code": code}) + "\n")
    _reported.append(code)
    return typer.Exit(code)


_INT = r"-?(0|[1-9][0-9]*)"  # what int() and pydantic read alike
_FLOAT = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"  # what float() and pydantic read alike


def coerce_without_pydantic() -> bool:
    """Let Typer coerce flags, plain ``Path`` options (``--json``, ``--workspace``) and
    plainly written numbers and strings (``--round 7``, ``--device cpu``) without
    importing pydantic; True if installed (once per process).

    Typer 0.2x builds a pydantic TypeAdapter for every option it processes, even a flag
    left at its default, and importing pydantic costs ~0.15 s: a third of ``icl status``,
    whose options are a flag and ``--workspace``, and of a finished step's answer from the
    catalog (``icl_cli.finished``). Here a ``bool`` option's value that is already a bool
    is kept, a ``Path`` option's string becomes ``Path(value)`` (what the adapter does) and
    then goes through Typer's own path check (``coerce_cli_path``: exists,
    resolve_path...), a ``str``, ``int`` or ``float`` option's value of that type is kept,
    an ``int`` or ``float`` option's string of plain digits (``_INT``, ``_FLOAT``) becomes
    ``int(value)`` or ``float(value)``, and a list option given no value is ``[]``. Every
    other value (``1_000``, ``inf``, ``abc``: pydantic's to take or to refuse in its words),
    and every other type, still goes to Typer's adapter, built when first needed. Under a
    Typer without these internals, nothing changes.
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

    import re
    from dataclasses import dataclass

    plain = {int: re.compile(_INT), float: re.compile(_FLOAT)}
    lists = (list[Path], list[str], list[int], list[float])

    @dataclass(frozen=True)
    class LightParam(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.annotation is bool and isinstance(value, bool):
                return value
            if self.annotation is Path and isinstance(value, str | Path):
                return coerce_cli_path(Path(value), self.parameter_info, path_type=Path,
                                       param=param, ctx=ctx)
            if self.annotation in lists and value in ((), []):
                return []  # a repeatable option not given
            if self.annotation in (str, int, float) and type(value) is self.annotation:
                return value  # a default, or a --config value: already of its type
            if self.annotation in plain and isinstance(value, str) \
                    and plain[self.annotation].fullmatch(value):
                return self.annotation(value)
            full = build_runtime_param(param.type_descriptor)  # pydantic, now needed
            return full._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        desc = getattr(self, "type_descriptor", None)
        info = getattr(desc, "parameter_info", None)
        if (self._runtime_param is None and desc is not None
                and desc.annotation in (bool, Path, str, int, float, *lists)
                and desc.file_annotation is None and not desc.is_choice
                and not desc.is_ranged
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
        given = [str(a) for a in (sys.argv[1:] if args is None else list(args))]
        _json_mode[0] = "--json" in given
        _command_line[:] = given
        try:
            _ranks_agree(given)
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
        except _RanksDisagree as exc:
            fail(str(exc), exc.code)
            sys.exit(exc.code)
        code = code if isinstance(code, int) else 0
        # An interrupt outside `user_errors` (e.g. while torch imports): Typer turns it
        # into exit 130; SIGTERM's handler left its mark in TERMINATED_BY.
        if code == 130 and TERMINATED_BY:
            code = 143
        if code in (130, 143) and code not in _reported:
            fail(terminated() if code == 143 else INTERRUPTED, code)
        sys.exit(code)


RANK_STEPS = ("init", "synthesize", "reclassify", "run")
"""The commands whose steps split over torchrun's ranks (each states what it runs through
``icl_cli.steps.common.join_ranks``)."""


class _RanksDisagree(Exception):
    """Under torchrun, this rank could not agree with the others on the command (the
    one line to print, and its exit code)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _ranks_agree(args: list[str]) -> None:
    """Under torchrun (WORLD_SIZE > 1), a command that does not split over the ranks still
    states its command line to the others before it runs (``distributed.handshake``): a
    rank running another command than the rest fails every rank in one line, instead of
    leaving them waiting in a collective. The commands of ``RANK_STEPS`` state it
    themselves, with what their step resolved it to. Outside torchrun: nothing (and no
    torch import)."""
    name = args[0] if args else ""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "1") or name in RANK_STEPS \
            or name not in {command_name(c) for c in app.registered_commands} \
            or "--help" in args:
        return
    try:
        import torch

        from icl_cli import distributed
        from icl_cli.errors import StepError

        try:
            distributed.join(torch.device("cpu"), {"command": args, "step": name})
        except StepError as exc:
            raise _RanksDisagree(str(exc), 3) from None
    except KeyboardInterrupt as exc:
        term = type(exc).__name__ == "Terminated"
        raise _RanksDisagree(terminated() if term else INTERRUPTED, 143 if term else 130
                             ) from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every expected failure into one stderr line and a documented exit code.

    The line and the code are those of the Python API's typed error (``icl_cli.api.
    translate``: a catalog that cannot be used is exit 3, a damaged one exit 4, ...), so
    the two never disagree; the store's errors arrive typed (``store.errors``), never as
    SQLAlchemy's. Anything else is an internal error (exit 1)."""
    from icl_cli.api import translate
    from store import Terminated

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Terminated:
        raise fail(terminated(), 143) from None
    except KeyboardInterrupt:
        raise fail(INTERRUPTED, 130) from None
    except Exception as exc:
        mapped = translate(exc)
        if mapped is not None:
            raise fail(str(mapped), mapped.exit_code) from None
        if os.environ.get("ICL_DEBUG"):
            raise
        line = str(exc).splitlines()[0] if str(exc) else ""
        raise fail(f"internal error: {type(exc).__name__}: {line} "
                   "(set ICL_DEBUG=1 for the traceback)", 1) from None


# --- the app ------------------------------------------------------------------------
CONFIG_HELP = (
    "Read options from a TOML file (YAML if it ends in .yaml or .yml): a key is an "
    "option's long name without the dashes (train-size = 500; train_size also reads); "
    "top-level keys go to every command that takes them, a [COMMAND] table ([init], "
    "[run], ...) to that command alone; a flag on the command line wins. A key no command "
    "takes is refused (exit 2).")


def _no_commands() -> typer.Typer:
    raise RuntimeError("icl_cli.cli.register() has not run: no command is registered")


# Every command registered, on the app: set by the package (``icl_cli.cli.register``), which
# imports this module, never the other way round.
every_command: Callable[[], typer.Typer] = _no_commands


def _read_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None
                 ) -> Path | None:
    """``--config FILE`` (eager, so it runs before the other options are read): the
    file's values for this command become its Click ``default_map``, which a value given
    on the command line overrides (``icl_cli.cli.configfile``)."""
    if value is None or ctx.resilient_parsing:
        return value
    import typer.main

    from icl_cli.cli import configfile

    try:
        doc = configfile.read(value)
        # every command (the package hands over its register(): the whole file checked)
        group = typer.main.get_command(every_command())
        known = {name: configfile.option_keys(c) for name, c in group.commands.items()}
        given = configfile.resolve(doc, ctx.command.name or "", known, f"--config {value}")
    except configfile.ConfigFileError as exc:
        raise fail(str(exc), 2) from None
    ctx.default_map = {**(ctx.default_map or {}), **given}
    if given.get("json") is True:
        _json_mode[0] = True
    return value


ConfigFile = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE", is_eager=True, callback=_read_config, help=CONFIG_HELP)]


def with_config(command):
    """``command`` with a ``--config FILE`` option (``ConfigFile``) added to its
    signature, so that every command reads a config file without code of its own."""
    @functools.wraps(command)
    def read_config_first(*args, config: Path | None = None, **kwargs):
        return command(*args, **kwargs)

    sig = inspect.signature(command, eval_str=True)
    option = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=ConfigFile)
    read_config_first.__signature__ = sig.replace(
        parameters=[*sig.parameters.values(), option])
    return read_config_first


class _App(typer.Typer):
    """The Typer app whose every command takes ``--config FILE`` (``with_config``)."""

    def command(self, *args: Any, **kwargs: Any):
        register = super().command(*args, **kwargs)

        def decorator(f):
            register(with_config(f))
            return f
        return decorator


app = _App(
    help="Introspective Classifier Learning: a CNN classifier that is also its own generator. "
    "Train C_0 with `icl init`, then per round `icl synthesize`, `icl reclassify`, "
    "`icl evaluate` (or `icl run --rounds T`). Every command reads options from "
    "--config FILE (TOML). " + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    cls=OneLineErrors,
    pretty_exceptions_enable=False,
    # Plain click help: Typer's rich help imports rich.markdown, pygments and markdown-it
    # (~0.25 s), which alone would take `icl --help` past 0.5 s (BENCHMARKS.md).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from icl_cli import __version__

        print(f"icl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print icl's version.")] = False,
          ) -> None:
    pass


# --- options shared by several commands ---------------------------------------------
Workspace = Annotated[Path | None, typer.Option(
    "--workspace", "-w", envvar="ICL_WORKSPACE",
    help="Workspace folder (default: the current folder or the nearest parent holding one).")]
Experiment = Annotated[str | None, typer.Option(
    "--experiment", "-e", help="Experiment name (default: the only one, or the latest).")]
ROUND_LIMIT = 2**31  # what every catalog backend stores as an integer


def bounded(flag: str):
    """A callback refusing a count or round too large to be stored (exit 3, one line)."""
    def check(value: int | None) -> int | None:
        if value is not None and abs(value) >= ROUND_LIMIT:
            raise fail(f"{flag} must be below {ROUND_LIMIT}, got {value}", 3)
        return value
    return check


# Upper bounds no real use reaches (the paper: 30 rounds, 15 bins, PGD with 40 steps and
# 1 restart), so that a typo cannot run for days or take all memory; each is said in its
# option's help and refused up front, in one line naming the flag (exit 3).
MAX_ROUNDS = 1_000
MAX_EPOCHS = 10_000
MAX_SAMPLER_STEPS = 100_000
MAX_BINS = 1_000
MAX_PGD_STEPS = 10_000
MAX_RESTARTS = 100
MAX_PGD_WORK = 100_000  # --steps x --restarts: gradient steps per image at most
MAX_LIMIT = 10_000_000
THREADS_PER_CORE = 4  # --threads, and processes of --parallel, per core of this machine


def at_most(flag: str, limit: int):
    """A callback refusing a value above ``limit`` (exit 3, one line naming the flag); a
    value below its own lower bound is the step's to refuse, as before."""
    storable = bounded(flag)

    def check(value: int | None) -> int | None:
        if storable(value) is not None and value > limit:
            raise fail(f"{flag} must be at most {limit:,}, got {value}", 3)
        return value
    return check


def cores() -> int:
    return os.cpu_count() or 1


def _threads(value: int | None) -> int | None:
    """--threads: 1 to 4 per core of this machine, checked before anything starts."""
    if value is not None and value < 1:
        raise fail(f"--threads must be >= 1, got {value}", 3)
    if value is not None and value > THREADS_PER_CORE * cores():
        raise fail(f"--threads {value} is more than {THREADS_PER_CORE} per core of this "
                   f"machine ({cores()} cores)", 3)
    return value


Round = Annotated[int, typer.Option("--round", "-r", help="Round t.",
                                    callback=bounded("--round"))]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Threads = Annotated[int | None, typer.Option(
    help="torch CPU threads (default: torch's; at most 4 per core).", callback=_threads)]
Amp = Annotated[bool, typer.Option("--amp", help="bf16 autocast (GPU).")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network that reclassifies and samples (its first "
    "step compiles, seconds to minutes). Off by default until timed on a GPU; results "
    "differ from the default only in floating-point order (about 1e-6 relative, "
    "tests/algo/test_compile.py: 1e-5). Recorded with the step: a step done without it is "
    "not taken as done with it.")]
ChannelsLast = Annotated[bool, typer.Option(
    "--channels-last", help="Run the network that reclassifies and samples in the "
    "channels_last (NHWC) memory layout; checkpoints are stored as without it. Off by "
    "default until timed on a GPU; results differ from the default only in floating-point "
    "order (about 1e-6 relative, tests/algo/test_compile.py: 1e-5). Recorded with the "
    "step: a step done without it is not taken as done with it.")]
NoMlflow = Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Force = Annotated[bool, typer.Option("--force", help="Redo a finished step (new version).")]
Replay = Annotated[bool, typer.Option(
    "--replay", help="Re-run the recorded step from its stored config and seed and report "
    "whether the result matches bit for bit.")]


# --- what every command needs -------------------------------------------------------
def open_store(workspace: Path | None, create: bool = False):
    """The store of the workspace at (or above) ``workspace``; ``create``: make one there
    (or in the current folder) unless it is inside a workspace already."""
    from store import NotAWorkspace, Store
    from store.workspace import find_workspace

    if create:  # into the enclosing workspace, if any (never a nested one)
        if workspace is None:
            try:
                workspace = find_workspace(None)
            except NotAWorkspace:
                workspace = Path.cwd()
        return Store.init(workspace.resolve())
    return Store.open(find_workspace(workspace))


def runtime(device: str, threads: int | None, amp: bool = False, no_mlflow: bool = False,
            progress: bool = True, compile: bool = False, channels_last: bool = False):
    """The steps' Runtime from the runtime options, with rich progress bars on stderr."""
    from icl_cli.steps.common import Runtime

    return Runtime(device=device, threads=threads, amp=amp, compile=compile,
                   channels_last=channels_last, mlflow=not no_mlflow,
                   progress=ui.RichProgress(progress), command=tuple(_command_line))


def replay_verdict(what: str, match: bool | None, note: str | None = None,
                   drift: str | None = None) -> None:
    """Print whether a replayed step reproduced its record; exit 4 when it did not (the
    same code as with --json, where ``replay_match`` carries the verdict). ``note``: the
    verdict in words when it is not a bit-for-bit comparison (another world size);
    ``drift``: what changed in the network's code since the experiment was made."""
    verdict = note or ('matches bit for bit' if match else 'DIFFERS from the record')
    if drift:
        verdict += f"; note: {drift}"
    ui.out.print(f"replay of {what}: {verdict}")
    raise typer.Exit(0 if match else 4)


def errors_table(rows: list, title: str | None) -> None:
    """Evaluations as a table: experiment, round, split, error %, n."""
    ui.table(title, ["experiment", "round", "split", "error %", "n"],
             [[e.experiment, e.round, e.split, ui.pct(e.error), e.n] for e in rows])


# --- running it ---------------------------------------------------------------------
def _terminated(signum, frame) -> None:
    from store.errors import Terminated

    TERMINATED_BY.append(signum)
    raise Terminated  # unwinds like Ctrl-C: the step is logged interrupted, temps removed


def _redeliver_lost_interrupts() -> None:
    """A Ctrl-C or SIGTERM that lands while Python runs a finalizer (a weakref callback
    of the garbage collector, e.g. SQLAlchemy's) raises there, and Python drops it with
    "Exception ignored in ...": the command would run on to the end and exit 0. Such an
    interrupt is delivered again, to the code that runs next."""
    import signal
    import threading

    earlier = sys.unraisablehook
    if getattr(earlier, "icl_redelivers", False):  # main() ran before in this process
        return

    def again(signum: int) -> None:
        time.sleep(0.01)  # once this process is back in ordinary code
        os.kill(os.getpid(), signum)

    def hook(unraisable) -> None:
        kind = unraisable.exc_type
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            # Sent from another thread: a signal raised from here would run its handler
            # here, inside the finalizer, and be dropped again.
            term = kind.__name__ == "Terminated"
            threading.Thread(target=again, args=(signal.SIGTERM if term else signal.SIGINT,),
                             daemon=True).start()
            return
        earlier(unraisable)

    hook.icl_redelivers = True
    sys.unraisablehook = hook


def command_name(command) -> str:
    """The name a registered command is called by on the command line."""
    return command.name or typer.main.get_command_name(command.callback.__name__)


def _only_the_command(args: list[str]) -> typer.Typer:
    """``app`` with only the command being run registered. Typer builds every command (it
    inspects each signature) before it parses the line: for icl's 12 that is ~0.1 s of a
    read-only command's 0.5 s. The command's parsing, help and errors are its own, so they
    are unchanged; with no command name first (``icl``, ``icl --help``, ``icl --version``)
    or an unknown one, the whole app answers as before."""
    import copy

    name = args[0] if args else ""
    chosen = [c for c in app.registered_commands if command_name(c) == name]
    if len(chosen) != 1:
        return app
    only = copy.copy(app)
    only.registered_commands = chosen
    return only


def _leave_ranks(code: Any) -> None:
    """A torchrun rank that ends on an error or a signal leaves at once: its line is
    printed and its step recorded by now, and waiting for the other ranks at exit (or
    tearing down a process group whose peers are gone) could keep it alive past the
    signal, or end it with another code. A rank that succeeded leaves with the others and
    ends without the interpreter's teardown (``distributed.finish``). Nothing outside
    torchrun."""
    distributed = sys.modules.get("icl_cli.distributed")
    if distributed is None or not distributed.current_is_open():
        return
    if code in (0, None):
        distributed.finish()
        return
    distributed.abandon()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 1)


def main() -> None:
    """Run the command on ``sys.argv`` among those registered on ``app`` (the console
    script ``icl_cli.cli:icl`` registers the one named there, or all of them, first)."""
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    _redeliver_lost_interrupts()
    try:
        _only_the_command(sys.argv[1:])()
    except KeyboardInterrupt as exc:  # while Typer builds the command, before any step
        term = type(exc).__name__ == "Terminated"
        fail(terminated() if term else INTERRUPTED, 143 if term else 130)
        _leave_ranks(143 if term else 130)
        raise SystemExit(143 if term else 130) from None
    except SystemExit as exc:
        _leave_ranks(exc.code)
        raise
    finally:
        # The command's work is recorded (or cleanly refused) by now: a Ctrl-C that lands
        # while the interpreter tears torch down would only print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
