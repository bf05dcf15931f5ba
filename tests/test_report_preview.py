"""Preview pictures: size, content, radiological orientation whatever the stored orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from autoorgan.demo.phantom import reorient
from autoorgan.io.image import Geometry, volume_from_image
from autoorgan.report.html import PREVIEW_SHOWN_PX
from autoorgan.report.preview import (
    LEGEND_FONT_PX,
    MIN_PANEL_PX,
    PREVIEW_WIDTH,
    display_planes,
    layout_panels,
    render_preview,
)
from fixture_model import pelvis_phantom

NAMES = {1: "hip_left", 2: "hip_right", 3: "sacrum"}
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _phantom_images() -> tuple[sitk.Image, sitk.Image]:
    phantom = pelvis_phantom(7)
    return phantom.ct, phantom.labels_for(NAMES)


def _render(ct: sitk.Image, labels: sitk.Image, target: Path) -> np.ndarray:
    volume = volume_from_image(ct, "ct")
    seg = volume_from_image(labels, "labels")
    render_preview(volume.array, seg.array, volume.geometry, NAMES, target, title="phantom")
    return imread(str(target))


def test_preview_has_the_expected_size_and_is_not_blank(tmp_path: Path) -> None:
    ct, labels = _phantom_images()
    picture = _render(ct, labels, tmp_path / "case.png")
    assert picture.shape[1] == PREVIEW_WIDTH and MIN_PANEL_PX < picture.shape[0] < PREVIEW_WIDTH
    rgb = picture[..., :3]
    assert rgb.std() > 0.05  # not a blank picture
    # the overlay is there: strongly coloured pixels (not grey), and many distinct colours
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 0.2).mean() > 0.01
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
    assert not list(tmp_path.glob(".*"))  # written atomically, nothing left behind


@pytest.mark.parametrize("codes", ["LPS", "PIR", "SAR", "oblique"])
def test_a_reoriented_input_gives_the_same_picture(tmp_path: Path, codes: str) -> None:
    ct, labels = _phantom_images()
    reference = _render(reorient(ct, "RAS"), reorient(labels, "RAS"), tmp_path / "ras.png")
    if codes == "oblique":  # a slightly oblique grid is shown in its nearest axis-aligned orientation
        ct_moved, labels_moved = reorient(ct, "LPS"), reorient(labels, "LPS")
        direction = np.array(ct_moved.GetDirection()).reshape(3, 3)
        c, s = np.cos(np.radians(3)), np.sin(np.radians(3))
        tilted = tuple((direction @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])).ravel())
        ct_moved.SetDirection(tilted)
        labels_moved.SetDirection(tilted)
    else:
        ct_moved, labels_moved = reorient(ct, codes), reorient(labels, codes)
    moved = _render(ct_moved, labels_moved, tmp_path / f"{codes}.png")
    assert np.array_equal(reference, moved)


def _geometry(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> Geometry:
    return Geometry(size=size, spacing=spacing, origin=(0.0, 0.0, 0.0), direction=IDENTITY)


def test_patient_right_is_on_the_image_left_and_head_is_up() -> None:
    # LPS identity grid: index x grows to the patient's left, y to posterior, z to superior.
    size = (40, 30, 20)
    labels = np.zeros(size, dtype=np.uint8)
    labels[2:8, 10:20, 8:12] = 1  # on the patient's right (small x)
    labels[10:30, 2:5, 8:12] = 2  # anterior (small y)
    ct = np.zeros(size, dtype=np.int16)
    axial, coronal, sagittal, _ = display_planes(ct, labels, _geometry(size, (1.0, 1.0, 1.0)))
    assert axial.ct.shape == (30, 40) and coronal.ct.shape == (20, 40) and sagittal.ct.shape == (20, 30)
    cols_right = np.nonzero((axial.labels == 1).any(axis=0))[0]
    assert cols_right.max() < 20  # image left half
    rows_anterior = np.nonzero((axial.labels == 2).any(axis=1))[0]
    assert rows_anterior.max() < 15  # top half
    labels[10:30, 10:20, 17:20] = 3  # superior (large z)
    _, coronal_3, sagittal_3, mip = display_planes(ct, labels, _geometry(size, (1.0, 1.0, 1.0)))
    for plane in (coronal_3, sagittal_3, mip):
        rows_head = np.nonzero((plane.labels == 3).any(axis=1))[0]
        assert rows_head.max() < 5  # at the top
    cols_anterior = np.nonzero((sagittal.labels == 2).any(axis=0))[0]
    assert cols_anterior.max() < 15  # anterior on the left of the sagittal slice
    assert (axial.sides, coronal.sides, sagittal.sides) == (("R", "L"), ("R", "L"), ("A", "P"))


def test_anisotropic_voxels_keep_their_physical_aspect(tmp_path: Path) -> None:
    size = (40, 40, 10)
    labels = np.zeros(size, dtype=np.uint8)
    labels[10:30, 10:30, 2:8] = 1
    ct = np.where(labels > 0, 300, -1000).astype(np.int16)
    planes = display_planes(ct, labels, _geometry(size, (0.5, 0.5, 4.0)))
    assert planes[0].pixel_mm == (0.5, 0.5)
    assert planes[1].pixel_mm == (4.0, 0.5) and planes[2].pixel_mm == (4.0, 0.5)
    # drawn: the coronal panel's block (10 mm wide, 24 mm high) must be taller than wide
    target = render_preview(ct, labels, _geometry(size, (0.5, 0.5, 4.0)), {1: "block"}, tmp_path / "a.png",
                            colors={"block": (40, 80, 255)})
    blocks = _coloured_blocks(imread(str(target))[..., :3])
    assert len(blocks) == 4  # axial, coronal, sagittal, MIP, left to right
    assert blocks[0][0] / blocks[0][1] == pytest.approx(1.0, rel=0.1)  # axial: 10 × 10 mm
    height_px, width_px = blocks[1]
    assert height_px / width_px == pytest.approx(24.0 / 10.0, rel=0.15)


def _coloured_blocks(picture: np.ndarray) -> list[tuple[int, int]]:
    """(height, width) in pixels of the blue blocks drawn in the panels of a picture, left to right
    (not the legend's swatch)."""
    from scipy import ndimage

    coloured = picture[..., 2] > picture[..., 0] + 0.1  # the block's blue, not the yellow side letters
    found, _count = ndimage.label(coloured)
    boxes = sorted(ndimage.find_objects(found), key=lambda box: box[1].start)
    return [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes if (b[0].stop - b[0].start) > 24]


def test_a_thin_series_keeps_its_aspect_and_a_minimum_panel_height(tmp_path: Path) -> None:
    # 20 slices of 5 mm under a 400 mm field of view: coronal and sagittal slices are 4:1
    size = (200, 200, 20)
    labels = np.zeros(size, dtype=np.uint8)
    labels[40:100, 60:140, 3:17] = 1  # 120 mm wide (x), 70 mm high (z)
    ct = np.where(labels > 0, 300, -1000).astype(np.int16)
    grid = _geometry(size, (2.0, 2.0, 5.0))
    planes = display_planes(ct, labels, grid)
    aspects = [p.ct.shape[1] * p.pixel_mm[1] / (p.ct.shape[0] * p.pixel_mm[0]) for p in planes]
    assert aspects == pytest.approx([1.0, 4.0, 4.0, 4.0])
    boxes = layout_panels(aspects)
    for box, aspect in zip(boxes, aspects, strict=True):
        assert box.height >= MIN_PANEL_PX and box.stretch == 1.0
        assert box.width / box.height == pytest.approx(aspect)
        assert box.x >= 0 and box.x + box.width <= PREVIEW_WIDTH
    # drawn: the coronal block has its physical aspect and is not a strip
    target = render_preview(ct, labels, grid, {1: "block"}, tmp_path / "thin.png", colors={"block": (40, 80, 255)})
    blocks = _coloured_blocks(imread(str(target))[..., :3])
    height_px, width_px = blocks[1]
    assert height_px / width_px == pytest.approx(70.0 / 120.0, rel=0.05)
    assert height_px >= 0.7 * MIN_PANEL_PX - 2  # 70 of the panel's 100 mm


def test_a_slab_too_thin_for_the_picture_is_stretched_and_says_so() -> None:
    boxes = layout_panels([1.0, 40.0, 40.0, 40.0])
    assert [b.stretch == 1.0 for b in boxes] == [True, False, False, False]
    assert all(b.height >= MIN_PANEL_PX and b.x + b.width <= PREVIEW_WIDTH for b in boxes)
    assert boxes[1].stretch == pytest.approx(40.0 * MIN_PANEL_PX / boxes[1].width)
    # a usual CT: one row, one height
    usual = layout_panels([1.0, 1.3, 1.0, 1.3])
    assert len({b.y for b in usual}) == 1 and len({round(b.height, 6) for b in usual}) == 1


def test_legend_is_readable_where_the_overview_shows_the_picture(tmp_path: Path) -> None:
    ct, labels = _phantom_images()
    picture = _render(ct, labels, tmp_path / "case.png")[..., :3]
    # the legend is the last band of the picture (one line of 1.5 × its font, a margin): white text
    # ("1 hip_left"...) on black
    band = picture[-int(1.5 * LEGEND_FONT_PX + 10):]
    text_rows = np.nonzero((band.min(axis=2) > 0.8).any(axis=1))[0]
    glyphs_px = np.ptp(text_rows) + 1  # ascender (h, l) to descender (p)
    shown_px = glyphs_px * PREVIEW_SHOWN_PX / PREVIEW_WIDTH
    assert shown_px >= 11, f"legend text {shown_px:.1f} px high in the overview"
    # many structures: the legend wraps into columns and rows, every entry inside the picture
    names = {v: f"structure_{v}" for v in range(1, 61)}
    many = np.zeros((60, 10, 10), np.uint8)
    many[:, 2:8, 2:8] = np.arange(1, 61)[:, None, None]
    render_preview(np.zeros(many.shape, np.int16), many, _geometry(many.shape, (1.0, 1.0, 1.0)), names,
                   tmp_path / "many.png")
    tall = imread(str(tmp_path / "many.png"))
    assert tall.shape[1] == PREVIEW_WIDTH and tall.shape[0] > 60 / 6 * 30


def test_empty_label_map_still_gives_a_picture(tmp_path: Path) -> None:
    size = (20, 20, 20)
    ct = np.random.default_rng(0).normal(0, 200, size).astype(np.float32)
    target = render_preview(ct, np.zeros(size, np.uint8), _geometry(size, (1.0, 1.0, 1.0)), NAMES, tmp_path / "e.png")
    picture = imread(str(target))
    assert picture.shape[1] == PREVIEW_WIDTH and picture[..., :3].std() > 0.02


def test_real_ct_preview(real_data: Path, tmp_path: Path) -> None:
    """The PIR-stored vertebra crop is shown head up, like a RAS copy of it."""
    folder = real_data / "tptbox_vertebra"
    ct_image = sitk.ReadImage(str(folder / "sub-ct_label-22_ct.nii.gz"))
    seg_image = sitk.ReadImage(str(folder / "sub-ct_seg-vert_label-22_msk.nii.gz"))
    names = {21: "L2", 22: "L3", 23: "L4"}
    pictures = []
    for i, (ct, seg) in enumerate(((ct_image, seg_image), (reorient(ct_image, "RAS"), reorient(seg_image, "RAS")))):
        volume, labels = volume_from_image(ct, "ct"), volume_from_image(seg, "seg")
        pictures.append(imread(str(render_preview(volume.array, labels.array, volume.geometry, names,
                                                  tmp_path / f"{i}.png"))))
        if i == 0:
            mip = display_planes(volume.array, labels.array, volume.geometry)[3]
            l2_rows = np.nonzero((mip.labels == 21).any(axis=1))[0]
            l4_rows = np.nonzero((mip.labels == 23).any(axis=1))[0]
            assert l2_rows.mean() < l4_rows.mean()  # L2 above L4
    assert np.array_equal(pictures[0], pictures[1])


def test_label_values_present_counts_in_chunks() -> None:
    from autoorgan.report.preview import label_values_present

    labels = np.zeros((10, 10, 10), dtype=np.uint16)
    labels[0, 0, 0], labels[9, 9, 9], labels[5, 5, 5] = 300, 7, 2
    assert label_values_present(labels, chunk=17) == [2, 7, 300]
    assert label_values_present(np.zeros((3, 3, 3), np.uint8)) == []
