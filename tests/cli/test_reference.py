"""docs/cli.md, the command-line reference, is what ``python -m icl_cli.cli.reference``
writes from the Typer app: every command, every option, each with its help."""

import click
import typer.main

from icl_cli.cli import COMMANDS, register
from icl_cli.cli.reference import PAGE, markdown
from tests.kit import ROOT


def test_the_committed_reference_is_current():
    assert (ROOT / PAGE).read_text() == markdown(), (
        f"{PAGE} is stale: run `python -m icl_cli.cli.reference > {PAGE}`")


def test_it_lists_every_command_and_every_option():
    page = markdown()
    group = typer.main.get_command(register())
    for name in COMMANDS:
        assert f"\n## icl {name}\n" in page, name
        command = group.commands[name]
        section = page.split(f"\n## icl {name}\n")[1].split("\n## ")[0]
        ctx = click.Context(command, info_name=name)
        for param in command.get_params(ctx):
            if getattr(param, "hidden", False):
                assert param.opts[0] not in section, (name, param.opts)
            else:
                assert param.opts[-1] in section, (name, param.opts)
                assert " ".join((param.help or "").split()) in section, (name, param.opts)
