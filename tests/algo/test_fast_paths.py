"""The speed paths give the results of the plain ones: one-vs-all per-head evaluation,
the stacked networks' CPU form, and the optimizer that replaces torch.optim.SGD."""

import copy

import pytest
import torch
import torch.nn.functional as F

from icl_cli.algo.ascent import Ascent, reference_noise, synthesize, targets_per_class
from icl_cli.algo.reclassify import SGD, make_optimizer, reclassify
from icl_cli.models import build_model


def ova_net(arch="tiny", shape=(1, 12, 12)):
    torch.manual_seed(0)
    return build_model(arch, shape, 3, "ova").eval()


def test_forward_heads_is_network_k_on_its_own_inputs():
    for arch, shape in [("tiny", (1, 12, 12)), ("resnet8", (3, 16, 16))]:
        net = ova_net(arch, shape)
        xs = [torch.randn(n, *shape) for n in (2, 0, 5)]
        want = [net(x)[:, k : k + 1] if len(x) else torch.empty(0, 1)
                for k, x in enumerate(xs)]
        for sliced in (True, False):  # the CPU form and the grouped (GPU) form
            net._sliceable = sliced and arch == "tiny"
            got = net.forward_heads(xs)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape
                torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_sliced_and_grouped_forms_agree():
    net = ova_net()
    x = torch.randn(4, 1, 12, 12)
    sliced = net(x)
    net._sliceable = False
    torch.testing.assert_close(sliced, net(x), atol=1e-6, rtol=1e-5)


class OneNetwork(torch.nn.Module):
    """Network k of a one-vs-all module as a plain one-logit network."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x):
        return self.net(x)[:, self.k : self.k + 1]


def test_ova_synthesis_matches_each_network_alone():
    net = ova_net()
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    target = targets_per_class(3, 4)[order]  # shuffled: the sampler sorts by class inside
    x0 = reference_noise(12, (1, 12, 12), 0.3, torch.Generator().manual_seed(1))
    out = synthesize(net, x0, target, Ascent(max_steps=15, lr=0.05))
    for k in range(3):
        rows = target == k
        zeros = torch.zeros(int(rows.sum()), dtype=torch.long)
        ref = synthesize(OneNetwork(net, k), x0[rows], zeros, Ascent(max_steps=15, lr=0.05))
        torch.testing.assert_close(out.samples[rows], ref.samples, atol=1e-5, rtol=1e-4)
        assert torch.equal(out.steps[rows], ref.steps)


def test_stop_rule_none_takes_every_step():
    net = ova_net()
    x0 = reference_noise(6, (1, 12, 12), 0.3, torch.Generator().manual_seed(1))
    out = synthesize(net, x0, targets_per_class(3, 2), Ascent(max_steps=4, stop_rule="none"))
    assert (out.steps == 4).all() and not out.passed.any()


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
def test_sgd_is_torch_sgd_bit_for_bit_and_shares_its_state_dict(foreach):
    torch.manual_seed(0)
    a = build_model("tiny", (1, 12, 12), 3)
    b = copy.deepcopy(a)
    ours = SGD(a.parameters(), 0.05, momentum=0.9, weight_decay=1e-3, foreach=foreach)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3,
                          foreach=foreach)
    for _ in range(4):
        x, y = torch.randn(5, 1, 12, 12), torch.randint(0, 3, (5,))
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert str(ours.state_dict()) == str(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    back = SGD(a.parameters(), lr=1.0, momentum=0.9)
    back.load_state_dict(ref.state_dict())
    assert back.param_groups[0]["lr"] == 0.05


def test_ova_reclassify_per_head_matches_full_forward():
    torch.manual_seed(0)
    net = build_model("tiny", (1, 12, 12), 3, "ova")
    full = copy.deepcopy(net)
    full.forward_heads = None  # no per-head path: every sample through all K networks
    del full.forward_heads
    real_x, real_y = torch.randn(24, 1, 12, 12), torch.randint(0, 3, (24,))
    pn_x, pn_k = torch.randn(18, 1, 12, 12), torch.randint(0, 3, (18,))
    for model in (net, full):
        reclassify(model, make_optimizer(model, 0.05), real_x, real_y, pn_x, pn_k, epochs=2,
                   batch_size=8, mode="ova", real_gen=torch.Generator().manual_seed(1),
                   pn_gen=torch.Generator().manual_seed(2))
    for p, q in zip(net.parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
