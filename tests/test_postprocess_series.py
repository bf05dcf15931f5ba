"""Rib and vertebra numbering as a whole series: duplicated numbers, two numbers on one bone,
posterior elements under the next level, and the evidence the repair reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from autoorgan.postprocess import repair_labels
from autoorgan.postprocess.ribs import fix_ribs
from autoorgan.postprocess.series import Member, number_series
from autoorgan.postprocess.vertebrae import fix_vertebrae
from postprocess_maps import RAS, RIB, RIBS, VERT, VERTEBRAE, back, reorient, spine_and_ribs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ORIENTATIONS = ("as stored", "LPS", "PIR", "LAS")


def test_number_series_resolves_duplicates_and_order() -> None:
    one = [Member(-10.0 * i, {n: 1.0}) for i, n in enumerate((7, 8, 8, 10))]
    assert number_series(one, range(1, 13)) == [7, 8, 9, 10]  # the second 8 is the missing 9
    inverted = [Member(-10.0 * i, {n: 1.0}) for i, n in enumerate((12, 11, 10, 9))]
    assert number_series(inverted, range(1, 13)) == [9, 10, 11, 12]  # the numbers present, in order
    # A bone carrying two numbers takes the one its neighbours leave free, even as the minority.
    mixed = [Member(0.0, {7: 1.0}), Member(-10.0, {7: 0.6, 8: 0.4}), Member(-20.0, {9: 1.0})]
    assert number_series(mixed, range(1, 13)) == [7, 8, 9]
    assert number_series([Member(0.0, {1: 1.0}), Member(-1.0, {1: 1.0})], [1]) is None  # no room


def test_number_series_takes_the_other_side_as_the_last_anchor() -> None:
    # 7, 7, 8, 10: either the top rib is 6 (one change) or the next two are 8 and 9 (two changes).
    ribs = [Member(-20.0 * i, {n: 1.0}) for i, n in enumerate((7, 7, 8, 10))]
    assert number_series(ribs, range(1, 13), 20.0) == [6, 7, 8, 10]  # fewest changes alone
    # The other side's ribs at the same heights are 7, 8, 9, 10: their hints decide.
    assert number_series(ribs, range(1, 13), 20.0, [7, 8, 9, 10]) == [7, 8, 9, 10]
    # One hint against the voxels of two ribs: 7, 8, 8, 10 stays 7, 8, 9, 10.
    gap = [Member(-20.0 * i, {n: 1.0}) for i, n in enumerate((7, 8, 8, 10))]
    assert number_series(gap, range(1, 13), 20.0, [6, None, None, None]) == [7, 8, 9, 10]


@pytest.mark.parametrize("codes", ["RAS", "PIR"])
def test_rib_numbered_as_its_neighbour_takes_the_missing_number(codes: str) -> None:
    reference, vertebrae = spine_and_ribs()
    corrupted = reference.copy()
    corrupted[reference == RIB["rib_right_10"]] = RIB["rib_right_9"]  # 9 on two ribs, 10 missing
    labels, geometry = reorient(corrupted, RAS, codes)
    out, details = fix_ribs(labels, geometry, RIBS, vertebrae=reorient(vertebrae, RAS, codes)[0],
                            vertebra_names=VERTEBRAE)
    assert np.array_equal(back(out, geometry, codes), reference)
    assert details["ribs_renumbered"] == 1 and details["flags"] == []
    [change] = details["changes"]
    assert (change["piece"], change["to"]) == ("rib_right_9", "rib_right_10")
    assert change["rule"] == "one rib per number, in head-to-feet order"
    assert change["anchor"] == "series: rib_right_9, rib_right_11"


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_rib_carrying_two_numbers_takes_the_one_the_series_needs(codes: str) -> None:
    reference, _ = spine_and_ribs()
    reference[29:, :, :][reference[29:, :, :] == RIB["rib_right_9"]] = 0  # rib 9 cut by the field of view
    corrupted = reference.copy()
    # The outer 60% of right rib 10, still attached to the rest, labelled as rib 9: the larger
    # piece of the bone carries the wrong number, and it is larger than what is left of rib 9,
    # so it is no fragment of rib 9 either.
    rib10 = reference == RIB["rib_right_10"]
    outer = np.zeros_like(rib10)
    outer[28:, :, :] = True
    corrupted[rib10 & outer] = RIB["rib_right_9"]
    labels, geometry = reorient(corrupted, RAS, codes)
    out, details = fix_ribs(labels, geometry, RIBS)
    assert np.array_equal(back(out, geometry, codes), reference)
    one_bone = [c for c in details["changes"] if c["rule"] == "one bone, one label"]
    assert [(c["piece"], c["to"]) for c in one_bone] == [("rib_right_9", "rib_right_10")]
    assert one_bone[0]["anchor"].startswith("the rest of its bone (rib_right_10)")


def test_correct_series_and_a_missing_rib_are_left_alone() -> None:
    reference, vertebrae = spine_and_ribs()
    missing = reference.copy()
    missing[reference == RIB["rib_left_10"]] = 0  # a rib the model missed: no number to shift
    for labels in (reference, missing):
        out, details = fix_ribs(labels, RAS, RIBS, vertebrae=vertebrae, vertebra_names=VERTEBRAE)
        assert out is labels and details["changes"] == []


@pytest.mark.parametrize("codes", ["RAS", "PIR"])
def test_vertebra_numbered_as_its_neighbour_takes_the_missing_level(codes: str) -> None:
    _, reference = spine_and_ribs()
    corrupted = reference.copy()
    corrupted[reference == VERT["vertebrae_T10"]] = VERT["vertebrae_T11"]  # T11 twice, T10 missing
    labels, geometry = reorient(corrupted, RAS, codes)
    out, details = fix_vertebrae(labels, geometry, VERTEBRAE)
    assert np.array_equal(back(out, geometry, codes), reference)
    assert details["levels_renumbered"] == 1 and details["flags"] == []
    [change] = details["changes"]
    assert (change["piece"], change["to"], change["rule"]) == (
        "vertebrae_T11", "vertebrae_T10", "one vertebra per level, in head-to-feet order")


def test_a_series_that_cannot_be_made_consistent_is_flagged_in_the_report() -> None:
    """A vertebra missing between two that lie one level apart: nothing says which label is
    wrong, so the map stays as it is and the report says where a person should look."""
    _, reference = spine_and_ribs()
    spine = reference.copy()
    spine[reference == VERT["vertebrae_T11"]] = VERT["vertebrae_T12"]  # T9 T10 T12 L1
    spine[reference == VERT["vertebrae_T12"]] = VERT["vertebrae_L1"]
    result = repair_labels(spine, RAS, VERTEBRAE)
    assert np.array_equal(result.labels, spine)
    flags = result.report()["flags"]
    assert flags == ["vertebrae: T10 and T12 lie one level apart (16 mm) with 1 level(s) between them missing"]


def _assert_same_in_every_orientation(rows) -> None:  # type: ignore[no-untyped-def]
    """Each corruption class scored alike (corrupted, restored, collateral) in every storage order."""
    by_corruption: dict[str, set[tuple[int, int, int]]] = {}
    for r in rows:
        by_corruption.setdefault(r.corruption, set()).add((r.scores.corrupted, r.scores.restored, r.scores.collateral))
    assert all(len(v) == 1 for v in by_corruption.values()), by_corruption


def _series_rows(case, classes: tuple[str, ...]):  # type: ignore[no-untyped-def]
    from repair_corruptions import evaluate

    return evaluate(case, ORIENTATIONS, series=True, only=classes)


def test_real_reference_rib_numbering_errors_are_repaired_in_every_orientation(real_data: Path) -> None:
    """With its vertebrae map and without it: then the series and the other side's ribs are the
    only anchors ("two ribs each numbered as the one above" needs the other side)."""
    from repair_cases import totalsegmentator_case
    from repair_corruptions import RIBS_ALONE_CORRUPTIONS, SERIES_RIB_CORRUPTIONS

    case = totalsegmentator_case(real_data / "totalsegmentator", "example_seg_fast_force_split.nii.gz",
                                 ct="example_ct.nii.gz")
    classes = SERIES_RIB_CORRUPTIONS + RIBS_ALONE_CORRUPTIONS
    rows = [r for r in _series_rows(case, classes) if r.task != "vertebrae"]
    assert {r.corruption for r in rows if r.scores.corrupted} == set(classes)
    for r in rows:
        assert r.scores.restored_pct >= 95.0 and r.scores.collateral_pct <= 0.1, r
    _assert_same_in_every_orientation(rows)


@pytest.mark.parametrize("codes", ["RAS", "PIR"])
def test_two_ribs_numbered_as_the_ones_above_take_the_other_sides_numbers(codes: str) -> None:
    """Without vertebrae, rib 10 labelled 9 beside rib 11 labelled 10 (9, 9, 10, 12) reads as the
    top rib being 8 (one change) or as the next two being 10 and 11 (two changes); the right side
    decides."""
    reference, _ = spine_and_ribs()
    corrupted = reference.copy()
    corrupted[reference == RIB["rib_left_10"]] = RIB["rib_left_9"]
    corrupted[reference == RIB["rib_left_11"]] = RIB["rib_left_10"]
    labels, geometry = reorient(corrupted, RAS, codes)
    out, details = fix_ribs(labels, geometry, RIBS)
    assert np.array_equal(back(out, geometry, codes), reference)
    assert details["flags"] == []
    assert {(c["piece"], c["to"], c["anchor"]) for c in details["changes"]} == {
        ("rib_left_9", "rib_left_10", "other side: rib_right_10 at the same height"),
        ("rib_left_10", "rib_left_11", "other side: rib_right_11 at the same height")}


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_sides_numbered_apart_are_flagged_when_nothing_says_which_is_right(codes: str) -> None:
    reference, vertebrae = spine_and_ribs()
    shifted = reference.copy()
    for k in (10, 11, 12):  # the left side one number up, rib 9's number gone
        shifted[reference == RIB[f"rib_left_{k}"]] = RIB[f"rib_left_{k - 1}"]
    shifted[reference == RIB["rib_left_9"]] = RIB["rib_left_8"]
    labels, geometry = reorient(shifted, RAS, codes)
    out, details = fix_ribs(labels, geometry, RIBS)
    assert np.array_equal(out, labels)  # each side is a consistent series: nothing to change
    assert details["flags"] == [("left and right ribs at the same height carry different numbers (rib_left_8 beside "
                                 "rib_right_9, rib_left_9 beside rib_right_10, rib_left_10 beside rib_right_11, "
                                 "rib_left_11 beside rib_right_12)")]
    # With the vertebrae, rib k meets Tk: the shift is undone and nothing is left to flag.
    fixed, details = fix_ribs(labels, geometry, RIBS, vertebrae=reorient(vertebrae, RAS, codes)[0],
                              vertebra_names=VERTEBRAE)
    assert np.array_equal(back(fixed, geometry, codes), reference) and details["flags"] == []
    unchanged, details = fix_ribs(*reorient(reference, RAS, codes), RIBS)
    assert np.array_equal(back(unchanged, geometry, codes), reference) and details["flags"] == []


def test_real_lumbar_vertebra_numbering_errors_are_repaired_in_every_orientation(real_data: Path) -> None:
    """TPTBox L2-L4 (1.5 mm, PIR storage; posterior elements from its subregion map)."""
    from repair_cases import tptbox_case
    from repair_corruptions import SERIES_VERTEBRA_CORRUPTIONS

    case = tptbox_case(real_data / "tptbox_vertebra")
    rows = _series_rows(case, SERIES_VERTEBRA_CORRUPTIONS)
    assert {r.corruption for r in rows if r.scores.corrupted} == set(SERIES_VERTEBRA_CORRUPTIONS)
    for r in rows:
        assert r.scores.restored_pct >= 99.5 and r.scores.collateral_pct <= 0.1, r
        if r.corruption.startswith("none"):
            assert r.scores.collateral == 0, r
    # The same figures whatever the storage order.
    _assert_same_in_every_orientation(rows)


def _assert_vertebra_rows(rows) -> None:  # type: ignore[no-untyped-def]
    """Every vertebra class restored to the goal, with the same figures in every storage order."""
    from repair_corruptions import SERIES_VERTEBRA_CORRUPTIONS

    scored = {r.corruption for r in rows if r.scores.corrupted}
    assert scored >= set(SERIES_VERTEBRA_CORRUPTIONS) - {"posterior elements of a vertebra numbered as the next"}
    for r in rows:
        assert r.scores.restored_pct >= 95.0 and r.scores.collateral_pct <= 0.1, r
    _assert_same_in_every_orientation(rows)


def test_phantom_vertebra_numbered_as_the_one_below_is_cut_where_the_boxes_meet() -> None:
    """Two touching vertebrae under one label: the cut follows the shapes of their intact
    neighbours, not the middle of the merged bone (one slice off there is 0.5% collateral)."""
    from repair_cases import phantom_case
    from repair_corruptions import SERIES_VERTEBRA_CORRUPTIONS

    _assert_vertebra_rows(_series_rows(phantom_case(0), SERIES_VERTEBRA_CORRUPTIONS))


def test_real_3mm_vertebra_numbering_errors_are_repaired_in_every_orientation(real_data: Path) -> None:
    """TotalSegmentator's 3 mm reference (T11-L5): a vertebra's lower posterior elements touch
    the next vertebra broadly, where the depth of the bone alone puts the boundary wrongly."""
    from repair_cases import totalsegmentator_case
    from repair_corruptions import SERIES_VERTEBRA_CORRUPTIONS

    case = totalsegmentator_case(real_data / "totalsegmentator", "example_seg_fast_force_split.nii.gz")
    case.ribs = np.zeros_like(case.ribs)  # the vertebrae map alone
    rows = _series_rows(case, SERIES_VERTEBRA_CORRUPTIONS)
    assert "posterior elements of a vertebra numbered as the next" in {r.corruption for r in rows}
    _assert_vertebra_rows(rows)
