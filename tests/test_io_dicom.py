"""DICOM input: series discovery (nested, several series, zip), geometry checked against the slices,
and the documented behaviour of the edge cases (single slice, multi-frame, tilt, uneven, 4D, non-CT)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from autoorgan.errors import CaseError, InputError
from autoorgan.io.cases import find_cases
from autoorgan.io.dicom import check_slice_positions
from autoorgan.io.reading import read_case, source_sidecar


def _gdcm_image(folder: Path) -> sitk.Image:
    """The series as SimpleITK's own GDCM series reader sees it (the reference geometry)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_grid(volume_geometry: object, image: sitk.Image) -> None:
    assert volume_geometry.size == image.GetSize()
    assert np.allclose(volume_geometry.spacing, image.GetSpacing(), atol=1e-6)
    assert np.allclose(volume_geometry.origin, image.GetOrigin(), atol=1e-5)
    assert np.allclose(volume_geometry.direction, image.GetDirection(), atol=1e-6)


@pytest.fixture(scope="module")
def jpeg2000_series(real_data: Path) -> Path:
    return real_data / "totalsegmentator" / "example_ct_dicom"


def test_jpeg2000_series_without_uids_reads_with_gdcm_geometry(jpeg2000_series: Path) -> None:
    cases = find_cases(jpeg2000_series)
    assert [c.case_id for c in cases] == ["example_ct_dicom_CT_Body_3.0"]
    case = cases[0]
    assert case.kind == "dicom" and len(case.dicom.files) == 20
    volume = read_case(case)
    reference = _gdcm_image(jpeg2000_series)
    _assert_grid(volume.geometry, reference)
    assert volume.geometry.size == (512, 512, 20)
    assert np.allclose(volume.geometry.origin, (-249.51171875, -437.51171875, -804.5))
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(reference).transpose(2, 1, 0))
    assert -1100 < volume.array.min() < -900 and volume.array.max() > 500  # HU, rescale applied
    assert source_sidecar(case) == {"dicom": {"series_instance_uid": "", "series_number": None,
                                              "series_description": "CT Body 3.0", "modality": "CT", "files": 20}}


def test_nested_folders_and_several_series_give_readable_cases(real_data: Path, jpeg2000_series: Path,
                                                               tmp_path: Path) -> None:
    study = tmp_path / "study"
    nested = study / "patient" / "ct abdomen" / "slices"
    nested.mkdir(parents=True)
    for i, src in enumerate(sorted(jpeg2000_series.iterdir())):
        shutil.copy(src, nested / f"IM{i:04d}")  # no .dcm ending
    mixed = study / "mixed"
    mixed.mkdir()
    for src in sorted((real_data / "dcmqi_ct3slice" / "dicom").iterdir()):
        shutil.copy(src, mixed / src.name)
    for i, src in enumerate(sorted(jpeg2000_series.iterdir())):
        shutil.copy(src, mixed / f"body_{i:02d}.dcm")
    (study / "notes.txt").write_text("not an image")
    cases = {c.case_id: c for c in find_cases(study)}
    assert sorted(cases) == ["mixed_CT_Body_3.0", "mixed_series2", "patient_ct_abdomen_slices_CT_Body_3.0"]
    assert cases["mixed_series2"].dicom.series_uid == "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"
    assert len(cases["mixed_series2"].dicom.files) == 3 and len(cases["mixed_CT_Body_3.0"].dicom.files) == 20
    _assert_grid(read_case(cases["patient_ct_abdomen_slices_CT_Body_3.0"]).geometry, _gdcm_image(jpeg2000_series))
    _assert_grid(read_case(cases["mixed_series2"]).geometry, _gdcm_image(real_data / "dcmqi_ct3slice" / "dicom"))


def test_zip_of_a_dicom_folder_is_read_and_its_extraction_removed(jpeg2000_series: Path, tmp_path: Path) -> None:
    archive = tmp_path / "scan 7.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for src in sorted(jpeg2000_series.iterdir()):
            zf.write(src, f"export/DICOM/{src.name}")
        zf.writestr("export/readme.txt", "hello")
    before = set(Path(tempfile.gettempdir()).glob("autoorgan-dicom-*"))
    cases = find_cases(archive)
    assert [c.case_id for c in cases] == ["scan_7_CT_Body_3.0"]
    volume = read_case(cases[0])
    _assert_grid(volume.geometry, _gdcm_image(jpeg2000_series))
    assert set(Path(tempfile.gettempdir()).glob("autoorgan-dicom-*")) == before
    # a zip inside an input folder is a case too, beside image files
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(archive, folder / "scan7.zip")
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(folder / "other.nrrd"))
    assert sorted(c.case_id for c in find_cases(folder)) == ["other", "scan7_CT_Body_3.0"]


def test_single_slice_is_a_clear_case_error(real_data: Path) -> None:
    cases = find_cases(real_data / "pydicom_edge" / "CT_small.dcm")
    assert [c.case_id for c in cases] == ["CT_small"]
    with pytest.raises(CaseError, match=r"^CT_small: DICOM series has a single slice, not a volume"):
        read_case(cases[0])


