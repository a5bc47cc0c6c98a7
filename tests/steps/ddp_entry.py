"""torchrun entry for test_reclassify_ddp.py: the ``icl`` command line, where rank
``ICL_TEST_KILL_RANK`` kills itself (SIGKILL) at its ``ICL_TEST_KILL_STEP``-th optimizer
step: a rank lost in the middle of training."""

import os
import signal
import sys

from icl_cli.algo import reclassify
from icl_cli.cli import icl

if os.environ.get("RANK") == os.environ.get("ICL_TEST_KILL_RANK", "none"):
    at, seen, step = int(os.environ.get("ICL_TEST_KILL_STEP", "1")), [0], reclassify.SGD.step

    def dying_step(self):
        seen[0] += 1
        if seen[0] >= at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self)

    reclassify.SGD.step = dying_step

if __name__ == "__main__":
    sys.argv[0] = "icl"
    icl()
