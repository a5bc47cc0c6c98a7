"""The reclassification losses: ICL eq. 11 (softmax) and eq. 7 (one-vs-all).

Both take logits of real samples with their labels and logits of pseudo-negatives with
the class k each was synthesised for. Eq. 11 is a sum over every sample, real or pseudo-
negative, each counting once; a mixed batch of B real images and P pseudo-negatives gives

    per-sample:  (sum of B real terms + w * sum of P pseudo-negative terms) / B

so that with w = 1 one pseudo-negative weighs exactly what one real image weighs, in every
round and at every pool size. ``batch-mean`` keeps the form of earlier icl versions for
the ablation: mean over the real rows + w * mean over the pseudo-negative rows, in which one
pseudo-negative weighs B / P real images (27x at full-MNIST round 1, SPEC).

``drawn`` (the authors' batches, ``icl_cli.algo.reclassify``) joins each real batch of B images
with B pseudo-negatives drawn from the pool (one-vs-all: B per network); its loss is the
batch-mean form over the drawn rows, mean cross-entropy + w * mean softplus, so the pool
is a fixed half of every batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTINGS = ("per-sample", "batch-mean", "drawn")
"""``drawn`` takes the batch-mean form over the rows it drew (each form but per-sample
is a mean over the pseudo-negatives)."""


def target_logit(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """f_k(x) for each row: (B, K), (B,) -> (B,); rows given as f_k already (B,) pass."""
    return logits if logits.dim() == 1 else logits.gather(1, k[:, None])[:, 0]


def softmax_loss(
    real_logits: torch.Tensor, y: torch.Tensor,
    pn_logits: torch.Tensor, pn_class: torch.Tensor, weight: float = 1.0,
    weighting: str = "per-sample",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ICL eq. 11: cross-entropy for each real sample, softplus(f_k(x)) = ln(1 + exp(f_k(x)))
    = -ln sigmoid(-f_k(x)) for each pseudo-negative (x, k), weighed as the module says.

    Shape: real_logits (B, K), y (B,), pn_logits (P, K) or f_k(x) alone (P,), pn_class (P,);
    P may be 0. Returns (total, real term, pseudo-negative term), each a scalar; the real
    term is the mean cross-entropy, the pseudo-negative term is what ``weight`` multiplies.
    """
    real = F.cross_entropy(real_logits, y)
    if len(pn_class):
        per = F.softplus(target_logit(pn_logits, pn_class))
        pn = per.sum() / len(y) if weighting == "per-sample" else per.mean()
    else:
        pn = real * 0
    return real + weight * pn, real.detach(), pn.detach()


def ova_loss(
    real_logits: torch.Tensor, y: torch.Tensor,
    pn_logits: torch.Tensor, pn_class: torch.Tensor, weight: float = 1.0,
    weighting: str = "per-sample",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ICL eq. 7 for K binary networks trained together: network k takes real class k as
    positive and every other real class and its own pseudo-negatives as negative.

    per-sample:  loss = sum_k [ sum_i BCE(f_k(x_i), y_i == k)
                                + weight * sum_{j: k_j = k} softplus(f_k(x_j)) ] / B
    batch-mean:  loss = sum_k [ mean_i BCE(f_k(x_i), y_i == k)
                                + weight * mean_{j: k_j = k} softplus(f_k(x_j)) ]
    Summing over k (not averaging) gives each network exactly the gradient it would get
    if trained alone on the same batches. ``pn_logits`` may be (P, K) or f_k(x) alone (P,)
    (what ``forward_heads`` gives). Returns (total, real term, pn term).
    """
    k = real_logits.shape[1]
    onehot = F.one_hot(y, k).to(real_logits.dtype)
    real = F.binary_cross_entropy_with_logits(real_logits, onehot, reduction="none")
    real = real.mean(0).sum()
    if not len(pn_class):
        pn = real * 0
    elif weighting == "per-sample":
        pn = F.softplus(target_logit(pn_logits, pn_class)).sum() / len(y)
    else:
        per = F.softplus(target_logit(pn_logits, pn_class))
        sums = torch.zeros(k, dtype=per.dtype, device=per.device).index_add_(0, pn_class, per)
        # index_add, not bincount: bincount's output size needs a host sync on a GPU.
        counts = torch.zeros_like(sums).index_add_(0, pn_class, torch.ones_like(per))
        pn = (sums / counts.clamp(min=1)).sum()
    return real + weight * pn, real.detach(), pn.detach()


LOSSES = {"softmax": softmax_loss, "ova": ova_loss}
