"""``--compile`` and ``--channels-last``: runtime options of the steps that train and sample
(``init``, ``synthesize``, ``reclassify``, ``run``). They change how the network runs, not
what a round computes: a round reclassified with one is within
``tests/algo/test_compile.py``'s tolerance of the default, its checkpoint is laid out as
without it, and the step records it (its environment, the checkpoint's inputs, a shard's
sampler settings), so a result made without it is never taken for one made with it.

The workspace (the tiny experiment, round 1's shard) is made once in this process and
copied for each run."""

from __future__ import annotations

import click
import pytest
import typer.main

from tests.algo.test_compile import close
from tests.kit import COMMON, TINY, copy_workspace, icl, icl_json

COMMANDS = ("init", "synthesize", "reclassify", "run")


@pytest.fixture(scope="module")
def shard_made(tmp_path_factory):
    """A workspace whose experiment ``a`` has C_0 and round 1's shard."""
    ws = tmp_path_factory.mktemp("runtime") / "ws"
    icl("init", "-e", "a", *TINY, *COMMON, "-w", ws)
    icl("synthesize", "--round", "1", "-e", "a", *COMMON, "-w", ws)
    return ws


def _reclassified(src, dst, *options):
    """A copy of ``src`` with round 1 reclassified with ``options``: (workspace, round 1's
    weights, the step's recorded environment, the checkpoint's recorded inputs)."""
    from store import Store

    ws = copy_workspace(src, dst)
    doc = icl_json("reclassify", "--round", "1", "-e", "a", *options, *COMMON, "-w", ws)
    assert doc["reused"] is False
    with Store.open(ws) as store:
        info = store.checkpoint("a", 1)
        state = store.load_checkpoint(info)
        step = store.steps("a", name="reclassify", round=1)[-1]
    return ws, state["model"], step.environment, state["inputs"]


def test_channels_last_reclassifies_within_tolerance_and_says_so(shard_made, tmp_path):
    _, plain, env, inputs = _reclassified(shard_made, tmp_path / "plain")
    ws, fast, env_cl, inputs_cl = _reclassified(shard_made, tmp_path / "cl", "--channels-last")
    assert list(fast) == list(plain)
    for key, want in plain.items():
        got = fast[key]
        assert got.is_contiguous(), key  # stored NCHW, as without the option
        close(got, want)  # within 1e-5 of the largest |value|, as test_compile states
    assert (env["channels_last"], env["compile"]) == (False, False)
    assert (env_cl["channels_last"], env_cl["compile"]) == (True, False)
    assert "channels_last" not in inputs and inputs_cl["channels_last"] is True
    # A round made with it is not taken for one made without it (as with --amp) ...
    r = icl("reclassify", "--round", "1", "-e", "a", *COMMON, "-w", ws, code=None)
    assert r.code != 0 and "--force" in r.output, r
    # ... and answers at once when asked the same way.
    again = icl_json("reclassify", "--round", "1", "-e", "a", "--channels-last", *COMMON,
                     "-w", ws)
    assert again["reused"] is True


def test_channels_last_shard_is_recorded_with_it(shard_made, tmp_path):
    """synthesize: the shard's sampler settings say channels_last; asked without it, the
    round is not taken as done."""
    from store import Store

    ws = copy_workspace(shard_made, tmp_path / "ws")
    icl("reclassify", "--round", "1", "-e", "a", *COMMON, "-w", ws)
    doc = icl_json("synthesize", "--round", "2", "-e", "a", "--channels-last", *COMMON,
                   "-w", ws)
    assert doc["reused"] is False
    with Store.open(ws) as store:
        assert store.active_shard("a", 2).sampler_config["channels_last"] is True
        assert store.steps("a", name="synthesize", round=2)[-1].environment[
            "channels_last"] is True
    r = icl("synthesize", "--round", "2", "-e", "a", *COMMON, "-w", ws, code=None)
    assert r.code != 0 and "--force" in r.output, r
    again = icl_json("synthesize", "--round", "2", "-e", "a", "--channels-last", *COMMON,
                     "-w", ws)
    assert again["reused"] is True


@pytest.mark.slow
def test_compile_reclassifies_within_tolerance(shard_made, tmp_path):
    _, plain, _, _ = _reclassified(shard_made, tmp_path / "plain")
    _, compiled, env, inputs = _reclassified(shard_made, tmp_path / "compiled", "--compile")
    assert list(compiled) == list(plain)  # no ``_orig_mod.`` prefix
    for key, want in plain.items():
        close(compiled[key], want)
    assert env["compile"] is True and inputs["compile"] is True


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_both_options(command):
    from icl_cli.cli import register

    group = typer.main.get_command(register())
    cmd = group.commands[command]
    opts = {o for p in cmd.get_params(click.Context(cmd, info_name=command)) for o in p.opts}
    assert {"--compile", "--channels-last"} <= opts
    out = icl(command, "--help").stdout
    assert "--compile" in out and "--channels-last" in out
