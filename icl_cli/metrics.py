"""Measures beyond test error: calibration (NLL, ECE) and out-of-distribution detection
(AUROC, AUPR, FPR at 95 % TPR) from logits. Pure tensor code, no I/O. The detection
measures come from torchmetrics. The expected calibration error is torchmetrics' own
formula and binning, computed here from the bins the reliability diagram draws: importing
torchmetrics costs ~2x ``import torch`` (it imports torchvision, ``torch._dynamo`` and
scipy), which every ``icl evaluate`` would pay for one sum over 15 bins;
``tests/test_metrics.py`` checks it against torchmetrics.

Probabilities are softmax(logits) in both modes: in one-vs-all mode the K networks' logits
are not normalised, and softmax over them is the usual way to read them as one
distribution (prediction is argmax_k f_k either way, paper 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Calibration:
    """nll: mean -log p_y(x); ece: expected calibration error (L1, ``bins`` equal-width
    confidence bins, Guo et al. 2017); per bin: mean confidence, accuracy and count (for
    the reliability diagram)."""

    nll: float
    ece: float
    bins: int
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


def calibration(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> Calibration:
    """NLL and ECE of softmax(logits) against labels y.

    Shape: logits (N, K), y (N,).
    Example:
        >>> calibration(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), bins=10).nll
        0.1269...
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    logits, y = logits.float().cpu(), y.cpu()
    conf, pred = logits.softmax(1).max(1)
    right = (pred == y).float()
    # torchmetrics' bins (multiclass_calibration_error, norm "l1"): [i/bins, (i+1)/bins)
    # for i < bins, and a last one of its own for a confidence of exactly 1.0.
    which = torch.bucketize(conf, torch.linspace(0, 1, bins + 1), right=True) - 1
    count = torch.zeros(bins + 1).index_add_(0, which, torch.ones_like(conf))
    c_sum = torch.zeros(bins + 1).index_add_(0, which, conf)
    a_sum = torch.zeros(bins + 1).index_add_(0, which, right)
    den = count.clamp(min=1)
    ece = ((a_sum / den - c_sum / den).abs() * count / count.sum()).sum()
    # The diagram draws ``bins`` bins: a confidence of 1.0 joins the last one.
    count, c_sum, a_sum = (torch.cat([v[:bins - 1], v[bins - 1:].sum(0, keepdim=True)])
                           for v in (count, c_sum, a_sum))
    den = count.clamp(min=1)
    return Calibration(float(F.cross_entropy(logits, y)), float(ece), bins,
                       (c_sum / den).tolist(), (a_sum / den).tolist(),
                       count.long().tolist())


SCORES = ("max_softmax", "max_logit", "logsumexp")


def ood_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image "in-distribution" scores, higher = more like the training data: max
    softmax probability (Hendrycks & Gimpel 2017), max logit, logsumexp of the logits (the
    negative free energy, Liu et al. 2020). For ICL the max logit is also the paper's own
    score, max_k f_k(x) > 0 being "this is class k" (eq. 7 / eq. 11).

    Shape: logits (N, K) -> {name: (N,)}.
    """
    logits = logits.float()
    return {"max_softmax": logits.softmax(1).amax(1), "max_logit": logits.amax(1),
            "logsumexp": logits.logsumexp(1)}


@dataclass(frozen=True)
class Detection:
    """In-distribution as the positive class: auroc, aupr (average precision, in as
    positive) and fpr95, the share of out-of-distribution images scored above the
    threshold that keeps 95 % of in-distribution images."""

    auroc: float
    aupr: float
    fpr95: float


def detection(score_in: torch.Tensor, score_out: torch.Tensor) -> Detection:
    """AUROC, AUPR and FPR at 95 % TPR of a score separating in (positive) from out.

    Shape: score_in (N,), score_out (M,).
    Example:
        >>> detection(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])).auroc
        1.0
    """
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_average_precision,
        binary_roc,
    )

    scores = torch.cat([score_in, score_out]).double().cpu()
    labels = torch.cat([torch.ones(len(score_in)), torch.zeros(len(score_out))]).long()
    fpr, tpr, _ = binary_roc(scores, labels)
    fpr95 = float(fpr[tpr >= 0.95].min())
    # torchmetrics sums in float32 whatever the input: a perfect separation can come out
    # one unit in the last place above 1 (AUPR 1.0000001 over 1,018 + 1,852 scores).
    return Detection(_unit(binary_auroc(scores, labels)),
                     _unit(binary_average_precision(scores, labels)), fpr95)


def _unit(x: torch.Tensor) -> float:
    """A share computed in float32, in [0, 1]."""
    return min(1.0, max(0.0, float(x)))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets:
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Dowson & Landau 1982; FID's formula,
    here on whatever features it is given). The trace of the square root comes from the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2), symmetric, so no complex sqrtm.

    Shape: a (N, D), b (M, D), N, M >= 2.
    Example:
        >>> frechet_distance(torch.zeros(4, 3), torch.ones(4, 3))
        3.0
    """
    a, b = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T, correction=1), torch.cov(b.T, correction=1)
    s_a, s_b = s_a.reshape(a.shape[1], -1), s_b.reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross)
