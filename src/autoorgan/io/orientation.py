"""Lossless reorientation between an image's stored axis order and a model's training orientation.

nnU-Net looks only at voxel arrays and spacing; it ignores the direction matrix. A model trained
on RAS arrays therefore swaps left and right on an LPS image. autoorgan permutes and flips every
input (never resamples) into the task's orientation before prediction, and applies the exact
inverse to the prediction, so the output lands on the input's own grid voxel for voxel.

Arrays here are indexed ``[x, y, z]`` (ITK index order). Axis codes follow nibabel: each letter
says towards which side of the patient that voxel index increases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations

# ITK/DICOM world coordinates are LPS; nibabel's are RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: What a model whose training orientation nobody recorded is assumed to take (nnU-Net's own
#: ``NibabelIOWithReorient`` reader, and TotalSegmentator's data, are RAS).
DEFAULT_ORIENTATION = "RAS"
#: The word for "feed the arrays as stored" in task tables, options and records.
NATIVE = "native"


def all_axcodes() -> list[str]:
    """The 48 axis-aligned orientations (every order of the three axes, each either way)."""
    from itertools import permutations, product

    pairs = (("R", "L"), ("A", "P"), ("S", "I"))
    codes = []
    for order in permutations(range(3)):
        for signs in product((0, 1), repeat=3):
            codes.append("".join(pairs[axis][sign] for axis, sign in zip(order, signs, strict=True)))
    return codes


def parse_orientation(value: str) -> str | None:
    """Axis codes (``"lps"`` → ``"LPS"``), or ``None`` for :data:`NATIVE` (as stored); ``ValueError``
    for anything else."""
    text = value.strip().upper()
    if text in {"NATIVE", "NONE", ""}:
        return None
    if text not in _AXCODES:
        raise ValueError(f"orientation must be three axis codes such as RAS or LPS (one of R/L, A/P, S/I each), "
                         f"or {NATIVE}, got {value!r}")
    return text


def orientation_label(codes: str | None) -> str:
    """``codes`` for records and messages: the codes, or :data:`NATIVE`."""
    return NATIVE if codes is None else codes


def direction_to_axcodes(direction: np.ndarray) -> str:
    """Nibabel axis codes of an ITK direction matrix (columns are the index axes in LPS world)."""
    ornt = orientations.io_orientation(_ras_linear(direction))
    return "".join(orientations.ornt2axcodes(ornt))


def _ras_linear(direction: np.ndarray) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ np.asarray(direction, dtype=float).reshape(3, 3)
    return affine


@dataclass(frozen=True)
class Reorientation:
    """How to bring arrays of one grid into a target orientation and back.

    ``forward`` is nibabel's orientation transform from the stored axes to the target axes;
    ``axis_order[i]`` is the stored axis that becomes target axis ``i``.
    """

    source_codes: str
    target_codes: str
    forward: np.ndarray

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.forward, [[0, 1], [1, 1], [2, 1]]))

    @property
    def axis_order(self) -> tuple[int, int, int]:
        order = [0, 0, 0]
        for src_axis, (dst_axis, _flip) in enumerate(self.forward):
            order[int(dst_axis)] = src_axis
        return (order[0], order[1], order[2])

    def spacing(self, spacing_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        """Voxel spacing along the target axes."""
        a, b, c = self.axis_order
        return (spacing_xyz[a], spacing_xyz[b], spacing_xyz[c])

    def to_target(self, array_xyz: np.ndarray) -> np.ndarray:
        """Permute/flip a stored ``[x, y, z]`` array into the target orientation (a view where possible)."""
        if self.is_identity:
            return array_xyz
        return orientations.apply_orientation(array_xyz, self.forward)

    def box_to_target(self, box: tuple[slice, slice, slice],
                      shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """The same voxels as ``box`` (slices of a stored array of ``shape``) in the target orientation.

        Slices must have explicit, non-negative ``start`` and ``stop``.
        """
        target: list[slice] = [slice(0, 0)] * 3
        for src_axis, (dst_axis, flip) in enumerate(self.forward):
            start, stop, n = int(box[src_axis].start), int(box[src_axis].stop), int(shape[src_axis])
            target[int(dst_axis)] = slice(start, stop) if flip > 0 else slice(n - stop, n - start)
        return (target[0], target[1], target[2])

    def to_source(self, array_target: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_target`."""
        if self.is_identity:
            return array_target
        back = orientations.ornt_transform(
            orientations.axcodes2ornt(self.target_codes), orientations.axcodes2ornt(self.source_codes)
        )
        return orientations.apply_orientation(array_target, back)


def reoriented_geometry(reorientation: Reorientation, size: tuple[int, int, int],
                        spacing: tuple[float, float, float], origin: tuple[float, float, float],
                        direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[float, float, float],
                                                        tuple[float, float, float], np.ndarray]:
    """Size, spacing, origin and direction of the reoriented grid (same voxels, same world positions)."""
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    new_size, new_spacing, new_direction = [0, 0, 0], [0.0, 0.0, 0.0], np.zeros((3, 3))
    new_origin = np.asarray(origin, dtype=float).copy()
    for src_axis, (dst_axis, flip) in enumerate(reorientation.forward):
        dst = int(dst_axis)
        column = direction[:, src_axis]
        new_size[dst] = size[src_axis]
        new_spacing[dst] = spacing[src_axis]
        if flip < 0:
            new_origin = new_origin + column * spacing[src_axis] * (size[src_axis] - 1)
            column = -column
        new_direction[:, dst] = column
    return ((new_size[0], new_size[1], new_size[2]), (new_spacing[0], new_spacing[1], new_spacing[2]),
            (float(new_origin[0]), float(new_origin[1]), float(new_origin[2])), new_direction)


def plan_reorientation(direction: np.ndarray, target_codes: str | None) -> Reorientation:
    """Reorientation from an image with ITK ``direction`` to ``target_codes`` (``None``: keep as stored).

    Oblique directions are brought to the closest axis-aligned orientation: a permutation and
    flips only, never interpolation.
    """
    source = direction_to_axcodes(direction)
    target = source if target_codes is None else target_codes.upper()
    forward = orientations.ornt_transform(
        orientations.axcodes2ornt(source), orientations.axcodes2ornt(target)
    )
    return Reorientation(source_codes=source, target_codes=target, forward=forward.astype(int))


_AXCODES = frozenset(all_axcodes())
