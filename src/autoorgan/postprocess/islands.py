"""Step 1: small islands — stray specks of a structure away from its main body."""

from __future__ import annotations

from typing import Any

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.postprocess.components import Components, components_of
from autoorgan.postprocess.frame import PatientFrame

#: Default volume below which a detached piece of a structure is an island (mm³). About a
#: 4.6 mm cube: far smaller than any bone or organ of the task tables, larger than the specks a
#: network leaves in noise.
DEFAULT_MIN_ISLAND_MM3 = 100.0


def remove_islands(labels: np.ndarray, geometry: Geometry, *,
                   min_volume_mm3: float = DEFAULT_MIN_ISLAND_MM3,
                   components: Components | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Remove components smaller than ``min_volume_mm3``, or merge them into what they touch.

    A structure's largest piece is never an island (a small structure is not deleted). An island
    that touches other labelled voxels takes the label it shares most contact with; one that
    touches nothing becomes background.
    """
    comps = components_of(labels, components)
    min_voxels = min_volume_mm3 / PatientFrame.of(geometry).voxel_mm3
    main = set(comps.largest_of_label.values())
    lut = comps.identity_lut()
    removed = merged = 0
    islands = [c for c in comps.existing() if c not in main and comps.sizes[c] < min_voxels]
    comps.find_neighbours(islands)
    for comp in islands:
        touching = comps.neighbours(comp)
        if touching:
            target = max(touching, key=lambda c: (touching[c], -c))
            lut[comp] = comps.label[target]
            merged += 1
        else:
            lut[comp] = 0
            removed += 1
    if not (removed or merged):
        return labels, {"islands_removed": 0, "islands_merged": 0}
    return comps.apply(lut), {"islands_removed": removed, "islands_merged": merged}
