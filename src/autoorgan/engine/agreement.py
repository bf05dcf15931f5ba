"""bfloat16 labels of a model against its float32 labels (:class:`~autoorgan.engine.precision.Agreement`),
the measurement behind a model's precision check (:func:`~autoorgan.engine.precision.write_precision_check`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.engine.precision import Agreement, dice_scores
from autoorgan.engine.segmenter import Segmenter

log = logging.getLogger(__name__)


def measure_agreement(model_folder: Path, fold: int | str, images: Sequence[tuple[str, np.ndarray, Sequence[float]]],
                      **segmenter_options: Any) -> tuple[Agreement, dict[str, np.ndarray]]:
    """Labels of each image (``(name, array_zyx, spacing_zyx)``) in float32 and in bfloat16 (forced:
    emulated where the CPU lacks it, which gives the same numbers, slower), and their agreement.

    Returns the agreement and the float32 label maps by name. ``segmenter_options`` go to both
    :class:`~autoorgan.engine.segmenter.Segmenter`\\ s (e.g. ``use_mirroring``).
    """
    import torch

    cpu = torch.device("cpu")
    float32 = Segmenter(model_folder, fold, cpu, precision="fp32", **segmenter_options)
    bfloat16 = Segmenter(model_folder, fold, cpu, precision="bf16", **segmenter_options)
    dice: dict[str, dict[int, float]] = {}
    reference_maps = {}
    for name, array, spacing in images:
        spacing_zyx = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
        reference = float32.predict(array, spacing_zyx)
        other = bfloat16.predict(array, spacing_zyx)
        values = (set(np.unique(reference).tolist()) | set(np.unique(other).tolist())) - {0}
        dice[name] = dice_scores(reference, other, sorted(values))
        reference_maps[name] = reference
        log.info("%s: bf16 against fp32, min Dice %.5f", name, min(dice[name].values(), default=float("nan")))
    return Agreement(dice), reference_maps


__all__ = ["measure_agreement"]
