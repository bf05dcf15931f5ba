"""Synthetic whole-body-like CT phantoms with known labels.

Used by the test suite (to train and check small real nnU-Net models), by the demo and by the
benchmarks. A phantom is a soft-tissue body in air with bones and organs drawn as simple shapes
at anatomically plausible places, with CT-like intensities (HU) and noise. Every structure has a
name from the task tables, so a phantom's truth can be expressed in any task's label space.

Arrays are built in RAS index order (x towards the patient's right, y anterior, z superior)
and returned as ITK images with that geometry; :func:`reorient` gives any other storage order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from autoorgan.io.image import Geometry, image_from_array
from autoorgan.io.orientation import plan_reorientation, reoriented_geometry

#: Coarse skeleton class of each fine structure-name prefix (the skeleton task's grouping).
COARSE_GROUPS: dict[str, str] = {
    "skull": "skull",
    "vertebrae": "vertebrae",
    "rib": "rib",
    "humerus": "upper_limb",
    "hip": "hip",
    "sacrum": "hip",
    "femur": "lower_limb",
}

#: Mean intensity (HU) of each structure kind. nnU-Net's CT normalisation clips intensities at the
#: 0.5th percentile of a dataset's labelled voxels, so the least dense labelled structure of a task
#: ends up only a few noise levels above the clipped soft tissue around it. The hip is drawn denser
#: than the sacrum so that, in the pelvis tasks, only the box-shaped sacrum sits at that floor: at
#: 550 HU the tiny test models learned the right hip's thin shell to Dice 0.86-0.90 only.
_HU = {
    "skull": 1200.0, "vertebrae": 400.0, "rib": 700.0, "humerus": 850.0, "hip": 700.0, "sacrum": 550.0,
    "femur": 1000.0, "liver": 60.0, "spleen": 45.0, "kidney": 150.0,
}
_CARTILAGE_HU = 150.0
_LEFT_EXTRA_HU = 300.0


@dataclass
class Phantom:
    """A phantom CT and its truth: structure name → mask, both on ``ct``'s grid."""

    ct: sitk.Image
    structures: dict[str, np.ndarray]  # [x, y, z] boolean masks, RAS index order

    def labels_for(self, labels: Mapping[int, str]) -> sitk.Image:
        """The truth as a label map in a task's label space (value → name).

        A structure counts for a label if its name equals the label name or its coarse group
        does (``rib_left_7`` counts for the skeleton task's ``rib``).
        """
        by_name = {name: value for value, name in labels.items()}
        array = np.zeros(self.ct.GetSize(), dtype=np.uint8 if max(labels) < 256 else np.uint16)
        for name, mask in self.structures.items():
            value = by_name.get(name) or by_name.get(coarse_group(name) or "")
            if value:
                array[mask] = value
        return image_from_array(array, Geometry.of(self.ct))


    def crop_to(self, names: list[str], margin_mm: float = 15.0) -> Phantom:
        """The phantom cropped to the bounding box of the named structures plus a margin."""
        mask = np.zeros(self.ct.GetSize(), dtype=bool)
        for name in names:
            mask |= self.structures[name]
        spacing = np.asarray(self.ct.GetSpacing())
        idx = np.argwhere(mask)
        margin = np.ceil(margin_mm / spacing).astype(int)
        lo = np.maximum(idx.min(axis=0) - margin, 0)
        hi = np.minimum(idx.max(axis=0) + margin + 1, self.ct.GetSize())
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        ct = self.ct[box[0], box[1], box[2]]  # SimpleITK slicing keeps the world position
        return Phantom(ct=ct, structures={k: v[box] for k, v in self.structures.items() if v[box].any()})


