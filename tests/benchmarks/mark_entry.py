"""``python tests/benchmarks/mark_entry.py ARGS``: ``icl ARGS`` with
``$ICL_MARK_WORK_START`` set by the caller; as the step opens that file to mark the start
of its work, stderr gets ``ICL-AT-WORK: [...]``, the watched modules imported by then, and
at exit ``ICL-IMPORTED: [...]``, those imported in all."""

from __future__ import annotations

import atexit
import json
import os
import sys

WATCHED = ("torch", "h5py", "mlflow", "sqlalchemy", "matplotlib", "torchmetrics")


def _loaded() -> str:
    return json.dumps([m for m in WATCHED if m in sys.modules])


def _hook(event: str, args: tuple) -> None:
    if event == "open" and args and str(args[0]) == os.environ["ICL_MARK_WORK_START"]:
        sys.stderr.write(f"\nICL-AT-WORK: {_loaded()}\n")


if __name__ == "__main__":
    sys.addaudithook(_hook)
    atexit.register(lambda: sys.stderr.write(f"\nICL-IMPORTED: {_loaded()}\n"))
    from icl_cli.cli import icl

    sys.argv = ["icl", *sys.argv[1:]]
    icl()
