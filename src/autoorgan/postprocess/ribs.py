"""Step 4: ribs — each rib one structure per side, numbered from the vertebra its head meets.

First, detached pieces of a rib that carry another rib's label (a broken rib with mislabelled
fragments) are merged into the rib they are attached to. Then the numbering is checked: with
vertebra labels (the same map, or a companion vertebrae map), each rib head's height is
expressed as a continuous vertebral level, and rib *k* must sit at thoracic level T*k*; a
consistent shift of one side's numbering is undone. Before that, each side's ribs are numbered as
one series; where a side carries a number twice and its series leaves a choice, the other side's
ribs at the same height decide. Left and right ribs at the same height that end with different
numbers are flagged.

:func:`anchor_rib_numbers` is the numbering alone, for a ribs map and a vertebrae map of one
case (e.g. the two task maps of a multi-task run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from autoorgan.io.image import Geometry
from autoorgan.postprocess.components import Components, components_of, occupied_box
from autoorgan.postprocess.frame import PatientFrame, is_midline, mask_of, rib_of
from autoorgan.postprocess.series import Member, UnionFind, number_series, usual_spacing
from autoorgan.postprocess.sides import Midline, find_midline
from autoorgan.postprocess.vertebrae import vertebra_values

#: Rib k's head lies at vertebral level T_k, between the disc above and the body's centre.
#: Offsets in [-0.65, 0.35) level count as correctly numbered.
_LEVEL_TOLERANCE = 0.65
_T1_INDEX = 7  # level index of T1 (C1 = 0)
#: Head-to-feet inversions smaller than this are not trusted (mm) when no vertebrae are known.
_MIN_ORDER_GAP_MM = 10.0
_HEAD_BAND_MM = 10.0


def fix_ribs(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], *,
             vertebrae: np.ndarray | None = None, vertebra_names: Mapping[int, str] | None = None,
             components: Components | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Merge rib fragments into their rib and fix the numbering (see the module docstring).

    ``vertebrae`` is a companion vertebra label map on the same grid with ``vertebra_names``;
    without it, vertebra labels of ``labels`` itself (a merged whole-body map) are used.
    """
    ribs = {v: rib for v, n in names.items() if (rib := rib_of(n)) is not None}
    if not ribs:
        return labels, {"fragments_merged": 0, "ribs_renumbered": 0}
    comps = components_of(labels, components)
    if len(comps.of_labels(list(ribs))) == 0:
        return labels, {"fragments_merged": 0, "ribs_renumbered": 0}
    lut, merged = _merge_fragments(comps, ribs)
    changes = [{"piece": names[int(comps.label[c])], "to": names[int(lut[c])], "voxels": int(comps.sizes[c]),
                "rule": "fragment joins the rib it is attached to", "anchor": names[int(lut[c])]}
               for c in comps.existing() if lut[c] != comps.label[c]]
    merged_lut = lut
    names_by = {n: v for v, n in names.items()}
    if vertebrae is None and vertebra_values(names):
        vertebrae, vertebra_names = labels, names
    midline = _rib_midline(comps, lut, geometry, ribs, vertebrae, names if vertebrae is labels else None)
    lut, series_changes, flags, spacing = _series_ribs(comps, lut, geometry, names, ribs, midline)
    lut, details = _renumber(comps, lut, geometry, names, ribs, vertebrae, vertebra_names, midline)
    flags += _sides_disagree(comps, lut, geometry, names, ribs, midline, spacing)
    changes += series_changes + details.pop("changes", [])
    # Ribs renumbered: the labels whose bones (not only a part of one) carry another number now.
    details["ribs_renumbered"] = len({int(merged_lut[c]) for c in comps.existing() if lut[c] != merged_lut[c]}
                                     - {names_by[c["piece"]] for c in series_changes if c["rule"] == "one bone, one label"})
    changed = np.flatnonzero(lut != comps.label)
    report = {"fragments_merged": merged + sum(1 for c in series_changes if c["rule"] == "one bone, one label"),
              **details,
              "changes": changes, "flags": flags}
    return (comps.apply(lut) if len(changed) else labels), report


