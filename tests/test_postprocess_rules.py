"""Component bookkeeping, the vertebra-fragment rule and rib numbering anchored on the vertebrae."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from autoorgan.io.image import Geometry, volume_from_image
from autoorgan.postprocess import Companions, repair_labels
from autoorgan.postprocess.components import Components, grow_box, occupied_box
from autoorgan.postprocess.ribs import anchor_rib_numbers, rib_head_levels
from autoorgan.postprocess.vertebrae import OWN_BODY_REACH_MM, fix_vertebrae
from postprocess_maps import LEVEL_Z, RAS, RIB, RIBS, VERT, VERTEBRAE, back, reorient, spine_and_ribs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_components_match_a_per_label_count() -> None:
    rng = np.random.default_rng(4)
    labels = np.where(rng.random((30, 20, 25)) < 0.2, rng.integers(1, 4, (30, 20, 25)), 0).astype(np.uint8)
    comps = Components(labels)
    expected = []
    for value in (1, 2, 3):
        ids, n = ndimage.label(labels == value, structure=np.ones((3, 3, 3)))
        for comp in range(1, n + 1):
            where = np.argwhere(ids == comp)
            expected.append((value, len(where), *np.round(where.mean(axis=0), 6)))
    found = [(int(comps.label[c]), int(comps.sizes[c]), *np.round(comps.centroids[c], 6))
             for c in range(1, comps.count + 1)]
    assert sorted(found) == sorted(expected)
    # Touching voxel pairs, counted voxel by voxel over the 26 neighbours.
    padded = np.pad(comps.ids, 1)
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1) if dx or dy or dz]
    batch = Components(labels)
    batch.find_neighbours(range(1, batch.count + 1))  # all at once, the islands step's way
    for comp in range(1, comps.count + 1, 7):
        pairs: dict[int, float] = {}
        for x, y, z in np.argwhere(comps.ids == comp) + 1:
            for dx, dy, dz in offsets:
                other = int(padded[x + dx, y + dy, z + dz])
                if other not in (0, comp):
                    pairs[other] = pairs.get(other, 0.0) + 1.0
        assert comps.neighbours(comp) == pairs and batch.neighbours(comp) == pairs
    big = max(range(1, comps.count + 1), key=lambda c: comps.sizes[c])
    points = comps.points([big])
    assert len(points) == comps.sizes[big] and (labels[tuple(points.T)] == comps.label[big]).all()
    # Relabelling one component changes exactly its voxels.
    lut = comps.identity_lut()
    lut[big] = 9
    out = comps.apply(lut)
    assert int((out != labels).sum()) == comps.sizes[big] and (out[tuple(points.T)] == 9).all()
    assert out is not labels and int((labels == 9).sum()) == 0


def _described(comps: Components) -> list[tuple]:
    """Each component as (label, size, centroid, box, its voxels), comparable between numberings."""
    out = []
    for comp in comps.existing():
        points = comps.points([comp])
        out.append((int(comps.label[comp]), int(comps.sizes[comp]), *np.round(comps.centroids[comp], 6),
                    comps.boxes[comp], tuple(map(tuple, points.tolist()))))
    return sorted(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_derived_after_relabelling_equal_a_fresh_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((24, 18, 20)) < 0.25, rng.integers(1, 5, (24, 18, 20)), 0).astype(np.uint8)
    comps = Components(labels)
    lut = comps.identity_lut()
    picked = rng.choice(np.arange(1, comps.count + 1), size=comps.count // 3, replace=False)
    lut[picked] = rng.integers(0, 5, len(picked))  # relabel some pieces, remove others (0)
    out = comps.apply(lut)
    derived = comps.after(out)
    assert derived is not None and derived.labels is out
    fresh = Components(out)
    assert len(derived.existing()) == fresh.count < comps.count
    assert _described(derived) == _described(fresh)
    assert set(derived.largest_of_label) == set(fresh.largest_of_label)
    # Any other array gets no derived components.
    assert comps.after(out.copy()) is None


def test_stray_voxels_in_opposite_corners_only_add_their_own_components() -> None:
    labels = np.zeros((200, 150, 120), dtype=np.uint8)
    labels[90:110, 70:80, 50:70] = 3
    labels[0, 0, 0], labels[-1, -1, -1] = 1, 2
    comps = Components(labels)
    assert comps.count == 3
    assert sorted(int(comps.sizes[c]) for c in (1, 2, 3)) == [1, 1, 20 * 10 * 20]
    main = comps.largest_of_label[3]
    assert comps.boxes[main] == (slice(90, 110), slice(70, 80), slice(50, 70))
    assert occupied_box(labels == 3) == comps.boxes[main]
    assert grow_box(comps.boxes[main], 95, labels.shape) == (slice(0, 200), slice(0, 150), slice(0, 120))


def _embedded_t11_piece() -> tuple[np.ndarray, tuple[slice, ...]]:
    """T9–T12 with a piece of T11 enclosed by T12's top, 8 mm below T11's body (a process of T11
    that T12's interlocking process cuts off from its body)."""
    _, vertebrae = spine_and_ribs()
    t12 = LEVEL_Z[12]
    piece = (slice(19, 21), slice(7, 9), slice(t12 + 3, t12 + 5))
    vertebrae[piece] = VERT["vertebrae_T11"]
    return vertebrae, piece


def test_vertebra_piece_near_its_own_body_keeps_its_label() -> None:
    vertebrae, piece = _embedded_t11_piece()
    out, details = fix_vertebrae(vertebrae, RAS, VERTEBRAE)
    assert details["fragments_reassigned"] == 0 and details["fragments_kept_near_own_body"] == 1
    assert out is vertebrae and (out[piece] == VERT["vertebrae_T11"]).all()


def test_a_piece_far_from_its_own_body_is_reassigned() -> None:
    vertebrae, piece = _embedded_t11_piece()
    vertebrae[piece] = VERT["vertebrae_T9"]  # labelled T9, whose body is 40 mm away: no part of T9 reaches there
    gap_mm = 2.0 * (LEVEL_Z[9] - (LEVEL_Z[12] + 4))
    assert gap_mm == 40.0 > OWN_BODY_REACH_MM
    out, details = fix_vertebrae(vertebrae, RAS, VERTEBRAE)
    assert details["fragments_reassigned"] == 1
    assert (out[piece] == VERT["vertebrae_T12"]).all()


def test_real_reference_vertebra_piece_is_kept(real_data: Path) -> None:
    """example_seg_dicom: a 189-voxel piece of T11 enclosed by T12, 7.9 mm from T11's body."""
    from repair_cases import totalsegmentator_case

    case = totalsegmentator_case(real_data / "totalsegmentator", "example_seg_dicom.nii.gz")
    out, details = fix_vertebrae(case.vertebrae, case.geometry, VERTEBRAE)
    assert details["fragments_reassigned"] == 0 and details["fragments_kept_near_own_body"] == 1
    assert out is case.vertebrae


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "LAS"])
def test_anchor_rib_numbers_takes_ribs_vertebrae_and_geometry(codes: str) -> None:
    reference, vertebrae = spine_and_ribs()
    shifted = reference.copy()
    for k in LEVEL_Z:  # the right ribs are numbered one too low
        shifted[reference == RIB[f"rib_right_{k}"]] = RIB[f"rib_right_{k - 1}"]
    ribs, geometry = reorient(shifted, RAS, codes)
    spine, _ = reorient(vertebrae, RAS, codes)
    before = ribs.copy()
    out, details = anchor_rib_numbers(ribs, spine, geometry)
    assert np.array_equal(ribs, before)
    assert details["numbering_from"] == "vertebrae" and details["ribs_renumbered"] == 4
    assert details["renumbered"] == {f"rib_right_{k - 1}": f"rib_right_{k}" for k in sorted(LEVEL_Z)}
    assert np.array_equal(back(out, geometry, codes), reference)
    # Correct numbers stay as they are (the same array comes back).
    same, details = anchor_rib_numbers(out, spine, geometry, rib_names=RIBS, vertebra_names=VERTEBRAE)
    assert same is out and details["ribs_renumbered"] == 0
    levels = rib_head_levels(out, spine, geometry)
    assert {name: round(level, 1) for name, level in levels.items() if level is not None} == {
        f"rib_{side}_{k}": float(7 + k - 1) for side in ("left", "right") for k in LEVEL_Z}


