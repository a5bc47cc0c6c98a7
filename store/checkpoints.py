"""Checkpoint files: one ``torch.save`` file per (experiment, round).

Path: ``<ws>/experiments/<name>/checkpoints/round-0007.pt``. The payload is plain data
only (tensors, dicts, lists, numbers, strings), so it loads with
``torch.load(weights_only=True)`` and a tampered file can never run code::

    {"model": state_dict, "optimizer": state_dict | None, "config": dict,
     "round": int, "experiment": str, ...}

Reading one without icl::

    import torch
    state = torch.load("experiments/icl/checkpoints/round-0003.pt", weights_only=True)
    model.load_state_dict(state["model"])
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from .errors import IntegrityError


def checkpoint_name(round: int) -> str:
    """``round-0007.pt``."""
    return f"round-{round:04d}.pt"


def write_file(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` (a temporary name; see ``workspace.atomic_write``)."""
    import torch

    torch.save(state, path)


def non_finite(weights: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``weights`` that hold NaN or inf."""
    import torch

    return [k for k, v in weights.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def read_file(path: Path, rel: str, fix: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint whose hash was already checked, with ``weights_only=True``.

    Anything but plain data (a pickled class, a ``__reduce__`` payload) is refused with
    IntegrityError before it can execute; so is a file torch cannot parse.
    """
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(
            f"checkpoint {rel} holds more than plain tensors and was refused "
            f"(weights_only load: {first[:200]}): {fix}"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(f"checkpoint {rel} could not be read ({first[:200]}): {fix}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise IntegrityError(f"checkpoint {rel} is not an icl checkpoint (no 'model' entry): {fix}")
    return state
