"""Step 2: left and right in patient space.

The patient's left/right axis comes from the grid's direction matrix; the midline from midline
structures (spine, sacrum, ...) of the map itself or of a companion vertebrae map, else from
the body in the CT, else from the extent of the sided structures. A piece of a ``_left``
structure lying clearly on the patient's right becomes the matching ``_right`` structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.postprocess.components import Components, components_of, occupied_box
from autoorgan.postprocess.frame import PatientFrame, is_midline, mask_of, mirror_name, side_of

#: Pieces whose centre lies closer than this to the midline are left alone (mm).
DEFAULT_SIDE_MARGIN_MM = 5.0
_SLAB_MM = 20.0
_MAX_POINTS = 200_000


class Midline:
    """The midline's left coordinate as a function of the head coordinate (mm)."""

    def __init__(self, heads: np.ndarray, lefts: np.ndarray, source: str):
        self.heads, self.lefts, self.source = heads, lefts, source

    def at(self, head: np.ndarray) -> np.ndarray:
        if len(self.heads) == 1:
            return np.full(np.shape(head), self.lefts[0])
        return np.interp(head, self.heads, self.lefts)


def _midline_from_mask(mask: np.ndarray, frame: PatientFrame, source: str) -> Midline | None:
    box = occupied_box(mask)
    if box is None:
        return None
    return _midline_from_points(np.argwhere(mask[box]) + [s.start for s in box], frame, source)


def _midline_from_points(points: np.ndarray, frame: PatientFrame, source: str) -> Midline | None:
    if len(points) == 0:
        return None
    points = points[:: max(1, len(points) // _MAX_POINTS)]  # an even sample is plenty for medians
    heads, lefts = frame.head(points), frame.left(points)
    # Median left coordinate per head-to-feet slab follows a curved spine.
    slab = np.floor((heads - heads.min()) / _SLAB_MM).astype(np.int64)
    order = np.argsort(slab, kind="stable")
    slab, heads, lefts = slab[order], heads[order], lefts[order]
    starts = np.flatnonzero(np.r_[True, np.diff(slab) > 0])
    ends = np.r_[starts[1:], len(slab)]
    centres = np.array([np.median(heads[a:b]) for a, b in zip(starts, ends, strict=True)])
    mids = np.array([np.median(lefts[a:b]) for a, b in zip(starts, ends, strict=True)])
    return Midline(centres, mids, source)


def find_midline(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], *,
                 vertebrae: np.ndarray | None = None, ct: np.ndarray | None = None,
                 components: Components | None = None) -> Midline | None:
    """Where the body's midline is (see the module docstring for the order of sources).

    ``components`` (of ``labels``) lets the voxels of midline and sided structures be read
    inside their components' boxes instead of scanning the whole array.
    """
    frame = PatientFrame.of(geometry)
    comps = components if components is not None and components.labels is labels else None
    midline_values = [v for v, n in names.items() if is_midline(n)]
    if midline_values:
        if comps is not None:
            found = _midline_from_points(comps.points(comps.of_labels(midline_values)), frame, "midline structures")
        else:
            found = _midline_from_mask(mask_of(labels, midline_values), frame, "midline structures")
        if found is not None:
            return found
    if vertebrae is not None:
        found = _midline_from_mask(vertebrae > 0, frame, "vertebrae map")
        if found is not None:
            return found
    if ct is not None:
        body = ct > -500
        if body.any():
            points = np.argwhere(body[::2, ::2, ::2]) * 2
            return Midline(np.array([0.0]), np.array([float(np.median(frame.left(points)))]), "body in the CT")
    sided = [v for v, n in names.items() if side_of(n)]
    if not sided:
        return None
    points = comps.points(comps.of_labels(sided)) if comps is not None else np.argwhere(mask_of(labels, sided))
    if len(points) == 0:
        return None
    lefts = frame.left(points)
    return Midline(np.array([0.0]), np.array([(lefts.min() + lefts.max()) / 2]), "extent of sided structures")


def fix_sides(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], *,
              vertebrae: np.ndarray | None = None, ct: np.ndarray | None = None,
              margin_mm: float = DEFAULT_SIDE_MARGIN_MM,
              components: Components | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Relabel pieces of sided structures that lie on the wrong side of the midline."""
    by_name = {n: v for v, n in names.items()}
    mirror: dict[int, int] = {}
    for value, name in names.items():
        if side_of(name) and mirror_name(name) in by_name:
            mirror[value] = by_name[mirror_name(name)]
    if not mirror:
        return labels, {"pieces_relabelled": 0}
    comps = components_of(labels, components)
    sided = comps.of_labels(list(mirror))
    if len(sided) == 0:
        return labels, {"pieces_relabelled": 0}
    midline = find_midline(labels, geometry, names, vertebrae=vertebrae, ct=ct, components=comps)
    if midline is None:
        return labels, {"pieces_relabelled": 0}
    frame = PatientFrame.of(geometry)
    lut = comps.identity_lut()
    centres = comps.centroids[sided]
    offset = frame.left(centres) - midline.at(frame.head(centres))
    moved = 0
    for comp, off in zip(sided, offset, strict=True):
        side = side_of(names[int(comps.label[comp])])
        wrong = (side == "left" and off < -margin_mm) or (side == "right" and off > margin_mm)
        if wrong:
            lut[comp] = mirror[int(comps.label[comp])]
            moved += 1
    details = {"pieces_relabelled": moved, "midline_from": midline.source}
    return (comps.apply(lut) if moved else labels), details
