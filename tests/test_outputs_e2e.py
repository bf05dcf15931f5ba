"""DICOM in, DICOM SEG / NRRD / per-structure masks / ROI subsets out, end to end with the real
fixture model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e
runner = CliRunner()


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _seg_on_grid(seg: hd.seg.Segmentation, reference: sitk.Image) -> np.ndarray:
    """The SEG's combined segment numbers resampled (nearest, identity) onto ``reference``'s grid, [z, y, x]."""
    volume = seg.get_volume(combine_segments=True)
    affine = np.asarray(volume.affine)  # LPS; array axes (slice, row, column)
    image = sitk.GetImageFromArray(np.asarray(volume.array).astype(np.uint8))  # ITK index (column, row, slice)
    columns = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple((columns / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled)


def _series_image(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.slow
def test_real_dicom_series_to_label_map_masks_and_dicom_seg(trained_models: Path, real_data: Path,
                                                            tmp_path: Path) -> None:
    series = real_data / "totalsegmentator" / "example_ct_dicom"
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(series), "-o", str(out),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--quiet",
                                 "--output-type", "dicom-seg", "--split"])
    assert result.exit_code == 0, result.output
    case = "example_ct_dicom_CT_Body_3.0"  # folder and series description
    label_image = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    _assert_same_grid(label_image, _series_image(series))
    labels = sitk.GetArrayFromImage(label_image)
    sidecar = json.loads((out / f"{case}.json").read_text())
    assert sidecar["input"] == "example_ct_dicom"
    assert sidecar["dicom"] == {"series_instance_uid": "", "series_number": None,
                                "series_description": "CT Body 3.0", "modality": "CT", "files": 20}
    # per-structure masks
    assert sorted(sidecar["structure_masks"]) == ["hip_left", "hip_right", "sacrum"]
    for value, name in {1: "hip_left", 2: "hip_right", 3: "sacrum"}.items():
        mask = sitk.ReadImage(str(out / case / f"{name}.nii.gz"))
        _assert_same_grid(mask, label_image)
        assert np.array_equal(sitk.GetArrayFromImage(mask), (labels == value).astype(np.uint8))
    # DICOM SEG round trip: one segment per present structure, masks equal to the label map
    present = sorted(int(v) for v in np.unique(labels) if v)
    assert present, "the fixture model found no structure in the real series"
    assert sidecar["dicom_seg"]["file"] == f"{case}.seg.dcm"
    seg = hd.seg.segread(out / f"{case}.seg.dcm")
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    hip = {1: "hip_left", 2: "hip_right", 3: "sacrum"}
    assert list(names.values()) == [hip[v] for v in present]
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    back = _seg_on_grid(seg, label_image)
    by_number = {number: next(v for v, n in hip.items() if n == name) for number, name in names.items()}
    mapped = np.zeros_like(back)
    for number, value in by_number.items():
        mapped[back == number] = value
    assert np.array_equal(mapped, labels)
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    # nothing identifying the patient outside the SEG itself
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    text = (out / f"{case}.json").read_text() + result.output
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(source.get(keyword, "") or "")
        assert not value or value not in text


@pytest.mark.slow
def test_dicom_seg_references_the_source_series(trained_models: Path, real_data: Path, tmp_path: Path) -> None:
    # The real series with the UIDs its anonymisation blanked put back (pixel data untouched).
    source = tmp_path / "series"
    source.mkdir()
    study, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted((real_data / "totalsegmentator" / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(source / path.name)
    result = api.predict(task=FIXTURE_TASK, input=source, output=tmp_path / "out", models_dir=trained_models,
                         device="cpu", output_type="dicom-seg")
    assert result.ok, [r.error for r in result.results]
    labels = sitk.ReadImage(str(tmp_path / "out" / "series_CT_Body_3.0.nii.gz"))
    _assert_same_grid(labels, _series_image(source))
    sidecar = json.loads((tmp_path / "out" / "series_CT_Body_3.0.json").read_text())
    assert sidecar["dicom"]["series_instance_uid"] == series_uid
    seg = hd.seg.segread(tmp_path / "out" / "series_CT_Body_3.0.seg.dcm")
    assert seg.StudyInstanceUID == study and seg.SeriesInstanceUID != series_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in source.iterdir()}


def test_roi_subset_split_only_nrrd_and_continue(trained_models: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(pelvis_phantom(77).ct, str(tmp_path / "in" / "p77.mha"))
    shutil.copy(tmp_path / "in" / "p77.mha", tmp_path / "in" / "full.mha")
    out = tmp_path / "out"
    first = api.predict(task=FIXTURE_TASK, input=tmp_path / "in" / "p77.mha", output=out, models_dir=trained_models,
                        device="cpu", roi_subset="Sacrum, hip-left", split_only=True, output_type="nrrd")
    assert first.ok
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("autoorgan_", "index"))) == [
        "p77", "p77.json"]
    assert sorted(p.name for p in (out / "p77").iterdir()) == ["hip_left.nrrd", "sacrum.nrrd"]
    sidecar = json.loads((out / "p77.json").read_text())
    assert sidecar["label_map"] is None and sidecar["roi_subset"] == ["hip_left", "sacrum"]
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "p77" / "sacrum.nrrd"))).sum()) > 0
    again = api.predict(task=FIXTURE_TASK, input=tmp_path / "in" / "p77.mha", output=out, models_dir=trained_models,
                        device="cpu", roi_subset="sacrum,hip_left", split_only=True, output_type="nrrd", resume=True)
    assert [r.status for r in again.results] == ["skipped"]
    # the label map as NRRD with only the subset's values, on the input's grid
    full = api.predict(task=FIXTURE_TASK, input=tmp_path / "in" / "full.mha", output=tmp_path / "out2",
                       models_dir=trained_models, device="cpu", roi_subset=["sacrum"], output_type="nrrd")
    assert full.ok
    seg = sitk.ReadImage(str(tmp_path / "out2" / "full.nrrd"))
    _assert_same_grid(seg, sitk.ReadImage(str(tmp_path / "in" / "full.mha")))
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) == {0, 3}


def test_roi_typo_and_dicom_seg_for_nifti_are_clear_errors(trained_models: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(pelvis_phantom(78).ct, str(tmp_path / "in" / "p78.nii.gz"))
    base = ["predict", "--task", FIXTURE_TASK, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
            "--models-dir", str(trained_models), "--device", "cpu", "--quiet"]
    typo = runner.invoke(app, [*base, "--roi-subset", "sacrun"])
    assert typo.exit_code == 2
    assert "'sacrun' is not a structure of task 'hip'; did you mean 'sacrum'?" in typo.output
    assert "Traceback" not in typo.output
    bad_type = runner.invoke(app, [*base, "--output-type", "dicom"])
    assert bad_type.exit_code == 2 and "output type must be one of nifti, nrrd, dicom-seg" in bad_type.output
    seg_for_nifti = runner.invoke(app, [*base, "--output-type", "dicom-seg"])
    assert seg_for_nifti.exit_code == 1
    assert "p78: --output-type dicom-seg needs DICOM input" in " ".join(seg_for_nifti.output.split())
