"""Run the anatomical repair steps that apply to a label table, and report what each changed."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.postprocess.components import Components, components_of, grow_box, occupied_box
from autoorgan.postprocess.frame import mask_of, rib_of, side_of, vertebra_level
from autoorgan.postprocess.islands import DEFAULT_MIN_ISLAND_MM3, remove_islands
from autoorgan.postprocess.junction import DEFAULT_BONE_HU, DEFAULT_GAP_MM, fill_junctions
from autoorgan.postprocess.ribs import fix_ribs
from autoorgan.postprocess.sides import fix_sides
from autoorgan.postprocess.vertebrae import fix_vertebrae, vertebra_values

log = logging.getLogger(__name__)

#: Tasks whose predictions are repaired by default.
BONE_TASKS: frozenset[str] = frozenset({"skeleton", "vertebrae", "ribs", "upper_limb", "hip", "lower_limb"})

STEPS: tuple[str, ...] = ("islands", "sides", "vertebrae", "ribs", "junction")


@dataclass(frozen=True)
class RepairOptions:
    """Settings of the repair steps (defaults documented in docs/repair.md)."""

    min_island_mm3: float = DEFAULT_MIN_ISLAND_MM3
    bone_hu: float = DEFAULT_BONE_HU
    steps: tuple[str, ...] = STEPS


@dataclass
class Companions:
    """Other maps of the same case on the same grid that inform the repair (all optional).

    ``vertebrae``: a vertebra label map with ``vertebra_names``; ``skeleton``: a map whose
    non-zero voxels are bone; ``ct``: the CT in HU.
    """

    vertebrae: np.ndarray | None = None
    vertebra_names: Mapping[int, str] | None = None
    skeleton: np.ndarray | None = None
    ct: np.ndarray | None = None


@dataclass
class RepairResult:
    """The repaired label map and, per step run, the voxels it changed and what it did."""

    labels: np.ndarray
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed_voxels(self) -> int:
        return sum(int(s["changed_voxels"]) for s in self.steps)

    @property
    def flags(self) -> list[str]:
        """What a person should look at: numbering series the steps could not make consistent."""
        return [f"{s['step']}: {flag}" for s in self.steps for flag in s.get("flags", [])]

    def report(self) -> dict[str, Any]:
        """The sidecar's ``postprocess`` section: per step what it changed (with, per renumbered or
        merged piece, the rule and anchor) and the flags of all steps."""
        return {"steps": self.steps, "changed_voxels": self.changed_voxels, "flags": self.flags}


def applicable_steps(names: Mapping[int, str], companions: Companions | None = None) -> list[str]:
    """The steps that can do something for a label table (and the companion maps given)."""
    companions = companions or Companions()
    values = list(names.values())
    has_ribs = any(rib_of(n) for n in values)
    has_vertebrae = any(vertebra_level(n) is not None for n in values)
    steps = ["islands"]
    if any(side_of(n) for n in values):
        steps.append("sides")
    if has_vertebrae:
        steps.append("vertebrae")
    if has_ribs:
        steps.append("ribs")
        if (has_vertebrae or companions.vertebrae is not None) and (
                companions.skeleton is not None or companions.ct is not None):
            steps.append("junction")
    return steps


def repair_labels(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], *,
                  companions: Companions | None = None, options: RepairOptions | None = None) -> RepairResult:
    """Repair a label map (``[x, y, z]`` on ``geometry``) whose values mean ``names``.

    Pure: ``labels`` is not modified. Steps run in the order islands, sides, vertebrae, ribs,
    junction, each only where the label table (and the companion maps) allow it.
    """
    companions = companions or Companions()
    options = options or RepairOptions()
    for what, array in (("vertebrae", companions.vertebrae), ("skeleton", companions.skeleton),
                        ("ct", companions.ct)):
        if array is not None and array.shape != labels.shape:
            raise ValueError(f"{what} map {array.shape} is not on the label map's grid {labels.shape}")
    result = RepairResult(labels=labels)
    steps = [s for s in applicable_steps(names, companions) if s in options.steps]
    margin = np.ceil(DEFAULT_GAP_MM / np.asarray(geometry.spacing, dtype=float)).astype(int) + 2
    spine_box = occupied_box(companions.vertebrae != 0) if companions.vertebrae is not None else None
    box = _working_box(occupied_box(labels != 0), spine_box, margin, labels.shape)
    if box is None:  # nothing labelled: nothing to repair
        result.steps = [{"step": step, "changed_voxels": 0, "seconds": 0.0} for step in steps]
        return result
    # Every step works inside the box around the labelled voxels (plus the junction's reach):
    # the same decisions, far fewer voxels to visit on a large scan. When a step clears voxels
    # (islands far from the body), the box shrinks for the steps after it.
    current = np.ascontiguousarray(labels[box])
    cropped = _crop_companions(companions, box)
    out: np.ndarray | None = None  # the full-size result, made at the first change
    shared = _SharedComponents()
    for step in steps:
        start = time.perf_counter()
        new, details = _run_step(step, current, _cropped_geometry(geometry, box), names, cropped, options, shared)
        changed = int(np.count_nonzero(new != current)) if new is not current else 0
        result.steps.append({"step": step, "changed_voxels": changed, **details,
                             "seconds": round(time.perf_counter() - start, 3)})
        log.debug("repair step %s changed %d voxel(s): %s", step, changed, details)
        if new is not current:
            if _volume(box) == labels.size:
                out = new  # a step's result is a new array: no copy needed for the whole grid
            else:
                if out is None:
                    out = labels.copy()
                out[box] = new
            inner = occupied_box(new != 0)
            smaller = _working_box(_shifted(inner, box), spine_box, margin, labels.shape) if inner else None
            if smaller is not None and _volume(smaller) * 2 <= _volume(box):  # else not worth a new crop
                smaller = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(smaller, box,
                                                                                                   strict=True))
                box, new = smaller, np.ascontiguousarray(out[smaller])
                cropped = _crop_companions(companions, box)
        current = new
    if out is not None:
        result.labels = out
    return result


def _cropped_geometry(geometry: Geometry, box: tuple[slice, ...]) -> Geometry:
    """The grid of ``box`` cut out of ``geometry``: steps that place things in world coordinates
    (not only by differences) see the world position of the cropped array's voxels."""
    start = np.array([s.start for s in box], dtype=float)
    origin = np.asarray(geometry.origin, dtype=float) + geometry.direction_matrix @ (
        np.asarray(geometry.spacing, dtype=float) * start)
    size = tuple(int(s.stop - s.start) for s in box)
    return Geometry(size=(size[0], size[1], size[2]), spacing=geometry.spacing,
                    origin=(float(origin[0]), float(origin[1]), float(origin[2])), direction=geometry.direction)