def test_anchor_rib_numbers_rejects_another_grid() -> None:
    reference, vertebrae = spine_and_ribs()
    with pytest.raises(ValueError, match="grid"):
        anchor_rib_numbers(reference, vertebrae[:-1], RAS)


def test_anchor_rib_numbers_without_complete_vertebrae_orders_head_to_feet() -> None:
    reference, _ = spine_and_ribs()
    inverted = reference.copy()
    for k in LEVEL_Z:
        inverted[reference == RIB[f"rib_left_{k}"]] = RIB[f"rib_left_{21 - k}"]
    out, details = anchor_rib_numbers(inverted, np.zeros_like(reference), RAS)
    assert details["numbering_from"] == "head-to-feet order" and details["ribs_renumbered"] == 4
    assert np.array_equal(out, reference)


def test_repair_ignores_stray_corner_voxels_elsewhere() -> None:
    """Stray voxels far from everything (the only pieces of their labels) leave the repair of the
    rest unchanged."""
    reference, vertebrae = spine_and_ribs()
    labels = reference.copy()
    labels[reference == RIB["rib_left_10"]] = RIB["rib_right_10"]
    strays = labels.copy()
    strays[0, 0, 0], strays[-1, -1, -1] = RIB["rib_left_1"], RIB["rib_right_2"]
    companions = Companions(vertebrae=vertebrae, vertebra_names=VERTEBRAE)
    plain = repair_labels(labels, RAS, RIBS, companions=companions).labels
    with_strays = repair_labels(strays, RAS, RIBS, companions=companions).labels
    assert np.array_equal(plain, reference)
    assert np.array_equal(with_strays[1:-1, 1:-1, 1:-1], reference[1:-1, 1:-1, 1:-1])
    assert with_strays[0, 0, 0] == RIB["rib_left_1"] and with_strays[-1, -1, -1] == RIB["rib_right_2"]


