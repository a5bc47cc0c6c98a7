"""The authors' batches (``--pn-weighting drawn``): each real batch of B images joined by B
pseudo-negatives drawn with replacement, the pool's rounds weighted by recency."""

import math

import pytest
import torch
from torch import nn

from icl_cli.algo.reclassify import (
    SGD,
    batch_plan,
    draw_probabilities,
    drawn_plan,
    epoch_rows,
    recency_shares,
    reclassify,
)
from icl_cli.models import build_model


def test_recency_shares_by_hand():
    assert recency_shares([4], 0.5) == {4: 1.0}
    one, two = recency_shares([1, 2], 0.5).values()
    assert math.isclose(one, 1 / 3) and math.isclose(two, 2 / 3)
    # Five rounds: 1/16, 1/8, 1/4, 1/2, 1 from the oldest, over their sum 31/16.
    five = recency_shares([5, 1, 3, 2, 4, 5], 0.5)
    assert list(five) == [1, 2, 3, 4, 5]
    for t, want in zip(five, [1, 2, 4, 8, 16], strict=True):
        assert math.isclose(five[t], want / 31)
    assert all(math.isclose(v, 1 / 5) for v in recency_shares([1, 2, 3, 4, 5], 1.0).values())
    assert recency_shares([], 0.5) == {}


def test_a_rounds_share_is_split_evenly_among_its_samples():
    pn_round = torch.tensor([1, 1, 1, 2])  # 3 old samples share 1/3, the new one has 2/3
    p = draw_probabilities(pn_round, 0.5)
    assert torch.allclose(p, torch.tensor([1 / 9, 1 / 9, 1 / 9, 2 / 3], dtype=torch.float64))


def _plan(n_real, pn_class, pn_round, per_network=False, recency=0.5, seed=2, batch=64):
    return drawn_plan(n_real, pn_class, pn_round, batch, recency, per_network,
                      torch.Generator().manual_seed(1), torch.Generator().manual_seed(seed))


def test_every_real_batch_gets_as_many_draws_and_the_real_order_is_batch_plans():
    pn_round = torch.tensor([1] * 30 + [2] * 10)
    plan = _plan(150, torch.arange(40) % 10, pn_round)
    base = batch_plan(150, 40, 64, torch.Generator().manual_seed(1),
                      torch.Generator().manual_seed(2))
    assert [len(p) for _, p in plan] == [64, 64, 22]  # B drawn for each batch of B
    for (real, _), (want, _) in zip(plan, base, strict=True):
        assert torch.equal(real, want)  # pairing with baseline and the other forms holds


def test_the_share_of_draws_per_round_follows_recency():
    """Rounds of 30, 10 and 50 samples at r = 0.5 are drawn 1/7, 2/7, 4/7 of the time
    whatever their sizes. Tolerance: 0.015, about 5 binomial standard deviations of a
    share over 25,600 draws (at most 0.0031)."""
    pn_round = torch.tensor([1] * 30 + [2] * 10 + [3] * 50)
    pn_class = torch.arange(90) % 10
    draws = torch.cat([p for seed in range(4) for _, p in _plan(6400, pn_class, pn_round,
                                                                seed=seed)])
    assert len(draws) == 25_600
    got = torch.bincount(pn_round[draws], minlength=4)[1:].double() / len(draws)
    for share, want in zip(got.tolist(), [1 / 7, 2 / 7, 4 / 7], strict=True):
        assert abs(share - want) < 0.015
    uniform = torch.cat([p for _, p in _plan(6400, pn_class, pn_round, recency=1.0)])
    share_3 = (pn_round[uniform] == 3).double().mean().item()
    assert abs(share_3 - 1 / 3) < 0.02  # r = 1: each round alike (6,400 draws)


