"""Step 5: the rib–vertebra junction — unlabelled bone between a rib head and its vertebra.

Bone comes from a skeleton map (any bone class) or from the CT above a bone threshold. Rib
labels grow, one voxel layer at a time, only into unlabelled bone lying within a few
millimetres of a vertebra, and never beyond bone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from autoorgan.io.image import Geometry
from autoorgan.postprocess.frame import mask_of, rib_of

#: CT value (HU) above which a voxel counts as bone when no skeleton map is given.
DEFAULT_BONE_HU = 200.0
#: Widest rib–vertebra gap that is filled (mm).
DEFAULT_GAP_MM = 8.0


def fill_junctions(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], *,
                   vertebra_mask: np.ndarray | None, bone: np.ndarray | None,
                   gap_mm: float = DEFAULT_GAP_MM) -> tuple[np.ndarray, dict[str, Any]]:
    """Give unlabelled bone between rib heads and vertebrae the label of the rib it joins.

    ``vertebra_mask`` marks vertebra voxels (from this map or a companion vertebrae map);
    ``bone`` marks bone voxels. Without both, nothing changes.
    """
    ribs = [v for v, n in names.items() if rib_of(n) is not None]
    if vertebra_mask is None or bone is None or not ribs or not vertebra_mask.any():
        return labels, {"voxels_filled": 0}
    spacing = np.asarray(geometry.spacing, dtype=float)
    margin = np.ceil(gap_mm / spacing).astype(int) + 1
    idx = np.argwhere(vertebra_mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, labels.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sub = labels[box]
    rib_only = np.where(mask_of(sub, ribs), sub, 0)
    if not rib_only.any():
        return labels, {"voxels_filled": 0}
    near_spine = ndimage.distance_transform_edt(~vertebra_mask[box], sampling=spacing) <= gap_mm
    # Only rib ends that come within the gap width of a vertebra are junctions to close.
    rib_only = np.where(near_spine, rib_only, 0)
    candidates = bone[box] & (sub == 0) & ~vertebra_mask[box] & near_spine
    grown = rib_only.copy()
    steps = int(np.ceil(gap_mm / spacing.min()))
    filled = 0
    for _ in range(steps):  # one layer per pass; bounded by the gap width, not by voxels
        if not candidates.any():
            break
        reach = ndimage.grey_dilation(grown, size=(3, 3, 3))
        new = candidates & (reach > 0)
        if not new.any():
            break
        grown[new] = reach[new]
        candidates &= ~new
        filled += int(new.sum())
    if not filled:
        return labels, {"voxels_filled": 0}
    out = labels.copy()
    region = out[box]
    take = (grown > 0) & (region == 0)
    region[take] = grown[take]
    return out, {"voxels_filled": filled}
