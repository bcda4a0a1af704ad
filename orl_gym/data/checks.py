"""Argument checks the data modules share: integers that are integers, batch sizes, and
short listings of names for error messages."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def integer_or_none(value: Any) -> int | None:
    """``value`` as an int when it is an integer (Python or NumPy), else None.

    Bools and integral floats are not integers here: ``True`` would silently mean 1, and
    ``scale=4.0`` passes ``in (2, 4, 8)`` but breaks tensor shapes much later.
    """
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, torch.Tensor) and value.dtype == torch.bool
    ):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def checked_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int >= 1, or ValueError."""
    size = integer_or_none(batch_size)
    if size is None or size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return size


def list_names(names: Sequence[str], limit: int = 60) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
