"""Synthesis, FGSM and PGD: the one input-gradient mechanism."""

import pytest
import torch
from torch import nn

from icl_cli.algo.ascent import (
    Active,
    Ascent,
    fgsm,
    input_gradient,
    pgd,
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

    out = synthesize(net, x0, target, Ascent(max_steps=300, lr=0.05))

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
    synthesize(net, x0, target, Ascent(max_steps=20, lr=0.05))
    assert net.training
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))


def test_max_steps_caps_and_marks_failures():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0, target, Ascent(max_steps=2, lr=1e-6))
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
        runs.append(synthesize(net, x0, target,
                               Ascent(max_steps=50, lr=0.05, langevin_std=0.01), generator=g))
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert torch.equal(runs[0].steps, runs[1].steps)
    other = synthesize(net, *start(seed=8), Ascent(max_steps=50, lr=0.05))
    assert not torch.equal(other.samples, runs[0].samples)


def test_results_do_not_depend_on_compaction_interval():
    net = tiny_net()
    x0, target = start()
    a = synthesize(net, x0, target, Ascent(max_steps=100, lr=0.05, check_every=1))
    b = synthesize(net, x0, target, Ascent(max_steps=100, lr=0.05, check_every=7))
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
    out = synthesize(net, x0, target, Ascent(max_steps=300, lr=0.05))
    # Work done equals the steps the samples needed (plus the stop tests), not N * steps.
    assert sum(calls) <= int(out.steps.sum()) + len(target) + len(calls)
    assert sum(calls) < len(target) * (int(out.steps.max()) + 1)


def test_argmax_stop_rule():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0, target, Ascent(max_steps=300, lr=0.05, stop_rule="argmax"))
    assert (net(out.samples).argmax(1)[out.passed] == target[out.passed]).all()


def test_clamp_keeps_samples_in_range():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0 * 5, target, Ascent(max_steps=20, lr=0.5, clamp=True))
    moved = out.steps > 0
    assert moved.any() and out.samples[moved].abs().max() <= 1.0


def test_noise_sampler_takes_no_steps():
    net = tiny_net()
    x0, target = start()
    out = synthesize(net, x0, target, Ascent(max_steps=0))  # ICL-noise: the draws, scored
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


def test_input_gradient_is_the_hand_computed_gradient():
    # f(x) = W x, objective f_0: d f_0 / dx = W[0] for every row.
    lin = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    x = torch.tensor([[[[0.2, 0.1]]], [[[-0.3, 0.4]]]])
    logits, value, grad = input_gradient(lin, x, lambda z: z[:, 0])
    assert torch.allclose(value, torch.tensor([0.0, -1.1]))
    assert torch.equal(grad, torch.tensor([1.0, -2.0]).expand(2, 2).view(2, 1, 1, 2))
    assert torch.allclose(logits[:, 1], torch.tensor([0.65, -0.7]))


def test_active_rows_compact_and_flush_together():
    full = {"x": torch.zeros(5), "s": torch.zeros(5, dtype=torch.int32)}
    a = Active(torch.tensor([4, 0, 2, 1, 3]), x=torch.arange(5.0),
               s=torch.ones(5, dtype=torch.int32))
    a.keep(torch.tensor([True, False, True, True, False]))
    assert a.idx.tolist() == [4, 2, 1] and a.x.tolist() == [0.0, 2.0, 3.0] and len(a) == 3
    a.flush(full, torch.tensor([True, False, True]))
    assert full["x"].tolist() == [0.0, 3.0, 0.0, 0.0, 0.0]
    assert full["s"].tolist() == [0, 1, 0, 0, 1]


def linear_net():
    """logits = W x on a (1, 1, 2) input, W = [[1, -2], [0, 0]]: for label 0 the CE gradient
    is -(1 - p_0) * [1, -2], so its sign is [-1, +1] at every point."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
    return net


def test_pgd_matches_a_hand_computation():
    net = linear_net()
    x = torch.tensor([[[[0.2, 0.1]]], [[[-0.9, 0.9]]]])
    y = torch.tensor([0, 0])
    adv = pgd(net, x, y, eps=0.3, steps=5, step_size=0.1, random_start=False)
    # Row 0: three steps of [-0.1, +0.1] reach the eps ball's corner, then projection holds
    # it there. Row 1: the same corner [-1.2, 1.2] is clipped to the data range [-1, 1].
    assert torch.allclose(adv.view(2, 2), torch.tensor([[-0.1, 0.4], [-1.0, 1.0]]))
    # One step of size eps is FGSM.
    assert torch.equal(pgd(net, x, y, eps=0.3, steps=1, step_size=0.3, random_start=False),
                       fgsm(net, x, y, eps=0.3))


def test_pgd_default_step_size_is_madrys():
    net = tiny_net()
    x, y = attack_batch()
    assert torch.equal(pgd(net, x, y, eps=0.2, steps=8, random_start=False),
                       pgd(net, x, y, eps=0.2, steps=8, step_size=2.5 * 0.2 / 8,
                           random_start=False))


def attack_batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 12, 12), generator=g) * 1.6 - 0.8
    return x, torch.randint(0, 3, (n,), generator=g)


def test_pgd_random_start_stays_in_the_ball_and_follows_the_seed():
    net = tiny_net()
    x, y = attack_batch()

    def run(seed, **kw):
        return pgd(net, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(seed),
                   **kw)

    a, b = run(0), run(0)
    assert torch.equal(a, b) and not torch.equal(a, run(1))
    assert not torch.equal(a, run(0, random_start=False))
    assert (a - x).abs().max() <= 0.1 + 1e-6 and a.abs().max() <= 1.0
    ce = nn.functional.cross_entropy
    assert ce(net(a), y) > ce(net(x), y)
    assert ce(net(a), y) > ce(net(fgsm(net, x, y, eps=0.1)), y)  # more steps, more loss


def test_pgd_restarts_retry_only_the_rows_still_right():
    rows = []

    class Margin(nn.Module):  # logits (x_0, -x_0): label 0 is right while x_0 > 0
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))

        def forward(self, x):
            rows.append(len(x))
            return x.flatten(1) @ self.w.T

    net = Margin()
    x, y = torch.tensor([0.05, 0.0]).expand(64, 1, 1, 2), torch.zeros(64, dtype=torch.long)

    def fooled(restarts):
        # Steps too small to cross: only a random start beyond -0.05 fools (1 in 4).
        rows.clear()
        adv = pgd(net, x, y, eps=0.1, steps=3, step_size=0.001, restarts=restarts,
                  generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return net(adv).argmax(1) != y

    one, five = fooled(1), fooled(5)
    assert 0 < one.sum() < five.sum() < 64
    assert (five | ~one).all()  # the first restart is the same draw: only more get fooled
    # Restart 2 runs 3 gradient steps plus a check on the rows restart 1 left right.
    assert rows[4:8] == [int((~one).sum())] * 4


def test_pgd_agrees_with_foolbox_linf_pgd():
    fb = pytest.importorskip("foolbox")
    net = tiny_net().eval()
    x, y = attack_batch()
    ours = pgd(net, x, y, eps=0.15, steps=10, step_size=0.04, random_start=False)
    attack = fb.attacks.LinfPGD(abs_stepsize=0.04, steps=10, random_start=False)
    _, theirs, _ = attack(fb.PyTorchModel(net, bounds=(-1, 1)), x, y, epsilons=0.15)
    assert torch.allclose(ours, theirs, atol=1e-6)
