"""``python tests/cli/modules_entry.py ARGS``: ``icl ARGS``, then, on stderr's last line,
which of torch, h5py, MLflow, SQLAlchemy and pydantic the command imported
(``ICL-IMPORTED: [...]``), read at exit from ``sys.modules``."""

from __future__ import annotations

import atexit
import json
import sys

WATCHED = ("torch", "h5py", "mlflow", "sqlalchemy", "pydantic")


def _report() -> None:
    found = [m for m in WATCHED if m in sys.modules]
    sys.stderr.write(f"\nICL-IMPORTED: {json.dumps(found)}\n")


if __name__ == "__main__":
    atexit.register(_report)
    from icl_cli.cli import icl

    sys.argv = ["icl", *sys.argv[1:]]
    icl()