def anchor_rib_numbers(ribs: np.ndarray, vertebrae: np.ndarray, geometry: Geometry, *,
                       rib_names: Mapping[int, str] | None = None,
                       vertebra_names: Mapping[int, str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Rib numbers anchored on the thoracic vertebra each rib head meets (rib *k* ↔ T*k*).

    ``ribs`` is a rib label map and ``vertebrae`` a vertebra label map on the same grid
    (``[x, y, z]`` arrays of ``geometry``), e.g. the maps of the ribs and vertebrae tasks of
    one case. Label tables default to those of the ``ribs`` and ``vertebrae`` tasks. Each side
    whose numbering is consistently shifted against the levels of the vertebrae its rib heads
    meet is renumbered; ribs whose head lies outside the image give no evidence. Without
    usable vertebrae (fewer than two complete levels) the ribs are only put in head-to-feet
    order. Pure: returns a new array (``ribs`` itself when nothing changes) and what changed
    (``ribs_renumbered``, ``numbering_from``, ``renumbered``: old name → new name).
    """
    rib_names, vertebra_names = _default_tables(rib_names, vertebra_names)
    if vertebrae.shape != ribs.shape:
        raise ValueError(f"vertebrae map {vertebrae.shape} is not on the rib map's grid {ribs.shape}")
    table = {v: rib for v, n in rib_names.items() if (rib := rib_of(n)) is not None}
    comps = Components(ribs)
    if len(comps.of_labels(list(table))) == 0:
        return ribs, {"ribs_renumbered": 0}
    lut, details = _renumber(comps, comps.identity_lut(), geometry, rib_names, table, vertebrae, vertebra_names)
    return (comps.apply(lut) if details["ribs_renumbered"] else ribs), details


def rib_head_levels(ribs: np.ndarray, vertebrae: np.ndarray, geometry: Geometry, *,
                    rib_names: Mapping[int, str] | None = None,
                    vertebra_names: Mapping[int, str] | None = None) -> dict[str, float | None]:
    """Rib name → continuous vertebral level of its head (C1 = 0, T1 = 7, …), the evidence
    :func:`anchor_rib_numbers` uses; ``None`` for a rib whose head is outside the image or
    beyond the complete vertebrae of ``vertebrae``."""
    rib_names, vertebra_names = _default_tables(rib_names, vertebra_names)
    table = {v: rib for v, n in rib_names.items() if (rib := rib_of(n)) is not None}
    comps = Components(ribs)
    lut = comps.identity_lut()
    heads = _rib_heads(comps, lut, geometry, table, _rib_midline(comps, lut, geometry, table, vertebrae, None))
    axis = _vertebra_level_axis(vertebrae, geometry, vertebra_names)
    return {rib_names[v]: (axis.level(h) if axis is not None and h is not None else None) for v, h in heads.items()}


def _default_tables(rib_names: Mapping[int, str] | None, vertebra_names: Mapping[int, str] | None
                    ) -> tuple[Mapping[int, str], Mapping[int, str]]:
    if rib_names is None or vertebra_names is None:
        from autoorgan.registry.tasks import load_registry

        registry = load_registry()
        rib_names = rib_names if rib_names is not None else registry.get_task("ribs").labels
        vertebra_names = vertebra_names if vertebra_names is not None else registry.get_task("vertebrae").labels
    return rib_names, vertebra_names


def _renumber(comps: Components, lut: np.ndarray, geometry: Geometry, names: Mapping[int, str],
              ribs: Mapping[int, tuple[str, int]], vertebrae: np.ndarray | None,
              vertebra_names: Mapping[int, str] | None, midline: Midline | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """``lut`` (component → label) with the rib numbering fixed, and what changed."""
    merged_map = vertebrae is comps.labels
    if midline is None:
        midline = _rib_midline(comps, lut, geometry, ribs, vertebrae, names if merged_map else None)
    heads = _rib_heads(comps, lut, geometry, ribs, midline)
    levels = _vertebra_level_axis(vertebrae, geometry, vertebra_names) if vertebrae is not None else None
    if levels is not None:
        remap, method = _anchor_on_vertebrae(heads, ribs, names, levels), "vertebrae"
    else:
        remap, method = _order_by_height(heads, ribs, names), "head-to-feet order"
    details: dict[str, Any] = {"ribs_renumbered": len(remap), "numbering_from": method}
    if remap:
        table = np.arange(max(int(lut.max()), max(names)) + 1, dtype=np.int64)
        for old, new in remap.items():
            table[old] = new
        lut = table[lut]
        details["renumbered"] = {names[o]: names[n] for o, n in sorted(remap.items())}
        rule = ("rib k meets vertebra Tk: shift of the side's numbers undone" if method == "vertebrae"
                else "rib numbers in head-to-feet order of their heads")
        details["changes"] = [{"piece": names[o], "to": names[n], "rule": rule,
                               "anchor": "vertebra levels of the rib heads" if method == "vertebrae"
                               else "rib head heights"} for o, n in sorted(remap.items())]
    return lut, details


def _merge_fragments(comps: Components, ribs: Mapping[int, tuple[str, int]]) -> tuple[np.ndarray, int]:
    """Pieces of rib labels that are not their label's main body join the rib they touch.

    Touching rib pieces form a graph whose edges involve at least one non-main piece; a group
    with one main body takes its label; with several, each piece follows the main body it
    touches most. Returns the lookup table component → label and the pieces relabelled.
    """
    main = comps.largest_of_label
    lut = comps.identity_lut()
    is_rib = np.isin(comps.label, list(ribs))
    is_main = np.zeros(comps.count + 1, dtype=bool)
    is_main[[c for v, c in main.items() if v in ribs]] = True
    if not (is_rib & ~is_main)[1:].any():  # every rib is one piece: nothing to merge
        return lut, 0
    edges = [(int(a), b) for a in np.flatnonzero(is_rib & ~is_main) for b in comps.neighbours(int(a)) if is_rib[b]]
    if not edges:
        return lut, 0
    a_idx, b_idx = np.array(edges).T
    graph = coo_matrix((np.ones(len(edges)), (a_idx, b_idx)), shape=(comps.count + 1, comps.count + 1))
    _, group = connected_components(graph, directed=False)
    merged = 0
    involved = np.unique(np.r_[a_idx, b_idx])
    for g in np.unique(group[involved]):
        members = involved[group[involved] == g]
        mains = [int(c) for c in members if is_main[c]]
        for comp in members:
            if is_main[comp]:
                continue
            if len(mains) == 1:
                target_label = comps.label[mains[0]]
            else:
                touching = {c: n for c, n in comps.neighbours(int(comp)).items() if c in mains}
                if not touching:
                    continue
                target_label = comps.label[max(touching, key=lambda c: (touching[c], -c))]
            if target_label != lut[comp]:
                lut[comp] = target_label
                merged += 1
    return lut, merged


def _rib_midline(comps: Components, lut: np.ndarray, geometry: Geometry, ribs: Mapping[int, tuple[str, int]],
                vertebrae: np.ndarray | None, names: Mapping[int, str] | None) -> Midline:
    """The body's midline for finding rib heads: from the midline structures of a merged map
    (``names``: its table), else from the vertebrae, else halfway between the outermost ribs."""
    frame = PatientFrame.of(geometry)
    midline: Midline | None = None
    if names is not None:
        midline = find_midline(comps.labels, geometry, {v: n for v, n in names.items() if is_midline(n)},
                               components=comps)
    elif vertebrae is not None:
        midline = find_midline(comps.labels, geometry, {}, vertebrae=vertebrae)
    if midline is None:
        rib_comps = np.flatnonzero(np.isin(lut, list(ribs)) & (np.arange(len(lut)) > 0))
        points = comps.points(rib_comps)
        lefts = frame.left(points) if len(points) else np.zeros(1)
        midline = Midline(np.array([0.0]), np.array([(lefts.min() + lefts.max()) / 2]), "ribs")
    return midline


def _head_height(points: np.ndarray, frame: PatientFrame, midline: Midline, shape: tuple[int, ...]) -> float | None:
    """Head coordinate (mm) of a rib's head, its most medial, most posterior part, given the
    rib's voxels; ``None`` where that part lies on the border of the image (the rib is cut by the
    field of view and its real head is not in the image)."""
    h = frame.head(points)
    lateral = np.abs(frame.left(points) - midline.at(h))
    ant = frame.anterior(points)
    score = lateral + (ant - ant.min())
    band = score <= score.min() + _HEAD_BAND_MM
    border = np.asarray(shape) - 1
    cut = bool(((points[band] == 0) | (points[band] == border)).any())
    return None if cut else float(h[band].mean())


def _rib_heads(comps: Components, lut: np.ndarray, geometry: Geometry, ribs: Mapping[int, tuple[str, int]],
               midline: Midline) -> dict[int, float | None]:
    """Head coordinate (mm) of each rib's head (:func:`_head_height`); the rib voxels are the
    components whose label in ``lut`` is a rib."""
    frame = PatientFrame.of(geometry)
    rib_comps = np.flatnonzero(np.isin(lut, list(ribs)) & (np.arange(len(lut)) > 0))
    points = comps.points(rib_comps)
    values = np.repeat(lut[rib_comps], [int(comps.sizes[c]) for c in rib_comps])
    return {int(value): _head_height(points[values == value], frame, midline, comps.labels.shape)
            for value in np.unique(values)}


class _LevelAxis:
    """Continuous vertebral level (C1 = 0 … L5 = 23) as a function of the head coordinate."""

    def __init__(self, heads: np.ndarray, levels: np.ndarray):
        order = np.argsort(heads)
        self.heads, self.levels = heads[order], levels[order].astype(float)
        self.step_mm = (self.heads[-1] - self.heads[0]) / max(self.levels[0] - self.levels[-1], 1e-6)

    def level(self, head: float) -> float | None:
        """Level at ``head``; ``None`` beyond half a level outside the known vertebrae."""
        lo, hi = self.heads[0], self.heads[-1]
        if head < lo - self.step_mm / 2 or head > hi + self.step_mm / 2:
            return None
        if head < lo:
            return float(self.levels[0] + (lo - head) / self.step_mm)
        if head > hi:
            return float(self.levels[-1] - (head - hi) / self.step_mm)
        return float(np.interp(head, self.heads, self.levels))


def _vertebra_level_axis(vertebrae: np.ndarray, geometry: Geometry,
                         vertebra_names: Mapping[int, str] | None) -> _LevelAxis | None:
    """Level axis from the complete vertebrae of a map (those cut by the field of view are skipped)."""
    levels = vertebra_values(vertebra_names or {})
    if not levels:
        return None
    box = occupied_box(vertebrae != 0)
    if box is None:
        return None
    points = np.argwhere(mask_of(vertebrae[box], list(levels)))
    if len(points) == 0:
        return None
    values = vertebrae[box][tuple(points.T)].astype(np.int64)
    points += [s.start for s in box]
    counts = np.bincount(values, minlength=max(levels) + 1)
    present = [v for v in levels if counts[v] > 0]
    if len(present) < 2:
        return None
    typical = float(np.median([counts[v] for v in present]))
    complete = [v for v in present if counts[v] >= 0.5 * typical]
    if len(complete) < 2:
        return None
    frame = PatientFrame.of(geometry)
    head_sum = np.bincount(values, weights=frame.head(points), minlength=max(levels) + 1)
    heads = np.array([head_sum[v] / counts[v] for v in complete])
    return _LevelAxis(heads, np.array([levels[v] for v in complete]))


def _anchor_on_vertebrae(heads: Mapping[int, float | None], ribs: Mapping[int, tuple[str, int]],
                         names: Mapping[int, str], axis: _LevelAxis) -> dict[int, int]:
    """Undo a consistent shift of one side's rib numbers against the thoracic levels."""
    by_name = {n: v for v, n in names.items()}
    remap: dict[int, int] = {}
    for side in ("left", "right"):
        mine = {v: h for v, h in heads.items() if ribs[v][0] == side}
        shifts = []
        for value, head in mine.items():
            level = axis.level(head) if head is not None else None
            if level is not None:
                offset = level - (_T1_INDEX - 1 + ribs[value][1])
                shifts.append(int(np.floor(offset + _LEVEL_TOLERANCE)))
        if not shifts:
            continue
        candidates, votes = np.unique(shifts, return_counts=True)
        shift = int(candidates[np.argmax(votes)])
        if shift == 0 or votes.max() * 3 < 2 * len(shifts):
            continue
        new_names = {v: f"rib_{side}_{ribs[v][1] + shift}" for v in mine}
        if all(n in by_name for n in new_names.values()):
            remap.update({v: by_name[n] for v, n in new_names.items()})
    return remap


def _order_by_height(all_heads: Mapping[int, float | None], ribs: Mapping[int, tuple[str, int]],
                     names: Mapping[int, str]) -> dict[int, int]:
    """Put each side's present rib numbers in head-to-feet order of their heads, when clearly inverted.

    Only ribs whose head is inside the image take part.
    """
    heads = {v: h for v, h in all_heads.items() if h is not None}
    remap: dict[int, int] = {}
    for side in ("left", "right"):
        mine = sorted((v for v in heads if ribs[v][0] == side), key=lambda v: ribs[v][1])
        by_height = sorted(mine, key=lambda v: -heads[v])
        if by_height == mine:
            continue
        inversions = [(a, b) for i, a in enumerate(mine) for b in mine[i + 1:] if heads[b] > heads[a]]
        if any(heads[b] - heads[a] < _MIN_ORDER_GAP_MM for a, b in inversions):
            continue
        remap.update({old: new for old, new in zip(by_height, mine, strict=True) if old != new})
    return remap


#: Sides of the square cells (mm, in the patient's axial plane) in which neighbouring ribs are
#: compared: two ribs that share cells lie one above the other there.
_CELLS_MM = (8.0, 16.0, 32.0, 64.0)
#: Pieces smaller than this share of their side's largest piece do not count as series members.
_MIN_MEMBER_SHARE = 0.05
#: Points per piece from which its cell heights are taken (an even sample of larger pieces).
_MAX_CELL_POINTS = 40_000


@dataclass
class _Piece:
    """Touching components of one rib label: one bone or part of one."""

    comps: list[int]
    value: int
    size: int
    height: float  # mean head coordinate (mm)
    #: Per cell size of :data:`_CELLS_MM`: sorted cell keys in the axial plane and the mean head
    #: coordinate in each cell.
    cells: Cells


#: Cells are laid out in world coordinates, shifted off round millimetres, so that every storage
#: order of a map puts the same voxels in the same cells.
_CELL_SHIFT_MM = 0.173


def _rib_pieces(comps: Components, lut: np.ndarray, geometry: Geometry, values: list[int]) -> list[_Piece]:
    """Rib pieces of the given label values: the components of one label joined where they touch."""
    frame = PatientFrame.of(geometry)
    origin = np.asarray(geometry.origin, dtype=float)
    mine = [c for c in comps.existing() if int(lut[c]) in values]
    index = {c: i for i, c in enumerate(mine)}
    groups = UnionFind(len(mine))
    for c in mine:  # components of one label never touch, unless one was given another's label
        if lut[c] == comps.label[c]:
            continue
        for other in comps.neighbours(c):
            if other in index and lut[other] == lut[c]:
                groups.union(index[c], index[other])
    pieces = []
    for group in groups.groups():
        members = [mine[i] for i in group]
        points = comps.points(members)
        size = len(points)
        if size > _MAX_CELL_POINTS:  # the cell heights need no more than an even sample
            points = points[:: -(-size // _MAX_CELL_POINTS)]
        # World position (LPS: x towards the left, y posterior, z towards the head) in mm.
        head = frame.head(points)
        cells = _cell_heights(frame.left(points) + origin[0], frame.anterior(points) - origin[1], head)
        pieces.append(_Piece(members, int(lut[members[0]]), size, float(head.mean()), cells))
    return pieces


Cells = list[tuple[np.ndarray, np.ndarray]]


def _cell_heights(across: np.ndarray, ant: np.ndarray, head: np.ndarray) -> Cells:
    """Per cell size of :data:`_CELLS_MM`: the sorted keys of the cells of the axial plane that
    points at ``across`` and ``ant`` (mm) fall in, and the mean ``head`` coordinate in each."""
    across, ant = across + _CELL_SHIFT_MM, ant + _CELL_SHIFT_MM
    cells = []
    for cell in _CELLS_MM:
        key = np.floor(across / cell).astype(np.int64) * 100_003 + np.floor(ant / cell).astype(np.int64)
        keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        cells.append((keys, np.bincount(inverse, weights=head) / counts))
    return cells


def _mirrored_cells(points: np.ndarray, geometry: Geometry, midline: Midline) -> Cells:
    """Cell heights (:func:`_cell_heights`) of a rib's voxels in the plane of distance from the
    midline and front-to-back position: the left rib *k* and the right rib *k* share these cells
    at the same heights (the ribs are mirror images), neighbouring numbers a rib spacing apart."""
    if len(points) > _MAX_CELL_POINTS:
        points = points[:: -(-len(points) // _MAX_CELL_POINTS)]
    frame = PatientFrame.of(geometry)
    head = frame.head(points)
    lateral = np.abs(frame.left(points) - midline.at(head))
    return _cell_heights(lateral, frame.anterior(points) - float(geometry.origin[1]), head)


def _height_difference(a: Cells, b: Cells) -> tuple[float, float]:
    """Weight of the comparison of two pieces' cell heights and the median height of ``a``
    above ``b`` where they share cells of the axial plane: the smallest cells they share, each
    coarser size weighing a quarter as much (different parts of two ribs are compared coarsely)."""
    weight = 1.0
    for (keys_a, heights_a), (keys_b, heights_b) in zip(a, b, strict=True):
        _, ia, ib = np.intersect1d(keys_a, keys_b, assume_unique=True, return_indices=True)
        if len(ia):
            return weight * len(ia), float(np.median(heights_a[ia] - heights_b[ib]))
        weight /= 4.0
    return 0.0, 0.0


@dataclass
class _Side:
    """One side's ribs as a series: its pieces, the ribs they form, and their order."""

    side: str
    pieces: list[_Piece]
    ribs_found: list[list[int]]  # piece indices of each rib
    members: list[Member]
    order: list[int]  # ribs head to feet
    spacing: float | None
    touching: set[tuple[int, int]]
    assigned: list[int] | None = None  # the number of each rib in ``order``
    cells: list[Cells] | None = None  # mirrored cell heights of each rib in ``order``


def _series_ribs(comps: Components, lut: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                 ribs: Mapping[int, tuple[str, int]], midline: Midline
                 ) -> tuple[np.ndarray, list[dict[str, Any]], list[str], float | None]:
    """Each side's ribs made one ordered run of distinct numbers (see :mod:`autoorgan.postprocess.series`),
    the changes, the flags and the rib spacing (mm; ``None`` where no side showed it).

    Rib pieces (touching components of one label) are compared where they share cells of the
    axial plane: a piece lying a rib spacing above another there is a different rib (*stacked*).
    Pieces that touch and are not stacked are one bone (a label boundary along one rib); pieces of
    one label that are not stacked and lie at the same place of the series are one rib cut apart.
    Each rib then takes the number the series needs, changing as few voxels as possible. Where a
    side carries a number twice, the other side's rib at the same height (:func:`_same_height`)
    hints each rib's number: it decides between numberings the side alone cannot tell apart.
    """
    by_name = {n: v for v, n in names.items()}
    changes: list[dict[str, Any]] = []
    flags: list[str] = []
    lut = lut.copy()
    numbers = list(range(1, 13))
    sides: dict[str, _Side] = {}
    for side in ("left", "right"):
        series = _side_series(comps, lut, geometry, ribs, side)
        if series is None:
            continue
        series.assigned = number_series([series.members[k] for k in series.order], numbers, series.spacing)
        if series.assigned is None:
            flags.append(f"{side} ribs: {len(series.order)} ribs found, more than 12 numbers")
            continue
        sides[side] = series
    hinted: dict[str, list[int | None]] = {}
    for side, series in sides.items():
        other = sides.get("right" if side == "left" else "left")
        in_order = [series.members[k] for k in series.order]
        if other is None or len({m.current for m in in_order}) == len(in_order):
            continue  # distinct numbers keep their set; nothing for a hint to decide
        hints = _hints_from(series, other, comps, geometry, midline)
        if any(h is not None for h in hints):
            assigned = number_series(in_order, numbers, series.spacing, hints)
            if assigned is not None and assigned != series.assigned:
                hinted[side] = hints
                series.assigned = assigned
    for side, series in sides.items():
        assert series.assigned is not None
        pieces, order, assigned = series.pieces, series.order, series.assigned
        for rank, k in enumerate(order):
            target = by_name.get(f"rib_{side}_{assigned[rank]}")
            if target is None:
                flags.append(f"{side} ribs: no label rib_{side}_{assigned[rank]} in the table")
                continue
            group = series.ribs_found[k]
            for i in group:
                piece = pieces[i]
                if piece.value == target:
                    continue
                one_bone = any(pieces[j].value == target and (min(i, j), max(i, j)) in series.touching for j in group)
                if side in hinted and hinted[side][rank] is not None:
                    other_side = "right" if side == "left" else "left"
                    anchor = f"other side: rib_{other_side}_{hinted[side][rank]} at the same height"
                else:
                    neighbours = [names[by_name[f"rib_{side}_{assigned[r]}"]] for r in (rank - 1, rank + 1)
                                  if 0 <= r < len(order) and f"rib_{side}_{assigned[r]}" in by_name]
                    anchor = "series: " + (", ".join(neighbours) if neighbours else "no neighbour")
                changes.append({
                    "piece": names[piece.value], "to": names[target], "voxels": piece.size,
                    "rule": "one bone, one label" if one_bone else "one rib per number, in head-to-feet order",
                    "anchor": f"the rest of its bone ({names[target]}); {anchor}" if one_bone else anchor})
                for c in piece.comps:
                    lut[c] = target
        for rank in range(1, len(order)):
            step = assigned[rank] - assigned[rank - 1]
            distance = series.members[order[rank - 1]].position - series.members[order[rank]].position
            if series.spacing and step > 1 and distance < 1.5 * series.spacing:
                flags.append(f"{side} ribs: rib_{side}_{assigned[rank - 1]} and rib_{side}_{assigned[rank]} lie "
                             f"one rib apart ({distance:.0f} mm) with {step - 1} number(s) between them missing")
    spacings = [series.spacing for series in sides.values() if series.spacing]
    return lut, changes, flags, (float(np.median(spacings)) if spacings else None)


def _side_series(comps: Components, lut: np.ndarray, geometry: Geometry, ribs: Mapping[int, tuple[str, int]],
                 side: str) -> _Side | None:
    """The ribs of one side and their head-to-feet order (``None`` with fewer than two pieces)."""
    values = [v for v, (s, _) in ribs.items() if s == side]
    pieces = _rib_pieces(comps, lut, geometry, values)
    if len(pieces) < 2:
        return None
    biggest = max(p.size for p in pieces)
    pieces = [p for p in pieces if p.size >= _MIN_MEMBER_SHARE * biggest]
    if len(pieces) < 2:
        return None
    count = len(pieces)
    shared = np.zeros((count, count))
    above = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            n, d = _height_difference(pieces[i].cells, pieces[j].cells)
            shared[i, j] = shared[j, i] = n
            above[i, j], above[j, i] = d, -d
    close = shared >= _CLOSE_WEIGHT  # compared in fine cells: the height difference is evidence
    different = [abs(above[i, j]) for i in range(count) for j in range(i + 1, count)
                 if close[i, j] and pieces[i].value != pieces[j].value]
    spacing = usual_spacing([0.0, *different], _MIN_STACK_MM) if different else None
    stack_mm = max(0.5 * spacing, _MIN_STACK_MM) if spacing else _MIN_STACK_MM
    stacked = {(i, j) for i in range(count) for j in range(count) if close[i, j] and abs(above[i, j]) >= stack_mm}
    offset = _offsets(pieces, shared, above)
    groups = UnionFind(count, stacked)
    # Pieces that share fine cells without being stacked may be one bone: do they touch?
    touching: set[tuple[int, int]] = set()
    for i in range(count):
        for j in range(i + 1, count):
            if not close[i, j] or (i, j) in stacked:
                continue
            small = min(i, j, key=lambda k: pieces[k].size)
            other_comps = set(pieces[j if small == i else i].comps)
            if any(o in other_comps for c in pieces[small].comps for o in comps.neighbours(c)):
                touching.add((i, j))
    for i, j in sorted(touching):
        groups.union(i, j)
    for i in range(count):
        for j in range(i + 1, count):
            if pieces[i].value == pieces[j].value:
                groups.union(i, j)
    ribs_found = groups.groups()
    members, order = _members(ribs_found, pieces, offset, ribs, stacked, above)
    return _Side(side, pieces, ribs_found, members, order, spacing, touching)


def _series_cells(series: _Side, comps: Components, geometry: Geometry, midline: Midline) -> list[Cells]:
    """Mirrored cell heights (:func:`_mirrored_cells`) of each rib of ``series`` in its order."""
    if series.cells is None:
        series.cells = [_mirrored_cells(comps.points([c for i in series.ribs_found[k] for c in series.pieces[i].comps]),
                                        geometry, midline) for k in series.order]
    return series.cells


def _same_height(mine: list[Cells], theirs: list[Cells], spacing_mm: float) -> list[int | None]:
    """For each rib of ``mine`` (one side, head to feet), the index of the rib of ``theirs`` (the
    other side, head to feet) at the same height, or ``None``.

    The two sides are aligned as a whole: for each shift of one side's ribs against the other's,
    the height differences of the ribs paired by it (:func:`_height_difference` of mirrored
    cells) gather around one value, the tilt between the sides, which is near zero for the right
    shift and about a rib spacing off for a wrong one. The shift whose median difference is
    smallest is taken when it is below :data:`_SAME_HEIGHT_SHARE` of the spacing and less than
    half of any other shift's; otherwise nothing is paired.
    """
    medians: dict[int, float] = {}
    for shift in range(-len(mine) + 1, len(theirs)):
        differences = [above for r in range(len(mine)) if 0 <= r + shift < len(theirs)
                       for weight, above in [_height_difference(mine[r], theirs[r + shift])] if weight >= _CLOSE_WEIGHT]
        if differences:
            medians[shift] = abs(float(np.median(differences)))
    if not medians:
        return [None] * len(mine)
    best = min(medians, key=lambda k: medians[k])
    runner_up = min((m for k, m in medians.items() if k != best), default=np.inf)
    if medians[best] >= _SAME_HEIGHT_SHARE * spacing_mm or medians[best] >= 0.5 * runner_up:
        return [None] * len(mine)
    return [r + best if 0 <= r + best < len(theirs) and _height_difference(mine[r], theirs[r + best])[0] >= _CLOSE_WEIGHT
            else None for r in range(len(mine))]


def _hints_from(series: _Side, other: _Side, comps: Components, geometry: Geometry,
                midline: Midline) -> list[int | None]:
    """Per rib of ``series`` (in order), the number the other side gives its rib at the same
    height, or ``None``."""
    assert other.assigned is not None
    spacing = series.spacing or other.spacing or _DEFAULT_SPACING_MM
    matches = _same_height(_series_cells(series, comps, geometry, midline),
                           _series_cells(other, comps, geometry, midline), spacing)
    return [other.assigned[m] if m is not None else None for m in matches]


def _sides_disagree(comps: Components, lut: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                    ribs: Mapping[int, tuple[str, int]], midline: Midline, spacing_mm: float | None) -> list[str]:
    """A flag when left and right ribs at the same height carry different numbers: one side's
    numbering is off, and nothing in the map said which."""
    cells: dict[str, list[tuple[int, Cells]]] = {"left": [], "right": []}
    for value in sorted(np.unique(lut[comps.existing()]).tolist(), key=lambda v: ribs[v][1] if v in ribs else 0):
        if int(value) in ribs:
            points = comps.points(int(c) for c in np.flatnonzero(lut == value) if c > 0)
            cells[ribs[int(value)][0]].append((int(value), _mirrored_cells(points, geometry, midline)))
    if not cells["left"] or not cells["right"]:
        return []
    matches = _same_height([c for _, c in cells["left"]], [c for _, c in cells["right"]],
                           spacing_mm or _DEFAULT_SPACING_MM)
    pairs = [(names[v], names[cells["right"][m][0]]) for (v, _), m in zip(cells["left"], matches, strict=True)
             if m is not None and ribs[v][1] != ribs[cells["right"][m][0]][1]]
    if not pairs:
        return []
    listed = ", ".join(f"{a} beside {b}" for a, b in pairs)  # head to feet
    return [f"left and right ribs at the same height carry different numbers ({listed})"]


#: The left and right ribs are paired when their mirrored cells lie closer in height (after the
#: tilt between the sides) than this share of the rib spacing (:func:`_same_height`).
_SAME_HEIGHT_SHARE = 0.6
#: Rib spacing assumed when a map shows too little to measure it (mm).
_DEFAULT_SPACING_MM = 20.0


#: Two ribs are stacked (different ribs) where one lies at least this far above the other (mm),
#: or half the usual rib spacing if that is more, in cells of 8 or 16 mm they share.
_MIN_STACK_MM = 8.0
_CLOSE_WEIGHT = 0.25


def _offsets(pieces: list[_Piece], shared: np.ndarray, above: np.ndarray) -> np.ndarray:
    """Each piece's place in the stack of ribs (mm, larger = nearer the head): the height
    differences measured where pieces share cells, tied weakly to each piece's mean height."""
    count = len(pieces)
    prior = 0.05
    matrix = prior * np.eye(count)
    rhs = prior * np.array([p.height for p in pieces])
    for i in range(count):
        for j in range(count):
            if i != j and shared[i, j]:
                w = shared[i, j]
                matrix[i, i] += w
                matrix[i, j] -= w
                rhs[i] += w * above[i, j]
    return np.asarray(np.linalg.solve(matrix, rhs))


def _members(groups: list[list[int]], pieces: list[_Piece], offset: np.ndarray,
             ribs: Mapping[int, tuple[str, int]], stacked: set[tuple[int, int]],
             above: np.ndarray) -> tuple[list[Member], list[int]]:
    """One series member per rib and their head-to-feet order: the order of their numbers (ribs
    sharing a number: their place in the stack), changed only where two ribs lie stacked in the
    same cells the other way round."""
    members = []
    for group in groups:
        size = sum(pieces[i].size for i in group)
        votes: dict[int, float] = {}
        for i in group:
            number = ribs[pieces[i].value][1]
            votes[number] = votes.get(number, 0.0) + pieces[i].size / size
        position = float(sum(offset[i] * pieces[i].size for i in group) / size)
        members.append(Member(position, votes))
    group_of = {i: k for k, group in enumerate(groups) for i in group}
    # below[a] = the ribs that lie stacked under rib a somewhere.
    below: dict[int, set[int]] = {k: set() for k in range(len(groups))}
    for i, j in stacked:
        if above[i, j] > 0 and group_of[i] != group_of[j]:
            below[group_of[i]].add(group_of[j])
    order = sorted(range(len(members)), key=lambda k: (members[k].current, -members[k].position))
    for _ in range(len(order) ** 2):  # move a rib above the first rib it is stacked above
        moved = False
        for r, k in enumerate(order):
            first = next((q for q in range(r) if order[q] in below[k] and k not in below[order[q]]), None)
            if first is not None:
                order.insert(first, order.pop(r))
                moved = True
                break
        if not moved:
            break
    return members, order
