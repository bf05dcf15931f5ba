"""Prediction of a region only (what the cascade runs): of the whole image's sliding-window tiles
only those reaching into the region run, and inside the region the labels are the whole-image
prediction's. Checked with the real fixture model, on images the model's grid must resample and
on a reoriented volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoorgan import engine
from autoorgan.demo.phantom import make_phantom, reorient
from autoorgan.io.image import volume_from_image
from autoorgan.io.orientation import plan_reorientation
from autoorgan.models.store import require_model
from autoorgan.registry.tasks import load_registry
from autoorgan.steps.segment import segment_volume
from fixture_model import FIXTURE_STRUCTURES, FIXTURE_TASK

pytestmark = pytest.mark.e2e


def _pelvis(spacing: tuple[float, float, float]) -> sitk.Image:
    """The pelvis with much context: many tiles, most of them away from any small box."""
    return make_phantom(5, spacing=spacing).crop_to(list(FIXTURE_STRUCTURES), 40.0).ct


@pytest.fixture(scope="module")
def model_folder(trained_models: Path) -> Path:
    return require_model(load_registry()[FIXTURE_TASK], trained_models).folder


@pytest.mark.parametrize("tile_batch", [1, 2], ids=["nnunet-loop", "grouped"])
@pytest.mark.parametrize("spacing", [(4.0, 4.0, 5.0), (3.3, 3.6, 6.1)], ids=["model-grid", "resampled"])
def test_region_labels_are_the_whole_images_with_fewer_tiles(model_folder: Path, spacing: tuple[float, float, float],
                                                             tile_batch: int) -> None:
    image = _pelvis(spacing)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing_zyx = (spacing[2], spacing[1], spacing[0])
    # One tile per call (the whole image then runs nnU-Net's own loop), or two, grouped as in
    # the whole image's run: either way the labels must be equal.
    segmenter = engine.Segmenter(model_folder, 0, torch.device("cpu"), tile_batch=tile_batch)
    whole = segmenter.predict(array, spacing_zyx)
    all_tiles = segmenter.last_tiles
    assert all_tiles[0] == all_tiles[1] >= 8
    assert len(np.unique(whole)) >= 3
    z, y, x = array.shape
    rois = [(slice(0, z // 3), slice(y // 4, y // 2), slice(x // 3, 2 * x // 3)),  # low in the volume
            (slice(z - 3, z), slice(0, y), slice(x - 8, x)),                          # a thin slab at an edge
            (slice(0, z), slice(0, y), slice(0, x))]                                # everything
    for roi in rois:
        labels = segmenter.predict(array, spacing_zyx, roi=roi)
        ran, total = segmenter.last_tiles
        assert total == all_tiles[1]
        if roi != rois[-1]:
            assert ran < total, f"{ran} of {total} tiles for {roi}"
        outside = np.ones(array.shape, dtype=bool)
        outside[roi] = False
        assert np.array_equal(labels[roi], whole[roi]), f"{roi}: {np.mean(labels[roi] != whole[roi]):.5f} differ"
        assert not labels[outside].any()


def test_cascade_region_through_a_reoriented_volume(model_folder: Path) -> None:
    """The region (the pelvis's box in a whole-body phantom stored PIR) follows the permutation
    and flips into the model's orientation (with the default tile grouping)."""
    task = load_registry()[FIXTURE_TASK]
    phantom = make_phantom(5, spacing=(4.0, 4.0, 5.0))
    pelvis = np.argwhere(np.any([phantom.structures[n] for n in FIXTURE_STRUCTURES], axis=0))
    box_ras = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(pelvis.min(0), pelvis.max(0), strict=True))
    image = reorient(phantom.ct, "PIR")
    volume = volume_from_image(image, "body")
    ras = np.asarray(phantom.ct.GetDirection()).reshape(3, 3)
    roi = plan_reorientation(ras, "PIR").box_to_target(box_ras, phantom.ct.GetSize())
    segmenter = engine.Segmenter(model_folder, 0, torch.device("cpu"))
    whole = segment_volume(volume, task, segmenter)
    labels = segment_volume(volume, task, segmenter, roi=roi)
    assert segmenter.last_tiles[0] < segmenter.last_tiles[1]
    inside = whole[roi]
    assert len(np.unique(inside)) >= 3
    assert np.array_equal(labels[roi], inside)
    rest = labels.copy()
    rest[roi] = 0
    assert not rest.any()


def test_region_with_nnunets_own_export(model_folder: Path) -> None:
    """With ``--export nnunet`` every tile runs (its export may read any logit) and only the
    region's labels are kept: inside the region they are the whole image's."""
    spacing = (3.3, 3.6, 6.1)
    array = sitk.GetArrayFromImage(_pelvis(spacing)).astype(np.float32)
    spacing_zyx = (spacing[2], spacing[1], spacing[0])
    segmenter = engine.Segmenter(model_folder, 0, torch.device("cpu"), export="nnunet")
    assert segmenter.export == "nnunet"
    whole = segmenter.predict(array, spacing_zyx)
    z, y, x = array.shape
    roi = (slice(0, z // 2), slice(y // 4, y), slice(x // 3, 2 * x // 3))
    labels = segmenter.predict(array, spacing_zyx, roi=roi)
    assert segmenter.last_tiles[0] == segmenter.last_tiles[1]
    assert len(np.unique(whole[roi])) >= 3
    assert np.array_equal(labels[roi], whole[roi])
    labels[roi], whole[roi] = 0, 0
    assert whole.any() and not labels.any()  # the whole image has labels outside the region
