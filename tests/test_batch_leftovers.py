"""Reliability of batches: run records of aborted batches, case ids that clash with autoorgan's own
files, ``--continue`` with other output options, and DICOM series in training data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.batch.outputs import (
    LABEL_SHA256_KEY,
    LABEL_SIZE_KEY,
    OUTPUT_OPTIONS_KEY,
    CaseOutputs,
    reserved_case_id_problem,
)
from autoorgan.cli.app import app
from autoorgan.errors import InputError
from autoorgan.io.writing import file_digest
from autoorgan.models.store import require_model
from autoorgan.registry.tasks import load_registry
from autoorgan.report.run_record import RECORD_GLOB
from autoorgan.training.dataset import find_training_cases
from fixture_model import FIXTURE_TASK, pelvis_phantom

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"}, terminal_width=250)


def _write_case(folder: Path, name: str, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    sitk.WriteImage(pelvis_phantom(seed).ct, str(path))
    return path


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(RECORD_GLOB))]


# ---------------------------------------------------------------------------------------------
# e. The run record of an aborted batch


@pytest.mark.e2e
def test_model_that_cannot_load_still_leaves_a_run_record_with_the_reason(trained_models: Path,
                                                                        tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_models, models)
    require_model(load_registry()[FIXTURE_TASK], models).checkpoint.write_bytes(b"this is not a checkpoint")
    _write_case(tmp_path / "in", "a", 11)
    out = tmp_path / "out"
    result = _invoke("predict", "--task", FIXTURE_TASK, "-i", str(tmp_path / "in"), "-o", str(out),
                     "--models-dir", str(models), "--device", "cpu", "--quiet")
    assert result.exit_code == 3, result.output
    assert "cannot load the model" in result.output and "Traceback" not in result.output
    [record] = _records(out)
    assert record["aborted"].startswith("cannot load the model of task 'hip' in ")
    assert record["summary"] == {"done": 0, "skipped": 0, "failed": 0}
    assert record["options"]["task"] == FIXTURE_TASK
    assert not (out / "a.nii.gz").exists() and not (out / "a.json").exists()


@pytest.mark.e2e
def test_output_error_mid_batch_leaves_a_run_record_with_the_done_cases(trained_models: Path,
                                                                       tmp_path: Path) -> None:
    _write_case(tmp_path / "in", "a", 12)
    _write_case(tmp_path / "in", "b", 13)
    out = tmp_path / "out"
    (out / "b.nii.gz").mkdir(parents=True)  # b's label map cannot be written: the batch stops there
    result = _invoke("predict", "--task", FIXTURE_TASK, "-i", str(tmp_path / "in"), "-o", str(out),
                     "--models-dir", str(trained_models), "--device", "cpu", "--quiet")
    assert result.exit_code == 4, result.output
    [record] = _records(out)
    assert "cannot write" in record["aborted"] and "b.nii.gz" in record["aborted"]
    assert [(c["case"], c["status"]) for c in record["cases"]] == [("a", "done")]
    assert record["summary"]["done"] == 1
    assert (out / "a.json").is_file()


def test_completed_batches_record_no_abort(tmp_path: Path) -> None:
    from autoorgan.batch.job import BatchResult, CaseResult
    from autoorgan.report.run_record import RunRecorder

    recorder = RunRecorder(part_id=0, num_parts=1, options={"task": "hip"})
    batch = BatchResult(results=[CaseResult("a", "done", 1.0)])
    assert recorder.build(batch)["aborted"] is None
    batch.aborted = "cannot write x"
    recorder(batch, tmp_path)
    assert json.loads(recorder.written.read_text())["aborted"] == "cannot write x"


# ---------------------------------------------------------------------------------------------
# f. Case ids that would clash with another case's files


@pytest.mark.parametrize(("case_id", "problem"), [
    ("x.error", "case id 'x.error' ends in '.error'"),
    ("scan.STATS", "case id 'scan.STATS' ends in '.stats'"),
    ("x", None), ("x.seg", None), ("error", None), ("x_error", None), ("x.errors", None),
])
def test_reserved_case_id_endings(case_id: str, problem: str | None) -> None:
    found = reserved_case_id_problem(case_id)
    assert (found is None) if problem is None else found.startswith(problem)


@pytest.mark.e2e
def test_case_id_ending_in_error_is_refused_and_leaves_the_other_case_intact(trained_models: Path,
                                                                            tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _write_case(inputs, "x", 21)
    _write_case(inputs, "x.error", 22)
    _write_case(inputs, "x.stats", 23)
    result = _invoke("predict", "--task", FIXTURE_TASK, "-i", str(inputs), "-o", str(out), "--models-dir",
                     str(trained_models), "--device", "cpu", "--quiet", "--statistics")
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert ("x.error.nii.gz: case id 'x.error' ends in '.error', which autoorgan keeps for its own files "
            "('x.error.json' would be taken for a file of case 'x'); rename the input") in flat
    assert "x.stats.nii.gz: case id 'x.stats' ends in '.stats'" in flat
    # Case x is done, and its files are its own.
    assert json.loads((out / "x.json").read_text())["task"] == FIXTURE_TASK
    assert json.loads((out / "x.stats.json").read_text())["case"] == "x"
    assert not (out / "x.error.json").exists()
    failure = json.loads((out / "x.error.error.json").read_text())
    assert failure["case_id"] == "x.error" and "ends in '.error'" in failure["error"]
    assert not (out / "x.error.nii.gz").exists() and not (out / "x.stats.nii.gz").exists()


# ---------------------------------------------------------------------------------------------
# g. --continue is complete only for the same output options


def test_is_complete_compares_the_recorded_output_options(tmp_path: Path) -> None:
    outputs = CaseOutputs(tmp_path, "c")
    (tmp_path / "c.nii.gz").write_bytes(b"x")
    pair = {"label_map": "c.nii.gz", LABEL_SHA256_KEY: file_digest(tmp_path / "c.nii.gz").sha256, LABEL_SIZE_KEY: 1}
    options = {"output_type": "nifti", "split": False, "split_only": False, "roi_subset": None}
    (tmp_path / "c.json").write_text(json.dumps({"task": "hip", "dataset_id": 114, OUTPUT_OPTIONS_KEY: options,
                                                 **pair}))
    assert outputs.is_complete("hip", 114, options)
    assert outputs.is_complete("hip", 114)  # no options asked: as before
    assert not outputs.is_complete("hip", 114, {**options, "split": True})
    assert not outputs.is_complete("hip", 114, {**options, "roi_subset": ["sacrum"]})
    (tmp_path / "c.json").write_text(json.dumps({"task": "hip", "dataset_id": 114, **pair}))  # an older sidecar
    assert not outputs.is_complete("hip", 114, options)


@pytest.mark.e2e
def test_continue_with_other_output_options_redoes_the_case(trained_models: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _write_case(inputs, "c", 31)

    def run(**options: object) -> str:
        result = api.predict(task=FIXTURE_TASK, input=inputs, output=out, models_dir=trained_models, device="cpu",
                             resume=True, **options)
        [case] = result.results
        return case.status

    assert run() == "done"
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c.nii.gz")))
    assert run() == "skipped"
    assert run(split=True) == "done"
    assert sorted(p.name for p in (out / "c").iterdir()) == ["hip_left.nii.gz", "hip_right.nii.gz", "sacrum.nii.gz"]
    assert json.loads((out / "c.json").read_text())[OUTPUT_OPTIONS_KEY]["split"] is True
    assert run(split=True) == "skipped"
    assert run(output_type="nrrd") == "done"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c.nrrd"))), first)
    assert run(output_type="nrrd", roi_subset="sacrum") == "done"
    kept = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c.nrrd")))
    assert set(np.unique(kept)) <= {0, 3} and np.array_equal(kept == 3, first == 3)
    assert run(output_type="nrrd", roi_subset=["Sacrum"]) == "skipped"
    assert run(output_type="nrrd", roi_subset="sacrum", postprocess=False) == "done"
    assert json.loads((out / "c.json").read_text())[OUTPUT_OPTIONS_KEY]["postprocess"] == []  # no task repaired
    assert run(output_type="nrrd", roi_subset="sacrum", postprocess=False) == "skipped"


# ---------------------------------------------------------------------------------------------
# h. DICOM series in training data fail early, naming the folder


def test_dicom_series_in_training_images_is_refused_naming_its_folder(real_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_case(data / "images", "a", 41)
    _write_case(data / "labels", "a", 41)
    shutil.copytree(real_data / "dcmqi_ct3slice" / "dicom", data / "images" / "exam_b")
    with pytest.raises(InputError) as caught:
        find_training_cases(data)
    message = str(caught.value)
    assert message.startswith(str(data / "images" / "exam_b") + ": holds a DICOM series")
    assert "training reads image files only" in message
    result = _invoke("train", "--task", FIXTURE_TASK, "--data", str(data), "--models-dir", str(tmp_path / "models"),
                     "--work-dir", str(tmp_path / "work"), "--device", "cpu", "--quiet")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "exam_b: holds a DICOM series" in lines[0]
    assert not list((tmp_path / "work").rglob("dataset.json"))


def test_dicom_series_in_raw_dataset_labels_is_refused(real_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "Dataset501_X"
    _write_case(data / "imagesTr", "a_0000", 42)
    _write_case(data / "labelsTr", "a", 42)
    (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    shutil.copytree(real_data / "dcmqi_ct3slice" / "dicom", data / "labelsTr" / "seg_series")
    with pytest.raises(InputError, match="seg_series: holds a DICOM series"):
        find_training_cases(data)
