"""Checks of a label map's anatomical sense, in patient coordinates from the grid's direction matrix.

Three checks, each a set of tests that pass or fail:

- ``sides``: of each left/right pair present, the left structure's centre lies to the patient's
  left of the right one's; midline structures (spine, sacrum, sternum, ...) lie between them; an
  unpaired sided structure lies on its side of the body's midline, where the midline is known;
- ``order``: numbered structures (vertebrae, the ribs of each side) follow each other from head
  to feet, and so do the head-to-feet levels of ``configs/anatomy.json`` (skull above hip above
  legs, lungs above liver above kidneys, ...); its front-to-back levels from front to back
  (bladder in front of the hip bones in front of the sacrum, ...);
- ``organ_sides``: unpaired organs on their side of the midline (liver right, spleen left, ...).

A model fed arrays in the wrong orientation fails them, and so does a series whose direction
matrix is wrong (feet-first stored as head-first). :func:`side_swaps` tells when the repair had to
move most of a structure to its other side, which the repair would otherwise hide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from autoorgan.anatomy.priors import AnatomyPriors, load_priors, series_position
from autoorgan.io.image import Geometry
from autoorgan.postprocess.frame import PatientFrame, is_midline, mirror_name, side_of

#: At most this many voxels are visited to place the structures (an even subsample beyond it).
MAX_VISITED = 4_000_000
#: Structures with fewer voxels than this (in the subsample) are too small to place.
MIN_VOXELS = 8
#: Voxels brighter than this (HU) are the body when the midline is taken from the CT.
BODY_HU = -500.0


@dataclass(frozen=True)
class Placement:
    """Where a structure lies: its voxel count and its centre in patient millimetres."""

    voxels: int
    left: float
    head: float
    anterior: float


@dataclass(frozen=True)
class Layout:
    """The structures of a label map placed in patient millimetres, with the (sampled) voxels'
    left coordinates kept for the voxel-wise side test."""

    found: Mapping[str, Placement]
    #: Label value and left coordinate of each sampled foreground voxel.
    values: np.ndarray
    lefts: np.ndarray
    by_name: Mapping[str, int]

    def lefts_of(self, name: str) -> np.ndarray:
        return self.lefts[self.values == self.by_name[name]]


def _stride(shape: tuple[int, ...], limit: int = MAX_VISITED) -> int:
    size = int(np.prod(shape))
    return max(1, int(np.ceil((size / limit) ** (1 / 3)))) if size > limit else 1


def layout(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str]) -> Layout:
    """The centre and size of each structure of ``names`` present in ``labels`` (``[x, y, z]``)."""
    step = _stride(labels.shape)
    sample = labels[::step, ::step, ::step]
    points = np.nonzero(sample)
    by_name = {name: value for value, name in names.items()}
    if len(points[0]) == 0:
        return Layout({}, np.zeros(0, dtype=np.int64), np.zeros(0), by_name)
    values = sample[points].astype(np.int64)
    index = np.stack(points, axis=1).astype(float) * step
    frame = PatientFrame.of(geometry)
    lefts, heads, fronts = frame.left(index), frame.head(index), frame.anterior(index)
    size = int(values.max()) + 1
    counts = np.bincount(values, minlength=size)
    sums = [np.bincount(values, weights=w, minlength=size) for w in (lefts, heads, fronts)]
    found: dict[str, Placement] = {}
    for value, name in names.items():
        if value < size and counts[value] >= MIN_VOXELS:
            n = int(counts[value])
            found[name] = Placement(voxels=n * step ** 3, left=float(sums[0][value] / n),
                                    head=float(sums[1][value] / n), anterior=float(sums[2][value] / n))
    return Layout(found, values, lefts, by_name)


def body_midline(ct: np.ndarray, geometry: Geometry) -> float | None:
    """The left coordinate (mm, as :func:`layout` gives them) of the body's midline: the median
    of the voxels brighter than :data:`BODY_HU`; ``None`` without any."""
    step = _stride(ct.shape)
    points = np.argwhere(ct[::step, ::step, ::step] > BODY_HU)
    if len(points) == 0:
        return None
    return float(np.median(PatientFrame.of(geometry).left(points.astype(float) * step)))


#: A centre this far (mm) on the right side of a comparison counts as full agreement.
AGREEMENT_MM = 10.0


def _agreement(distance_mm: float) -> float:
    """How well a signed distance (positive: the right way round) agrees, from 0 to 1."""
    return float(np.clip(0.5 + distance_mm / (2 * AGREEMENT_MM), 0.0, 1.0))


@dataclass(frozen=True)
class Check:
    """One check: how many tests it made, which failed (in words), and how well they agree on the
    whole (0..1: voxels on the right side, distances the right way round)."""

    name: str
    tested: int
    failures: tuple[str, ...] = ()
    agreement_sum: float = 0.0

    @property
    def score(self) -> float | None:
        """The fraction of tests passed (``None``: nothing to test)."""
        return None if self.tested == 0 else (self.tested - len(self.failures)) / self.tested

    @property
    def agreement(self) -> float | None:
        """The mean agreement of the tests (``None``: nothing to test)."""
        return None if self.tested == 0 else self.agreement_sum / self.tested

    def record(self) -> dict[str, Any]:
        return {"tested": self.tested, "failed": len(self.failures), "failures": list(self.failures)}


class _Tally:
    def __init__(self, name: str):
        self.name, self.tested, self.agreement = name, 0, 0.0
        self.failures: list[str] = []

    def add(self, passed: bool, agreement: float, failure: str) -> None:
        self.tested += 1
        self.agreement += agreement
        if not passed:
            self.failures.append(failure)

    def check(self) -> Check:
        return Check(self.name, self.tested, tuple(self.failures), self.agreement)


@dataclass(frozen=True)
class AnatomyReport:
    """The checks of one label map."""

    checks: tuple[Check, ...]

    @property
    def tested(self) -> int:
        return sum(c.tested for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f for c in self.checks for f in c.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def score(self) -> float | None:
        """The mean of the checks' scores (``None``: no check could test anything)."""
        scores = [c.score for c in self.checks if c.score is not None]
        return None if not scores else float(np.mean(scores))

    @property
    def agreement(self) -> float | None:
        """The mean of the checks' agreements (``None``: no check could test anything)."""
        values = [c.agreement for c in self.checks if c.agreement is not None]
        return None if not values else float(np.mean(values))

    def of(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def record(self) -> dict[str, Any]:
        """The sidecar's ``checks``: each check's tests and failures, and whether all passed."""
        return {"passed": self.passed, "tested": self.tested,
                **{c.name: c.record() for c in self.checks}}


def check_sides(where: Layout, midline: float | None) -> Check:
    """Left/right pairs in order (and each one's voxels on its side of the pair's middle), midline
    structures between them; unpaired sided structures against the midline."""
    tally = _Tally("sides")
    found = where.found
    for name, place in sorted(found.items()):
        if side_of(name) != "left" or mirror_name(name) not in found:
            continue
        other = mirror_name(name)
        middle = (place.left + found[other].left) / 2
        left_side = np.concatenate([where.lefts_of(name) > middle, where.lefts_of(other) < middle])
        tally.add(place.left > found[other].left, float(left_side.mean()) if left_side.size else 0.0,
                  f"{name} lies to the right of {other}")
    pairs = [(found[n], found[mirror_name(n)]) for n in sorted(found)
             if side_of(n) == "left" and mirror_name(n) in found]
    for name, place in sorted(found.items()):
        if not is_midline(name):
            continue
        for left, right in pairs:
            distance = min(place.left - right.left, left.left - place.left)
            tally.add(distance > 0, _agreement(distance), f"{name} does not lie between the left and right structures")
    if midline is not None:
        for name, place in sorted(found.items()):
            side = side_of(name)
            if side is None or mirror_name(name) in found:
                continue
            distance = place.left - midline if side == "left" else midline - place.left
            tally.add(distance > 0, _agreement(distance),
                      f"{name} lies on the patient's {'right' if side == 'left' else 'left'}")
    return tally.check()


def check_order(found: Mapping[str, Placement], priors: AnatomyPriors) -> Check:
    """Numbered series and head-to-feet levels from head to feet; front-to-back levels from front
    to back."""
    tally = _Tally("order")
    series: dict[str, list[tuple[int, str]]] = {}
    for name in found:
        position = series_position(name)
        if position is not None:
            series.setdefault(position[0], []).append((position[1], name))
    for members in series.values():
        members.sort()
        for (_, upper), (_, lower) in pairwise(members):
            distance = found[upper].head - found[lower].head
            tally.add(distance > 0, _agreement(distance), f"{upper} lies below {lower}")
    for level_of, axis, words in ((priors.level_of, "head", "below"), (priors.depth_of, "anterior", "behind")):
        levelled = sorted((level, name) for name in found if (level := level_of(name)) is not None)
        for i, (level_a, first) in enumerate(levelled):
            for level_b, second in levelled[i + 1:]:
                if level_b > level_a:
                    distance = getattr(found[first], axis) - getattr(found[second], axis)
                    tally.add(distance > 0, _agreement(distance), f"{first} lies {words} {second}")
    return tally.check()


def check_organ_sides(found: Mapping[str, Placement], midline: float | None, priors: AnatomyPriors) -> Check:
    """Unpaired organs (liver, spleen, ...) on their side of the midline."""
    tally = _Tally("organ_sides")
    if midline is None:
        return tally.check()
    for name, place in sorted(found.items()):
        side = priors.side.get(name)
        if side is None:
            continue
        distance = place.left - midline if side == "left" else midline - place.left
        tally.add(distance > 0, _agreement(distance),
                  f"{name} lies on the patient's {'right' if side == 'left' else 'left'}")
    return tally.check()


def check_anatomy(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], *,
                  ct: np.ndarray | None = None, priors: AnatomyPriors | None = None) -> AnatomyReport:
    """The three checks of a label map (``[x, y, z]`` on ``geometry``) whose values mean ``names``;
    ``ct`` (same grid) gives the body's midline for unpaired structures."""
    priors = priors or load_priors()
    where = layout(labels, geometry, names)
    midline = body_midline(ct, geometry) if ct is not None and where.found else None
    return AnatomyReport((check_sides(where, midline), check_order(where.found, priors),
                          check_organ_sides(where.found, midline, priors)))


