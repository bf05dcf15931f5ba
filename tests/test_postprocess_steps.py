"""Each repair step on hand-built label arrays, and the same result in every storage orientation."""

from __future__ import annotations

import numpy as np
import pytest

from autoorgan.io.image import Geometry
from autoorgan.postprocess import Companions, repair_labels
from autoorgan.postprocess.frame import mirror_name, rib_of, side_of, vertebra_level
from autoorgan.postprocess.islands import remove_islands
from autoorgan.postprocess.junction import fill_junctions
from autoorgan.postprocess.ribs import fix_ribs
from autoorgan.postprocess.sides import fix_sides
from autoorgan.postprocess.vertebrae import fix_vertebrae
from postprocess_maps import LEVEL_Z, RAS, RIB, RIBS, VERT, VERTEBRAE, back, reorient, spine_and_ribs

HIP = {1: "hip_left", 2: "hip_right", 3: "sacrum"}


def test_names() -> None:
    assert side_of("rib_left_7") == "left" and side_of("lung_upper_lobe_right") == "right"
    assert side_of("liver") is None and side_of("sacrum") is None
    assert mirror_name("rib_left_7") == "rib_right_7" and mirror_name("phalanges_hand_right") == "phalanges_hand_left"
    assert rib_of("rib_right_12") == ("right", 12) and rib_of("rib") is None
    assert vertebra_level("vertebrae_C1") == 0 and vertebra_level("vertebrae_L5") == 23
    assert vertebra_level("vertebrae_S1") is None


def test_islands_removed_or_merged_by_volume() -> None:
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[20:30, 20:30, 20:30] = 2
    labels[25, 2, 2] = 1          # detached speck of 1, touching nothing: removed
    labels[12, 5, 5] = 2          # speck of 2 stuck to structure 1: becomes 1
    labels[20:23, 2:5, 2:5] = 1   # 27 voxels x 8 mm3 = 216 mm3: above 100 mm3, kept
    labels[0, 29, 29] = 3         # the only piece of 3: never deleted, however small
    geometry = Geometry((30, 30, 30), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out, details = remove_islands(labels, geometry, min_volume_mm3=100.0)
    assert details == {"islands_removed": 1, "islands_merged": 1}
    assert out[25, 2, 2] == 0 and out[12, 5, 5] == 1
    assert (out[20:23, 2:5, 2:5] == 1).all() and out[0, 29, 29] == 3
    assert int((out != labels).sum()) == 2
    # A smaller threshold keeps the specks.
    same, _ = remove_islands(labels, geometry, min_volume_mm3=4.0)
    assert np.array_equal(same, labels)


def _hips() -> np.ndarray:
    labels = np.zeros(RAS.size, dtype=np.uint8)
    labels[18:22, 5:10, 10:20] = 3           # sacrum on the midline
    labels[25:35, 5:12, 10:20] = 2           # patient's right (x grows to the right in RAS)
    labels[5:15, 5:12, 10:20] = 2            # wrongly "right" on the left side
    return labels


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "LAS", "ILA"])
def test_sides_follow_the_patient_not_the_array(codes: str) -> None:
    labels, geometry = reorient(_hips(), RAS, codes)
    out, details = fix_sides(labels, geometry, HIP)
    assert details["pieces_relabelled"] == 1 and details["midline_from"] == "midline structures"
    fixed = back(out, geometry, codes)
    assert (fixed[5:15, 5:12, 10:20] == 1).all() and (fixed[25:35, 5:12, 10:20] == 2).all()
    assert (fixed[18:22, 5:10, 10:20] == 3).all()


def test_sides_midline_from_extent_or_ct_when_no_midline_structure() -> None:
    labels = _hips()
    labels[labels == 3] = 0
    labels[5:15, 5:12, 10:20] = 1
    labels[30:34, 5:8, 10:14] = 1  # a piece of "left" on the right
    out, details = fix_sides(labels, RAS, HIP)
    assert details["midline_from"] == "extent of sided structures" and details["pieces_relabelled"] == 1
    assert (out[30:34, 5:8, 10:14] == 2).all()
    ct = np.full(RAS.size, -1000, dtype=np.int16)
    ct[2:38] = 40
    _, details = fix_sides(labels, RAS, HIP, ct=ct)
    assert details["midline_from"] == "body in the CT"


