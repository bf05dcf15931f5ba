"""Preview pictures: size, content, radiological orientation whatever the stored orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from autoorgan.demo.phantom import reorient
from autoorgan.io.image import Geometry, volume_from_image
from autoorgan.report.preview import PREVIEW_SIZE, display_planes, render_preview
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
    assert picture.shape[:2] == (PREVIEW_SIZE[1], PREVIEW_SIZE[0])
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
    target = render_preview(ct, labels, _geometry(size, (0.5, 0.5, 4.0)), {1: "block"}, tmp_path / "a.png")
    picture = imread(str(target))[..., :3]
    width = PREVIEW_SIZE[0]
    coronal_panel = picture[:, int(width * 0.22):int(width * 0.42)]
    coloured = coronal_panel[..., 2] > coronal_panel[..., 0] + 0.1  # the block's blue, not the yellow side letters
    rows, cols = np.nonzero(coloured)
    height_px, width_px = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert height_px / width_px == pytest.approx(24.0 / 10.0, rel=0.15)


def test_empty_label_map_still_gives_a_picture(tmp_path: Path) -> None:
    size = (20, 20, 20)
    ct = np.random.default_rng(0).normal(0, 200, size).astype(np.float32)
    target = render_preview(ct, np.zeros(size, np.uint8), _geometry(size, (1.0, 1.0, 1.0)), NAMES, tmp_path / "e.png")
    picture = imread(str(target))
    assert picture.shape[:2] == (PREVIEW_SIZE[1], PREVIEW_SIZE[0]) and picture[..., :3].std() > 0.02


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
