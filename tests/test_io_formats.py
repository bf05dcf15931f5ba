"""NRRD (.nrrd/.nhdr) and MetaImage (.mha/.mhd) inputs beside NIfTI, mixed in one folder; 4D refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.demo.phantom import reorient
from autoorgan.errors import CaseError
from autoorgan.io.cases import find_cases
from autoorgan.io.reading import read_case
from fixture_model import pelvis_phantom


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    image = reorient(pelvis_phantom(5).ct, "LPS")
    image.SetOrigin((-12.5, 40.0, -310.25))
    return image


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_each_format_reads_with_its_exact_grid_and_voxels(ct: sitk.Image, tmp_path: Path, ending: str) -> None:
    sitk.WriteImage(ct, str(tmp_path / f"case.one{ending}"))
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case.one"] and cases[0].kind == "image"
    volume = read_case(cases[0])
    assert volume.geometry.size == ct.GetSize()
    assert np.allclose(volume.geometry.spacing, ct.GetSpacing())
    assert np.allclose(volume.geometry.origin, ct.GetOrigin())
    assert np.allclose(volume.geometry.direction, ct.GetDirection())
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(ct).transpose(2, 1, 0))


def test_folder_may_mix_formats(ct: sitk.Image, tmp_path: Path) -> None:
    for name in ("a.nii.gz", "b.nrrd", "c.mha", "d.mhd", "e.nhdr"):
        sitk.WriteImage(ct, str(tmp_path / name))
    cases = find_cases(tmp_path)
    # .raw/.raw.gz data files of .mhd/.nhdr headers are not cases of their own
    assert [c.case_id for c in cases] == ["a", "b", "c", "d", "e"]
    assert {c.path.name for c in cases} == {"a.nii.gz", "b.nrrd", "c.mha", "d.mhd", "e.nhdr"}


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_header_checks_accept_every_whole_file(ct: sitk.Image, tmp_path: Path, ending: str, compress: bool,
                                               dtype: type) -> None:
    """The declared-versus-held size checks (raw and compressed data, attached and detached)
    never refuse a whole file, and the voxels read are exactly those written."""
    image = sitk.Cast(ct, sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype)).GetPixelID())
    path = tmp_path / f"whole{ending}"
    sitk.WriteImage(image, str(path), useCompression=compress)
    volume = read_case(find_cases(path)[0])
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    assert np.allclose(volume.geometry.origin, ct.GetOrigin())


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".nii.gz"])
def test_4d_image_is_a_clear_case_error(tmp_path: Path, ending: str) -> None:
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), dtype=np.int16), isVector=False)
    path = tmp_path / f"dynamic{ending}"
    sitk.WriteImage(image, str(path))
    with pytest.raises(CaseError, match=r"image is 4D \(6x5x4x3\); a 3D CT volume is needed"):
        read_case(find_cases(path)[0])