def test_sides_leave_correct_maps_alone() -> None:
    labels = _hips()
    labels[5:15, 5:12, 10:20] = 1
    out, details = fix_sides(labels, RAS, HIP)
    assert out is labels and details["pieces_relabelled"] == 0


def test_vertebra_fragment_goes_to_the_vertebra_it_belongs_to() -> None:
    _, vertebrae = spine_and_ribs()
    z = LEVEL_Z[10]
    vertebrae[17:23, 5:7, z:z + 5] = VERT["vertebrae_T12"]  # back part of T10 labelled T12
    out, details = fix_vertebrae(vertebrae, RAS, VERTEBRAE)
    assert details["fragments_reassigned"] == 1 and details["levels_renumbered"] == 0
    assert (out[17:23, 5:11, z:z + 5] == VERT["vertebrae_T10"]).all()
    assert int((out == VERT["vertebrae_T12"]).sum()) == 6 * 6 * 5


def test_detached_piece_meeting_a_neighbour_at_a_joint_is_kept() -> None:
    _, vertebrae = spine_and_ribs()
    vertebrae[17, 5, LEVEL_Z[9] - 3:LEVEL_Z[9]] = VERT["vertebrae_T9"]  # long thin piece below T9
    out, details = fix_vertebrae(vertebrae, RAS, VERTEBRAE)
    assert details["fragments_reassigned"] == 0 and np.array_equal(out, vertebrae)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "LAS"])
def test_vertebrae_ordered_head_to_feet(codes: str) -> None:
    _, vertebrae = spine_and_ribs()
    swapped = vertebrae.copy()
    swapped[vertebrae == VERT["vertebrae_T9"]] = VERT["vertebrae_T12"]
    swapped[vertebrae == VERT["vertebrae_T12"]] = VERT["vertebrae_T9"]
    labels, geometry = reorient(swapped, RAS, codes)
    out, details = fix_vertebrae(labels, geometry, VERTEBRAE)
    assert details["levels_renumbered"] == 2
    assert np.array_equal(back(out, geometry, codes), vertebrae)


def test_broken_rib_pieces_merge_into_their_rib() -> None:
    ribs, vertebrae = spine_and_ribs()
    z = LEVEL_Z[10]
    ribs[30:36, 6:9, z + 1:z + 4] = RIB["rib_right_11"]      # outer end of rib 10 labelled 11
    ribs[26:28, 6:9, z + 1:z + 4] = RIB["rib_right_9"]       # a middle piece labelled 9
    reference, _ = spine_and_ribs()
    out, details = fix_ribs(ribs, RAS, RIBS, vertebrae=vertebrae, vertebra_names=VERTEBRAE)
    assert details["fragments_merged"] == 2 and details["ribs_renumbered"] == 0
    assert np.array_equal(out, reference)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "LAS"])
def test_rib_numbers_anchored_on_the_vertebrae(codes: str) -> None:
    reference, vertebrae = spine_and_ribs()
    shifted = reference.copy()
    for k in LEVEL_Z:  # the left ribs are numbered one too low
        shifted[reference == RIB[f"rib_left_{k}"]] = RIB[f"rib_left_{k - 1}"]
    labels, geometry = reorient(shifted, RAS, codes)
    spine, _ = reorient(vertebrae, RAS, codes)
    out, details = fix_ribs(labels, geometry, RIBS, vertebrae=spine, vertebra_names=VERTEBRAE)
    assert details["numbering_from"] == "vertebrae" and details["ribs_renumbered"] == 4
    assert details["renumbered"]["rib_left_8"] == "rib_left_9"
    assert np.array_equal(back(out, geometry, codes), reference)


def test_correct_rib_numbers_are_kept() -> None:
    reference, vertebrae = spine_and_ribs()
    out, details = fix_ribs(reference, RAS, RIBS, vertebrae=vertebrae, vertebra_names=VERTEBRAE)
    assert details["ribs_renumbered"] == 0 and np.array_equal(out, reference)


@pytest.mark.parametrize("codes", ["RAS", "PIR"])
def test_rib_order_head_to_feet_without_vertebrae(codes: str) -> None:
    reference, _ = spine_and_ribs()
    inverted = reference.copy()
    for k in LEVEL_Z:  # right ribs numbered 12..9 from the head down
        inverted[reference == RIB[f"rib_right_{k}"]] = RIB[f"rib_right_{21 - k}"]
    labels, geometry = reorient(inverted, RAS, codes)
    out, details = fix_ribs(labels, geometry, RIBS)
    assert details["numbering_from"] == "head-to-feet order" and details["ribs_renumbered"] == 4
    assert np.array_equal(back(out, geometry, codes), reference)


