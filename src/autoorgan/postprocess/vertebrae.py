"""Step 3: vertebrae — each one connected piece, numbered head to feet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.postprocess.components import Components, components_of
from autoorgan.postprocess.frame import PatientFrame, vertebra_level
from autoorgan.postprocess.vertebra_series import SERIES_RULE, vertebra_series

#: Contact (touching voxel pairs) per fragment voxel above which a fragment belongs to its neighbour.
_MIN_CONTACT_PER_VOXEL = 0.5
#: A detached piece closer than this to its own vertebra's main body keeps its label (mm): about
#: half the height of a vertebra, the reach of a vertebra's own articular and spinous processes,
#: which interlock with the neighbour's and can be cut off from their body by it.
OWN_BODY_REACH_MM = 12.0


def vertebra_values(names: Mapping[int, str]) -> dict[int, int]:
    """Label value → level index (C1 = 0 … L5 = 23) of the vertebrae of a label table."""
    return {v: lvl for v, n in names.items() if (lvl := vertebra_level(n)) is not None}


def fix_vertebrae(labels: np.ndarray, geometry: Geometry,
                  names: Mapping[int, str], *,
                  components: Components | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Give stray vertebra fragments to the vertebra they belong to; order levels head to feet.

    A detached piece of vertebra A is part of vertebra B when it shares a broad contact with
    B and lies farther than :data:`OWN_BODY_REACH_MM` from A's main body: no part of A reaches
    that far. A piece near A's main body keeps its label even when B surrounds it (a process of
    A cut off by B's interlocking process). Afterwards the vertebrae present are checked against
    the patient's head-to-feet axis; if their order is inverted, the present level names are
    reassigned in head-to-feet order.
    """
    levels = vertebra_values(names)
    if not levels:
        return labels, {"fragments_reassigned": 0, "levels_renumbered": 0}
    comps = components_of(labels, components)
    if len(comps.of_labels(list(levels))) == 0:
        return labels, {"fragments_reassigned": 0, "levels_renumbered": 0}
    spacing = np.asarray(geometry.spacing, dtype=float)
    main = comps.largest_of_label
    lut = comps.identity_lut()
    reassigned = kept_near_own_body = 0
    for comp in comps.of_labels(list(levels)):
        comp = int(comp)
        value = int(comps.label[comp])
        if main.get(value) == comp:
            continue
        touching = {c: n for c, n in comps.neighbours(comp).items() if int(comps.label[c]) in levels}
        # A piece broken off another vertebra shares a broad face with it; a piece of this vertebra
        # that is only detached (cut by the field of view) meets its neighbour at a small joint.
        if not touching or max(touching.values()) < _MIN_CONTACT_PER_VOXEL * comps.sizes[comp]:
            continue
        if comps.distance_mm(comp, main[value], spacing, OWN_BODY_REACH_MM) <= OWN_BODY_REACH_MM:
            kept_near_own_body += 1
            continue
        target = max(touching, key=lambda c: (touching[c], -c))
        lut[comp] = comps.label[target]
        reassigned += 1
    changes = [{"piece": names[int(comps.label[c])], "to": names[int(lut[c])], "voxels": int(comps.sizes[c]),
                "rule": "detached fragment joins the vertebra it shares a broad face with",
                "anchor": names[int(lut[c])]} for c in comps.existing() if lut[c] != comps.label[c]]
    lut, renumbered = _order_head_to_feet(geometry, levels, comps, lut)
    if renumbered:
        changes.append({"rule": "levels in head-to-feet order", "anchor": "centres of the vertebrae",
                        "levels_renumbered": renumbered})
    out = comps.apply(lut) if (reassigned or renumbered) else labels
    out, series_changes, flags = vertebra_series(out, geometry, names)
    return out, {"fragments_reassigned": reassigned, "fragments_kept_near_own_body": kept_near_own_body,
                 "levels_renumbered": renumbered + sum(1 for c in series_changes if c["rule"] == SERIES_RULE),
                 "parts_relabelled": sum(1 for c in series_changes if c["rule"] != SERIES_RULE),
                 "changes": changes + series_changes, "flags": flags}


def _order_head_to_feet(geometry: Geometry, levels: dict[int, int], comps: Components,
                        lut: np.ndarray) -> tuple[np.ndarray, int]:
    """``lut`` with the present vertebra labels reassigned in head-to-feet order when their order
    is inverted, and the number of labels that changed."""
    frame = PatientFrame.of(geometry)
    heads: dict[int, float] = {}
    weights: dict[int, float] = {}
    for comp in comps.existing():
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
        return lut, 0
    remap = np.arange(max(max(levels), int(lut.max())) + 1, dtype=np.int64)
    for old, new in zip(by_position, present, strict=True):
        remap[old] = new
    changed = sum(1 for a, b in zip(by_position, present, strict=True) if a != b)
    return remap[lut], changed
