"""Controlled corruptions of reference label maps and the scores of a repair (benchmarks, tests).

Each corruption takes a reference map and returns a corrupted copy; the repair is then scored
by how many corrupted voxels get their reference label back (*restored*) and, on an
uncorrupted map, how many labelled voxels it changes (*collateral*).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from repair_cases import task_names
from scipy import ndimage

from autoorgan.io.image import Geometry
from autoorgan.postprocess.frame import PatientFrame, mask_of, rib_of, vertebra_level


@dataclass(frozen=True)
class Scores:
    """Outcome of one repair: corrupted voxels, how many were restored, labelled voxels changed."""

    corrupted: int
    restored: int
    collateral: int
    labelled: int

    @property
    def restored_pct(self) -> float:
        return 100.0 * self.restored / self.corrupted if self.corrupted else 100.0

    @property
    def collateral_pct(self) -> float:
        return 100.0 * self.collateral / self.labelled if self.labelled else 0.0


def score(reference: np.ndarray, corrupted: np.ndarray, repaired: np.ndarray) -> Scores:
    """Restored: corrupted voxels back at their reference label; collateral: uncorrupted voxels changed."""
    bad = corrupted != reference
    good = ~bad
    return Scores(corrupted=int(bad.sum()), restored=int((repaired[bad] == reference[bad]).sum()),
                  collateral=int((repaired[good] != reference[good]).sum()),
                  labelled=int((reference > 0).sum()))


def _value(names: Mapping[int, str], name: str) -> int | None:
    return next((v for v, n in names.items() if n == name), None)


def _present_ribs(labels: np.ndarray, names: Mapping[int, str]) -> dict[int, tuple[str, int]]:
    present = set(np.unique(labels).tolist())
    return {v: r for v, n in names.items() if v in present and (r := rib_of(n)) is not None}


def swap_sides(labels: np.ndarray, names: Mapping[int, str], numbers: list[int]) -> np.ndarray:
    """Swap the left and right labels of the given rib numbers."""
    out = labels.copy()
    for k in numbers:
        left, right = _value(names, f"rib_left_{k}"), _value(names, f"rib_right_{k}")
        if left is None or right is None:
            continue
        out[labels == left], out[labels == right] = right, left
    return out


def shift_numbers(labels: np.ndarray, names: Mapping[int, str], side: str, delta: int) -> np.ndarray:
    """Number every rib of one side ``delta`` too high (rib k labelled k + delta)."""
    out = labels.copy()
    for value, (s, k) in _present_ribs(labels, names).items():
        target = _value(names, f"rib_{s}_{k + delta}")
        if s == side and target is not None:
            out[labels == value] = target
    return out


def break_rib(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str], value: int,
              pieces: int) -> np.ndarray:
    """Cut a rib into ``pieces`` along its front-to-back course; all but the back piece get a
    neighbouring rib's label (a larger rib of the same side, so the piece stays a fragment)."""
    side, k = rib_of(names[value]) or ("", 0)
    frame = PatientFrame.of(geometry)
    points = np.argwhere(labels == value)
    ant = frame.anterior(points)
    edges = np.quantile(ant, np.linspace(0, 1, pieces + 1))
    part = np.clip(np.searchsorted(edges, ant, side="right") - 1, 0, pieces - 1)
    sizes = {v: int((labels == v).sum()) for v, (s, _) in _present_ribs(labels, names).items() if s == side}
    neighbours = [v for v, (_, j) in _present_ribs(labels, names).items()
                  if v in sizes and v != value and abs(j - k) <= 2 and sizes[v] > len(points) / pieces]
    neighbours.sort(key=lambda v: abs((rib_of(names[v]) or ("", 0))[1] - k))
    out = labels.copy()
    for p in range(1, pieces):
        if neighbours:
            sel = points[part == p]
            out[tuple(sel.T)] = neighbours[(p - 1) % len(neighbours)]
    return out


