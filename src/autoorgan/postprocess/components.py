"""Connected components of a label map and how they touch, computed once per step with cc3d.

Steps decide per component (never per voxel in Python) and apply their decision as a lookup
table from component id to new label value, so every step is a few passes over the array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import cc3d
import numpy as np
from scipy import ndimage


@dataclass
class Components:
    """26-connected components of each label of ``labels`` (component 0 is the background)."""

    labels: np.ndarray
    ids: np.ndarray = field(init=False, repr=False)
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.ids, self.count = cc3d.connected_components(self.labels, connectivity=26, return_N=True)

    @cached_property
    def _foreground(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Indices of the labelled voxels and their component ids."""
        where = np.nonzero(self.ids)
        return where, self.ids[where]

    @cached_property
    def label(self) -> np.ndarray:
        """Label value of each component (index = component id)."""
        where, ids = self._foreground
        values = np.zeros(self.count + 1, dtype=np.int64)
        values[ids] = self.labels[where]
        return values

    @cached_property
    def sizes(self) -> np.ndarray:
        """Voxel count of each component."""
        return np.bincount(self._foreground[1], minlength=self.count + 1).astype(np.int64)

    @cached_property
    def centroids(self) -> np.ndarray:
        """``(count + 1, 3)`` centroid of each component in voxel indices."""
        where, ids = self._foreground
        sizes = np.maximum(self.sizes, 1)
        return np.stack([np.bincount(ids, weights=axis, minlength=self.count + 1) / sizes for axis in where],
                        axis=1)

    @cached_property
    def _boxes(self) -> list[tuple[slice, ...] | None]:
        """Bounding box of each component (index = component id - 1)."""
        return ndimage.find_objects(self.ids)

    def neighbours(self, comp: int) -> dict[int, float]:
        """Components touching ``comp`` (26-neighbourhood) and the number of touching voxel pairs.

        Counted in the box around ``comp`` only, so asking about a few small pieces never
        visits the whole array.
        """
        cached = self._neighbours.get(comp)
        if cached is not None:
            return cached
        box = self._boxes[comp - 1]
        if box is None:
            return {}
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, self.ids.shape, strict=True))
        sub = self.ids[grown]
        mine = sub == comp
        counts = np.zeros(0, dtype=np.int64)
        shape = sub.shape
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    if dx == dy == dz == 0:
                        continue
                    src = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip((dx, dy, dz), shape, strict=True))
                    dst = tuple(slice(max(d, 0), n - max(-d, 0)) for d, n in zip((dx, dy, dz), shape, strict=True))
                    other = sub[dst][mine[src]]
                    hits = np.bincount(other[(other != comp) & (other != 0)].astype(np.int64))
                    if len(hits) > len(counts):
                        hits[: len(counts)] += counts
                        counts = hits
                    else:
                        counts[: len(hits)] += hits
        found = {int(c): float(counts[c]) for c in np.flatnonzero(counts)}
        self._neighbours[comp] = found
        return found

    @cached_property
    def _neighbours(self) -> dict[int, dict[int, float]]:
        return {}

    @cached_property
    def largest_of_label(self) -> dict[int, int]:
        """Label value → its largest component."""
        best: dict[int, int] = {}
        for comp in range(1, self.count + 1):
            value = int(self.label[comp])
            if value not in best or self.sizes[comp] > self.sizes[best[value]]:
                best[value] = comp
        return best

    def identity_lut(self) -> np.ndarray:
        """Lookup table component → its current label."""
        return self.label.copy()

    def apply(self, lut: np.ndarray) -> np.ndarray:
        """A new label map where each component takes ``lut[component]``."""
        return lut.astype(self.labels.dtype)[self.ids]


def components_of(labels: np.ndarray, known: Components | None) -> Components:
    """``known`` if it describes this very array, else the components of ``labels``.

    Steps never modify their input in place, so a repair can hand one step's components to
    the next when the array did not change.
    """
    if known is not None and known.labels is labels:
        return known
    return Components(labels)
