"""The reclassification losses against values computed by hand, in both weightings."""

import math

import pytest
import torch

from icl_cli.algo.losses import ova_loss, softmax_loss


def sp(a: float) -> float:
    return math.log1p(math.exp(a))


def ce(logits: list[float], y: int) -> float:
    return -(logits[y] - math.log(sum(math.exp(v) for v in logits)))


REAL = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
Y = torch.tensor([0, 2])
PN = torch.tensor([[0.5, -3.0, 1.0], [4.0, 2.0, -2.0], [0.0, 0.0, 3.0]])
K = torch.tensor([2, 1, 2])
WANT_REAL = (ce([2.0, 0.0, -1.0], 0) + ce([0.0, 1.0, 0.0], 2)) / 2


def test_softmax_per_sample_is_eq_11_sum_over_the_real_batch_size():
    total, r, p = softmax_loss(REAL, Y, PN, K, weight=0.5)  # default: per-sample

    # Eq. 11: every sample counts once; 2 real rows, 3 pseudo-negatives, divided by B = 2.
    want_pn = (sp(1.0) + sp(2.0) + sp(3.0)) / 2
    assert math.isclose(r.item(), WANT_REAL, rel_tol=1e-6)
    assert math.isclose(p.item(), want_pn, rel_tol=1e-6)
    assert math.isclose(total.item(), WANT_REAL + 0.5 * want_pn, rel_tol=1e-6)


def test_softmax_batch_mean_is_the_mean_over_the_pseudo_negatives():
    total, r, p = softmax_loss(REAL, Y, PN, K, weight=0.5, weighting="batch-mean")

    want_pn = (sp(1.0) + sp(2.0) + sp(3.0)) / 3
    assert math.isclose(p.item(), want_pn, rel_tol=1e-6)
    assert math.isclose(total.item(), WANT_REAL + 0.5 * want_pn, rel_tol=1e-6)


def test_per_sample_weighs_a_pseudo_negative_as_a_real_image():
    # The gradient on one pseudo-negative's logit equals the gradient one real image of the
    # batch gets from its own term: both are 1/B times their per-sample derivative.
    real = torch.zeros(4, 2, requires_grad=True)
    pn = torch.zeros(7, 2, requires_grad=True)
    total, _, _ = softmax_loss(real, torch.zeros(4, dtype=torch.long), pn,
                               torch.ones(7, dtype=torch.long))
    g_real, g_pn = torch.autograd.grad(total, (real, pn))
    # d CE / d f_0 at zero logits with label 0 is -1/2; d softplus / d f at 0 is 1/2.
    assert torch.allclose(g_real[:, 0], torch.full((4,), -0.5 / 4))
    assert torch.allclose(g_pn[:, 1], torch.full((7,), 0.5 / 4))


@pytest.mark.parametrize("weighting", ["per-sample", "batch-mean"])
def test_softmax_without_pseudo_negatives_is_cross_entropy(weighting):
    real = torch.tensor([[1.0, 0.0]])
    total, _, p = softmax_loss(real, torch.tensor([1]), torch.empty(0, 2),
                               torch.empty(0, dtype=torch.long), weighting=weighting)
    assert p.item() == 0.0
    assert math.isclose(total.item(), math.log(1 + math.e), rel_tol=1e-6)


OVA_REAL = torch.tensor([[1.0, -2.0, 0.0], [0.5, 3.0, 1.0]])  # 2 samples, K = 3 networks
OVA_Y = torch.tensor([0, 1])
OVA_PN = torch.tensor([[2.0, 9.0, 9.0], [-1.0, 9.0, 9.0], [9.0, 0.0, 9.0]])
OVA_K = torch.tensor([0, 0, 1])  # two negatives for network 0, one for 1, none for 2
# Network 0: sample 0 positive (logit 1), sample 1 negative (0.5); network 1: sample 0
# negative (-2), sample 1 positive (3); network 2: both negative (0, 1).
OVA_NET = [(sp(-1.0) + sp(0.5)) / 2, (sp(-2.0) + sp(-3.0)) / 2, (sp(0.0) + sp(1.0)) / 2]


def test_ova_per_sample_is_eq_7_summed_over_networks():
    total, r, p = ova_loss(OVA_REAL, OVA_Y, OVA_PN, OVA_K, weight=2.0)

    # Per network: (sum over the 2 real rows + w * sum over its own pseudo-negatives) / 2;
    # network 2 has no pseudo-negative and gets the real term alone.
    want_pn = (sp(2.0) + sp(-1.0)) / 2 + sp(0.0) / 2
    assert math.isclose(r.item(), sum(OVA_NET), rel_tol=1e-6)
    assert math.isclose(p.item(), want_pn, rel_tol=1e-6)
    assert math.isclose(total.item(), sum(OVA_NET) + 2.0 * want_pn, rel_tol=1e-6)


def test_ova_batch_mean_averages_each_networks_pseudo_negatives():
    total, r, p = ova_loss(OVA_REAL, OVA_Y, OVA_PN, OVA_K, weight=2.0, weighting="batch-mean")

    want_pn = (sp(2.0) + sp(-1.0)) / 2 + sp(0.0) / 1  # network 2: none, adds nothing
    assert math.isclose(p.item(), want_pn, rel_tol=1e-6)
    assert math.isclose(total.item(), sum(OVA_NET) + 2.0 * want_pn, rel_tol=1e-6)


@pytest.mark.parametrize("weighting", ["per-sample", "batch-mean"])
def test_ova_without_pseudo_negatives_is_the_real_term(weighting):
    total, r, p = ova_loss(OVA_REAL, OVA_Y, torch.empty(0, 3), torch.empty(0, dtype=torch.long),
                           weighting=weighting)
    assert p.item() == 0.0
    assert math.isclose(total.item(), sum(OVA_NET), rel_tol=1e-6)


def test_pseudo_negative_term_pushes_target_logit_down():
    pn = torch.zeros(1, 3, requires_grad=True)
    total, _, _ = softmax_loss(torch.zeros(1, 3), torch.tensor([0]), pn, torch.tensor([1]))
    (g,) = torch.autograd.grad(total, pn)
    assert g[0, 1] > 0 and g[0, 0] == 0 and g[0, 2] == 0  # descent lowers f_1 only