def add_islands(labels: np.ndarray, geometry: Geometry, count: int, volume_mm3: float,
                rng: np.random.Generator) -> np.ndarray:
    """Put ``count`` small cubes of present labels into empty space, away from any structure."""
    out = labels.copy()
    side = max(1, round((volume_mm3 / PatientFrame.of(geometry).voxel_mm3) ** (1 / 3)))
    free = ~ndimage.binary_dilation(labels > 0, iterations=side + 2)
    present = [v for v in np.unique(labels).tolist() if v]
    candidates = np.argwhere(free[: -side or None, : -side or None, : -side or None])
    for _ in range(count):
        x, y, z = candidates[rng.integers(len(candidates))]
        if (out[x:x + side + 2, y:y + side + 2, z:z + side + 2] == 0).all():
            out[x + 1:x + 1 + side, y + 1:y + 1 + side, z + 1:z + 1 + side] = rng.choice(present)
    return out


def erase_junctions(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                    vertebra_mask: np.ndarray, distance_mm: float = 6.0) -> np.ndarray:
    """Set rib voxels within ``distance_mm`` of a vertebra to background."""
    near = ndimage.distance_transform_edt(~vertebra_mask, sampling=geometry.spacing) <= distance_mm
    ribs = mask_of(labels, [v for v, n in names.items() if rib_of(n)])
    out = labels.copy()
    out[near & ribs] = 0
    return out


def mislabel_vertebra_fragment(labels: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                               value: int) -> np.ndarray:
    """Give the back part (spinous process side) of vertebra ``value`` the label of a vertebra two
    levels away that is present in the map (so the piece touches only its own vertebra)."""
    level = vertebra_level(names[value])
    present = set(np.unique(labels).tolist())
    frame = PatientFrame.of(geometry)
    others = [v for v, n in names.items() if v in present and (lvl := vertebra_level(n)) is not None
              and level is not None and abs(lvl - level) >= 2]
    if not others or level is None:
        return labels.copy()
    target = min(others, key=lambda v: abs((vertebra_level(names[v]) or 0) - level))
    points = np.argwhere(labels == value)
    ant = frame.anterior(points)
    back = points[ant <= np.quantile(ant, 0.2)]
    out = labels.copy()
    out[tuple(back.T)] = target
    return out


def relabel_whole(labels: np.ndarray, value: int, target: int) -> np.ndarray:
    """Give every voxel of ``value`` the label ``target`` (one bone labelled as its neighbour:
    ``target`` then names two bones and ``value`` none)."""
    out = labels.copy()
    out[labels == value] = target
    return out


def swap_labels(labels: np.ndarray, a: int, b: int) -> np.ndarray:
    """Swap two labels (two neighbours numbered the wrong way round)."""
    out = labels.copy()
    out[labels == a], out[labels == b] = b, a
    return out


def relabel_part(labels: np.ndarray, geometry: Geometry, value: int, target: int, share: float,
                 front: bool) -> np.ndarray:
    """Give the front (``front``) or back ``share`` of ``value``'s voxels, along the patient's
    front-to-back axis, the label ``target``: a label boundary running along one bone, the part
    still attached to the rest of its bone (a rib's front end, a vertebra's posterior elements)."""
    points = np.argwhere(labels == value)
    ant = PatientFrame.of(geometry).anterior(points)
    part = points[ant >= np.quantile(ant, 1 - share)] if front else points[ant <= np.quantile(ant, share)]
    out = labels.copy()
    out[tuple(part.T)] = target
    return out


