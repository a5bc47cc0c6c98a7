"""Issue 12: reclassification on 2 gloo ranks under torchrun takes the one-process steps.

One torchrun launch trains every case of ``ddp_worker.CASES`` (softmax and one-vs-all,
every weighting, --max-batch pieces, gradient clipping, random augmentation, a batch too
small to give every rank a row, a real-only epoch); this process trains each case alone
and compares weights and epoch stats.
"""

from pathlib import Path

import pytest
import torch

from tests.algo import ddp_worker
from tests.kit import torchrun

STATS = ("loss", "real_loss", "pn_loss", "grad_norm_max", "real_logit_max", "pn_logit_max")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(2, Path(ddp_worker.__file__), out)
    assert done.returncode == 0, done.stderr[-6000:]
    return out


@pytest.mark.ddp
@pytest.mark.parametrize("case", list(ddp_worker.CASES))
def test_two_ranks_train_the_one_process_weights(two_ranks, case):
    alone, history = ddp_worker.train(case, distributed=False)
    ranks = torch.load(two_ranks / f"{case}.pt", weights_only=True)
    for key, value in alone.items():
        assert torch.allclose(value, ranks["state"][key], atol=1e-6, rtol=0), key
    start = ddp_worker.initial(case)
    assert any(not torch.equal(start[k], v) for k, v in alone.items())  # it trained
    # Epoch stats are the global ones: loss terms summed over ranks, peaks maxed.
    # A mixed epoch: the 33 real rows and the pool of 29 once, or 33 drawn (per network).
    mixed = {"drawn": 33 * (3 if ddp_worker.CASES[case]["mode"] == "ova" else 1)}.get(
        ddp_worker.CASES[case]["pn_weighting"], 29)
    assert [h["samples"] for h in ranks["history"]] == [33 + mixed, 33 + mixed, 33]
    for a, b in zip(history, ranks["history"], strict=True):
        for name in STATS:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), name
