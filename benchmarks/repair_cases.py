"""Reference cases for the repair benchmark: phantoms and TotalSegmentator references in our label spaces."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoorgan.demo.phantom import make_phantom
from autoorgan.io.image import Geometry, volume_from_image
from autoorgan.io.orientation import plan_reorientation, reoriented_geometry
from autoorgan.registry.tasks import load_registry


@dataclass
class ReferenceCase:
    """A ribs map and a vertebrae map of one body on one grid, with bone (CT or skeleton) if known."""

    name: str
    geometry: Geometry
    ribs: np.ndarray
    vertebrae: np.ndarray
    ct: np.ndarray | None = None
    skeleton: np.ndarray | None = None
    #: Posterior elements of the vertebrae (arch and processes), where a subregion map tells them.
    posterior: np.ndarray | None = None
    #: Whether the vertebrae have arches (the phantoms' vertebrae are boxes).
    arches: bool = True

    def reoriented(self, codes: str) -> ReferenceCase:
        """The same case stored in another axis order (same voxels, same world positions)."""
        direction = self.geometry.direction_matrix
        plan = plan_reorientation(direction, codes)
        size, spacing, origin, new_direction = reoriented_geometry(
            plan, self.geometry.size, self.geometry.spacing, self.geometry.origin, direction)
        geometry = Geometry(size=size, spacing=spacing, origin=origin, direction=tuple(new_direction.ravel()))

        def move(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(plan.to_target(a))

        return ReferenceCase(f"{self.name} {codes}", geometry, move(self.ribs), move(self.vertebrae),  # type: ignore[arg-type]
                             move(self.ct), move(self.skeleton), move(self.posterior), self.arches)


def task_names(task: str) -> Mapping[int, str]:
    return load_registry().get_task(task).labels


def phantom_case(seed: int = 0, spacing: tuple[float, float, float] = (1.5, 1.5, 2.5),
                 size_mm: tuple[float, float, float] = (150.0, 120.0, 300.0)) -> ReferenceCase:
    """A synthetic body with ribs 9–12 next to vertebrae T9–L2, and its CT."""
    phantom = make_phantom(seed, spacing=spacing, size_mm=size_mm, organs=False)

    def arr(image: sitk.Image) -> np.ndarray:
        return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))

    return ReferenceCase(f"phantom {seed}", Geometry.of(phantom.ct), arr(phantom.labels_for(task_names("ribs"))),
                         arr(phantom.labels_for(task_names("vertebrae"))), ct=arr(phantom.ct), arches=False)


def _convert(total: np.ndarray, class_map: Mapping[str, str], names: Mapping[int, str]) -> np.ndarray:
    lut = np.zeros(max(int(total.max()), max(int(k) for k in class_map)) + 1, dtype=np.uint8)
    by_name = {n: v for v, n in names.items()}
    for key, name in class_map.items():
        if name in by_name:
            lut[int(key)] = by_name[name]
    return lut[total]


_BONES = ("vertebrae", "sacrum", "hip", "femur", "rib", "sternum", "costal", "humerus", "scapula", "clavicula", "skull")


def totalsegmentator_case(folder: Path, seg: str, ct: str | None = None) -> ReferenceCase:
    """A TotalSegmentator "total" reference converted into the ribs and vertebrae label spaces;
    its bone classes serve as the skeleton map."""
    class_map = json.loads((folder / "class_map_total.json").read_text(encoding="utf-8"))["total"]
    volume = volume_from_image(sitk.ReadImage(str(folder / seg)), seg)
    total = volume.array.astype(np.int64)
    bone_values = [int(k) for k, n in class_map.items() if n.startswith(_BONES)]
    case = ReferenceCase(seg.split(".")[0], volume.geometry, _convert(total, class_map, task_names("ribs")),
                         _convert(total, class_map, task_names("vertebrae")),
                         skeleton=np.isin(total, bone_values).astype(np.uint8))
    if ct is not None:
        case.ct = volume_from_image(sitk.ReadImage(str(folder / ct)), ct).array
    return case


#: VerSe label numbers of the vertebrae (1–7 C1–C7, 8–19 T1–T12, 20–24 L1–L5).
_VERSE = {i + 1: name for i, name in enumerate(
    [f"C{k}" for k in range(1, 8)] + [f"T{k}" for k in range(1, 13)] + [f"L{k}" for k in range(1, 6)])}
#: Subregions of the VerSe subregion map that are posterior elements (arch, spinous, costal and
#: articular processes; 49/50 are the vertebral body).
_POSTERIOR_SUBREGIONS = tuple(range(41, 49))


def tptbox_case(folder: Path) -> ReferenceCase:
    """The TPTBox lumbar crop (L2–L4, PIR storage) in the vertebrae label space, with its CT and
    the posterior elements from its subregion map; it has no ribs."""
    vert = volume_from_image(sitk.ReadImage(str(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")), "vert")
    subreg = volume_from_image(sitk.ReadImage(str(folder / "sub-ct_seg-subreg_label-22_msk.nii.gz")), "subreg")
    ct = volume_from_image(sitk.ReadImage(str(folder / "sub-ct_label-22_ct.nii.gz")), "ct")
    names = task_names("vertebrae")
    by_name = {n: v for v, n in names.items()}
    lut = np.zeros(int(vert.array.max()) + 1, dtype=np.uint8)
    for key in np.unique(vert.array).tolist():
        if key in _VERSE:
            lut[key] = by_name[f"vertebrae_{_VERSE[key]}"]
    vertebrae = lut[vert.array.astype(np.int64)]
    return ReferenceCase("tptbox_vertebra", vert.geometry, np.zeros_like(vertebrae), vertebrae, ct=ct.array,
                         posterior=np.isin(subreg.array, _POSTERIOR_SUBREGIONS))
