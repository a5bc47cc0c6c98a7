"""The reclassification losses against values computed by hand."""

import math

import torch

from icl_cli.algo.losses import ova_loss, softmax_loss


def sp(a: float) -> float:
    return math.log1p(math.exp(a))


def test_softmax_loss_is_eq_11_by_hand():
    real = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    pn = torch.tensor([[0.5, -3.0, 1.0], [4.0, 2.0, -2.0]])
    k = torch.tensor([2, 1])

    total, r, p = softmax_loss(real, y, pn, k, weight=0.5)

    ce0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    ce1 = -(0.0 - math.log(1 + math.e + 1))
    want_real = (ce0 + ce1) / 2
    want_pn = (sp(1.0) + sp(2.0)) / 2
    assert math.isclose(r.item(), want_real, rel_tol=1e-6)
    assert math.isclose(p.item(), want_pn, rel_tol=1e-6)
    assert math.isclose(total.item(), want_real + 0.5 * want_pn, rel_tol=1e-6)


def test_softmax_loss_without_pseudo_negatives_is_cross_entropy():
    real = torch.tensor([[1.0, 0.0]])
    total, _, p = softmax_loss(real, torch.tensor([1]), torch.empty(0, 2),
                               torch.empty(0, dtype=torch.long))
    assert p.item() == 0.0
    assert math.isclose(total.item(), math.log(1 + math.e), rel_tol=1e-6)


def test_ova_loss_is_eq_7_summed_over_networks():
    real = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # 2 samples, K = 2 networks
    y = torch.tensor([0, 1])
    pn = torch.tensor([[2.0, 9.0], [-1.0, 9.0], [9.0, 0.0]])
    k = torch.tensor([0, 0, 1])  # two negatives for network 0, one for network 1

    total, r, p = ova_loss(real, y, pn, k, weight=2.0)

    # Network 0: sample 0 positive (logit 1), sample 1 negative (logit 0.5).
    net0 = (sp(-1.0) + sp(0.5)) / 2
    # Network 1: sample 0 negative (logit -2), sample 1 positive (logit 3).
    net1 = (sp(-2.0) + sp(-3.0)) / 2
    want_pn = (sp(2.0) + sp(-1.0)) / 2 + sp(0.0)
    assert math.isclose(r.item(), net0 + net1, rel_tol=1e-6)
    assert math.isclose(p.item(), want_pn, rel_tol=1e-6)
    assert math.isclose(total.item(), net0 + net1 + 2.0 * want_pn, rel_tol=1e-6)


def test_pseudo_negative_term_pushes_target_logit_down():
    pn = torch.zeros(1, 3, requires_grad=True)
    _, _, _ = softmax_loss(torch.zeros(1, 3), torch.tensor([0]), pn, torch.tensor([1]))
    total, _, _ = softmax_loss(torch.zeros(1, 3), torch.tensor([0]), pn, torch.tensor([1]))
    (g,) = torch.autograd.grad(total, pn)
    assert g[0, 1] > 0 and g[0, 0] == 0 and g[0, 2] == 0  # descent lowers f_1 only
