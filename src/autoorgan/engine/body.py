"""The patient's body in a CT: its bounding box, so that prediction can skip the air around it.

A CT's field of view is often mostly air (and the table). The sliding window of nnU-Net visits
every tile of it all the same; with ``--crop-body`` only the tiles that reach into the body's box
run (:meth:`autoorgan.engine.Segmenter.predict` with the box as its region), so inside the box
the labels are the whole image's and outside it background.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Hounsfield units above which a voxel counts as tissue (air is about -1000, fat about -100).
BODY_THRESHOLD_HU = -500.0
#: The body mask is searched on a subsampled copy with at most this many voxels.
_MAX_MASK_VOXELS = 8_000_000


def body_box(array: np.ndarray, spacing: Sequence[float], *, threshold: float = BODY_THRESHOLD_HU,
             margin_mm: float = 20.0) -> tuple[slice, ...] | None:
    """Bounding box (one slice per axis of ``array``) of the largest connected body of tissue.

    Tissue is ``array > threshold``; its largest 26-connected component (the patient, not the
    table or stray noise) is found on a copy subsampled to at most a few million voxels, and its
    box is widened by ``margin_mm`` on every side (plus the subsampling stride) and clipped to the
    image. ``spacing`` is in ``array``'s axis order. Returns ``None`` when nothing exceeds the
    threshold (the caller then predicts the whole image).
    """
    import cc3d

    if array.ndim != len(spacing):
        raise ValueError(f"spacing {tuple(spacing)} does not fit an array of {array.ndim} axes")
    stride = max(1, int(np.ceil((array.size / _MAX_MASK_VOXELS) ** (1 / array.ndim))))
    mask = np.asarray(array[(slice(None, None, stride),) * array.ndim] > threshold)
    if not mask.any():
        return None
    largest = cc3d.largest_k(mask, k=1, connectivity=26 if mask.ndim == 3 else 8)
    index = np.argwhere(largest)
    lo, hi = index.min(axis=0) * stride, index.max(axis=0) * stride + 1
    margin = np.ceil(margin_mm / np.asarray(spacing, dtype=float)).astype(int) + (stride - 1)
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, array.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def box_fraction(box: tuple[slice, ...], shape: Sequence[int]) -> float:
    """Share of the image's voxels inside ``box``."""
    inside = np.prod([s.stop - s.start for s in box], dtype=float)
    return float(inside / np.prod(shape, dtype=float))