def test_a_pool_of_one_round_is_drawn_uniformly_and_an_empty_pool_not_at_all():
    plan = _plan(640, torch.arange(5) % 5, torch.full((5,), 3))
    counts = torch.bincount(torch.cat([p for _, p in plan]), minlength=5)
    assert counts.sum() == 640 and counts.min() > 90  # 128 each on average
    empty = _plan(100, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert [len(r) for r, _ in empty] == [64, 36] and all(len(p) == 0 for _, p in empty)


def test_one_vs_all_draws_b_for_each_network_from_its_own_class():
    pn_class = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    pn_round = torch.tensor([1, 2, 1, 2, 2, 1, 1, 2, 2])
    plan = _plan(100, pn_class, pn_round, per_network=True)
    for real, pn in plan:
        assert torch.equal(torch.bincount(pn_class[pn], minlength=3),
                           torch.full((3,), len(real)))
    assert epoch_rows(100, pn_class, "drawn", "ova") == 100 * 4
    assert epoch_rows(100, pn_class, "drawn", "softmax") == 100 * 2
    assert epoch_rows(100, pn_class, "per-sample", "ova") == 109


def _train(weighting, pn_x, pn_k, pn_round=None, mode="softmax", **kw):
    torch.manual_seed(0)
    model = build_model("tiny", (1, 2, 2), 3, mode)
    x = torch.randint(0, 256, (16, 1, 2, 2), dtype=torch.uint8)
    y = torch.arange(16) % 3
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = reclassify(model, opt, x, y, pn_x, pn_k, epochs=2, batch_size=kw.pop("batch", 8),
                      mode=mode, pn_weighting=weighting, pn_round=pn_round,
                      real_gen=torch.Generator().manual_seed(1),
                      pn_gen=torch.Generator().manual_seed(2),
                      transform=lambda b: b.float() / 127.5 - 1, **kw)
    return model.state_dict(), hist


def test_the_loss_of_a_mixed_batch_is_mean_ce_plus_w_mean_softplus_over_the_draws():
    """One batch of all 6 real rows and 6 drawn pseudo-negatives, checked by hand: the
    epoch's loss is the batch's loss before its step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pn_x, pn_k = torch.randn(4, 1, 2, 2) * 2, torch.tensor([0, 1, 2, 1])
    pn_round = torch.tensor([1, 1, 2, 2])
    real_idx, pn_idx = drawn_plan(6, pn_k, pn_round, 6, 0.5, False,
                                  torch.Generator().manual_seed(1),
                                  torch.Generator().manual_seed(2))[0]
    with torch.no_grad():
        real = model(x[real_idx].float() / 127.5 - 1)
        pn = model(pn_x[pn_idx])
    ce = [-(r[c] - torch.logsumexp(r, 0)).item() for r, c in zip(real, y[real_idx],
                                                                  strict=True)]
    sp = [math.log1p(math.exp(f[k].item())) for f, k in zip(pn, pn_k[pn_idx], strict=True)]
    want = sum(ce) / 6 + 0.7 * sum(sp) / 6
    hist = reclassify(model, SGD(model.parameters(), lr=0.1), x, y, pn_x, pn_k, epochs=1,
                      batch_size=6, pn_weight=0.7, pn_weighting="drawn", pn_round=pn_round,
                      real_gen=torch.Generator().manual_seed(1),
                      pn_gen=torch.Generator().manual_seed(2),
                      transform=lambda b: b.float() / 127.5 - 1)
    assert math.isclose(hist[0].loss, want, rel_tol=1e-5)
    assert math.isclose(hist[0].pn_loss, sum(sp) / 6, rel_tol=1e-5)
    assert hist[0].samples == 12


def test_drawn_with_an_empty_pool_trains_as_the_baseline_does():
    empty_x, empty_k = torch.empty(0, 1, 2, 2), torch.empty(0, dtype=torch.long)
    drawn, _ = _train("drawn", empty_x, empty_k)
    plain, _ = _train("per-sample", empty_x, empty_k)
    for key in drawn:
        assert torch.equal(drawn[key], plain[key])


@pytest.mark.parametrize("mode", ["softmax", "ova"])
def test_drawn_trains_other_weights_than_the_pool_once_an_epoch(mode):
    pn_x, pn_k = torch.randn(24, 1, 2, 2) * 3, torch.arange(24) % 3
    pn_round = torch.arange(24) // 12 + 1
    drawn, h_drawn = _train("drawn", pn_x, pn_k, pn_round, mode=mode)
    mean, _ = _train("batch-mean", pn_x, pn_k, pn_round, mode=mode)
    assert any(not torch.equal(drawn[k], mean[k]) for k in drawn)
    networks = 3 if mode == "ova" else 1
    assert [h.samples for h in h_drawn] == [16 * (1 + networks)] * 2
    # The recency weight changes which pseudo-negatives are drawn, so the weights too.
    flat, _ = _train("drawn", pn_x, pn_k, pn_round, mode=mode, pn_recency=1.0)
    assert any(not torch.equal(drawn[k], flat[k]) for k in drawn)
