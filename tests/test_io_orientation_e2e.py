"""Orientation in and out, end to end with the real fixture model: predicting a reoriented copy
(axis permutations, flips, an oblique direction) gives the reoriented prediction of the original,
and every output has exactly its input's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan import api
from autoorgan.demo.phantom import reorient
from autoorgan.io.orientation import direction_to_axcodes
from autoorgan.report.metrics import dice_per_label
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e



def _oblique(image: sitk.Image, degrees: float = 11.0) -> sitk.Image:
    """The same voxels with a direction rotated about an oblique axis (a tilted acquisition)."""
    axis = np.array([0.4, 1.0, 0.3]) / np.linalg.norm([0.4, 1.0, 0.3])
    rotation = sitk.VersorTransform(tuple(axis), np.radians(degrees)).GetMatrix()
    tilted = sitk.Image(image)
    tilted.SetDirection(tuple((np.asarray(rotation).reshape(3, 3) @ np.asarray(image.GetDirection()).reshape(3, 3))
                              .ravel()))
    return tilted


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _check_orientation_property(ct: sitk.Image, models: Path, tmp_path: Path, copies_codes: list[str], *,
                                need_labels: bool) -> None:
    original_codes = direction_to_axcodes(np.asarray(ct.GetDirection()).reshape(3, 3))
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(ct, str(inputs / "original.nii.gz"))
    copies = {codes: reorient(ct, codes) for codes in copies_codes}
    copies["oblique"] = _oblique(ct)
    for name, image in copies.items():
        sitk.WriteImage(image, str(inputs / f"{name}.nrrd"))
    # Raw model output: the anatomical repair works in patient space, where a tilted copy is
    # a (slightly) different placement of the patient, so it is compared without it.
    result = api.predict(task=FIXTURE_TASK, input=inputs, output=tmp_path / "out", models_dir=models, device="cpu",
                         postprocess=False)
    assert result.ok and result.count("done") == len(copies) + 1
    reference = sitk.ReadImage(str(tmp_path / "out" / "original.nii.gz"))
    _assert_same_grid(reference, ct)
    reference_array = sitk.GetArrayFromImage(reference)
    if need_labels:
        assert set(np.unique(reference_array).tolist()) == {0, 1, 2, 3}
    for name, image in copies.items():
        seg = sitk.ReadImage(str(tmp_path / "out" / f"{name}.nii.gz"))
        _assert_same_grid(seg, image)
        # Back in the original's storage order (the oblique copy shares the original's voxels).
        back = seg if name == "oblique" else reorient(seg, original_codes)
        scores = dice_per_label(reference_array, sitk.GetArrayFromImage(back), [1, 2, 3])
        assert min(scores.values()) >= 0.98, (name, scores)


def test_phantom_permutations_flips_and_oblique(trained_models: Path, tmp_path: Path) -> None:
    _check_orientation_property(pelvis_phantom(4242).ct, trained_models, tmp_path, ["LPS", "PIR", "ASL", "ILP"],
                                need_labels=True)


@pytest.mark.slow
def test_real_lps_crop(trained_models: Path, real_data: Path, tmp_path: Path) -> None:
    ct = sitk.ReadImage(str(real_data / "totalsegmentator" / "aorta_report" / "test_result" / "models"
                            / "ct_cropped.nii.gz"))
    assert direction_to_axcodes(np.asarray(ct.GetDirection()).reshape(3, 3)) == "LPS"
    _check_orientation_property(ct, trained_models, tmp_path, ["RAS"], need_labels=False)


def test_real_pir_crop(trained_models: Path, real_data: Path, tmp_path: Path) -> None:
    ct = sitk.ReadImage(str(real_data / "tptbox_vertebra" / "sub-ct_label-22_ct.nii.gz"))
    assert direction_to_axcodes(np.asarray(ct.GetDirection()).reshape(3, 3)) == "PIR"
    _check_orientation_property(ct, trained_models, tmp_path, ["RAS", "LPI"], need_labels=False)