def _crop(array: np.ndarray | None, box: tuple[slice, ...]) -> np.ndarray | None:
    return None if array is None else np.ascontiguousarray(array[box])


def _crop_companions(companions: Companions, box: tuple[slice, ...]) -> Companions:
    return Companions(vertebrae=_crop(companions.vertebrae, box), vertebra_names=companions.vertebra_names,
                      skeleton=_crop(companions.skeleton, box), ct=_crop(companions.ct, box))


def _volume(box: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in box]))


def _shifted(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """A box given inside ``outer`` in the coordinates of the whole array."""
    return tuple(slice(o.start + i.start, o.start + i.stop) for i, o in zip(inner, outer, strict=True))


def _working_box(labelled: tuple[slice, ...] | None, spine: tuple[slice, ...] | None, margin: np.ndarray,
                 shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Box around the labelled voxels (and companion vertebrae), grown by the junction gap."""
    boxes = [b for b in (labelled, spine) if b is not None]
    if labelled is None:
        return None
    union = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(shape)))
    return grow_box(union, margin, shape)


class _SharedComponents:
    """The components of the array the last step saw, handed on while the array is unchanged."""

    def __init__(self) -> None:
        self.last: Components | None = None

    def of(self, labels: np.ndarray) -> Components:
        self.last = components_of(labels, self.last)
        return self.last


def _run_step(step: str, labels: np.ndarray, geometry: Geometry, names: Mapping[int, str],
              companions: Companions, options: RepairOptions,
              shared: _SharedComponents) -> tuple[np.ndarray, dict[str, Any]]:
    if step == "islands":
        return remove_islands(labels, geometry, min_volume_mm3=options.min_island_mm3,
                              components=shared.of(labels))
    if step == "sides":
        return fix_sides(labels, geometry, names, vertebrae=companions.vertebrae, ct=companions.ct,
                         components=shared.of(labels))
    if step == "vertebrae":
        return fix_vertebrae(labels, geometry, names, components=shared.of(labels))
    if step == "ribs":
        return fix_ribs(labels, geometry, names, vertebrae=companions.vertebrae,
                        vertebra_names=companions.vertebra_names, components=shared.of(labels))
    if step == "junction":
        return _fill_junctions_near_spine(labels, geometry, names, companions, options, shared)
    raise ValueError(f"unknown repair step {step!r}")


def _fill_junctions_near_spine(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                               companions: Companions, options: RepairOptions,
                               shared: _SharedComponents) -> tuple[np.ndarray, dict[str, Any]]:
    """The junction step, run inside the box around the vertebrae (grown by the gap width):
    bone and vertebra masks are only ever built for that box."""
    if companions.vertebrae is not None:
        source, values = companions.vertebrae, list(vertebra_values(companions.vertebra_names or {}))
        box = occupied_box(source != 0)
    else:
        source, values = labels, list(vertebra_values(names))
        comps = shared.of(labels)
        box = comps.union_box(comps.of_labels(values))
    if box is None:
        return labels, {"voxels_filled": 0}
    margin = np.ceil(DEFAULT_GAP_MM / np.asarray(geometry.spacing, dtype=float)).astype(int) + 2
    box = grow_box(box, margin, labels.shape)
    bone_source = companions.skeleton if companions.skeleton is not None else companions.ct
    if bone_source is None:
        return labels, {"voxels_filled": 0}
    bone = bone_source[box] > 0 if companions.skeleton is not None else bone_source[box] >= options.bone_hu
    sub, details = fill_junctions(labels[box], geometry, names, vertebra_mask=mask_of(source[box], values),
                                  bone=bone)
    if not details["voxels_filled"]:
        return labels, details
    out = labels.copy()
    out[box] = sub
    return out, details
