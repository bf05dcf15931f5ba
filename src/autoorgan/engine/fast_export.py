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


Box = tuple[slice, ...]


def _full_box(shape: Sequence[int]) -> Box:
    return tuple(slice(0, int(n)) for n in shape)


def source_box(in_shape: Sequence[int], out_shape: Sequence[int], out_box: Box,
               nearest_axis: int | None = None) -> Box:
    """The box of the ``in_shape`` grid whose samples the resampling to ``out_shape`` reads for the
    output voxels in ``out_box`` (every axis non-empty). Pure."""
    box = []
    for axis, (n_in, n_out, part) in enumerate(zip(in_shape, out_shape, out_box, strict=True)):
        lo, hi, _ = sample_positions(int(n_in), int(n_out), nearest=axis == nearest_axis)
        box.append(slice(int(lo[part].min()), int(hi[part].max()) + 1))
    return tuple(box)


def logits_to_labels(logits: Any, out_shape: Sequence[int], nearest_axis: int | None = None, *,
                     label_dtype: type = np.uint8, slab_voxels: int = SLAB_VOXELS,
                     round_to_half: bool = True, in_shape: Sequence[int] | None = None,
                     in_start: Sequence[int] | None = None, out_box: Box | None = None) -> np.ndarray:
    """Argmax label map of ``logits`` (``(classes, *shape)``, a tensor or array) resampled to ``out_shape``.

    Linear interpolation along every axis except ``nearest_axis`` (nearest neighbour there), as
    nnU-Net's default probability resampling; computed on slabs of output slices along axis 0
    so that only one slab of all classes is ever held at float precision. With
    ``round_to_half`` the interpolated values are rounded to float16 before the argmax, as in
    nnU-Net's export (its resampled probabilities are float16), so that near-ties resolve alike.

    A part of the grid only: ``logits`` may hold just the box of an ``in_shape`` grid that starts
    at ``in_start``, and ``out_box`` picks the output voxels wanted (the result has its size).
    Each output voxel gets exactly the value the whole-grid resampling gives it, provided the
    logits hold :func:`source_box` of ``out_box``.
    """
    import torch

    x = torch.as_tensor(logits)
    out_shape = tuple(int(s) for s in out_shape)
    if x.ndim != len(out_shape) + 1:
        raise ValueError(f"logits of shape {tuple(x.shape)} do not match an output of {len(out_shape)} axes")
    held = tuple(int(s) for s in x.shape[1:])
    in_shape = held if in_shape is None else tuple(int(s) for s in in_shape)
    corner = (0,) * len(held) if in_start is None else tuple(int(s) for s in in_start)
    box = _full_box(out_shape) if out_box is None else tuple(out_box)
    positions = []
    for axis, (n_in, n_out, part) in enumerate(zip(in_shape, out_shape, box, strict=True)):
        lo, hi, w = sample_positions(n_in, n_out, nearest=axis == nearest_axis)
        lo, hi = lo[part] - corner[axis], hi[part] - corner[axis]
        if lo.size and (lo.min() < 0 or hi.max() >= held[axis]):
            raise ValueError(f"the logits do not hold the samples the output box needs along axis {axis}")
        positions.append((lo, hi, w[part]))
    size = tuple(p[0].size for p in positions)
    labels: np.ndarray = np.empty(size, dtype=label_dtype)
    plane = int(np.prod(size[1:])) * int(x.shape[0])
    step = max(1, slab_voxels // max(1, plane))
    with torch.inference_mode():
        for start in range(0, size[0], step):
            stop = min(size[0], start + step)
            lo, hi, w = (p[start:stop] for p in positions[0])
            first, last = int(lo.min()), int(hi.max()) + 1
            if in_shape[0] == out_shape[0]:
                slab = x[:, first:first + (stop - start)].float()
            else:
                slab = _resample_axis(x[:, first:last].float(), 1, lo - first, hi - first, w)
            for axis in (1, 2)[: len(size) - 1]:
                lo, hi, w = positions[axis]
                if in_shape[axis] != out_shape[axis] or lo.size != held[axis]:
                    slab = _resample_axis(slab, axis + 1, lo, hi, w)
            if round_to_half:
                slab = slab.half()
            labels[start:stop] = slab.argmax(0).numpy().astype(label_dtype, copy=False)
    return labels


def export_labels(logits: Any, properties: dict[str, Any], *, transpose_backward: Sequence[int],
                  nearest_axis: int | None, label_dtype: type = np.uint8,
                  slab_voxels: int = SLAB_VOXELS, working_shape: Sequence[int] | None = None,
                  logits_start: Sequence[int] | None = None, region: Box | None = None) -> np.ndarray:
    """nnU-Net's export — resample, argmax, undo the crop, undo the transpose — streamed.

    ``properties`` are the preprocessing properties nnU-Net's ``run_case_npy`` returned
    (``shape_before_cropping``, ``bbox_used_for_cropping``,
    ``shape_after_cropping_and_before_resampling``).

    With ``region`` (a box of the transposed input grid, ``shape_before_cropping``) only its
    voxels are exported and the rest is background; ``logits`` may then hold only the part of
    the ``working_shape`` grid starting at ``logits_start`` that :func:`region_source_box` names.
    """
    full: np.ndarray = np.zeros(tuple(int(s) for s in properties["shape_before_cropping"]), dtype=label_dtype)
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
    out_shape = tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"])
    out_box = None if region is None else cropped_region(region, crop, out_shape)
    if out_box is not None and any(s.stop <= s.start for s in out_box):
        return np.ascontiguousarray(full.transpose(tuple(transpose_backward)))
    labels = logits_to_labels(logits, out_shape, nearest_axis, label_dtype=label_dtype, slab_voxels=slab_voxels,
                              in_shape=working_shape, in_start=logits_start, out_box=out_box)
    if out_box is None:
        full[crop] = labels
    else:
        full[tuple(slice(c.start + b.start, c.start + b.stop) for c, b in zip(crop, out_box, strict=True))] = labels
    return np.ascontiguousarray(full.transpose(tuple(transpose_backward)))


def cropped_region(region: Box, crop: Box, cropped_shape: Sequence[int]) -> Box:
    """``region`` (a box before nnU-Net's crop to the non-zero region ``crop``) in the cropped grid,
    clipped to it; an axis may come out empty. Pure."""
    def clip(index: int, start: int, n: int) -> int:
        return min(max(int(index) - int(start), 0), int(n))

    return tuple(slice(clip(r.start, c.start, n), clip(r.stop, c.start, n))
                 for r, c, n in zip(region, crop, cropped_shape, strict=True))


def region_source_box(region: Box, properties: dict[str, Any], working_shape: Sequence[int],
                      nearest_axis: int | None) -> Box | None:
    """The box of the network's working grid the export of ``region`` reads (:func:`export_labels`);
    ``None`` when the region lies outside nnU-Net's crop (nothing to predict). Pure."""
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
    out_shape = tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"])
    out_box = cropped_region(region, crop, out_shape)
    if any(s.stop <= s.start for s in out_box):
        return None
    return source_box(working_shape, out_shape, out_box, nearest_axis)
