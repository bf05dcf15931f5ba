"""Reorientation is a lossless permutation/flip whose inverse restores the stored grid exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.demo.phantom import reorient, rotate
from autoorgan.io.image import Geometry
from autoorgan.io.orientation import direction_to_axcodes, plan_reorientation, reoriented_geometry

ALL_CODES = ["".join(p) for p in itertools.product("RL", "AP", "SI")]
ALL_CODES = sorted({"".join(perm) for code in ALL_CODES for perm in itertools.permutations(code)})


def _image(codes: str) -> sitk.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((12.0, -30.0, 100.0))
    return reorient(img, codes)


def test_48_orientations_known() -> None:
    assert len(ALL_CODES) == 48


@pytest.mark.parametrize("codes", ALL_CODES)
def test_matches_itk_dicomorient_and_round_trips(codes: str) -> None:
    img = _image("LPS")
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    plan = plan_reorientation(direction, codes)
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    expected = sitk.DICOMOrient(img, codes)
    size, spacing, origin, new_dir = reoriented_geometry(plan, img.GetSize(), img.GetSpacing(), img.GetOrigin(),
                                                         direction)
    assert np.array_equal(plan.to_target(arr), sitk.GetArrayFromImage(expected).transpose(2, 1, 0))
    assert size == expected.GetSize()
    assert np.allclose(spacing, expected.GetSpacing())
    assert np.allclose(origin, expected.GetOrigin())
    assert np.allclose(new_dir.ravel(), expected.GetDirection())
    assert direction_to_axcodes(new_dir) == codes
    assert np.array_equal(plan.to_source(plan.to_target(arr)), arr)


@pytest.mark.parametrize("codes", ALL_CODES)
def test_a_box_maps_to_the_same_voxels_in_the_target_orientation(codes: str) -> None:
    img = _image("LPS")
    plan = plan_reorientation(np.asarray(img.GetDirection()).reshape(3, 3), codes)
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    box = (slice(1, 4), slice(0, 2), slice(3, 7))
    target = plan.box_to_target(box, arr.shape)
    assert np.array_equal(plan.to_target(arr)[target], plan.to_target(arr[box]))


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "ASL", "IPL"])
def test_any_storage_reaches_the_model_orientation_with_same_voxels_in_world(codes: str) -> None:
    """Stored in any order, the array the model sees is the same."""
    reference = _image("RAS")
    stored = _image(codes)
    plan = plan_reorientation(np.asarray(stored.GetDirection()).reshape(3, 3), "RAS")
    seen = plan.to_target(sitk.GetArrayFromImage(stored).transpose(2, 1, 0))
    assert np.array_equal(seen, sitk.GetArrayFromImage(reference).transpose(2, 1, 0))
    spacing = plan.spacing(stored.GetSpacing())
    assert np.allclose(spacing, reference.GetSpacing())


def test_oblique_direction_uses_closest_axes() -> None:
    img = rotate(_image("LPS"), 20.0, axis=(1.0, 1.0, 0.0))
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    assert not np.allclose(np.abs(direction), np.eye(3))
    assert direction_to_axcodes(direction) == "LPS"
    plan = plan_reorientation(direction, "RAS")
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    assert np.array_equal(plan.to_source(plan.to_target(arr)), arr)


def test_native_orientation_is_identity() -> None:
    img = _image("PIR")
    plan = plan_reorientation(np.asarray(img.GetDirection()).reshape(3, 3), None)
    assert plan.is_identity
    arr = np.zeros(img.GetSize())
    assert plan.to_target(arr) is arr


def test_geometry_round_trip() -> None:
    img = _image("PIR")
    geo = Geometry.of(img)
    assert geo.size == img.GetSize()
    assert geo.to_json()["spacing"] == list(img.GetSpacing())
