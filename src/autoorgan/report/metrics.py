"""Overlap measures between label maps (used by the demo, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_label(reference: np.ndarray, prediction: np.ndarray,
                   labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice of each label value (default: every non-zero value present in either map)."""
    if reference.shape != prediction.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {prediction.shape}")
    if labels is None:
        labels = sorted(set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist()) - {0})
    return {int(v): dice(reference == v, prediction == v) for v in labels if v != 0}
