"""Per-structure statistics on hand-built blocks and against TotalSegmentator's published values."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.demo.phantom import reorient
from autoorgan.io.image import Geometry, image_from_array, read_volume, volume_from_image
from autoorgan.report.statistics import (
    FIELDS,
    INTENSITY_DECIMALS,
    POSITION_DECIMALS,
    VOLUME_DECIMALS,
    StructureStats,
    index_to_world,
    structure_statistics,
)
from autoorgan.steps.report import statistics_csv

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _grid(size=(30, 30, 30), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=IDENTITY) -> Geometry:
    return Geometry(size=size, spacing=spacing, origin=origin, direction=direction)


def _block_case() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[5:15, 5:15, 5:15] = 1  # 10×10×10 block
    labels[20:22, 0:3, 28:30] = 3  # 2×3×2 block at the image border
    ct = np.full(labels.shape, -1000, dtype=np.int16)
    # HU values 0..999 inside the block: value = 100*(x-5) + 10*(y-5) + (z-5)
    x, y, z = np.meshgrid(np.arange(10), np.arange(10), np.arange(10), indexing="ij")
    ct[5:15, 5:15, 5:15] = 100 * x + 10 * y + z
    ct[20:22, 0:3, 28:30] = 70
    return labels, ct


def test_block_at_1mm_is_one_millilitre_with_hand_computed_values() -> None:
    labels, ct = _block_case()
    stats = structure_statistics(labels, ct, _grid(origin=(10.0, -20.0, 30.0)),
                                 {1: "block", 2: "absent", 3: "edge"})
    block, absent, edge = stats
    assert (block.label, block.structure, block.voxels) == (1, "block", 1000)
    assert block.volume_ml == pytest.approx(1.000, abs=1e-12)
    values = np.arange(1000, dtype=float)
    assert block.intensity_mean == pytest.approx(499.5)
    assert block.intensity_std == pytest.approx(float(values.std()))  # 288.6749...
    assert block.intensity_std == pytest.approx(288.67499, abs=1e-4)
    assert block.intensity_median == pytest.approx(499.5)
    assert (block.intensity_min, block.intensity_max) == (0.0, 999.0)
    # voxel centres 5..14 → mean index 9.5, plus the origin
    assert block.centroid_mm == pytest.approx((19.5, -10.5, 39.5))
    assert block.bbox_index == ((5, 5, 5), (14, 14, 14))
    assert block.bbox_mm == (pytest.approx((15.0, -15.0, 35.0)), pytest.approx((24.0, -6.0, 44.0)))
    assert block.touches_border is False
    # a structure of the task that is absent appears with 0
    assert (absent.voxels, absent.volume_ml, absent.intensity_mean, absent.intensity_max) == (0, 0.0, 0.0, 0.0)
    assert absent.centroid_mm is None and absent.bbox_index is None and not absent.present
    assert (edge.voxels, edge.volume_ml, edge.intensity_mean, edge.intensity_std) == (12, pytest.approx(0.012), 70.0, 0.0)
    assert edge.touches_border is True


def test_anisotropic_oblique_grid_volume_and_world_positions() -> None:
    labels, ct = _block_case()
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    grid = _grid(spacing=(0.5, 2.0, 3.0), origin=(-5.0, 7.0, 1.0), direction=direction)
    block = structure_statistics(labels, ct, grid, {1: "block"})[0]
    assert block.volume_ml == pytest.approx(10 * 10 * 10 * 0.5 * 2.0 * 3.0 / 1000)  # 3.000 ml
    # centroid = origin + D · (spacing ⊙ 9.5)
    expected = np.array([-5.0, 7.0, 1.0]) + np.array(direction).reshape(3, 3) @ (np.array([0.5, 2.0, 3.0]) * 9.5)
    assert block.centroid_mm == pytest.approx(tuple(expected))
    # and it is where SimpleITK puts that continuous index
    image = image_from_array(labels, grid)
    assert block.centroid_mm == pytest.approx(image.TransformContinuousIndexToPhysicalPoint((9.5, 9.5, 9.5)))
    assert index_to_world(np.array([3, 4, 5]), grid) == pytest.approx(image.TransformIndexToPhysicalPoint((3, 4, 5)))


@pytest.mark.parametrize("codes", ["RAS", "PIR", "LAI"])
def test_statistics_do_not_depend_on_the_stored_orientation(codes: str) -> None:
    labels, ct = _block_case()
    grid = _grid(spacing=(0.8, 1.2, 2.5), origin=(3.0, 4.0, 5.0))
    reference = {s.structure: s for s in structure_statistics(labels, ct, grid, {1: "block", 3: "edge"})}
    moved_labels = volume_from_image(reorient(image_from_array(labels, grid), codes), "labels")
    moved_ct = volume_from_image(reorient(image_from_array(ct, grid), codes), "ct")
    for s in structure_statistics(moved_labels.array, moved_ct.array, moved_ct.geometry, {1: "block", 3: "edge"}):
        ref = reference[s.structure]
        assert s.voxels == ref.voxels and s.volume_ml == pytest.approx(ref.volume_ml)
        assert s.intensity_mean == pytest.approx(ref.intensity_mean)
        assert s.intensity_median == pytest.approx(ref.intensity_median)
        assert s.centroid_mm == pytest.approx(ref.centroid_mm, abs=1e-6)
        assert s.bbox_mm[0] == pytest.approx(ref.bbox_mm[0], abs=1e-6)
        assert s.bbox_mm[1] == pytest.approx(ref.bbox_mm[1], abs=1e-6)


def test_mismatched_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        structure_statistics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), _grid(size=(3, 3, 3)), {1: "a"})


def test_json_round_trip_and_csv_rows() -> None:
    labels, ct = _block_case()
    stats = structure_statistics(labels, ct, _grid(), {1: "block", 2: "absent"})
    for s in stats:  # what is written is rounded (see the next test); reading it back changes nothing more
        assert StructureStats.from_json(json.loads(json.dumps(s.to_json()))) == s.rounded()
        assert s.rounded().to_json() == s.to_json()
    document = {"structures": {s.structure: s.to_json() for s in stats}}
    rows = list(csv.DictReader(io.StringIO(statistics_csv({"case A": document, "case B": document}))))
    assert len(rows) == 4 and list(rows[0]) == ["case", *FIELDS]
    assert [(r["case"], r["structure"], r["voxels"]) for r in rows] == [
        ("case A", "block", "1000"), ("case A", "absent", "0"), ("case B", "block", "1000"), ("case B", "absent", "0")]
    assert float(rows[0]["volume_ml"]) == 1.0 and rows[1]["centroid_x_mm"] == "" and rows[1]["volume_ml"] == "0.0"


def _decimals(value: float) -> int:
    text = repr(float(value))
    assert "e" not in text, text
    return len(text.split(".")[1].rstrip("0"))


def test_written_statistics_have_the_chosen_decimals() -> None:
    labels, ct = _block_case()
    c, s = np.cos(np.radians(17)), np.sin(np.radians(17))
    grid = _grid(spacing=(0.7, 0.9, 1.1), origin=(0.1, -0.3, 12.7), direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    stats = structure_statistics(labels, ct.astype(np.float32) / 3, grid, {1: "block", 3: "edge"})
    assert _decimals(stats[0].volume_ml) > VOLUME_DECIMALS  # the computation is not rounded
    limits = {"volume_ml": VOLUME_DECIMALS, "intensity": INTENSITY_DECIMALS, "_mm": POSITION_DECIMALS}
    for s in stats:
        entry, row = s.to_json(), s.to_row()
        floats = {key: entry[key] for key in entry if isinstance(entry[key], float)}
        floats |= {f"centroid_{i}_mm": v for i, v in enumerate(entry["centroid_mm"])}
        floats |= {f"bbox_{i}_mm": v for i, v in enumerate(entry["bbox_mm"][0] + entry["bbox_mm"][1])}
        floats |= {f"row_{key}": v for key, v in row.items() if isinstance(v, float)}
        assert len(floats) == 6 + 3 + 6 + 15
        for key, value in floats.items():
            limit = next(d for part, d in limits.items() if part in key)
            assert _decimals(value) <= limit, (key, value)
        assert entry["volume_ml"] == pytest.approx(s.volume_ml, abs=0.0005)
        assert entry["intensity_std"] == pytest.approx(s.intensity_std, abs=0.005)
    assert stats[0].to_json()["volume_ml"] == 0.693  # 1000 voxels of 0.693 mm³, not 0.6930000000000001


def test_matches_totalsegmentator_published_statistics(real_data: Path) -> None:
    """TotalSegmentator reports volume in mm³ (we report ml) and the mean CT value inside each mask."""
    folder = real_data / "totalsegmentator"
    names = {int(k): v for k, v in json.loads((folder / "class_map_total.json").read_text())["total"].items()}
    published = json.loads((folder / "example_seg_fast" / "statistics.json").read_text())
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    seg = read_volume(folder / "example_seg_fast.nii.gz")
    assert seg.geometry == ct.geometry  # same grid (and, as PROVENANCE notes, the full volume's affine)
    ours = {s.structure: s for s in structure_statistics(seg.array, ct.array, ct.geometry, names)}
    assert set(ours) == set(published)
    compared = 0
    for name, ref in published.items():
        mine = ours[name]
        if ref["volume"] == 0:
            assert mine.voxels == 0, name
            continue
        compared += 1
        assert mine.volume_ml * 1000 == pytest.approx(ref["volume"], rel=0.01), name
        assert abs(mine.intensity_mean - ref["intensity"]) < 1.0, name
        # measured: identical to the published figures up to their rounding (5 decimals)
        assert mine.volume_ml * 1000 == pytest.approx(ref["volume"], rel=1e-9), name
        assert mine.intensity_mean == pytest.approx(ref["intensity"], abs=1e-5), name
    assert compared == 40
    liver = ours["liver"]
    assert liver.voxels == round(1062450.0 / 27) and liver.volume_ml == pytest.approx(1062.45)
    # centroid in patient LPS: the liver lies on the patient's right (negative x in LPS)
    assert liver.centroid_mm[0] < 0


def test_real_label_map_file_round_trip(real_data: Path, tmp_path: Path) -> None:
    """Statistics of a label map read back from disk equal those of the array it was written from."""
    folder = real_data / "tptbox_vertebra"
    ct = read_volume(folder / "sub-ct_label-22_ct.nii.gz")
    seg = read_volume(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    stats = {s.label: s for s in structure_statistics(seg.array, ct.array, ct.geometry, {21: "L2", 22: "L3", 23: "L4"})}
    assert (stats[21].voxels, stats[22].voxels, stats[23].voxels) == (6567, 17698, 12083)
    assert stats[22].volume_ml == pytest.approx(17698 * 1.5 ** 3 / 1000)
    # L2 is above L3 is above L4 (LPS z increases to superior)
    assert stats[21].centroid_mm[2] > stats[22].centroid_mm[2] > stats[23].centroid_mm[2]
    sitk.WriteImage(image_from_array(seg.array, seg.geometry), str(tmp_path / "seg.nii.gz"))
    again = read_volume(tmp_path / "seg.nii.gz")
    assert structure_statistics(again.array, ct.array, ct.geometry, {22: "L3"})[0] == stats[22]