#: The repair moving more than this fraction of a structure's voxels to its other side is flagged.
SWAP_FRACTION = 0.5


def side_swaps(raw: np.ndarray, repaired: np.ndarray, names: Mapping[int, str],
               fraction: float = SWAP_FRACTION) -> list[str]:
    """Structures more than ``fraction`` of whose voxels the repair moved to the same structure on
    the other side: a sign that the prediction itself had the sides wrong."""
    by_name = {n: v for v, n in names.items()}
    mirror = {v: by_name[mirror_name(n)] for v, n in names.items() if side_of(n) and mirror_name(n) in by_name}
    if not mirror:
        return []
    changed = raw != repaired
    if not changed.any():
        return []
    size = int(max(names)) + 1
    before = raw[changed].astype(np.int64)
    after = repaired[changed].astype(np.int64)
    swapped = np.zeros(size, dtype=np.int64)
    for value, other in mirror.items():
        swapped[value] = int(np.count_nonzero((before == value) & (after == other)))
    candidates = [v for v in mirror if swapped[v] > 0]
    if not candidates:
        return []
    totals = np.bincount(raw.ravel().astype(np.int64), minlength=size) if raw.dtype.kind in "ui" else None
    if totals is None:
        return []
    return [names[v] for v in sorted(candidates) if swapped[v] > fraction * max(int(totals[v]), 1)]


__all__ = ["AnatomyReport", "Check", "Layout", "Placement", "body_midline", "check_anatomy", "layout", "side_swaps"]
