"""Calibration and OOD-detection measures against hand computations."""

import math

import pytest
import torch

from icl_cli.metrics import calibration, detection, ood_scores
from tests.kit import imported_by


def test_calibration_by_hand():
    # Two images, confidences softmax([ln 3, 0]) = 0.75 (right) and 0.75 (wrong).
    logits = torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]])
    y = torch.tensor([0, 1])
    cal = calibration(logits, y, bins=3)
    assert cal.nll == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)
    assert cal.ece == pytest.approx(0.25)  # one bin: |0.75 - 0.5|
    assert cal.count == [0, 0, 2] and cal.accuracy[2] == 0.5
    assert cal.confidence[2] == pytest.approx(0.75)


def test_ece_depends_on_the_bins():
    # Confidences 0.6 (right) and 0.9 (wrong): one bin pools them, ten bins do not.
    logits = torch.tensor([[math.log(1.5), 0.0], [math.log(9), 0.0]])
    y = torch.tensor([0, 1])
    assert calibration(logits, y, bins=1).ece == pytest.approx(abs(0.75 - 0.5))
    assert calibration(logits, y, bins=10).ece == pytest.approx((0.4 + 0.9) / 2)


@pytest.mark.parametrize("bins", [1, 2, 3, 10, 15])
def test_ece_is_torchmetrics_own(bins):
    """The same number as torchmetrics' multiclass_calibration_error (norm "l1"), also
    where its binning is at an edge: confidences exactly on a bin boundary (0.5, equal
    logits) and exactly 1.0 (saturated logits, a bin of their own there)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(bins)
    logits = torch.cat([torch.randn(500, 10, generator=g) * 3,
                        torch.zeros(20, 10),  # confidence 0.1, a boundary for 10 bins
                        torch.tensor([[200.0] + [0.0] * 9] * 30),  # confidence 1.0
                        torch.tensor([[5.0, 5.0] + [-200.0] * 8] * 25)])  # 0.5
    y = torch.randint(0, 10, (len(logits),), generator=g)
    cal = calibration(logits, y, bins)
    ref = multiclass_calibration_error(logits.softmax(1), y, num_classes=10, n_bins=bins,
                                       norm="l1")
    assert cal.ece == pytest.approx(float(ref), abs=1e-6)
    assert sum(cal.count) == len(logits) and len(cal.count) == bins
    # The diagram's bins hold the same images: their weighted gaps add up to at least
    # the ECE's (the last bin may pool the confidences of exactly 1.0 with others).
    gaps = sum(n * abs(a - c) for n, a, c in zip(cal.count, cal.accuracy, cal.confidence,
                                                  strict=True)) / len(logits)
    assert gaps <= cal.ece + 1e-6


def test_evaluation_imports_no_torchmetrics():
    """``icl evaluate`` pays for no torchmetrics import (torchvision, torch._dynamo and
    scipy come with it): calibration runs without it."""
    code = ("import torch\nfrom icl_cli.metrics import calibration\n"
            "calibration(torch.randn(8, 3), torch.tensor([0, 1, 2] * 2 + [0, 1]))")
    assert imported_by(code, ("torchmetrics", "torchvision", "scipy")) == []


def test_detection_by_hand():
    d = detection(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0.5, 2.5]))
    assert d.auroc == pytest.approx(0.5)  # 4 of the 8 (in, out) pairs ordered right
    assert d.fpr95 == 1.0  # keeping every in-image keeps every out-image too
    perfect = detection(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))
    assert (perfect.auroc, perfect.aupr, perfect.fpr95) == (1.0, 1.0, 0.0)


def test_a_perfect_separation_scores_at_most_one():
    """torchmetrics sums in float32: this one's AUPR came out 1.0000001, a share above 1
    (and its AUROC 0.99999994: float32's precision, in range)."""
    g = torch.Generator().manual_seed(13)
    n, m = int(torch.randint(100, 3000, (1,), generator=g)), int(torch.randint(100, 3000, (1,),
                                                                               generator=g))
    perfect = detection(torch.rand(n, generator=g) + 2, torch.rand(m, generator=g))
    assert (n, m) == (1018, 1852)
    assert perfect.aupr == 1.0 and perfect.fpr95 == 0.0
    assert perfect.auroc == pytest.approx(1.0, abs=1e-6) and perfect.auroc <= 1.0


def test_scores():
    s = ood_scores(torch.tensor([[0.0, math.log(3)]]))
    assert s["max_softmax"].item() == pytest.approx(0.75)
    assert s["max_logit"].item() == pytest.approx(math.log(3))
    assert s["logsumexp"].item() == pytest.approx(math.log(4))


def test_frechet_distance_by_hand():
    from icl_cli.metrics import frechet_distance

    # Means 0 and 1 in 3 dimensions, both covariances 0: |mu_a - mu_b|^2 = 3.
    assert frechet_distance(torch.zeros(4, 3), torch.ones(4, 3)) == pytest.approx(3.0)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Scaling by 2 (covariance I -> 4I): Tr(I + 4I - 2 * 2I) = 1 per dimension.
    big = torch.randn(50000, 2, generator=g, dtype=torch.float64)
    assert frechet_distance(big, 2 * big) == pytest.approx(2.0, rel=0.02)
