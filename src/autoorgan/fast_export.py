"""Streamed export of network logits to a label map on the image's own grid, with torch.

nnU-Net exports a prediction by resampling every class's logits to the original grid with
scikit-image/scipy in float64 (one full-resolution float copy per class) and taking the argmax
afterwards. On a CPU that is often slower than the network itself, and its memory grows with
``classes × output voxels``. :func:`logits_to_labels` computes the same linear interpolation —
the same sample positions (pixel centres, ``align_corners=False``), the same edge handling, the
same nearest-neighbour rule along the low-resolution axis of anisotropic images — separably with
torch, a slab of output slices at a time, and keeps only the argmax of each slab. Peak memory is
then the logits plus one slab, and the label map is ``uint8``/``uint16`` from the start.

The functions here are pure (arrays in, arrays out); :mod:`autoorgan.engine` decides when they
apply (nnU-Net's default probability resampling: order 1, order 0 along a separate z axis).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Output voxels per slab (per class) the streamed export works on at once.
SLAB_VOXELS = 4_000_000


def sample_positions(n_in: int, n_out: int, nearest: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a 1-D resampling from ``n_in`` to ``n_out`` samples.

    Output sample ``i`` sits at source coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (pixel
    centres aligned, as scipy's ``zoom(grid_mode=True)``, scikit-image's ``resize`` and torch's
    ``align_corners=False``), clamped to the edge samples. Returns ``(lo, hi, w)``: the value is
    ``(1 - w) * x[lo] + w * x[hi]``; with ``nearest`` ``w`` is 0 and ``lo`` is the rounded
    coordinate (``floor(c + 0.5)``, scipy's order-0 rule).
    """
    coords = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    if nearest:
        lo = np.clip(np.floor(coords + 0.5), 0, n_in - 1).astype(np.int64)
        return lo, lo, np.zeros(n_out, dtype=np.float32)
    coords = np.clip(coords, 0, n_in - 1)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (coords - lo).astype(np.float32)


def _resample_axis(x: Any, axis: int, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> Any:
    """``x`` (a float tensor) linearly resampled along ``axis`` with precomputed positions."""
    import torch

    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    low = x.index_select(axis, lo_t)
    if not w.any():
        return low
    shape = [1] * x.ndim
    shape[axis] = len(w)
    weight = torch.from_numpy(w).to(x.dtype).reshape(shape)
    high = x.index_select(axis, hi_t)
    return low.mul_(1 - weight).add_(high.mul_(weight))


def logits_to_labels(logits: Any, out_shape: Sequence[int], nearest_axis: int | None = None, *,
                     label_dtype: type = np.uint8, slab_voxels: int = SLAB_VOXELS,
                     round_to_half: bool = True) -> np.ndarray:
    """Argmax label map of ``logits`` (``(classes, *shape)``, a tensor or array) resampled to ``out_shape``.

    Linear interpolation along every axis except ``nearest_axis`` (nearest neighbour there), as
    nnU-Net's default probability resampling; computed on slabs of output slices along axis 0
    so that only one slab of all classes is ever held at float precision. With
    ``round_to_half`` the interpolated values are rounded to float16 before the argmax, as in
    nnU-Net's export (its resampled probabilities are float16), so that near-ties resolve alike.
    """
    import torch

    x = torch.as_tensor(logits)
    out_shape = tuple(int(s) for s in out_shape)
    if x.ndim != len(out_shape) + 1:
        raise ValueError(f"logits of shape {tuple(x.shape)} do not match an output of {len(out_shape)} axes")
    in_shape = tuple(int(s) for s in x.shape[1:])
    labels = np.empty(out_shape, dtype=label_dtype)
    positions = [sample_positions(n_in, n_out, nearest=axis == nearest_axis)
                 for axis, (n_in, n_out) in enumerate(zip(in_shape, out_shape, strict=True))]
    plane = int(np.prod(out_shape[1:])) * int(x.shape[0])
    step = max(1, slab_voxels // max(1, plane))
    with torch.inference_mode():
        for start in range(0, out_shape[0], step):
            stop = min(out_shape[0], start + step)
            if in_shape[0] == out_shape[0]:
                slab = x[:, start:stop].float()
            else:
                lo, hi, w = (p[start:stop] for p in positions[0])
                first, last = int(lo.min()), int(hi.max()) + 1
                slab = _resample_axis(x[:, first:last].float(), 1, lo - first, hi - first, w)
            for axis in (1, 2)[: len(out_shape) - 1]:
                if in_shape[axis] != out_shape[axis]:
                    slab = _resample_axis(slab, axis + 1, *positions[axis])
            if round_to_half:
                slab = slab.half()
            labels[start:stop] = slab.argmax(0).numpy().astype(label_dtype, copy=False)
    return labels


def export_labels(logits: Any, properties: dict[str, Any], *, transpose_backward: Sequence[int],
                  nearest_axis: int | None, label_dtype: type = np.uint8,
                  slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """nnU-Net's export — resample, argmax, undo the crop, undo the transpose — streamed.

    ``properties`` are the preprocessing properties nnU-Net's ``run_case_npy`` returned
    (``shape_before_cropping``, ``bbox_used_for_cropping``,
    ``shape_after_cropping_and_before_resampling``).
    """
    cropped = logits_to_labels(logits, properties["shape_after_cropping_and_before_resampling"], nearest_axis,
                               label_dtype=label_dtype, slab_voxels=slab_voxels)
    full = np.zeros(tuple(int(s) for s in properties["shape_before_cropping"]), dtype=label_dtype)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
    full[box] = cropped
    return np.ascontiguousarray(full.transpose(tuple(transpose_backward)))
