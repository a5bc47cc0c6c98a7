"""torchrun entry for test_reclassify_ddp.py: the ``icl`` command line, with hooks a test
sets through the environment:

- ``ICL_TEST_KILL_RANK``/``ICL_TEST_KILL_STEP``: that rank kills itself (SIGKILL) at its
  n-th optimizer step (a rank lost in the middle of training);
- ``ICL_TEST_RANK1_ARGV``: rank 1 runs these arguments (a JSON list) instead of the
  command line (ranks that disagree on what they run);
- ``ICL_TEST_SLOW_SAVE``: rank 0 writes this file as it starts saving the checkpoint,
  then takes minutes (the other ranks wait for it: a long wait to interrupt).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

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

if os.environ.get("RANK") == "0" and os.environ.get("ICL_TEST_SLOW_SAVE"):
    from store import Store

    save = Store.save_checkpoint

    def slow_save(self, *args, **kwargs):
        Path(os.environ["ICL_TEST_SLOW_SAVE"]).write_text(str(os.getpid()))
        time.sleep(300)
        return save(self, *args, **kwargs)

    Store.save_checkpoint = slow_save

if __name__ == "__main__":
    sys.argv[0] = "icl"
    if os.environ.get("RANK") == "1" and os.environ.get("ICL_TEST_RANK1_ARGV"):
        sys.argv[1:] = json.loads(os.environ["ICL_TEST_RANK1_ARGV"])
    icl()
