"""What the tests share: the tiny experiment's settings, the ways to run ``icl`` (in this
process, as a fresh process, under torchrun) and writers of MNIST-layout (IDX) files.

``TINY`` is a tiny network on 200 embedded-MNIST images (100 held out for validation), one
epoch each, 4 pseudo-negatives a class in at most 15 steps: seconds per round on one
core. ``tiny(**changes)`` is the same with some settings changed, ``COMMON`` the runtime
flags every test command takes (no MLflow, one CPU thread).

Example:
    >>> tiny(count=60, sampler_lr=None)[-4:]
    ['--count', '60', '--max-steps', '15']
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # this checkout
TINY_SETTINGS: dict[str, Any] = {
    "arch": "tiny", "train_size": 200, "val_size": 100, "init_epochs": 1, "epochs": 1,
    "count": 4, "max_steps": 15, "sampler_lr": 0.05,
}
COMMON = ["--no-mlflow", "--threads", "1", "--device", "cpu"]
ICL = [sys.executable, "-m", "icl_cli"]  # a fresh icl process, as the console script


def flags(settings: dict[str, Any]) -> list[str]:
    """Command-line flags of ``settings``, in order: ``{"train_size": 200, "augment": True,
    "clamp": False, "seed": None}`` -> ``--train-size 200 --augment --no-clamp`` (None: left
    out)."""
    out: list[str] = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if value is True:
            out.append(name)
        elif value is False:
            out.append("--no-" + name[2:])
        elif value is not None:
            out += [name, str(value)]
    return out


def tiny(**changes: Any) -> list[str]:
    """The tiny experiment's ``icl init`` flags with ``changes`` (None: the flag left out,
    so the setting takes icl's default)."""
    return flags({**TINY_SETTINGS, **changes})


TINY = tiny()
# Smaller still, for tests that run whole rounds in child processes (``icl run --parallel``,
# job arrays): 100 training images, 2 pseudo-negatives a class in at most 5 steps.
SMALL = tiny(train_size=100, val_size=50, count=2, max_steps=5)


def copy_workspace(src: Path, dst: Path) -> Path:
    """A copy of the (SQLite) workspace at ``src``, for a test that changes it: a shared
    workspace is built once and copied, not built again."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ----------------------------------------------------------------- running icl
@dataclass
class Result:
    """What an ``icl`` command did: its exit code, standard output and standard error."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, as a terminal shows them (for "no traceback anywhere")."""
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def icl(*args: Any, code: int | None = 0, env: dict[str, str] | None = None) -> Result:
    """``icl ARGS`` in this process (Typer's runner, every command registered); asserts
    the exit code unless ``code`` is None."""
    from typer.testing import CliRunner

    from icl_cli.cli import register

    r = CliRunner().invoke(register(), [str(a) for a in args], env=env)
    res = Result(r.exit_code, r.stdout, r.stderr)
    if code is not None:
        assert res.code == code, (args, res)
    return res


def icl_json(*args: Any) -> Any:
    """``icl ARGS --json`` in this process: its one JSON document."""
    return icl(*args, "--json").json()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path, one thread,
    no MLflow telemetry, and ``extra``."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": path, **extra}


def imported_by(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    check = f"{code}\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         env=child_env(), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def icl_process(*args: Any, code: int | None = 0, timeout: float = 300
                ) -> subprocess.CompletedProcess:
    """``python -m icl_cli ARGS`` in a fresh process (the console entry point, its own
    signals and exit); asserts the exit code unless ``code`` is None."""
    res = subprocess.run([*ICL, *map(str, args)], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert code is None or res.returncode == code, (res.returncode, res.stdout, res.stderr)
    return res


def torchrun(nproc: int, *args: Any, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N ARGS`` (a script and its arguments, or
    ``-m icl_cli ...``), one thread per rank and this checkout importable."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(nproc), *map(str, args)], env=child_env(**(env or {})), capture_output=True,
        text=True, timeout=timeout)


# ----------------------------------------------------------------- IDX files
def idx_bytes(a: np.ndarray, type_code: int = 0x08) -> bytes:
    """``a`` as an IDX file: magic (0, type, dims), the dimensions, the values as they are
    (0x08: unsigned bytes)."""
    return struct.pack(">HBB", 0, type_code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) \
        + a.tobytes()


def write_idx(path: Path, a: np.ndarray) -> Path:
    """``a`` as unsigned bytes in an IDX file (gzipped when ``path`` ends in .gz)."""
    blob = idx_bytes(a.astype(np.uint8))
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def write_folder(root: Path, n_train=40, n_test=20, gz=True, k=4) -> Path:
    """A small MNIST-layout folder: random 5x6 images, labels 0..k-1 in turn."""
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 5, 6)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % k)
    return root
