"""glibc's malloc held at fixed thresholds, so that a CPU training loop's memory stays
mapped from one step to the next.

Every step of a loop frees and allocates the same few tens of MiB (activations, gradients,
convolution buffers). By default glibc moves its thresholds as it goes: a freed chunk raises
the size above which it maps memory on its own (``M_MMAP_THRESHOLD``, up to 32 MiB) and
the free space at the top of the heap it hands back to the system (``M_TRIM_THRESHOLD``,
twice that). Which memory then goes back to the system, to be faulted in (and zeroed) again
at the next step, depends on the order of every allocation the process ever made: here the
same reclassify epoch took 0 or 4,000-13,000 page faults depending on what ran before it,
and a loop doing a little more between its backward pass and its optimizer step (the
gradient norm) was the one that paid (``benchmarks/reclassify.py``). Fixed at the values
glibc's own rule tops out at, the thresholds no longer depend on that history.

Nothing else changes: the arithmetic is the same, the memory a loop holds at its peak is
the same, and ``malloc_trim(0)`` (``icl run`` calls it after every step) still hands back
what is free.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit machines
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's rule sets beside it
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_steady = False


def steady_heap() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once; later calls return at
    once). Leaves them alone where they are not glibc's to set (another C library or
    system) or where the environment sets one of them (``MALLOC_MMAP_THRESHOLD_`` and its
    like: the user's, or a benchmark's, choice). Returns whether they are now fixed here.
    """
    global _steady
    if _steady:
        return True
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _steady = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
               and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return _steady
