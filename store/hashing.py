"""The one ``config_hash`` of icl: what identifies an experiment's, step's or checkpoint's
config in the catalog (``icl_cli.config`` uses this one too).

Example:
    >>> config_hash({"b": 1, "a": [0.5, None]}) == config_hash({"a": [0.5, None], "b": 1})
    True
    >>> len(config_hash({}))
    16
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import StoreError


def config_hash(d: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``d`` (keys sorted, no spaces), first 16 hex
    digits. A value JSON cannot hold (a tensor, a set, a Path) is a one-line StoreError."""
    try:
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise StoreError(f"config is not plain JSON data ({exc})") from None
    return hashlib.sha256(blob).hexdigest()[:16]