def test_enhanced_multiframe_ct_uses_its_frame_positions(real_data: Path) -> None:
    cases = find_cases(real_data / "pydicom_edge" / "eCT_Supplemental.dcm")
    assert [c.case_id for c in cases] == ["eCT_Supplemental"] and cases[0].dicom.multiframe
    volume = read_case(cases[0])
    assert volume.geometry.size == (512, 512, 2)
    assert np.allclose(volume.geometry.spacing, (0.388672, 0.388672, 10.0))
    assert np.allclose(volume.geometry.origin, (99.5, -301.5, -159.0))
    # frames lie at z = -159 and -149: the slice axis points to +z, the rows to -x
    assert np.allclose(volume.geometry.direction, (-1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_gantry_tilt_with_uneven_spacing_is_refused_not_misread(real_data: Path) -> None:
    cases = find_cases(real_data / "dcm_qa_ct_GE_head_tilt" / "dicom")
    assert len(cases) == 1 and len(cases[0].dicom.files) == 28
    with pytest.raises(CaseError, match=r"gantry tilt .*about 18\.5 degrees"):
        read_case(cases[0])


def test_missing_slice_is_refused(jpeg2000_series: Path, tmp_path: Path) -> None:
    files = sorted(jpeg2000_series.iterdir())
    for src in files[:8] + files[9:]:
        shutil.copy(src, tmp_path / src.name)
    with pytest.raises(CaseError, match=r"uneven slice spacing \(2\.00 to 4\.00 mm"):
        read_case(find_cases(tmp_path)[0])


def test_several_images_per_position_4d_is_refused(real_data: Path, tmp_path: Path) -> None:
    for phase in (1, 2):
        for src in sorted((real_data / "dcmqi_ct3slice" / "dicom").iterdir()):
            ds = pydicom.dcmread(src)
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(tmp_path / f"phase{phase}_{src.name}")
    with pytest.raises(CaseError, match=r"6 images at 3 slice positions \(a 4D or multi-phase series\)"):
        read_case(find_cases(tmp_path)[0])


def test_non_ct_modality_is_read_with_a_warning(real_data: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    for src in sorted((real_data / "dcmqi_ct3slice" / "dicom").iterdir()):
        ds = pydicom.dcmread(src)
        ds.Modality = "MR"
        ds.save_as(tmp_path / src.name)
    case = find_cases(tmp_path)[0]
    with caplog.at_level(logging.WARNING):
        volume = read_case(case)
    assert volume.geometry.size == (512, 512, 3)
    assert f"{case.case_id}: modality is MR, not CT" in caplog.text


def test_no_patient_identifiers_in_what_is_recorded(real_data: Path, tmp_path: Path) -> None:
    for src in sorted((real_data / "dcmqi_ct3slice" / "dicom").iterdir()):
        ds = pydicom.dcmread(src)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-12345", "19700101"
        ds.save_as(tmp_path / src.name)
    case = find_cases(tmp_path)[0]
    text = repr(source_sidecar(case)) + repr(case)
    assert "Doe" not in text and "PID-12345" not in text and "19700101" not in text


def test_folder_without_any_image_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no image files .* and no DICOM series"):
        find_cases(tmp_path)


# -- pure checks of slice positions ---------------------------------------------------------------


def _stack(steps: list[float], shift_per_slice: float = 0.0) -> np.ndarray:
    z = np.concatenate([[0.0], np.cumsum(steps)])
    return np.stack([np.zeros_like(z), shift_per_slice * np.arange(len(z)), z], axis=1)


def test_regular_positions_give_their_spacing() -> None:
    assert check_slice_positions(_stack([2.5] * 9), np.array([0.0, 0.0, 1.0])) == pytest.approx(2.5)


@pytest.mark.parametrize(("positions", "message"), [
    (_stack([]), "single slice"),
    (_stack([2.0, 0.0, 2.0]), "4 images at 3 slice positions"),
    (_stack([2.0, 2.0, 2.0], shift_per_slice=0.7), "gantry tilt"),
    (_stack([2.0, 2.0, 3.0]), "uneven slice spacing"),
])
def test_irregular_positions_are_refused(positions: np.ndarray, message: str) -> None:
    with pytest.raises(CaseError, match=message):
        check_slice_positions(positions, np.array([0.0, 0.0, 1.0]))


def test_series_split_over_numbered_folders_is_one_case(jpeg2000_series: Path, tmp_path: Path) -> None:
    files = sorted(jpeg2000_series.iterdir())
    for i, src in enumerate(files):
        part = tmp_path / "exam" / "DICOM" / f"{i // 8:04d}"
        part.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, part / src.name)
    (tmp_path / "exam" / "DICOM" / "loop").symlink_to(tmp_path / "exam")
    cases = find_cases(tmp_path / "exam")
    assert [c.case_id for c in cases] == ["DICOM_CT_Body_3.0"] and len(cases[0].dicom.files) == 20
    _assert_grid(read_case(cases[0]).geometry, _gdcm_image(jpeg2000_series))
