"""The command line: the ``icl`` console script and where each of its commands lives.

Registration goes one way: ``main`` holds the Typer app, the shared options and the error
rendering, and imports no command module; each command module (``loop``, ``workspace``,
``measure``) imports ``main`` and registers its commands on ``main.app`` as it is
imported; this file says which module holds which command, so that ``icl status`` imports
``workspace`` alone (Typer inspects every registered command before it parses a line). No
module outside this package imports it.

Example:
    >>> app = register()  # every command, as `icl --help` lists them
    >>> [c.callback.__name__ for c in app.registered_commands][:3]
    ['init', 'synthesize', 'reclassify']
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

COMMANDS: dict[str, str] = {
    # command -> its module in this package, in the order `icl --help` lists them
    "init": "loop",
    "synthesize": "loop",
    "reclassify": "loop",
    "evaluate": "measure",
    "attack": "measure",
    "ood": "measure",
    "quality": "measure",
    "inspect": "workspace",
    "run": "loop",
    "status": "workspace",
    "verify": "workspace",
    "report": "workspace",
}


def register(command: str | None = None) -> typer.Typer:
    """The app with the module holding ``command`` imported, or every command module when
    ``command`` is None or not a command's name (``icl --help``, a typo): each registers
    its commands as it is imported."""
    modules = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for module in dict.fromkeys(modules):
        importlib.import_module(f"{__name__}.{module}")
    from icl_cli.cli import main

    main.every_command = register
    app, command_name = main.app, main.command_name
    order = list(COMMANDS)
    app.registered_commands.sort(key=lambda c: order.index(command_name(c)))
    return app


def icl() -> None:
    """The ``icl`` console script (and ``python -m icl_cli``): the command named first on
    the line is registered alone, then run."""
    from icl_cli.cli.main import main

    args = sys.argv[1:]
    register(args[0] if args else None)
    main()
