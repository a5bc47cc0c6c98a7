"""The command-line reference, one Markdown page written from the Typer app itself: every
command with its help and every option with the text ``--help`` prints for it.

    python -m icl_cli.cli.reference > docs/cli.md

``tests/cli/test_reference.py`` fails when the committed page is not what this writes.
"""

from __future__ import annotations

import inspect
import sys

import click

PAGE = "docs/cli.md"


def markdown() -> str:
    """The reference page of every registered command, in ``icl --help``'s order."""
    import typer.main

    from icl_cli.cli import register

    group = typer.main.get_command(register())
    top = click.Context(group, info_name="icl")
    names = group.list_commands(top)
    lines = ["# icl command line", "",
             f"<!-- Written by `python -m icl_cli.cli.reference > {PAGE}` from the Typer app: "
             "change the app, then run it again. -->", "",
             f"`{group.get_usage(top).removeprefix('Usage: ')}`", "",
             inspect.cleandoc(group.help or ""), "",
             *_options(group, top), "",
             "Commands: " + ", ".join(f"[{n}](#icl-{n})" for n in names) + "."]
    for name in names:
        command = group.commands[name]
        ctx = click.Context(command, info_name=name, parent=top)
        lines += ["", f"## icl {name}", "",
                  f"`{command.get_usage(ctx).removeprefix('Usage: ')}`", "",
                  inspect.cleandoc(command.help or ""), "", *_options(command, ctx)]
    return "\n".join(lines) + "\n"


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    """A table of the command's options as its ``--help`` shows them (hidden ones left
    out); ``--help`` itself closes it."""
    rows = [r for r in (p.get_help_record(ctx) for p in command.get_params(ctx)) if r]
    return ["| option | what it does |", "| --- | --- |",
            *(f"| `{_cell(opts)}` | {_cell(text)} |" for opts, text in rows)]


def _cell(text: str) -> str:
    """One line of a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    sys.stdout.write(markdown())
