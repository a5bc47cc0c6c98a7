"""What the command-line tests share: the tiny settings and ``icl`` run in-process."""

import json

from typer.testing import CliRunner

from icl_cli.cli import register

TINY = ["--arch", "tiny", "--train-size", "200", "--val-size", "100", "--init-epochs", "1",
        "--epochs", "1", "--count", "4", "--max-steps", "15", "--sampler-lr", "0.05"]
COMMON = ["--no-mlflow", "--threads", "1", "--device", "cpu"]


def icl(*args, code=0):
    """``icl ARGS`` through Typer's runner; asserts the exit code."""
    result = CliRunner().invoke(register(), [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def icl_json(*args):
    return json.loads(icl(*args, "--json").stdout)
