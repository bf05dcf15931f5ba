"""Hand-built label maps for the post-processing tests: a little spine with ribs, in RAS storage."""

from __future__ import annotations

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.io.orientation import plan_reorientation, reoriented_geometry
from autoorgan.registry.tasks import load_registry

RIBS = load_registry().get_task("ribs").labels
VERTEBRAE = load_registry().get_task("vertebrae").labels
RIB = {n: v for v, n in RIBS.items()}
VERT = {n: v for v, n in VERTEBRAE.items()}
#: RAS storage: index x towards the patient's right, y anterior, z towards the head.
RAS = Geometry(size=(40, 20, 60), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
               direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
LEVEL_Z = {9: 48, 10: 40, 11: 32, 12: 24}  # lowest slice of each vertebra (5 slices each)


def spine_and_ribs() -> tuple[np.ndarray, np.ndarray]:
    """(ribs map, vertebrae map): T9–T12 stacked head to feet; ribs 9–12 leave each vertebra sideways."""
    ribs = np.zeros(RAS.size, dtype=np.uint8)
    vertebrae = np.zeros(RAS.size, dtype=np.uint8)
    for k, z in LEVEL_Z.items():
        vertebrae[17:23, 5:11, z:z + 5] = VERT[f"vertebrae_T{k}"]
        ribs[23:36, 6:9, z + 1:z + 4] = RIB[f"rib_right_{k}"]  # x grows towards the right
        ribs[4:17, 6:9, z + 1:z + 4] = RIB[f"rib_left_{k}"]
    return ribs, vertebrae


def reorient(array: np.ndarray, geometry: Geometry, codes: str) -> tuple[np.ndarray, Geometry]:
    """The same voxels stored in ``codes`` order, with the matching grid."""
    plan = plan_reorientation(geometry.direction_matrix, codes)
    size, spacing, origin, direction = reoriented_geometry(plan, geometry.size, geometry.spacing, geometry.origin,
                                                           geometry.direction_matrix)
    return (np.ascontiguousarray(plan.to_target(array)),
            Geometry(size=size, spacing=spacing, origin=origin, direction=tuple(direction.ravel())))


def back(array: np.ndarray, geometry: Geometry, codes: str) -> np.ndarray:
    """An array stored on ``geometry`` (``codes`` order) brought back to RAS storage."""
    plan = plan_reorientation(geometry.direction_matrix, "RAS")
    assert plan.source_codes == codes
    return np.ascontiguousarray(plan.to_target(array))