def coarse_group(name: str) -> str | None:
    """The skeleton class of a structure name, or ``None`` for organs."""
    for prefix, group in COARSE_GROUPS.items():
        if name == prefix or name.startswith(prefix + "_"):
            return group
    return None


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def _box(grid: tuple[np.ndarray, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([(g >= a) & (g <= b) for g, a, b in zip(grid, lo, hi, strict=True)])


def make_phantom(seed: int = 0, *, size_mm: tuple[float, float, float] = (150.0, 120.0, 300.0),
                 spacing: tuple[float, float, float] = (3.0, 3.0, 5.0), organs: bool = True,
                 noise_hu: float = 12.0) -> Phantom:
    """A random whole-body-like phantom in RAS storage order.

    Positions and sizes vary with ``seed`` by a few millimetres, enough that a model must learn
    shapes rather than memorise voxels. World coordinates are millimetres (LPS, as ITK).
    """
    rng = np.random.default_rng(seed)
    spacing_arr = np.asarray(spacing, dtype=float)
    shape = tuple(int(round(s / d)) for s, d in zip(size_mm, spacing, strict=True))
    # Millimetre coordinates of voxel centres: x from the patient's left to right, y posterior to
    # anterior, z feet to head (RAS index order).
    axes = [np.arange(n) * d for n, d in zip(shape, spacing_arr, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    w, depth, height = (np.asarray(shape) - 1) * spacing_arr

    def jitter(scale: float = 4.0) -> float:
        return float(rng.uniform(-scale, scale))

    mid_x = w / 2 + jitter(3)
    structures: dict[str, np.ndarray] = {}
    body = _ellipsoid((grid[0], grid[1]), np.array([mid_x, depth / 2]), np.array([w * 0.36, depth * 0.42]))
    body &= grid[2] < height * 0.84
    head = _ellipsoid(grid, np.array([mid_x, depth / 2, height * 0.9]), np.array([w * 0.2, depth * 0.3, height * 0.09]))
    inner_head = _ellipsoid(grid, np.array([mid_x, depth / 2, height * 0.9]),
                            np.array([w * 0.2 - 12, depth * 0.3 - 12, height * 0.09 - 12]))
    structures["skull"] = head & ~inner_head

    spine_y = depth * 0.3 + jitter(2)
    z_spine_lo, z_spine_hi = height * 0.42, height * 0.78
    levels = ["vertebrae_T9", "vertebrae_T10", "vertebrae_T11", "vertebrae_T12", "vertebrae_L1", "vertebrae_L2"]
    step = (z_spine_hi - z_spine_lo) / len(levels)
    for i, name in enumerate(reversed(levels)):  # lowest level first (z increases upwards)
        lo = np.array([mid_x - 14, spine_y - 14, z_spine_lo + i * step + 1])
        hi = np.array([mid_x + 14, spine_y + 14, z_spine_lo + (i + 1) * step - 1])
        structures[name] = _box(grid, lo, hi)

    rib_levels = ["9", "10", "11", "12"]
    for i, level in enumerate(rib_levels):
        z_centre = z_spine_hi - (i + 0.5) * step
        ring = _ellipsoid((grid[0], grid[1]), np.array([mid_x, depth / 2]), np.array([w * 0.31, depth * 0.36]))
        inner = _ellipsoid((grid[0], grid[1]), np.array([mid_x, depth / 2]),
                           np.array([w * 0.31 - 12, depth * 0.36 - 12]))
        slab = np.abs(grid[2] - z_centre) <= 7.0
        arc = ring & ~inner & slab & (grid[1] < depth * 0.75)
        structures[f"rib_right_{level}"] = arc & (grid[0] > mid_x + 15)
        structures[f"rib_left_{level}"] = arc & (grid[0] < mid_x - 15)

    for side, sign in (("right", 1.0), ("left", -1.0)):
        x_arm = mid_x + sign * w * 0.44
        arm = _ellipsoid((grid[0], grid[1]), np.array([x_arm, depth / 2]), np.array([11.0, 11.0]))
        structures[f"humerus_{side}"] = arm & (grid[2] > height * 0.45 + jitter()) & (grid[2] < height * 0.78)
        hip_centre = np.array([mid_x + sign * w * 0.18, depth * 0.45, height * 0.34 + jitter(2)])
        hip = _ellipsoid(grid, hip_centre, np.array([w * 0.14, depth * 0.24, 20.0]))
        hip &= ~_ellipsoid(grid, hip_centre, np.array([w * 0.14 - 11, depth * 0.24 - 11, 9.0]))
        structures[f"hip_{side}"] = hip
        x_leg = mid_x + sign * w * 0.17
        leg = _ellipsoid((grid[0], grid[1]), np.array([x_leg, depth / 2]), np.array([13.0, 13.0]))
        structures[f"femur_{side}"] = leg & (grid[2] < height * 0.26 + jitter()) & (grid[2] > 6)
    structures["sacrum"] = _box(grid, np.array([mid_x - 15, spine_y - 12, height * 0.29]),
                                np.array([mid_x + 15, spine_y + 12, z_spine_lo - 3]))

    if organs:
        structures["liver"] = _ellipsoid(grid, np.array([mid_x + w * 0.14, depth * 0.58, height * 0.62 + jitter()]),
                                         np.array([w * 0.13, depth * 0.2, 22.0])) & body
        structures["spleen"] = _ellipsoid(grid, np.array([mid_x - w * 0.17, depth * 0.45, height * 0.65 + jitter()]),
                                          np.array([w * 0.07, depth * 0.1, 14.0])) & body
        for side, sign in (("right", 1.0), ("left", -1.0)):
            structures[f"kidney_{side}"] = _ellipsoid(
                grid, np.array([mid_x + sign * w * 0.16, spine_y + 4, height * 0.52 + jitter()]),
                np.array([8.0, 8.0, 16.0]))

    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[body | head] = 40.0
    for name, mask in structures.items():
        kind = name.split("_")[0]
        # Left-side bones are drawn denser than right-side ones, so that the tiny models of the
        # test suite tell the sides apart after a short training (real CT has no such cue).
        ct[mask] = _HU[kind] + (_LEFT_EXTRA_HU if name.endswith("_left") or "_left_" in name else 0.0)
        structures[name] = mask.copy()
    # Later structures overwrite earlier ones in the CT; make the truth agree with what is drawn.
    claimed = np.zeros(shape, dtype=bool)
    for name in reversed(list(structures)):
        structures[name] &= ~claimed
        claimed |= structures[name]
    # The anterior ends of the ribs are costal cartilage, much less dense than bone.
    for name, mask in structures.items():
        if name.startswith("rib_"):
            ct[mask & (grid[1] > depth * 0.55)] = _CARTILAGE_HU
    ct += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    geometry = Geometry(size=(shape[0], shape[1], shape[2]), spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
                        origin=(float(w / 2), float(depth / 2), float(-height / 2)),
                        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image = image_from_array(np.round(ct).astype(np.int16), geometry)
    return Phantom(ct=image, structures={k: v for k, v in structures.items() if v.any()})


def reorient(image: sitk.Image, codes: str) -> sitk.Image:
    """The same image (same voxels at the same world positions) stored in ``codes`` order."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    plan = plan_reorientation(direction, codes)
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    size, spacing, origin, new_direction = reoriented_geometry(
        plan, image.GetSize(), image.GetSpacing(), image.GetOrigin(), direction)
    geometry = Geometry(size=size, spacing=spacing, origin=origin, direction=tuple(new_direction.ravel()))
    return image_from_array(plan.to_target(array), geometry)


def rotate(image: sitk.Image, degrees: float, axis: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> sitk.Image:
    """The same voxel array with its direction rotated by ``degrees`` (an oblique acquisition)."""
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    rotation = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)
    out = sitk.Image(image)
    out.SetDirection(tuple((rotation @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return out
