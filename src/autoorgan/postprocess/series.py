"""Numbering as a whole-series problem: the members of a numbered series (the ribs of one side,
the vertebrae) get one ordered run of distinct numbers along the spine.

A model's numbering errors rarely come alone: a rib labelled as its neighbour leaves one number on
two bones and the next number missing; the front part of a rib labelled as the rib above puts two
numbers on one bone. Fixing one piece at a time cannot tell which bone is wrong; the series can.
:func:`number_series` takes the members of a series in head-to-feet order, each with the share of
its voxels that carries each number, and returns the strictly increasing numbering that changes
the fewest voxels (counted as a share of each member, so a whole rib weighs one) and, where the
spacing of the members is known, leaves no gap the geometry does not explain. Where that still
leaves a choice (two numbers each need the same changes), a number known from elsewhere for a
member (for a rib: the number of the other side's rib at the same height) decides. Pure: numbers
in, numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Cost of one member spacing between two neighbours that the numbers do not account for
#: (beyond half a spacing of slack). Far below one: a gap never outweighs renumbering a
#: member, it only decides between numberings that change equally much.
GAP_WEIGHT = 0.02
#: Cost of a member taking another number than the one known from elsewhere (a hint). Below
#: one, so a member's own voxels outweigh its own hint; above a half, so the hints of two members
#: outweigh the voxels of one: the other side's ribs decide between numberings that the series
#: alone scores alike or nearly so.
HINT_WEIGHT = 0.6


@dataclass(frozen=True)
class Member:
    """One member of a series: where it lies and which numbers its voxels carry.

    ``position``: head coordinate (mm) of its place in the series (larger = nearer the head);
    ``votes``: number → share of the member's voxels that carry it (shares sum to 1).
    """

    position: float
    votes: Mapping[int, float]

    @property
    def current(self) -> int:
        """The number most of its voxels carry."""
        return max(self.votes, key=lambda n: (self.votes[n], -n))


def number_series(members: Sequence[Member], numbers: Sequence[int], spacing_mm: float | None = None,
                  hints: Sequence[int | None] | None = None) -> list[int] | None:
    """Distinct numbers for ``members`` (given head first), increasing from head to feet.

    Members whose (majority) numbers are already distinct keep that set of numbers, put in
    head-to-feet order (an inverted or swapped numbering). Otherwise minimises the share of
    voxels whose number changes, plus :data:`GAP_WEIGHT` per member
    spacing by which the step between two neighbours' numbers differs from their distance
    (``spacing_mm``: the usual distance between neighbours; ``None``: no gap term), plus
    :data:`HINT_WEIGHT` per member that does not take its hint (``hints``: per member, a number
    known from elsewhere or ``None``). ``numbers`` are the allowed numbers in head-to-feet order.
    ``None`` when there are more members than numbers (the series cannot be made consistent).
    """
    count, allowed = len(members), list(numbers)
    if count == 0:
        return []
    current = [m.current for m in members]
    if len(set(current)) == count:  # distinct numbers, perhaps in the wrong order: keep the set
        return sorted(current, key=allowed.index) if all(n in allowed for n in current) else None
    if count > len(allowed):
        return None
    change = np.array([[1.0 - float(m.votes.get(n, 0.0)) for n in allowed] for m in members])
    for i, hint in enumerate(hints or ()):
        if hint is not None:
            change[i] += HINT_WEIGHT * (np.asarray(allowed) != hint)
    idx = np.arange(len(allowed))
    step = idx[None, :] - idx[:, None]  # step[j_prev, j]
    cost = change[0].copy()
    back = np.zeros((count, len(allowed)), dtype=np.int64)
    for i in range(1, count):
        gap = np.zeros_like(step, dtype=float)
        if spacing_mm:
            expected = (members[i - 1].position - members[i].position) / spacing_mm
            gap = GAP_WEIGHT * np.maximum(np.abs(step - expected) - 0.5, 0.0)
        total = cost[:, None] + gap
        total[step <= 0] = np.inf  # strictly increasing
        back[i] = np.argmin(total, axis=0)
        cost = total[back[i], idx] + change[i]
    if not np.isfinite(cost).any():
        return None
    j = int(np.argmin(cost))
    out = [j]
    for i in range(count - 1, 0, -1):
        j = int(back[i, j])
        out.append(j)
    return [allowed[j] for j in reversed(out)]


def usual_spacing(positions: Sequence[float], minimum_mm: float) -> float | None:
    """Median distance between consecutive positions that are at least ``minimum_mm`` apart."""
    ordered = np.sort(np.asarray(positions, dtype=float))[::-1]
    steps = -np.diff(ordered)
    steps = steps[steps >= minimum_mm]
    return float(np.median(steps)) if len(steps) else None


class UnionFind:
    """Disjoint sets of ``0 … n-1`` that refuse a union joining two members marked apart."""

    def __init__(self, count: int, apart: set[tuple[int, int]] | None = None):
        self.root = list(range(count))
        self.members: dict[int, set[int]] = {i: {i} for i in range(count)}
        self.apart = apart or set()

    def find(self, a: int) -> int:
        while self.root[a] != a:
            self.root[a] = self.root[self.root[a]]
            a = self.root[a]
        return a

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b`` unless a pair marked apart would end in one set."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if any((x, y) in self.apart or (y, x) in self.apart for x in self.members[ra] for y in self.members[rb]):
            return False
        self.root[rb] = ra
        self.members[ra] |= self.members.pop(rb)
        return True

    def groups(self) -> list[list[int]]:
        return [sorted(m) for _, m in sorted(self.members.items())]