def _middle_rib(labels: np.ndarray, names: Mapping[int, str], side: str) -> int | None:
    """The middle rib number of one side that has both neighbours in the map (``None`` without)."""
    numbers = sorted(k for s, k in _present_ribs(labels, names).values() if s == side)
    inner = [k for k in numbers if k - 1 in numbers and k + 1 in numbers]
    return inner[len(inner) // 2] if inner else None


def _top_rib_run(labels: np.ndarray, names: Mapping[int, str], side: str) -> int | None:
    """The first rib number of one side followed by the next three in the map, with a number
    above it (``None`` without): its first two ribs, numbered as the ones above, leave one
    number twice and one missing lower down, which the series alone reads as the top rib's
    number shifted up."""
    numbers = sorted(k for s, k in _present_ribs(labels, names).values() if s == side)
    runs = [k for k in numbers if k > 1 and all(k + j in numbers for j in (1, 2, 3))]
    return runs[0] if runs else None


def _middle_vertebra(labels: np.ndarray, names: Mapping[int, str]) -> int | None:
    """Level index of the largest vertebra whose two neighbours are in the map (``None`` without)."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    by_level = {lvl: int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)
                if (lvl := vertebra_level(names.get(int(v), ""))) is not None}
    inner = [lvl for lvl in by_level if lvl - 1 in by_level and lvl + 1 in by_level]
    return max(inner, key=lambda lvl: by_level[lvl]) if inner else None


def series_corruptions(case) -> dict[str, tuple[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Numbering errors of whole bones and of parts of bones, as models make them: one number on
    two bones with the next missing, two numbers on one bone, neighbours swapped; on the left
    ribs' middle rib and the middle vertebra (each with both neighbours in the map)."""
    from autoorgan.postprocess.frame import VERTEBRA_LEVELS

    ribs_names, vert_names = task_names("ribs"), task_names("vertebrae")
    out: dict[str, tuple[str, np.ndarray]] = {}
    k = _middle_rib(case.ribs, ribs_names, "left")
    if k is not None:
        rib = {j: _value(ribs_names, f"rib_left_{j}") for j in (k - 1, k, k + 1)}
        if all(v is not None for v in rib.values()):
            above, this, below = int(rib[k - 1]), int(rib[k]), int(rib[k + 1])  # type: ignore[arg-type]
            out["rib numbered as the one above"] = ("ribs", relabel_whole(case.ribs, this, above))
            out["rib numbered as the one below"] = ("ribs", relabel_whole(case.ribs, this, below))
            out["rib front numbered as the one above"] = ("ribs", relabel_part(case.ribs, case.geometry, this, above,
                                                                               0.5, front=True))
            out["rib head end numbered as the one below"] = ("ribs", relabel_part(
                case.ribs, case.geometry, this, below, 0.4, front=False))
            out["neighbouring ribs swapped"] = ("ribs", swap_labels(case.ribs, this, below))
    top = _top_rib_run(case.ribs, ribs_names, "left")
    if top is not None:  # the first rib's number on the second, the second's on the third
        first, second, third = (int(_value(ribs_names, f"rib_left_{j}") or 0) for j in (top, top + 1, top + 2))
        out["two ribs each numbered as the one above"] = ("ribs", relabel_whole(
            relabel_whole(case.ribs, second, first), third, second))
    if case.vertebrae.any():  # the same rib errors where the case has no vertebrae map
        for name, alone in zip(SERIES_RIB_CORRUPTIONS, RIBS_ALONE_CORRUPTIONS, strict=True):
            if name in out:
                out[alone] = (RIBS_ALONE, out[name][1])
    level = _middle_vertebra(case.vertebrae, vert_names)
    if level is not None:
        vert = {j: _value(vert_names, f"vertebrae_{VERTEBRA_LEVELS[j]}") for j in (level - 1, level, level + 1)}
        above, this, below = (int(vert[j]) for j in (level - 1, level, level + 1))  # type: ignore[arg-type]
        out["vertebra numbered as the one above"] = ("vertebrae", relabel_whole(case.vertebrae, this, above))
        out["vertebra numbered as the one below"] = ("vertebrae", relabel_whole(case.vertebrae, this, below))
        if case.posterior is not None:  # the real posterior elements of a subregion map
            posterior = case.vertebrae.copy()
            posterior[(case.vertebrae == this) & case.posterior] = below
            out["posterior elements of a vertebra numbered as the next"] = ("vertebrae", posterior)
        elif case.arches:  # the back 35% of the vertebra: its arch and processes
            out["posterior elements of a vertebra numbered as the next"] = ("vertebrae", relabel_part(
                case.vertebrae, case.geometry, this, below, 0.35, front=False))
        out["neighbouring vertebrae swapped"] = ("vertebrae", swap_labels(case.vertebrae, this, below))
    return out


SERIES_RIB_CORRUPTIONS = ("rib numbered as the one above", "rib numbered as the one below",
                          "rib front numbered as the one above", "rib head end numbered as the one below",
                          "neighbouring ribs swapped", "two ribs each numbered as the one above")
#: The task of a corrupted ribs map repaired without a vertebrae map (the numbering's anchors are
#: then the series and the other side's ribs).
RIBS_ALONE = "ribs, no vertebrae"
RIBS_ALONE_CORRUPTIONS = tuple(f"{name} ({RIBS_ALONE})" for name in SERIES_RIB_CORRUPTIONS)
SERIES_VERTEBRA_CORRUPTIONS = ("vertebra numbered as the one above", "vertebra numbered as the one below",
                               "posterior elements of a vertebra numbered as the next",
                               "neighbouring vertebrae swapped")


@dataclass(frozen=True)
class Row:
    """One benchmark measurement."""

    case: str
    orientation: str
    task: str
    corruption: str
    scores: Scores
    seconds: float


def corruptions(case, rng: np.random.Generator, series: bool = False  # type: ignore[no-untyped-def]
                ) -> dict[str, tuple[str, np.ndarray]]:
    """Named corruptions of a :class:`repair_cases.ReferenceCase`: name → (task, map); with
    ``series`` also the numbering errors of :func:`series_corruptions`."""
    ribs_names, vert_names = task_names("ribs"), task_names("vertebrae")
    present = _present_ribs(case.ribs, ribs_names)
    both = sorted({k for s, k in present.values() if s == "left"} & {k for s, k in present.values() if s == "right"})
    out: dict[str, tuple[str, np.ndarray]] = {}
    if both:
        out["sides swapped"] = ("ribs", swap_sides(case.ribs, ribs_names, both[len(both) // 2:][:2]))
    left = sorted(k for s, k in present.values() if s == "left")
    if left and left[0] > 1 and _left_rib_head_at_a_level(case):
        out["numbering shifted"] = ("ribs", shift_numbers(case.ribs, ribs_names, "left", -1))
    if present:
        largest = max(present, key=lambda v: int((case.ribs == v).sum()))
        out["rib broken"] = ("ribs", break_rib(case.ribs, case.geometry, ribs_names, largest, 3))
        out["islands (ribs)"] = ("ribs", add_islands(case.ribs, case.geometry, 6, 50.0, rng))
    vertebra_mask = case.vertebrae > 0
    if present and vertebra_mask.any() and (case.ct is not None or case.skeleton is not None):
        out["junction erased"] = ("ribs", erase_junctions(case.ribs, case.geometry, ribs_names, vertebra_mask))
    if vertebra_mask.any():
        values, counts = np.unique(case.vertebrae[vertebra_mask], return_counts=True)
        out["vertebra fragment"] = ("vertebrae", mislabel_vertebra_fragment(
            case.vertebrae, case.geometry, vert_names, int(values[np.argmax(counts)])))
        out["islands (vertebrae)"] = ("vertebrae", add_islands(case.vertebrae, case.geometry, 6, 50.0, rng))
    if series:
        out.update(series_corruptions(case))
    return out


def _left_rib_head_at_a_level(case) -> bool:  # type: ignore[no-untyped-def]
    """Whether some left rib's head is in the image, within the levels of the case's vertebrae.

    Without one, nothing in the map says which number a rib has (e.g. a 40 mm slab holding
    only the front parts of ribs): a shifted numbering cannot be restored, and is not scored.
    """
    from autoorgan.postprocess.ribs import rib_head_levels

    if not case.vertebrae.any():
        return False
    levels = rib_head_levels(case.ribs, case.vertebrae, case.geometry)
    return any(level is not None for name, level in levels.items() if name.startswith("rib_left_"))


def unscored_corruptions(case, series: bool = False) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Corruptions :func:`corruptions` leaves out for ``case``, and why (for the benchmark report)."""
    made = corruptions(case, np.random.default_rng(0), series)
    reasons = {
        "numbering shifted": "no left rib head inside the image at a level of the vertebrae",
        "junction erased": "no vertebrae, or neither CT nor skeleton map",
        "vertebra fragment": "no vertebrae",
        "sides swapped": "no rib number present on both sides",
    }
    if series:
        reasons.update({name: "no left rib with both neighbours in the map" for name in SERIES_RIB_CORRUPTIONS})
        reasons["two ribs each numbered as the one above"] = "no four consecutive left ribs below rib 1"
        reasons.update({name: "no vertebrae map to leave out, or the class is not scored"
                        for name in RIBS_ALONE_CORRUPTIONS})
        reasons.update({name: "no vertebra with both neighbours in the map" for name in SERIES_VERTEBRA_CORRUPTIONS})
    if not case.ribs.any():
        reasons.update({name: "no ribs in this reference" for name in reasons if name in (
            "numbering shifted", "junction erased", "sides swapped", *SERIES_RIB_CORRUPTIONS,
            *RIBS_ALONE_CORRUPTIONS)})
    if series and not case.arches:
        reasons["posterior elements of a vertebra numbered as the next"] = "the vertebrae are boxes without arches"
    out = {name: why for name, why in reasons.items() if name not in made}
    if "vertebra fragment" in made and not (made["vertebra fragment"][1] != case.vertebrae).any():
        levels = sorted(task_names("vertebrae")[int(v)] for v in np.unique(case.vertebrae) if v)
        out["vertebra fragment"] = f"no vertebra two levels from another in the map ({', '.join(levels)})"
    return out


def repair_case_map(case, task: str, labels: np.ndarray):  # type: ignore[no-untyped-def]
    """Repair ``labels`` (a map of ``task``) with the case's other maps as companions."""
    from autoorgan.postprocess.repair import Companions, repair_labels

    if task == RIBS_ALONE:
        return repair_labels(labels, case.geometry, task_names("ribs"), companions=Companions(ct=case.ct))
    if task == "ribs":
        companions = Companions(vertebrae=case.vertebrae if case.vertebrae.any() else None,
                                vertebra_names=task_names("vertebrae"), ct=case.ct,
                                skeleton=case.skeleton if case.ct is None else None)
    else:
        companions = Companions(ct=case.ct)
    return repair_labels(labels, case.geometry, task_names(task), companions=companions)


def evaluate(case, orientations: tuple[str, ...], seed: int = 0,  # type: ignore[no-untyped-def]
             series: bool = False, only: tuple[str, ...] | None = None) -> list[Row]:
    """Corrupt ``case`` once, then repair every corruption (and the clean maps) in each orientation;
    ``series`` adds the numbering errors of :func:`series_corruptions`, ``only`` keeps the named
    corruptions (and the clean maps)."""
    import time

    base = corruptions(case, np.random.default_rng(seed), series)
    if only is not None:
        base = {name: made for name, made in base.items() if name in only}
    rows: list[Row] = []
    for codes in orientations:
        oriented = case.reoriented(codes) if codes != "as stored" else case
        plan_maps = {"none": ("ribs", case.ribs), "none (vertebrae)": ("vertebrae", case.vertebrae), **base}
        if case.vertebrae.any():
            plan_maps[f"none ({RIBS_ALONE})"] = (RIBS_ALONE, case.ribs)
        for name, (task, corrupted) in plan_maps.items():
            if (task == "vertebrae" and not case.vertebrae.any()) or (task != "vertebrae" and not case.ribs.any()):
                continue
            reference = case.vertebrae if task == "vertebrae" else case.ribs
            if codes != "as stored":
                from autoorgan.io.orientation import plan_reorientation

                plan = plan_reorientation(case.geometry.direction_matrix, codes)
                reference, corrupted = (np.ascontiguousarray(plan.to_target(reference)),
                                        np.ascontiguousarray(plan.to_target(corrupted)))
            start = time.perf_counter()
            result = repair_case_map(oriented, task, corrupted)
            seconds = time.perf_counter() - start
            rows.append(Row(case.name, codes, task, name, score(reference, corrupted, result.labels), seconds))
    return rows