def test_real_lumbar_vertebrae_in_pir_storage_are_left_alone(real_data: Path) -> None:
    """TPTBox's L2–L4 map (VerSe values 21–23, PIR storage): nothing to repair, nothing changed."""
    path = real_data / "tptbox_vertebra" / "sub-ct_seg-vert_label-22_msk.nii.gz"
    volume = volume_from_image(sitk.ReadImage(str(path)), path.name)
    verse = {21: "vertebrae_L2", 22: "vertebrae_L3", 23: "vertebrae_L4"}
    lut = np.zeros(int(volume.array.max()) + 1, dtype=np.uint8)
    for value, name in verse.items():
        lut[value] = VERT[name]
    labels = lut[volume.array.astype(np.int64)]
    assert sorted(np.unique(labels).tolist()) == [0, VERT["vertebrae_L2"], VERT["vertebrae_L3"], VERT["vertebrae_L4"]]
    result = repair_labels(labels, volume.geometry, VERTEBRAE)
    assert result.labels is labels and result.changed_voxels == 0


def test_repair_after_islands_far_away_are_cleared() -> None:
    """A speck far from the body is removed first; the later steps (here: sides, on a smaller
    box) still repair the body, and the result covers the whole grid."""
    reference, vertebrae = spine_and_ribs()
    shape = (160, 80, 200)
    geometry = Geometry(size=shape, spacing=RAS.spacing, origin=RAS.origin, direction=RAS.direction)
    big_reference = np.zeros(shape, dtype=np.uint8)
    big_vertebrae = np.zeros(shape, dtype=np.uint8)
    big_reference[100:140, 50:70, 130:190] = reference
    big_vertebrae[100:140, 50:70, 130:190] = vertebrae
    labels = big_reference.copy()
    labels[big_reference == RIB["rib_left_11"]] = RIB["rib_right_11"]   # sides swapped on rib 11
    labels[2:4, 2:4, 2:4] = RIB["rib_left_9"]                          # 64 mm³ speck in a far corner
    result = repair_labels(labels, geometry, RIBS, companions=Companions(vertebrae=big_vertebrae,
                                                                           vertebra_names=VERTEBRAE))
    assert np.array_equal(result.labels, big_reference)
    steps = {s["step"]: s for s in result.steps}
    assert steps["islands"]["changed_voxels"] == 8 and steps["islands"]["islands_removed"] == 1
    assert steps["sides"]["changed_voxels"] == int((big_reference == RIB["rib_left_11"]).sum())
