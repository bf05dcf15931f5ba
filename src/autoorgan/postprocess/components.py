"""Connected components of a label map, each described inside its own bounding box.

One cc3d pass labels the components of every label at once and one ``find_objects`` pass
finds their boxes; everything else (size, label, centroid, voxels, contacts) is read inside
each component's box. A few stray voxels in opposite corners of a large scan therefore cost
nothing beyond those two passes: no step scans the whole array per label. Steps decide per
component (never per voxel in Python) and apply their decision as a lookup table from
component id to new label value, written back box by box.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import cc3d
import numpy as np
from scipy import ndimage

Box = tuple[slice, ...]


@dataclass
class Components:
    """26-connected components of each label of ``labels`` (component 0 is the background)."""

    labels: np.ndarray
    ids: np.ndarray = field(init=False, repr=False)
    count: int = field(init=False)
    #: Bounding box of each component (index = component id; entry 0 is ``None``).
    boxes: list[Box | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids, self.count = cc3d.connected_components(self.labels, connectivity=26, return_N=True)
        self.boxes = [None, *ndimage.find_objects(self.ids, max_label=self.count)]

    def mask(self, comp: int) -> tuple[Box, np.ndarray]:
        """``(box, mask)``: the component's box and which of its voxels belong to the component."""
        box = self.boxes[comp]
        if box is None:
            raise ValueError(f"component {comp} does not exist")
        return box, self.ids[box] == comp

    @cached_property
    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label value, voxel count and centroid (voxel indices) of each component."""
        values = np.zeros(self.count + 1, dtype=np.int64)
        sizes = np.zeros(self.count + 1, dtype=np.int64)
        centroids = np.zeros((self.count + 1, 3), dtype=float)
        for comp in range(1, self.count + 1):
            box, mine = self.mask(comp)
            sizes[comp] = np.count_nonzero(mine)
            values[comp] = self.labels[box][np.unravel_index(int(np.argmax(mine)), mine.shape)]
            for axis in range(mine.ndim):
                others = tuple(a for a in range(mine.ndim) if a != axis)
                profile = np.count_nonzero(mine, axis=others)
                centroids[comp, axis] = box[axis].start + float(profile @ np.arange(len(profile))) / sizes[comp]
        return values, sizes, centroids

    @property
    def label(self) -> np.ndarray:
        """Label value of each component (index = component id)."""
        return self._stats[0]

    @property
    def sizes(self) -> np.ndarray:
        """Voxel count of each component."""
        return self._stats[1]

    @property
    def centroids(self) -> np.ndarray:
        """``(count + 1, 3)`` centroid of each component in voxel indices."""
        return self._stats[2]

    def points(self, comps: Iterable[int]) -> np.ndarray:
        """``(n, 3)`` voxel indices of the given components (gathered box by box)."""
        parts = [np.argwhere(mine) + [s.start for s in box] for box, mine in (self.mask(int(c)) for c in comps)]
        return np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)

    def of_labels(self, values: Iterable[int]) -> np.ndarray:
        """Ids of the components whose label is one of ``values``."""
        return np.flatnonzero(np.isin(self.label, [int(v) for v in values]) & (np.arange(self.count + 1) > 0))

    def union_box(self, comps: Iterable[int]) -> Box | None:
        """Smallest box holding all the given components (``None`` for none)."""
        boxes = [b for b in (self.boxes[int(c)] for c in comps) if b is not None]
        if not boxes:
            return None
        return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(self.ids.ndim))

    def neighbours(self, comp: int) -> dict[int, float]:
        """Components touching ``comp`` (26-neighbourhood) and the number of touching voxel pairs.

        Counted in the box around ``comp`` only, so asking about a few small pieces never
        visits the whole array.
        """
        cached = self._neighbours.get(comp)
        if cached is not None:
            return cached
        box = self.boxes[comp]
        if box is None:
            return {}
        grown = grow_box(box, 1, self.ids.shape)
        sub = np.pad(self.ids[grown], 1)  # the array's border has no neighbours
        mine = sub[1:-1, 1:-1, 1:-1] == comp
        # The 3×3×3 neighbourhood of each of the component's voxels, as a view: one gather, no loop.
        around = np.lib.stride_tricks.sliding_window_view(sub, (3, 3, 3))[mine]
        other = around[(around != comp) & (around != 0)]
        counts = np.bincount(other.astype(np.int64)) if other.size else np.zeros(0, dtype=np.int64)
        found = {int(c): float(counts[c]) for c in np.flatnonzero(counts)}
        self._neighbours[comp] = found
        return found

    @cached_property
    def _neighbours(self) -> dict[int, dict[int, float]]:
        return {}

    def find_neighbours(self, comps: Iterable[int]) -> None:
        """Count the contacts of many (small) components at once, for :meth:`neighbours`.

        One vectorised look-up of the 26 neighbours of all their voxels instead of one call
        per component: thousands of one-voxel specks cost milliseconds.
        """
        todo = [int(c) for c in comps if int(c) not in self._neighbours and self.boxes[int(c)] is not None]
        if not todo:
            return
        points = self.points(todo)
        owner = np.repeat(np.asarray(todo, dtype=np.int64), [int(self.sizes[c]) for c in todo])
        shape = np.asarray(self.ids.shape)
        keys = []
        for offset in np.argwhere(np.ones((3, 3, 3), dtype=bool)) - 1:
            if not offset.any():
                continue
            moved = points + offset
            inside = ((moved >= 0) & (moved < shape)).all(axis=1)
            other = self.ids[tuple(moved[inside].T)].astype(np.int64)
            mine = owner[inside]
            touching = (other != 0) & (other != mine)
            keys.append(mine[touching] * (self.count + 1) + other[touching])
        found: dict[int, dict[int, float]] = {c: {} for c in todo}
        pairs, counts = np.unique(np.concatenate(keys), return_counts=True)
        for key, n in zip(pairs.tolist(), counts.tolist(), strict=True):
            found[key // (self.count + 1)][key % (self.count + 1)] = float(n)
        self._neighbours.update(found)

    def distance_mm(self, comp: int, other: int, spacing: np.ndarray, reach_mm: float) -> float:
        """Shortest distance (mm, between voxel centres) from ``comp`` to ``other``, looked for
        within ``reach_mm`` of ``comp``'s box; ``inf`` when ``other`` is not that close."""
        box = self.boxes[comp]
        if box is None or self.boxes[other] is None:
            return float("inf")
        reach = np.ceil(reach_mm / np.asarray(spacing, dtype=float)).astype(int)
        grown = tuple(slice(max(s.start - int(r), 0), min(s.stop + int(r), n))
                      for s, r, n in zip(box, reach, self.ids.shape, strict=True))
        sub = self.ids[grown]
        target = sub == other
        if not target.any():
            return float("inf")
        distance = ndimage.distance_transform_edt(~target, sampling=spacing)
        return float(distance[sub == comp].min())

    def existing(self) -> list[int]:
        """Ids of the components (a map derived by :meth:`apply` leaves gaps where pieces merged
        or were removed)."""
        return [comp for comp in range(1, self.count + 1) if self.boxes[comp] is not None]

    @cached_property
    def largest_of_label(self) -> dict[int, int]:
        """Label value → its largest component (the lowest id among equally large ones)."""
        best: dict[int, int] = {}
        for comp in self.existing():
            value = int(self.label[comp])
            if value not in best or self.sizes[comp] > self.sizes[best[value]]:
                best[value] = comp
        return best

    def identity_lut(self) -> np.ndarray:
        """Lookup table component → its current label."""
        return self.label.copy()

    def apply(self, lut: np.ndarray) -> np.ndarray:
        """A new label map where each component takes ``lut[component]`` (written box by box,
        only for the components whose label changes)."""
        out = self.labels.copy()
        for comp in np.flatnonzero(lut[1:] != self.label[1:]) + 1:
            box, mine = self.mask(int(comp))
            out[box][mine] = lut[comp]
        self._applied = (out, np.asarray(lut, dtype=np.int64).copy())
        return out

    def after(self, labels: np.ndarray) -> Components | None:
        """The components of ``labels`` if it is the map :meth:`apply` made last, else ``None``.

        Derived without a new pass over the whole array: a relabelled piece joins the pieces it
        touches that now carry the same label (ids rewritten in their boxes); removed pieces go.
        """
        applied = getattr(self, "_applied", None)
        if applied is None or applied[0] is not labels:
            return None
        lut = applied[1]
        changed = np.flatnonzero(lut[1:] != self.label[1:]) + 1
        root = np.arange(self.count + 1)

        def find(a: int) -> int:
            while root[a] != a:
                root[a] = root[root[a]]
                a = int(root[a])
            return a

        for comp in map(int, changed):
            if lut[comp] == 0:
                continue
            for other in self.neighbours(comp):
                if lut[other] == lut[comp]:
                    a, b = find(comp), find(other)
                    if a != b:
                        root[max(a, b)] = min(a, b)
        values, sizes, centroids = (a.copy() for a in self._stats)
        values[changed] = lut[changed]
        boxes = list(self.boxes)
        gone = [int(c) for c in changed if lut[c] == 0]
        joined = [c for c in range(1, self.count + 1) if find(c) != c]
        ids = self.ids.copy() if (gone or joined) else self.ids
        for comp in gone:
            box, mine = self.mask(comp)
            ids[box][mine] = 0
            boxes[comp] = None
            values[comp], sizes[comp], centroids[comp] = 0, 0, 0.0
        for comp in joined:
            rep = find(comp)
            box, mine = self.mask(comp)
            ids[box][mine] = rep
            total = sizes[rep] + sizes[comp]
            centroids[rep] = (centroids[rep] * sizes[rep] + centroids[comp] * sizes[comp]) / total
            sizes[rep] = total
            rep_box = boxes[rep]
            assert rep_box is not None  # a root is never a joined (removed) piece
            boxes[rep] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                               for a, b in zip(rep_box, box, strict=True))
            boxes[comp] = None
            values[comp], sizes[comp], centroids[comp] = 0, 0, 0.0
        derived = object.__new__(Components)
        derived.labels, derived.ids, derived.count, derived.boxes = labels, ids, self.count, boxes
        derived.__dict__["_stats"] = (values, sizes, centroids)
        return derived


def components_of(labels: np.ndarray, known: Components | None) -> Components:
    """``known`` if it describes this very array, else the components of ``labels``.

    Steps never modify their input in place, so a repair can hand one step's components to
    the next when the array did not change, or derive them when the step relabelled pieces
    with :meth:`Components.apply`.
    """
    if known is not None and known.labels is labels:
        return known
    derived = known.after(labels) if known is not None else None
    return derived if derived is not None else Components(labels)


def occupied_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the true voxels of ``mask`` (three cheap projections), ``None`` if empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if len(hits) == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def grow_box(box: Box, margin: int | np.ndarray, shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``margin`` voxels per axis (one number or one per axis), clipped to ``shape``."""
    per_axis = np.broadcast_to(np.asarray(margin, dtype=int), (len(box),))
    return tuple(slice(max(s.start - int(m), 0), min(s.stop + int(m), n)) for s, m, n in zip(box, per_axis, shape,
                                                                                             strict=True))
