"""Evaluation: logits in eval mode and the error rate (paper 3.3), plain tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Transform = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = 1000,
    transform: Transform | None = None,
) -> torch.Tensor:
    """Logits (N, K) in eval mode, in batches; ``x`` on the model's device."""
    model.eval()
    out = []
    for xb in x.split(batch_size):
        out.append(model(transform(xb) if transform else xb).float())
    return torch.cat(out) if out else torch.empty(0)


@dataclass(frozen=True)
class ErrorReport:
    """Error rate (fraction, not %), per-class error and the number of samples."""

    error: float
    per_class: list[float]
    n: int


def error_rate(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> ErrorReport:
    """Prediction is argmax_k f_k(x) in both modes (paper 3.3)."""
    wrong = (logits.argmax(1) != y).float()
    per = torch.zeros(num_classes).index_add_(0, y.cpu(), wrong.cpu())
    counts = torch.bincount(y.cpu(), minlength=num_classes).clamp(min=1)
    return ErrorReport(float(wrong.mean()) if len(y) else float("nan"),
                       (per / counts).tolist(), len(y))
