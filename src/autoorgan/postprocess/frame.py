"""The patient's axes and names of structures, for post-processing steps.

Label arrays are indexed ``[x, y, z]`` (ITK index order) and may be stored in any orientation.
Every decision about left/right or head/feet is made in patient coordinates computed from the
grid's direction matrix, never from array halves or axis positions, so the steps give the same
result for RAS, LPS, PIR, flipped or oblique storage of the same anatomy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from autoorgan.io.image import Geometry

#: Vertebra levels from head to feet; the index is a continuous "level coordinate".
VERTEBRA_LEVELS: tuple[str, ...] = tuple(
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
)
_RIB = re.compile(r"^rib_(left|right)_(\d+)$")
_SIDE = re.compile(r"(^|_)(left|right)(_|$)")
#: Structures on the body's midline (used to find it).
MIDLINE_PREFIXES: tuple[str, ...] = ("vertebrae", "sacrum", "spinal_cord", "sternum", "skull", "trachea",
                                     "esophagus")


@dataclass(frozen=True)
class PatientFrame:
    """Millimetre coordinates along the patient's axes, as linear functions of voxel indices.

    ``left`` grows towards the patient's left, ``head`` towards the head, ``anterior`` towards
    the front (relative to the first voxel; only differences matter).
    """

    left_per_index: np.ndarray  # (3,) mm per index step along x, y, z
    head_per_index: np.ndarray
    anterior_per_index: np.ndarray
    voxel_mm3: float

    @classmethod
    def of(cls, geometry: Geometry) -> PatientFrame:
        # ITK direction columns are the index axes in LPS world: world x = left, y = posterior, z = head.
        scaled = geometry.direction_matrix * np.asarray(geometry.spacing, dtype=float)[None, :]
        return cls(left_per_index=scaled[0].copy(), head_per_index=scaled[2].copy(),
                   anterior_per_index=-scaled[1].copy(), voxel_mm3=float(np.prod(geometry.spacing)))

    def left(self, index_xyz: np.ndarray) -> np.ndarray:
        """Left coordinate (mm) of points given as ``[..., 3]`` voxel indices."""
        return np.asarray(index_xyz, dtype=float) @ self.left_per_index

    def head(self, index_xyz: np.ndarray) -> np.ndarray:
        return np.asarray(index_xyz, dtype=float) @ self.head_per_index

    def anterior(self, index_xyz: np.ndarray) -> np.ndarray:
        return np.asarray(index_xyz, dtype=float) @ self.anterior_per_index


def side_of(name: str) -> str | None:
    """``"left"``/``"right"`` for a sided structure name (``rib_left_7``, ``hip_right``), else ``None``."""
    match = _SIDE.search(name)
    return match.group(2) if match else None


def mirror_name(name: str) -> str:
    """The same structure on the other side (``rib_left_7`` → ``rib_right_7``)."""
    other = {"left": "right", "right": "left"}
    return _SIDE.sub(lambda m: f"{m.group(1)}{other[m.group(2)]}{m.group(3)}", name, count=1)


def rib_of(name: str) -> tuple[str, int] | None:
    """``(side, number)`` of a rib name, else ``None``."""
    match = _RIB.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def vertebra_level(name: str) -> int | None:
    """Level index (C1 = 0 … L5 = 23) of a vertebra name such as ``vertebrae_T7``, else ``None``."""
    if not name.startswith("vertebrae_"):
        return None
    level = name[len("vertebrae_"):]
    return VERTEBRA_LEVELS.index(level) if level in VERTEBRA_LEVELS else None


def is_midline(name: str) -> bool:
    return any(name == p or name.startswith(p + "_") for p in MIDLINE_PREFIXES)


def mask_of(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Boolean mask of the voxels whose label is one of ``values`` (a table look-up, not a sort)."""
    wanted = [int(v) for v in values]
    if not wanted:
        return np.zeros(labels.shape, dtype=bool)
    if labels.dtype.kind in "ui":
        return np.isin(labels, wanted, kind="table")
    return np.isin(labels, wanted)
