"""Step 3: vertebrae — each one connected piece, numbered head to feet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.postprocess.components import Components, components_of
from autoorgan.postprocess.frame import mask_of, PatientFrame, vertebra_level


#: Contact (touching voxel pairs) per fragment voxel above which a fragment belongs to its neighbour.
_MIN_CONTACT_PER_VOXEL = 0.5


def vertebra_values(names: Mapping[int, str]) -> dict[int, int]:
    """Label value → level index (C1 = 0 … L5 = 23) of the vertebrae of a label table."""
    return {v: lvl for v, n in names.items() if (lvl := vertebra_level(n)) is not None}


def fix_vertebrae(labels: np.ndarray, geometry: Geometry,
                  names: Mapping[int, str], *,
                  components: Components | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Give stray vertebra fragments to the vertebra they touch; order levels head to feet.

    A detached piece of vertebra A that shares a broad contact with vertebra B (and does not
    touch A's main body, else it would not be detached) is part of B. Afterwards the vertebrae present are checked against
    the patient's head-to-feet axis; if their order is inverted, the present level names are
    reassigned in head-to-feet order.
    """
    levels = vertebra_values(names)
    if not levels or not mask_of(labels, list(levels)).any():
        return labels, {"fragments_reassigned": 0, "levels_renumbered": 0}
    comps = components_of(labels, components)
    main = comps.largest_of_label
    lut = comps.identity_lut()
    reassigned = 0
    for comp in range(1, comps.count + 1):
        value = int(comps.label[comp])
        if value not in levels or main.get(value) == comp:
            continue
        touching = {c: n for c, n in comps.neighbours(comp).items() if int(comps.label[c]) in levels}
        # A piece broken off another vertebra shares a broad face with it; a piece of this vertebra
        # that is only detached (cut by the field of view) meets its neighbour at a small joint.
        if touching and max(touching.values()) >= _MIN_CONTACT_PER_VOXEL * comps.sizes[comp]:
            target = max(touching, key=lambda c: (touching[c], -c))
            lut[comp] = comps.label[target]
            reassigned += 1
    out = comps.apply(lut) if reassigned else labels
    out, renumbered = _order_head_to_feet(out, geometry, levels, comps, lut)
    return out, {"fragments_reassigned": reassigned, "levels_renumbered": renumbered}


def _order_head_to_feet(labels: np.ndarray, geometry: Geometry, levels: dict[int, int], comps: Components,
                        lut: np.ndarray) -> tuple[np.ndarray, int]:
    """Reassign present vertebra labels in head-to-feet order when their order is inverted."""
    frame = PatientFrame.of(geometry)
    heads: dict[int, float] = {}
    weights: dict[int, float] = {}
    for comp in range(1, comps.count + 1):
        value = int(lut[comp])
        if value in levels:
            h = float(frame.head(comps.centroids[comp]))
            w = float(comps.sizes[comp])
            heads[value] = heads.get(value, 0.0) + h * w
            weights[value] = weights.get(value, 0.0) + w
    present = sorted(heads, key=lambda v: levels[v])
    centre = {v: heads[v] / weights[v] for v in present}
    by_position = sorted(present, key=lambda v: -centre[v])  # head first
    if by_position == present:
        return labels, 0
    remap = np.arange(max(max(levels), int(labels.max())) + 1, dtype=np.int64)
    for old, new in zip(by_position, present, strict=True):
        remap[old] = new
    changed = sum(1 for a, b in zip(by_position, present, strict=True) if a != b)
    return remap.astype(labels.dtype)[labels], changed
