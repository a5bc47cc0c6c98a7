"""glibc's malloc thresholds held fixed (``icl_cli.algo.heap``): set once, left alone
where the environment sets them, and a training loop on a CPU sets them."""

import sys

import pytest
import torch

import icl_cli.algo.heap as heap
from icl_cli.algo.reclassify import make_optimizer, reclassify
from icl_cli.models import build_model

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


@glibc
def test_steady_heap_sets_the_thresholds_once(monkeypatch):
    for k in heap.ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(heap, "_steady", False)
    assert heap.steady_heap() is True
    assert heap.steady_heap() is True  # a second call: already done


def test_steady_heap_leaves_thresholds_the_environment_sets(monkeypatch):
    monkeypatch.setattr(heap, "_steady", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert heap.steady_heap() is False
    assert heap._steady is False


@glibc
def test_reclassify_on_a_cpu_holds_the_heap_steady(monkeypatch):
    for k in heap.ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(heap, "_steady", False)
    torch.manual_seed(0)
    net = build_model("tiny", (1, 12, 12), 3)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    reclassify(net, make_optimizer(net, 0.01), x, y, x[:0], y[:0], epochs=1, batch_size=4,
               real_gen=torch.Generator().manual_seed(1), pn_gen=torch.Generator().manual_seed(2))
    assert heap._steady is True
