"""torchrun entry for test_synthesize_parts.py: the ``icl`` command line, where rank
``ICL_TEST_KILL_RANK`` kills itself (SIGKILL) as it starts drawing its part."""

import os
import signal
import sys

from icl_cli.cli import icl
from icl_cli.steps import draw

if os.environ.get("RANK") == os.environ.get("ICL_TEST_KILL_RANK", "none"):
    def dying(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    draw.synthesize = dying

if __name__ == "__main__":
    sys.argv[0] = "icl"
    icl()