def test_ribs_cut_by_the_field_of_view_give_no_evidence() -> None:
    reference, vertebrae = spine_and_ribs()
    cut = reference.copy()
    cut[:17] = 0
    cut[23:36] = 0
    cut[17:23, 6:9, LEVEL_Z[9] + 1:LEVEL_Z[9] + 4] = 0
    # Only stubs at the image border remain of the left ribs: shift them, nothing can be anchored.
    cut[0:3, 6:9, LEVEL_Z[10] + 1:LEVEL_Z[10] + 4] = RIB["rib_left_9"]
    cut[0:3, 6:9, LEVEL_Z[11] + 1:LEVEL_Z[11] + 4] = RIB["rib_left_10"]
    out, details = fix_ribs(cut, RAS, RIBS, vertebrae=vertebrae, vertebra_names=VERTEBRAE)
    assert details["ribs_renumbered"] == 0 and np.array_equal(out, cut)


def test_junction_fills_bone_between_rib_head_and_vertebra_only() -> None:
    reference, vertebrae = spine_and_ribs()
    z = LEVEL_Z[10]
    ribs = reference.copy()
    ribs[23:26, 6:9, z + 1:z + 4] = 0                      # 6 mm gap at the rib head
    bone = (reference > 0) | (vertebrae > 0)
    bone[36:39, 6:9, z + 1:z + 4] = True                   # bone beyond the rib's outer end
    bone[23:26, 12:15, z + 1:z + 4] = True                 # bone near the spine, not next to a rib
    out, details = fill_junctions(ribs, RAS, RIBS, vertebra_mask=vertebrae > 0, bone=bone)
    assert details["voxels_filled"] == 27
    assert np.array_equal(out, reference)
    no_bone = bone.copy()
    no_bone[23:26] = False
    out, details = fill_junctions(ribs, RAS, RIBS, vertebra_mask=vertebrae > 0, bone=no_bone)
    assert details["voxels_filled"] == 0 and np.array_equal(out, ribs)


def test_junction_leaves_ribs_that_end_far_from_the_spine() -> None:
    reference, vertebrae = spine_and_ribs()
    ribs = reference.copy()
    ribs[23:29] = 0  # every rib ends 12 mm from its vertebra
    ribs[11:17] = 0
    bone = np.ones(RAS.size, dtype=bool)
    out, details = fill_junctions(ribs, RAS, RIBS, vertebra_mask=vertebrae > 0, bone=bone)
    assert details["voxels_filled"] == 0 and np.array_equal(out, ribs)


def test_repair_reports_each_step_and_never_modifies_its_input() -> None:
    reference, vertebrae = spine_and_ribs()
    labels = reference.copy()
    labels[reference == RIB["rib_left_9"]] = RIB["rib_right_9"]  # sides swapped on rib 9
    labels[2, 15, 2] = RIB["rib_left_12"]                        # a speck
    before = labels.copy()
    ct = np.where((reference > 0) | (vertebrae > 0), 700, 40).astype(np.int16)
    result = repair_labels(labels, RAS, RIBS, companions=Companions(vertebrae=vertebrae,
                                                                     vertebra_names=VERTEBRAE, ct=ct))
    assert np.array_equal(labels, before)
    assert np.array_equal(result.labels, reference)
    steps = {s["step"]: s for s in result.steps}
    assert list(steps) == ["islands", "sides", "ribs", "junction"]
    assert steps["islands"]["changed_voxels"] == 1
    assert steps["sides"]["changed_voxels"] == int((reference == RIB["rib_left_9"]).sum())
    assert steps["ribs"]["changed_voxels"] == 0 and steps["junction"]["changed_voxels"] == 0
    assert result.report()["changed_voxels"] == 1 + steps["sides"]["changed_voxels"]


def test_empty_map_is_returned_unchanged() -> None:
    labels = np.zeros(RAS.size, dtype=np.uint8)
    result = repair_labels(labels, RAS, RIBS)
    assert result.labels is labels and result.changed_voxels == 0
