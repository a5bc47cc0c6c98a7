"""Synthesis and FGSM: the one input-gradient mechanism."""

import torch
from torch import nn

from icl_cli.algo.ascent import (
    fgsm,
    noise_samples,
    reference_noise,
    synthesize,
    targets_per_class,
)
from icl_cli.models import build_model


def tiny_net(seed=0, mode="softmax"):
    torch.manual_seed(seed)
    return build_model("tiny", (1, 12, 12), 3, mode)


def start(n_per_class=4, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    target = targets_per_class(classes, n_per_class)
    return reference_noise(len(target), (1, 12, 12), 0.3, g), target


def test_synthesis_raises_the_target_logit_and_stops_early():
    net = tiny_net()
    x0, target = start()
    before = net(x0).gather(1, target[:, None])[:, 0]

    out = synthesize(net, x0, target, max_steps=300, lr=0.05)

    after = net(out.samples).gather(1, target[:, None])[:, 0]
    assert out.passed.all()  # every sample reached f_k(x) > 0 ...
    assert (out.logit > 0).all()
    assert torch.allclose(after, out.logit, atol=1e-5)
    rose = before < 0
    assert rose.any() and (after[rose] > before[rose]).all()
    # ... and stopped there: samples already positive at the start took no step.
    assert (out.steps[~rose] == 0).all()
    assert (out.steps[rose] > 0).all() and out.steps.max() < 300
    assert torch.equal(out.samples[~rose], x0[~rose])


def test_synthesis_leaves_weights_untouched_and_mode_restored():
    net = tiny_net()
    net.train()
    weights = [p.detach().clone() for p in net.parameters()]
    x0, target = start()
    synthesize(net, x0, target, max_steps=20, lr=0.05)
    assert net.training
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))


def test_max_steps_caps_and_marks_failures():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0, target, max_steps=2, lr=1e-6)
    failed = ~out.passed
    assert failed.any()
    assert (out.steps[failed] == 2).all()
    assert (out.logit[failed] <= 0).all()


def test_same_seed_gives_bit_identical_samples():
    net = tiny_net()
    runs = []
    for _ in range(2):
        x0, target = start(seed=7)
        g = torch.Generator().manual_seed(1)
        runs.append(synthesize(net, x0, target, max_steps=50, lr=0.05,
                               langevin_std=0.01, generator=g))
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert torch.equal(runs[0].steps, runs[1].steps)
    other = synthesize(net, *start(seed=8), max_steps=50, lr=0.05)
    assert not torch.equal(other.samples, runs[0].samples)


def test_results_do_not_depend_on_compaction_interval():
    net = tiny_net()
    x0, target = start()
    a = synthesize(net, x0, target, max_steps=100, lr=0.05, check_every=1)
    b = synthesize(net, x0, target, max_steps=100, lr=0.05, check_every=7)
    assert torch.equal(a.steps, b.steps)
    assert torch.allclose(a.samples, b.samples, atol=1e-6)


def test_passed_samples_leave_the_batch():
    calls = []

    class Counting(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            calls.append(len(x))
            return self.net(x)

    net = Counting(tiny_net())
    x0, target = start()
    out = synthesize(net, x0, target, max_steps=300, lr=0.05)
    # Work done equals the steps the samples needed (plus the stop tests), not N * steps.
    assert sum(calls) <= out.sampler_steps + len(target) + len(calls)
    assert sum(calls) < len(target) * (int(out.steps.max()) + 1)


def test_argmax_stop_rule():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0, target, max_steps=300, lr=0.05, stop_rule="argmax")
    assert (net(out.samples).argmax(1)[out.passed] == target[out.passed]).all()


def test_clamp_keeps_samples_in_range():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0 * 5, target, max_steps=20, lr=0.5, clamp=(-1.0, 1.0))
    moved = out.steps > 0
    assert moved.any() and out.samples[moved].abs().max() <= 1.0


def test_noise_sampler_takes_no_steps():
    net = tiny_net()
    x0, target = start()
    out = noise_samples(net, x0, target)
    assert torch.equal(out.samples, x0)
    assert (out.steps == 0).all()
    assert torch.equal(out.passed, out.logit > 0)


def test_fgsm_stays_in_eps_ball_and_raises_loss():
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((16, 1, 12, 12), generator=g) * 1.6 - 0.8
    y = torch.randint(0, 3, (16,), generator=g)
    adv = fgsm(net, x, y, eps=0.1)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= -1 and adv.max() <= 1
    ce = nn.functional.cross_entropy
    assert ce(net(adv), y) > ce(net(x), y)


def test_ova_is_k_independent_networks():
    net = tiny_net(mode="ova")
    x0, _ = start()
    out = net(x0)
    # Zeroing network 1's parameters (its channel group) leaves networks 0 and 2 alone.
    with torch.no_grad():
        conv2 = net.body[2]
        conv2.weight[16:32] = 0
        conv2.bias[16:32] = 0
    changed = net(x0)
    assert torch.equal(out[:, [0, 2]], changed[:, [0, 2]])
    assert not torch.equal(out[:, 1], changed[:, 1])
