"""The vertebrae as one series: each level one vertebra, each vertebra one level, its posterior
elements included.

A vertebra is found by its body: the part of a label deeper than :data:`BODY_DEPTH_MM` inside
the bone (thin arches and processes vanish, touching vertebrae part at their endplates). A label
with two bodies names two vertebrae (one level duplicated, the next missing); the bodies, head
to feet, take the levels that change the fewest of them
(:func:`autoorgan.postprocess.series.number_series`). Voxels are given to bodies only where the
series shows something wrong — a label with two bodies, a renumbered body, or two neighbours of
which one holds far more bone around its body than usual and the other far less (posterior
elements carrying the next level's label): there each level first takes the shape the model gave
a neighbouring vertebra that is not in question, moved and tilted onto its body (where two
vertebrae touch broadly, the depth of the bone cannot tell their boundary; the neighbour's shape
can), the rest of the bone is flooded from these claims and the bodies through the bone itself,
and every large piece whose new label disagrees with its old one takes the new label. Slivers at
joints never move, and a map whose series is consistent is returned unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from autoorgan.io.image import Geometry
from autoorgan.postprocess.frame import VERTEBRA_LEVELS, PatientFrame, vertebra_level
from autoorgan.postprocess.series import Member, number_series, usual_spacing

log = logging.getLogger(__name__)

#: Depth inside a vertebra label (mm) of its body core; at least two voxels on coarse grids.
BODY_DEPTH_MM = 5.0
#: Vertebrae lie at least this far apart (mm; cervical vertebrae about 15 mm).
_MIN_SPACING_MM = 12.0
#: A core at least this share of the usual body core is a vertebral body (a series member).
_BODY_SHARE = 0.3
#: Bone around a body (label voxels per body-core voxel, or label voxels) this far below / above
#: the usual marks a vertebra that lost / gained posterior elements, next to the one that gained /
#: lost them.
_LOW_RATIO, _HIGH_RATIO = 0.8, 1.2
#: Pieces whose flood disagrees with their label move when at least this share of the usual
#: vertebra's voxels (on 3 mm grids the flood misplaces up to 13% of a vertebra at its joints).
_PIECE_SHARE = 0.2
SERIES_RULE = "one vertebra per level, in head-to-feet order"
#: Cores whose heights differ by less than this share of the usual spacing are one vertebra.
_SAME_HEIGHT = 0.4
#: Bone of an end body's label farther than this share of the usual spacing beyond the body,
#: and at least this share of the usual vertebra's voxels, is a cut vertebra under that label.
_END_REACH, _END_SHARE = 0.7, 0.15
#: A core taller than this share of the usual spacing of the vertebrae holds two bodies.
_TALL = 0.9


def vertebra_series(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str]
                    ) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    """The vertebrae of ``labels`` made one ordered run of levels (see the module docstring).

    Returns the new map (``labels`` itself when nothing changes), the changes
    (piece, new label, voxels, rule, anchor) and flags where the series is still not consistent.
    """
    levels = {v: lvl for v, n in names.items() if (lvl := vertebra_level(n)) is not None}
    if not levels or labels.dtype.kind not in "ui":
        return labels, [], []
    by_level = {lvl: v for v, lvl in levels.items()}
    table = np.zeros(max(int(labels.max()), max(levels)) + 1, dtype=labels.dtype)
    for v in levels:
        table[v] = v
    only = table[labels]
    boxes = ndimage.find_objects(only)
    present = [v for v in levels if v <= len(boxes) and boxes[v - 1] is not None]
    if len(present) < 2:
        return labels, [], []
    spacing = np.asarray(geometry.spacing, dtype=float)
    frame = PatientFrame.of(geometry)
    depth = max(BODY_DEPTH_MM, 2.01 * float(spacing.max()))
    cores: list[_Core] = []
    voxels: dict[int, int] = {}
    for v in present:
        box = boxes[v - 1]
        assert box is not None
        mask = only[box] == v
        voxels[v] = int(np.count_nonzero(mask))
        inside = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] > depth
        ids, count = cc3d.connected_components(inside, connectivity=26, return_N=True)
        for piece in range(1, count + 1):
            points = np.argwhere(ids == piece)
            cores.append(_Core(v, box, points, frame.head(points + [s.start for s in box])))
    if not cores:
        return labels, [], []
    largest: dict[int, _Core] = {}
    for core in cores:
        if core.value not in largest or core.size > largest[core.value].size:
            largest[core.value] = core
    usual_core = float(np.median([c.size for c in largest.values()]))
    first_gap = usual_spacing([c.height for c in cores if c.size >= _BODY_SHARE * usual_core], _MIN_SPACING_MM)
    bodies = []
    for core in cores:
        if core.size >= _BODY_SHARE * usual_core:
            bodies += core.split(_TALL * first_gap if first_gap else np.inf, float(np.abs(frame.head_per_index).max()),
                                 _BODY_SHARE * usual_core)
    # The usual spacing of the vertebrae, from bodies at least a vertebra apart: without it (as
    # in a thin slab) nothing tells one vertebra from two.
    gap = first_gap
    if gap is None:
        return labels, [], []
    bodies += _cut_ends(bodies, only, boxes, frame, gap, float(np.median([voxels[c.value] for c in bodies])))
    # Bodies at one height (a body and a thick arch, or parts of one vertebra under two labels)
    # are one vertebra: one series member, voting with its core voxels.
    groups: list[list[_Core]] = []
    for core in sorted(bodies, key=lambda c: -c.size):
        same = next((g for g in groups if abs(g[0].height - core.height) < _SAME_HEIGHT * (gap or 0.0)), None)
        if same is not None:
            same.append(core)
        else:
            groups.append([core])
    members = []
    for group in groups:
        total = sum(c.size for c in group)
        votes: dict[int, float] = {}
        for c in group:
            votes[levels[c.value]] = votes.get(levels[c.value], 0.0) + c.size / total
        members.append(Member(group[0].height, votes))
    order = sorted(range(len(groups)), key=lambda k: (-members[k].position, members[k].current))
    groups, members = [groups[k] for k in order], [members[k] for k in order]
    assigned = number_series(members, sorted(by_level), gap)
    changes: list[dict[str, Any]] = []
    flags: list[str] = []
    if assigned is None:
        flags.append(f"{len(groups)} vertebral bodies found, more than the levels of the table")
        assigned = [m.current for m in members]
    new_of_body = [(c, by_level[n]) for group, n in zip(groups, assigned, strict=True) for c in group]
    count_bodies: dict[int, int] = {}
    for c in bodies:
        count_bodies[c.value] = count_bodies.get(c.value, 0) + 1
    # Donors: labels whose voxels may move to another label (a label holding two bodies, a
    # renumbered body's label, the label holding a neighbour's posterior elements). Only their
    # voxels move: the boundaries between other labels are the model's and stay.
    donors = {v for v, n in count_bodies.items() if n > 1}
    donors |= {c.value for c, new in new_of_body if new != c.value}
    involved = set(donors)
    # Bone per body: a vertebra whose posterior elements carry its neighbour's label holds too
    # little, the neighbour too much.
    single = {c.value: c for c in bodies if count_bodies[c.value] == 1}
    ordered = [c.value for group in groups for c in group if c.value in single]
    for measure in ({v: voxels[v] / c.size for v, c in single.items()}, {v: float(voxels[v]) for v in single}):
        if len(measure) < 2:
            continue
        usual = float(np.median(list(measure.values())))
        for a, b in pairwise(ordered):
            (low, _), (high, donor) = sorted(((measure[a], a), (measure[b], b)))
            if low <= _LOW_RATIO * usual and high >= _HIGH_RATIO * usual:
                involved |= {a, b}
                donors.add(donor)
    for rank in range(1, len(groups)):
        step = assigned[rank] - assigned[rank - 1]
        distance = members[rank - 1].position - members[rank].position
        if gap and step > 1 and distance < 1.5 * gap:
            flags.append(f"{VERTEBRA_LEVELS[assigned[rank - 1]]} and {VERTEBRA_LEVELS[assigned[rank]]} "
                         f"lie one level apart ({distance:.0f} mm) with {step - 1} level(s) between them missing")
    log.debug("vertebra series: bodies %s, assigned %s, voxels %s, involved %s",
              [[(names[c.value], c.size, round(c.height)) for c in g] for g in groups], assigned, voxels,
              sorted(involved))
    if not involved:
        return labels, changes, flags
    # Redraw the bone of the involved vertebrae from their neighbours' shapes and their bodies
    # (the other vertebrae take no part: their boundaries are the model's).
    region = sorted(involved)
    region_boxes = [b for b in (boxes[v - 1] for v in region) if b is not None]
    box = tuple(slice(min(b[a].start for b in region_boxes), max(b[a].stop for b in region_boxes))
                for a in range(labels.ndim))
    domain = np.isin(only[box], region)
    tie_break = _world_tie_break(geometry, box, domain.shape)
    seeds, shaped = _template_seeds(only, box, domain, new_of_body, region, single, boxes, geometry)
    for core, new in new_of_body:
        if core.value in region:
            seeds[tuple((core.points + [c.start - b.start for c, b in zip(core.box, box, strict=True)]).T)] = new
    # A label without a body (a vertebra cut by the field of view) keeps its voxels.
    domain &= np.isin(only[box], [v for v in region if v in count_bodies])
    flooded = _flood(seeds, domain, spacing, tie_break)
    current = only[box].astype(np.int64)
    disagree = domain & (flooded > 0) & (flooded != current) & np.isin(current, sorted(donors))
    if shaped:
        # Where no neighbour's shape claims a voxel, the depth of the bone alone decides badly
        # (two vertebrae touching broadly at their joints): such a voxel moves only when the
        # nearest claimed voxel agrees with the flood.
        from skimage.segmentation import watershed  # imported when needed: a slow import

        distance = ndimage.distance_transform_edt(seeds == 0, sampling=spacing)
        nearest = watershed(distance + tie_break, markers=np.where(domain, seeds, 0), mask=domain)
        disagree &= (seeds != 0) | (nearest == flooded)
    if not disagree.any():
        return labels, changes, flags
    usual_voxels = float(np.median(list(voxels.values())))
    pieces, count = cc3d.connected_components(np.where(disagree, flooded * 256 + current, 0), connectivity=26,
                                              return_N=True)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    log.debug("vertebra series: disagreeing pieces %s (moved from %d voxels)", sorted(sizes[1:].tolist())[-6:],
              _PIECE_SHARE * float(np.median(list(voxels.values()))))
    out = labels.copy()
    view = out[box]
    moved = False
    for p in range(1, count + 1):
        if sizes[p] < _PIECE_SHARE * usual_voxels:
            continue
        where = pieces == p
        first = tuple(int(i[0]) for i in np.nonzero(where))
        old, new = int(current[first]), int(flooded[first])
        view[where] = new
        moved = True
        changes.append({"piece": names[old], "to": names[new], "voxels": int(sizes[p]),
                        "rule": SERIES_RULE if count_bodies.get(old, 0) > 1 or old not in single
                        else "a vertebra's bone follows its body",
                        "anchor": f"body of {names[new]}"
                        + (" and a neighbour's shape" if shaped else "") + ", reached through the bone; series: "
                        + ", ".join(VERTEBRA_LEVELS[n] for n in assigned)})
    return (out if moved else labels), changes, flags


def _normal(core: _Core, spacing: np.ndarray) -> np.ndarray:
    """Unit normal (index axes scaled to mm) of a body core's endplates: its thinnest axis."""
    mm = (core.points - core.points.mean(axis=0)) * spacing
    _, vectors = np.linalg.eigh(mm.T @ mm)
    return np.asarray(vectors[:, 0], dtype=float)


