"""The paper's Figure 2 in numbers: a 2-D toy where ICL tightens the positive region.

Two Gaussian classes in the plane, a small MLP trained one-vs-all. Each round draws
pseudo-negatives for class 0 from a broad reference distribution by gradient ascent and
retrains on data plus every pseudo-negative so far. The pseudo-negatives must move
toward class 0, and the region the classifier calls class 0 must shrink around the data
while the real data stays correctly classified.
"""

import pytest
import torch
from torch import nn

from icl_cli.algo.ascent import Ascent, reference_noise, synthesize
from icl_cli.algo.reclassify import Diverged, make_optimizer, reclassify

CENTRE = torch.tensor([1.5, 1.5])


def positive_area(net: nn.Module) -> float:
    """Fraction of the square [-4, 4]^2 where f_0(x) > 0."""
    axis = torch.linspace(-4, 4, 81)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        return (net(grid)[:, 0] > 0).float().mean().item()


def test_pseudo_negatives_close_in_and_positive_region_shrinks():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pos = torch.randn((100, 2), generator=g) * 0.3 + CENTRE
    neg = torch.randn((100, 2), generator=g) * 0.3 - CENTRE
    x, y = torch.cat([pos, neg]), torch.cat([torch.zeros(100), torch.ones(100)]).long()
    net = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64),
                        nn.LeakyReLU(0.2), nn.Linear(64, 2))
    opt = make_optimizer(net, 0.05)
    gens = dict(real_gen=torch.Generator().manual_seed(1),
                pn_gen=torch.Generator().manual_seed(2))
    train = dict(epochs=30, batch_size=32, mode="ova", **gens)
    pool_x, pool_k = torch.empty(0, 2), torch.empty(0, dtype=torch.long)
    reclassify(net, opt, x, y, pool_x, pool_k, **train)
    areas, distances = [positive_area(net)], []
    sampler_gen = torch.Generator().manual_seed(3)

    for _ in range(4):
        x0 = reference_noise(50, (2,), 1.5, sampler_gen)
        out = synthesize(net, x0, torch.zeros(50, dtype=torch.long),
                         Ascent(max_steps=300, lr=0.05))
        assert out.passed.all()
        distances.append((out.samples - CENTRE).norm(dim=1).mean().item())
        pool_x, pool_k = torch.cat([pool_x, out.samples]), torch.cat([pool_k, out.target])
        reclassify(net, opt, x, y, pool_x, pool_k, **train)
        areas.append(positive_area(net))

    print("areas", areas, "distances", distances)
    assert areas[-1] < 0.25 * areas[0]  # the class-0 region tightened around the data
    assert distances[-1] < 0.5 * distances[0]  # samples moved toward the positives
    with torch.no_grad():
        assert (net(x).argmax(1) != y).float().mean() <= 0.01


def test_a_loss_that_stops_being_finite_raises_diverged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2))
    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    opt = make_optimizer(net, 1e30)  # the first step sends the weights to inf
    with pytest.raises(Diverged, match="in epoch 1"):
        reclassify(net, opt, x, y, torch.empty(0, 2), torch.empty(0, dtype=torch.long),
                   epochs=2, batch_size=16, real_gen=torch.Generator().manual_seed(1),
                   pn_gen=torch.Generator().manual_seed(2))
