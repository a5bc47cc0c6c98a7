"""Reclassification's levers and warning signs: weighting, gradient clipping, peaks."""

import pytest
import torch
from torch import nn

from icl_cli.algo.reclassify import SGD, grad_norm, reclassify
from icl_cli.models import build_model


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randint(0, 256, (16, 1, 2, 2), dtype=torch.uint8)
    y = torch.arange(16) % 3
    pn_x = torch.randn(24, 1, 2, 2) * 3
    pn_k = torch.arange(24) % 3
    return model, x, y, pn_x, pn_k


def _train(**kw):
    model, x, y, pn_x, pn_k = _setup()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = reclassify(model, opt, x, y, pn_x, pn_k, epochs=2, batch_size=8,
                      real_gen=torch.Generator().manual_seed(1),
                      pn_gen=torch.Generator().manual_seed(2),
                      transform=lambda b: b.float() / 127.5 - 1, **kw)
    return model, hist


def test_grad_norm_is_the_global_l2_norm_and_clip_scales_to_it():
    model = nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[3.0, 0.0]])
    model.bias.grad = torch.tensor([4.0])
    assert grad_norm(model).item() == 5.0
    assert grad_norm(model, clip=1.0).item() == 5.0  # the norm before clipping
    assert torch.allclose(model.weight.grad, torch.tensor([[0.6, 0.0]]), atol=1e-6)
    assert torch.allclose(model.bias.grad, torch.tensor([0.8]), atol=1e-6)


def test_weighting_changes_the_trained_weights():
    a, _ = _train(pn_weighting="per-sample")
    b, _ = _train(pn_weighting="batch-mean")
    assert not torch.equal(a[1].weight, b[1].weight)


def test_clip_grad_changes_training_and_peaks_are_recorded():
    free, h_free = _train()
    clipped, h_clip = _train(clip_grad=0.01)
    assert not torch.equal(free[1].weight, clipped[1].weight)
    # The recorded peak is the norm before clipping, and larger than the clip.
    assert h_clip[0].grad_norm_max > 0.01
    assert h_free[0].grad_norm_max > 0
    assert h_free[0].real_logit_max > 0 and h_free[0].pn_logit_max > 0


@pytest.mark.parametrize("mode", ["softmax", "ova"])
@pytest.mark.parametrize("weighting", ["per-sample", "batch-mean", "drawn"])
def test_max_batch_gives_the_same_step_in_pieces(mode, weighting):
    """Issue 12, large pools: a batch of 8 real rows and 12 pseudo-negatives run in pieces
    of 5 rows trains the same weights as one pass, up to floating-point order."""
    def run(max_batch):
        torch.manual_seed(0)
        model = build_model("tiny", (1, 2, 2), 3, mode)
        x = torch.randint(0, 256, (16, 1, 2, 2), dtype=torch.uint8)
        y = torch.arange(16) % 3
        pn_x, pn_k = torch.randn(24, 1, 2, 2) * 3, torch.arange(24) % 3
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist = reclassify(model, opt, x, y, pn_x, pn_k, epochs=2, batch_size=8, mode=mode,
                          pn_weighting=weighting, max_batch=max_batch,
                          pn_round=torch.arange(24) // 8 + 1,
                          real_gen=torch.Generator().manual_seed(1),
                          pn_gen=torch.Generator().manual_seed(2),
                          transform=lambda b: b.float() / 127.5 - 1)
        return model.state_dict(), hist

    whole, h_whole = run(None)
    parts, h_parts = run(5)
    for key in whole:
        assert torch.allclose(whole[key], parts[key], atol=1e-5), key
    for a, b in zip(h_whole, h_parts, strict=True):
        assert abs(a.loss - b.loss) < 1e-5 and abs(a.pn_loss - b.pn_loss) < 1e-5
        assert abs(a.pn_logit_max - b.pn_logit_max) < 1e-4


def test_max_batch_refuses_batch_norm():
    model = build_model("resnet8", (3, 8, 8), 3, "softmax")
    with pytest.raises(ValueError, match="without batch norm"):
        reclassify(model, SGD(model.parameters(), lr=0.1), torch.zeros(4, 3, 8, 8),
                   torch.zeros(4, dtype=torch.long), torch.zeros(0, 3, 8, 8),
                   torch.zeros(0, dtype=torch.long), epochs=1, max_batch=2,
                   real_gen=torch.Generator(), pn_gen=torch.Generator())