def _rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the unit axis ``a`` onto the axis ``b`` (either sense); none
    when they differ by more than :data:`_MAX_TILT_DEG` (an axis measured on a body core that is
    not flat tells nothing)."""
    if float(a @ b) < 0:
        b = -b
    v, c = np.cross(a, b), float(a @ b)
    if np.linalg.norm(v) < 1e-9 or c < np.cos(np.radians(_MAX_TILT_DEG)):
        return np.eye(3)
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.asarray(np.eye(3) + k + k @ k / (1.0 + c), dtype=float)


#: Neighbouring vertebrae turn against each other by at most this (degrees) along the spine's curve.
_MAX_TILT_DEG = 25.0
#: A direction in patient space (mm, LPS) that settles ties of rounding and of the choice between
#: equally good placements the same way whatever the storage order.
_WORLD_NUDGE = np.array([0.0317, 0.011, 0.007])


def _template_seeds(only: np.ndarray, box: tuple[slice, ...], domain: np.ndarray,
                    new_of_body: list[tuple[_Core, int]], region: list[int], single: Mapping[int, _Core],
                    boxes: list[tuple[slice, ...] | None], geometry: Geometry) -> tuple[np.ndarray, bool]:
    """Seeds for the flood from the model's own boundaries, and whether every level to redraw got one.

    Each level to be redrawn takes the shape of a neighbouring vertebra that is not in question,
    moved from that neighbour's body onto this level's body and tilted as the body is tilted
    (the spine's curve turns each vertebra a little against the next), then moved by at most one
    voxel along each axis to lie best inside the bone being redrawn. Neighbouring vertebrae have
    nearly the same shape, so the shape carries where a vertebra's posterior elements end and the
    next one's begin — a boundary the depth of the bone cannot tell where two vertebrae touch
    broadly (at their joints, on coarse grids). A voxel claimed by two levels, or by none, is left
    to the flood.
    """
    spacing = np.asarray(geometry.spacing, dtype=float)
    world = geometry.direction_matrix.T @ _WORLD_NUDGE  # the nudge in index axes (mm)
    origin = np.array([b.start for b in box])
    votes = np.zeros(domain.shape, dtype=np.int64)
    clash = np.zeros(domain.shape, dtype=bool)
    targets: dict[int, _Core] = {}
    for core, new in new_of_body:
        if core.value in region and (new not in targets or core.size > targets[new].size):
            targets[new] = core
    claimed: set[int] = set()
    offsets = [np.array(d) - 1 for d in np.ndindex(3, 3, 3)]
    for new, core in targets.items():
        for template in (new - 1, new + 1):
            model = single.get(template)
            tbox = boxes[template - 1] if 0 < template <= len(boxes) else None
            if model is None or template in region or tbox is None:
                continue
            mm = (np.argwhere(only[tbox] == template) + [s.start for s in tbox] - _centre(model)) * spacing
            moved = (mm @ _rotation(_normal(model, spacing), _normal(core, spacing)).T + world) / spacing
            base = np.round(moved + _centre(core)).astype(np.int64) - origin
            best: tuple[tuple[int, int, float], np.ndarray] | None = None
            for d in offsets:
                points = base + d
                points = points[np.all((points >= 0) & (points < domain.shape), axis=1)]
                key = (int(np.count_nonzero(domain[tuple(points.T)])), -int(np.abs(d).sum()),
                       float(world @ (d * spacing)))
                if best is None or key > best[0]:
                    best = (key, points)
            assert best is not None
            points = best[1]
            points = points[domain[tuple(points.T)]]
            where = tuple(points.T)
            clash[where] |= (votes[where] != 0) & (votes[where] != new)
            votes[where] = new
            claimed.add(new)
    votes[clash] = 0
    return votes, bool(targets) and claimed == set(targets)


def _centre(core: _Core) -> np.ndarray:
    """Index coordinates of the centre of a body core."""
    return np.asarray(core.points.mean(axis=0) + [s.start for s in core.box], dtype=float)


def _world_tie_break(geometry: Geometry, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A tiny (at most a micrometre), direction-free function of each voxel's world position:
    the flood visits voxels of equal depth in the same order whatever the storage order."""
    scaled = geometry.direction_matrix * np.asarray(geometry.spacing, dtype=float)[None, :]
    index = np.indices(shape, dtype=np.float64).reshape(3, -1) + np.array([b.start for b in box], dtype=float)[:, None]
    world = np.asarray(geometry.origin, dtype=float)[:, None] + scaled @ index
    rounded = np.round(world + 0.00317, 2)  # the same position, whatever rounding the storage order brings
    noise = np.sin(rounded.T @ np.array([12.9898, 78.233, 37.719])) * 43758.5453
    return np.asarray(1e-6 * (noise - np.floor(noise)), dtype=np.float64).reshape(shape)


def _flood(seeds: np.ndarray, domain: np.ndarray, spacing: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Each voxel of ``domain`` takes the label of the seed whose flood reaches it, flooding the
    bone from its thickest parts down — a watershed of the depth inside the bone: floods from two
    bodies meet where the bone is thinnest (a disc, a joint), not halfway between them."""
    from skimage.segmentation import watershed  # imported when needed: a slow import

    depth = ndimage.distance_transform_edt(np.pad(domain, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    out = watershed(tie_break - depth, markers=np.where(domain, seeds, 0), mask=domain)
    return np.asarray(out, dtype=np.int64)


class _Core:
    """The deep inside of one label's voxels, one connected piece: a vertebral body (or two)."""

    def __init__(self, value: int, box: tuple[slice, ...], points: np.ndarray, heads: np.ndarray):
        self.value, self.box, self.points, self.heads = value, box, points, heads
        self.size = len(points)
        self.height = float(heads.mean())
        self.extent = float(heads.max() - heads.min())

    def split(self, tall_mm: float, step_mm: float, minimum: float) -> list[_Core]:
        """This core, or its two halves where it is taller than ``tall_mm`` (two bodies under one
        label, joined where their endplates touch), cut where it is narrowest near its middle."""
        if self.extent < tall_mm or self.extent < 3 * step_mm:
            return [self]
        bins = np.round((self.heads - self.heads.min()) / step_mm).astype(np.int64)  # slices: whole steps
        area = np.bincount(bins).astype(float)
        middle = (len(area) - 1) / 2
        lo, hi = int(np.floor(len(area) * 0.3)), int(np.ceil(len(area) * 0.7))
        if hi <= lo:
            return [self]
        # Narrowest (the disc between two bodies); among equally narrow, the one nearest the middle.
        score = area[lo:hi] * (1 + 0.5 * np.abs(np.arange(lo, hi) - middle) / max(middle, 1))
        cut = lo + int(np.argmin(score))
        above, below = bins > cut, bins < cut
        halves = [_Core(self.value, self.box, self.points[m], self.heads[m]) for m in (above, below)]
        if min(h.size for h in halves) < minimum:
            return [self]
        return halves


def _cut_ends(bodies: list[_Core], only: np.ndarray, boxes: list[tuple[slice, ...] | None], frame: PatientFrame,
              gap: float | None, usual_voxels: float) -> list[_Core]:
    """Bone of the topmost or bottommost body's label lying beyond that body by most of a level:
    a vertebra cut by the field of view (no body core of its own) under its neighbour's label.
    Each becomes a member of the series of its own, flooding from all its voxels."""
    if not gap or len(bodies) < 2:
        return []
    found = []
    ends = (max(bodies, key=lambda c: c.height), 1.0), (min(bodies, key=lambda c: c.height), -1.0)
    for end, sign in ends:
        box = boxes[end.value - 1]
        if box is None:
            continue
        points = np.argwhere(only[box] == end.value)
        heads = frame.head(points + [s.start for s in box])
        far = sign * (heads - end.height) > _END_REACH * gap
        if np.count_nonzero(far) >= _END_SHARE * usual_voxels:
            found.append(_Core(end.value, box, points[far], heads[far]))
    return found
