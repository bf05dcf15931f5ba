"""RT structure sets (``--output-type rtstruct``): contours that fill back to the label map on oblique
and multi-frame series, references to the images they lie on, dciodvfy, and end to end with the real
fixture model on a real DICOM series."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.io.dicom import load_datasets, read_series, scan_file, scan_folder
from autoorgan.io.rtstruct import RTSTRUCT_SUFFIX, build_rtstruct, slice_contours
from autoorgan.registry.colors import label_colors
from dicom_checks import dciodvfy, dice, fill_contours
from fixture_model import FIXTURE_TASK, pelvis_phantom

runner = CliRunner()
NAMES = {1: "kidney_left", 2: "liver", 3: "spleen", 4: "pancreas"}


def _fill(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    from matplotlib.path import Path as Polygon

    centres = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).reshape(-1, 2)
    mask = np.zeros(shape, dtype=bool)
    for points in contours:
        mask ^= Polygon(points).contains_points(centres).reshape(shape)
    return mask


def test_slice_contours_fill_back_to_the_mask_holes_and_diagonals_included() -> None:
    mask = np.zeros((12, 10), dtype=bool)  # [column, row]
    mask[1:9, 1:8] = True
    mask[3:6, 3:5] = False          # a hole
    mask[4, 4] = True               # an island in the hole
    mask[10, 8] = mask[11, 9] = True  # two voxels touching only at a corner, at the image's edge
    contours = slice_contours(mask)
    assert np.array_equal(_fill(contours, mask.shape), mask)
    for points in contours:
        # between voxel centres: one coordinate on the half grid; no point in the middle of a straight run
        assert np.all(np.isclose(points % 1.0, 0.5).any(axis=1))
        before, after = points - np.roll(points, 1, 0), np.roll(points, -1, 0) - points
        assert np.all(np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 0)
    assert slice_contours(np.zeros((5, 5), dtype=bool)) == []


def _oblique_series(folder: Path, size: tuple[int, int, int] = (40, 32, 9)) -> None:
    """A CT series on an oblique grid: rotated rows and columns, unequal pixel spacing, 2.5 mm slices."""
    columns, rows, slices = size
    row_dir = np.array([np.cos(0.5), np.sin(0.5), 0.25])
    row_dir /= np.linalg.norm(row_dir)
    col_dir = np.cross([0.1, -0.3, 1.0], row_dir)
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    spacing_row, spacing_col = 1.1, 0.8  # PixelSpacing: between rows, between columns
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Oblique", "OBL-1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20260101", "120000", "S1", "A1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", 4, k + 1, "oblique"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-20.0, 10.0, 30.0]) + 2.5 * k * normal]
        ds.PixelSpacing, ds.SliceThickness = [spacing_row, spacing_col], 2.5
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(-100, 100, (rows, columns), dtype=np.int16).tobytes()
        ds.save_as(folder / f"im{(k * 7) % slices:03d}", enforce_file_format=True)  # file order is not slice order


def _labels(size: tuple[int, int, int]) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(n) for n in size), indexing="ij")
    labels = np.zeros(size, dtype=np.uint8)
    labels[((x - 14) / 9.0) ** 2 + ((y - 15) / 7.0) ** 2 + ((z - 4) / 3.5) ** 2 <= 1] = 1
    labels[((x - 14) / 3.0) ** 2 + ((y - 15) / 2.5) ** 2 <= 1] = 0  # a hole through the kidney
    labels[(x >= 30) & (y <= 8) & (z >= 2)] = 2                        # at the image's corner
    labels[(np.abs(x - 30) <= 2) & (np.abs(y - 24) <= 2) & (z == 5)] = 3
    labels[(np.abs(x - 36) <= 1) & (np.abs(y - 28) <= 1) & (z == 5)] = 3  # a second piece on one slice
    return labels


@pytest.fixture(scope="module")
def oblique(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, Path]:
    """An oblique series, a label map on its grid and the RT structure set written of it."""
    root = tmp_path_factory.mktemp("oblique")
    _oblique_series(root / "series")
    [series] = scan_folder(root / "series")
    volume = read_series(series, "oblique")
    labels = _labels(volume.geometry.size)
    ds, numbers = build_rtstruct(load_datasets(series), labels, volume.geometry, NAMES, label_colors(NAMES),
                                 case_id="oblique", description="autoorgan test")
    assert numbers == {1: 1, 2: 2, 3: 3}  # pancreas is absent: no ROI
    ds.save_as(root / f"oblique{RTSTRUCT_SUFFIX}", enforce_file_format=True)
    return root / "series", labels, root / f"oblique{RTSTRUCT_SUFFIX}"


def _series_image(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_oblique_series_contours_fill_back_exactly_on_the_images_they_reference(oblique: tuple[Path, np.ndarray, Path]) \
        -> None:
    folder, labels, path = oblique
    rt = pydicom.dcmread(path)
    images = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())}
    source = next(iter(images.values()))
    masks = fill_contours(rt, _series_image(folder))
    assert list(masks) == ["kidney_left", "liver", "spleen"]
    for value, name in ((1, "kidney_left"), (2, "liver"), (3, "spleen")):
        assert np.array_equal(masks[name], labels.transpose(2, 1, 0) == value), name
    colors = label_colors(NAMES)
    assert [list(r.ROIDisplayColor) for r in rt.ROIContourSequence] == [list(colors[v]) for v in (1, 2, 3)]
    # every contour references the image whose plane it lies in
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            image = images[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.asarray(image.ImageOrientationPatient, dtype=float)
            normal = np.cross(iop[:3], iop[3:])
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert np.allclose((points - np.asarray(image.ImagePositionPatient, dtype=float)) @ normal, 0, atol=1e-3)
    referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence} == set(images)
    assert rt.FrameOfReferenceUID == source.FrameOfReferenceUID == rt.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    assert (rt.StudyInstanceUID, rt.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert rt.SeriesInstanceUID != source.SeriesInstanceUID and rt.Modality == "RTSTRUCT"


def test_oblique_rtstruct_passes_dciodvfy(oblique: tuple[Path, np.ndarray, Path]) -> None:
    errors, warnings = dciodvfy(oblique[2])
    assert errors == [], errors
    assert warnings == [], warnings


def test_multiframe_image_is_referenced_frame_by_frame(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "pydicom_edge" / "eCT_Supplemental.dcm"
    [series] = scan_file(path)
    volume = read_series(series, "eCT")
    labels = np.zeros(volume.geometry.size, dtype=np.uint8)
    labels[200:260, 300:330, 1] = 2  # the second frame only
    labels[100:120, 100:110, :] = 1
    ds, _ = build_rtstruct(load_datasets(series), labels, volume.geometry, NAMES, label_colors(NAMES),
                           case_id="eCT", description="autoorgan test")
    liver = ds.ROIContourSequence[1].ContourSequence
    assert [c.ContourImageSequence[0].ReferencedFrameNumber for c in liver] == [2]
    ds.save_as(tmp_path / "eCT.rtstruct.dcm", enforce_file_format=True)
    masks = fill_contours(pydicom.dcmread(tmp_path / "eCT.rtstruct.dcm"), sitk.ReadImage(str(path)))
    for value, name in ((1, "kidney_left"), (2, "liver")):
        assert np.array_equal(masks[name], labels.transpose(2, 1, 0) == value), name
    errors, _ = dciodvfy(tmp_path / "eCT.rtstruct.dcm")
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------
# End to end: the fixture model on the real DICOM series, beside an image file


@pytest.fixture(scope="module")
def rtstruct_run(trained_models: Path, real_data: Path, tmp_path_factory: pytest.TempPathFactory) \
        -> tuple[Path, str, int]:
    root = tmp_path_factory.mktemp("rtstruct_run")
    shutil.copytree(real_data / "totalsegmentator" / "example_ct_dicom", root / "in" / "series")
    sitk.WriteImage(pelvis_phantom(5).ct, str(root / "in" / "p5.nii.gz"))
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(root / "in"), "-o", str(root / "out"),
                                 "--models-dir", str(trained_models), "--device", "cpu",
                                 "--output-type", "rtstruct"])
    return root, result.output, result.exit_code


@pytest.mark.e2e
@pytest.mark.slow
def test_real_dicom_series_to_rtstruct_and_image_input_refused(rtstruct_run: tuple[Path, str, int]) -> None:
    root, output, exit_code = rtstruct_run
    out, case = root / "out", "series_CT_Body_3.0"
    # the image file fails its case with one line; the DICOM series is done
    assert exit_code == 1, output
    error = json.loads((out / "p5.error.json").read_text())
    assert "--output-type rtstruct needs DICOM input" in error["error"] and "\n" not in error["error"]
    assert not (out / f"p5{RTSTRUCT_SUFFIX}").exists()
    sidecar = json.loads((out / f"{case}.json").read_text())
    assert sidecar["rtstruct"]["file"] == f"{case}{RTSTRUCT_SUFFIX}"
    assert sidecar["output_options"]["output_type"] == "rtstruct"
    label_image = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    labels = sitk.GetArrayFromImage(label_image)  # [z, y, x]
    table = {int(k): v for k, v in sidecar["labels"].items()}
    present = [v for v in sorted(table) if np.any(labels == v)]
    assert present, "the fixture model found no structure in the real series"
    rt = pydicom.dcmread(out / f"{case}{RTSTRUCT_SUFFIX}")
    assert [r.ROIName for r in rt.StructureSetROISequence] == [table[v] for v in present]
    assert sidecar["rtstruct"]["rois"] == {str(i): table[v] for i, v in enumerate(present, start=1)}
    colors = label_colors(table)
    assert [tuple(int(c) for c in r.ROIDisplayColor) for r in rt.ROIContourSequence] == [colors[v] for v in present]
    # contours fill back onto the series grid as the label map (Dice >= 0.95 from 1 ml)
    masks = fill_contours(rt, label_image)  # the series' grid (test_outputs_e2e checks the label map has it)
    voxel_ml = float(np.prod(label_image.GetSpacing())) / 1000.0
    measured = {}
    for value in present:
        if (labels == value).sum() * voxel_ml >= 1.0:
            measured[table[value]] = dice(masks[table[value]], labels == value)
    assert measured and min(measured.values()) >= 0.95, measured
    # one series referenced, every contour on one of its images, the algorithm named
    referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    images = {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence}
    assert len(images) == 20
    assert {c.ContourImageSequence[0].ReferencedSOPInstanceUID for r in rt.ROIContourSequence
            for c in r.ContourSequence} <= images
    algorithm = rt.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "autoorgan" and f"dataset_id={sidecar['dataset_id']}" in algorithm.AlgorithmParameters
    errors, _ = dciodvfy(out / f"{case}{RTSTRUCT_SUFFIX}")
    assert errors == [], errors


@pytest.mark.e2e
@pytest.mark.slow
def test_continue_keeps_a_complete_rtstruct(rtstruct_run: tuple[Path, str, int], trained_models: Path) -> None:
    root, _, _ = rtstruct_run
    written = root / "out" / f"series_CT_Body_3.0{RTSTRUCT_SUFFIX}"
    before = written.stat().st_mtime_ns
    result = runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(root / "in"), "-o", str(root / "out"),
                                 "--models-dir", str(trained_models), "--device", "cpu", "--output-type", "rtstruct",
                                 "--continue", "--skip-failed"])
    assert result.exit_code == 1, result.output  # the image file's earlier failure stands
    assert "0 done, 1 already complete, 1 failed" in " ".join(result.output.split())
    assert written.stat().st_mtime_ns == before
