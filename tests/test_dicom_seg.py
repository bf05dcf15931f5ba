"""DICOM SEG and RT structure set of a real label map (13 of TotalSegmentator's structures on the real
DICOM series, organs, bones and muscles of both sides, taken onto the series' grid), written by the
output steps: laterality, colours, the algorithm, contours that fill back, dciodvfy, and no highdicom
chatter on the console."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from autoorgan.batch.job import CaseContext
from autoorgan.batch.outputs import CaseOutputs
from autoorgan.io.cases import find_cases
from autoorgan.io.dicom_seg import SEG_SUFFIX, DicomSegStep, laterality_code, structure_code
from autoorgan.io.reading import read_case
from autoorgan.io.rtstruct import RTSTRUCT_SUFFIX, RtStructStep
from autoorgan.registry.colors import label_colors
from autoorgan.registry.tasks import Task
from dicom_checks import dciodvfy, dice, fill_contours

#: The structures kept of the reference map: organs, a vessel, bones and muscles, sided and not.
KEPT = ("spleen", "liver", "stomach", "adrenal_gland_right", "vertebrae_T12", "aorta", "humerus_left",
        "humerus_right", "autochthon_left", "autochthon_right", "rib_left_8", "rib_right_8", "costal_cartilages")


@pytest.fixture(scope="module")
def written(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CaseContext, Path, str]:
    """The SEG and the RT structure set of the reference map, written into a fresh output folder,
    with what was logged at INFO and above while they were written."""
    folder = real_data / "totalsegmentator"
    table = {int(k): v for k, v in json.loads((folder / "class_map_total.json").read_text())["total"].items()}
    [case] = find_cases(folder / "example_ct_dicom")
    volume = read_case(case)
    reference = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
    grid = sitk.Image(list(volume.geometry.size), sitk.sitkUInt8)
    volume.geometry.apply_to(grid)
    on_grid = sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    labels = sitk.GetArrayFromImage(on_grid).transpose(2, 1, 0).copy()
    labels[~np.isin(labels, [v for v, name in table.items() if name in KEPT])] = 0
    out = tmp_path_factory.mktemp("seg_out")
    task = Task(name="total", dataset_id=291, labels=table)
    ctx = CaseContext(case=case, volume=volume, task=task, outputs=CaseOutputs(out, case.case_id), labels=labels,
                      sidecar={"made_with": {"models": {"total": {
                          "dataset_id": 291, "trainer": "nnUNetTrainer", "plans": "nnUNetPlans",
                          "configuration": "3d_fullres", "fold": "0", "checkpoint_sha256": "ab" * 32}}}})
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        DicomSegStep(label_colors(table))(ctx)
        RtStructStep(label_colors(table))(ctx)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    return ctx, out, "\n".join(f"{r.name}: {r.getMessage()}" for r in records)


def test_structure_codes_and_laterality() -> None:
    assert laterality_code("kidney_left").value == "7771000"
    assert laterality_code("rib_right_4").value == "24028007"
    assert laterality_code("vertebrae_L1") is None and laterality_code("sacrum") is None
    assert structure_code("kidney_left").meaning == "Kidney" and structure_code("hip_right").meaning == "Hip"


def test_seg_segments_carry_laterality_colours_and_the_algorithm(written: tuple[CaseContext, Path, str]) -> None:
    ctx, out, logged = written
    seg = hd.seg.segread(out / f"{ctx.case.case_id}{SEG_SUFFIX}")
    present = [v for v in sorted(ctx.task.labels) if np.any(ctx.labels == v)]
    assert {ctx.task.labels[v] for v in present} == set(KEPT)
    colors = label_colors(ctx.task.labels)
    sided = 0
    for item, value in zip(seg.SegmentSequence, present):
        name = ctx.task.labels[value]
        assert item.SegmentLabel == name
        modifiers = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
        side = laterality_code(name)
        if side is None:
            assert not modifiers and "AnatomicRegionSequence" not in item, name
        else:
            sided += 1
            assert [m.CodeValue for m in modifiers] == [side.value], name
            region = item.AnatomicRegionSequence[0]
            assert region.CodeValue == item.SegmentedPropertyTypeCodeSequence[0].CodeValue
            assert [m.CodeValue for m in region.AnatomicRegionModifierSequence] == [side.value]
        lab = hd.color.CIELabColor.from_dicom_value(tuple(item.RecommendedDisplayCIELabValue))
        assert np.abs(np.subtract(lab.to_rgb(), colors[value])).max() <= 1, name
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmFamilyCodeSequence[0].CodeValue) == ("autoorgan", "123110")
        assert "task=total" in algorithm.AlgorithmParameters and "dataset_id=291" in algorithm.AlgorithmParameters
        assert f"checkpoint_sha256={'ab' * 32}" in algorithm.AlgorithmParameters
    assert sided == 7
    # highdicom's progress messages stay out of the log; our own warning (blank UIDs) is there
    assert "highdicom" not in logged and "copy attributes" not in logged
    assert "references generated UIDs" in logged


def test_seg_passes_dciodvfy(written: tuple[CaseContext, Path, str]) -> None:
    ctx, out, _ = written
    errors, warnings = dciodvfy(out / f"{ctx.case.case_id}{SEG_SUFFIX}")
    assert errors == [], errors
    # What remains comes from the anonymised source series: a blank Patient ID and Study ID, and the
    # vendor's own coding scheme in its Procedure Code Sequence, copied with the study.
    assert all("Patient ID" in w or "Study ID" in w or "<SECTRA>" in w for w in warnings), warnings


def test_rtstruct_fills_back_and_passes_dciodvfy(written: tuple[CaseContext, Path, str]) -> None:
    ctx, out, _ = written
    path = out / f"{ctx.case.case_id}{RTSTRUCT_SUFFIX}"
    assert ctx.sidecar["rtstruct"]["file"] == path.name
    rt = pydicom.dcmread(path)
    grid = sitk.Image(list(ctx.volume.geometry.size), sitk.sitkUInt8)  # the series' grid (as read)
    ctx.volume.geometry.apply_to(grid)
    masks = fill_contours(rt, grid)
    by_name = {name: value for value, name in ctx.task.labels.items()}
    voxel_ml = float(np.prod(ctx.volume.geometry.spacing)) / 1000.0
    scores = {name: dice(mask, ctx.labels.transpose(2, 1, 0) == by_name[name]) for name, mask in masks.items()
              if (ctx.labels == by_name[name]).sum() * voxel_ml >= 1.0}
    assert len(scores) >= 10 and min(scores.values()) >= 0.95, scores
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert all("Patient ID" in w or "Study ID" in w for w in warnings), warnings
