"""No patient identifiers anywhere autoorgan writes or says, and no local variables in tracebacks.

A batch of DICOM series carrying distinctive identifying values (patient name, ID, birth date,
institution, accession number, referring physician) runs through the CLI with debug logging, on a
success path and on failure paths (an unreadable series, a refused single-slice series), with
statistics, preview, DICOM SEG, the overview page, run records and failure records. Every output
file and all console/log text is then searched for those values. The same holds for a
``--task all`` run (seven models, one whole-body label map, each task's own map kept).

DICOM SEG objects are the one exception, by the DICOM standard: a Segmentation IOD includes the
Patient and General Study modules of the images it segments (it belongs to the same patient and
study, and PACS file it there), so autoorgan's ``.seg.dcm`` carries the source series' patient
module. Such files are for the user's PACS, which holds those identifiers anyway.
"""

from __future__ import annotations

import gzip
import json
import locale
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from autoorgan.cli.app import app
from autoorgan.demo import demo_models_dir, demo_phantom
from autoorgan.registry.whole_body import whole_body_table
from fixture_model import FIXTURE_TASK, pelvis_phantom

pytestmark = pytest.mark.e2e

#: Distinctive values no code path would produce by chance.
IDENTIFIERS = {
    "PatientName": "Qorpheus^Zyxwvia",
    "PatientID": "PIDQ7731X",
    "PatientBirthDate": "19230405",
    "InstitutionName": "Quokka Memorial Infirmary",
    "AccessionNumber": "ACCQ99812",
    "ReferringPhysicianName": "Drqmwell^Ursula",
}
NEEDLES = ("Qorpheus", "Zyxwvia", "PIDQ7731X", "19230405", "1923-04-05", "Quokka", "ACCQ99812", "Drqmwell")


def _identified_copy(sources: list[Path], target: Path) -> list[Path]:
    """Copies of DICOM files with the identifying values set."""
    target.mkdir(parents=True)
    written = []
    for src in sources:
        ds = pydicom.dcmread(src)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.save_as(target / src.name)
        written.append(target / src.name)
    return written


def _phantom_series(target: Path, seed: int) -> None:
    """A pelvis phantom written as a CT DICOM series (SimpleITK/GDCM) carrying the identifiers."""
    _dicom_series(target, pelvis_phantom(seed).ct)


def _dicom_series(target: Path, ct: sitk.Image) -> None:
    """``ct`` written as a CT DICOM series (SimpleITK/GDCM) carrying the identifiers."""
    image = sitk.Cast(ct, sitk.sitkInt16)
    d = image.GetDirection()
    tags = {
        "0008|0060": "CT", "0008|103e": "phantom", "0020|000d": generate_uid(), "0020|000e": generate_uid(),
        "0020|0052": generate_uid(), "0008|0020": "20240101", "0008|0030": "120000",
        "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": str(image.GetSpacing()[2]),
        "0010|0010": IDENTIFIERS["PatientName"], "0010|0020": IDENTIFIERS["PatientID"],
        "0010|0030": IDENTIFIERS["PatientBirthDate"], "0008|0080": IDENTIFIERS["InstitutionName"],
        "0008|0050": IDENTIFIERS["AccessionNumber"], "0008|0090": IDENTIFIERS["ReferringPhysicianName"],
    }
    target.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0008|0018", generate_uid())
        writer.SetFileName(str(target / f"{k:03d}.dcm"))
        writer.Execute(plane)
    # GDCM's DICOM writer leaves the C library's locale at "C" (ASCII) in this process; put the
    # user's locale back so that later text I/O in the test session is unaffected.
    locale.setlocale(locale.LC_ALL, "")


def _leaks(data: bytes) -> list[str]:
    return [needle for needle in NEEDLES if needle.encode() in data]


def _file_leaks(path: Path) -> list[str]:
    data = path.read_bytes()
    found = _leaks(data)
    if path.name.endswith(".gz"):
        found += _leaks(gzip.decompress(data))
    return found


def _add_bad_series(real_data: Path, inputs: Path) -> None:
    """Two series carrying the identifiers that fail: an unreadable real series (pixel data cut
    off), a real single slice."""
    broken = _identified_copy(sorted((real_data / "dcmqi_ct3slice" / "dicom").iterdir()), inputs / "broken")
    data = broken[1].read_bytes()
    broken[1].write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    _identified_copy([real_data / "pydicom_edge" / "CT_small.dcm"], inputs / "single")


@pytest.fixture
def identified_batch(real_data: Path, tmp_path: Path) -> Path:
    """Three series carrying the identifiers: a readable phantom, an unreadable real series (pixel
    data cut off), a real single slice."""
    inputs = tmp_path / "in"
    _phantom_series(inputs / "good", 7)
    _add_bad_series(real_data, inputs)
    return inputs


def _run_debug(arguments: list[str]) -> subprocess.CompletedProcess:
    """``autoorgan -v ARGUMENTS`` in a child process (debug logging on), its output captured."""
    command = [sys.executable, "-m", "autoorgan", "-v", *arguments]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, encoding="utf-8", env=env, timeout=900)
    assert "DEBUG" in proc.stdout + proc.stderr  # debug logging was on
    return proc


def _sidecars(out: Path) -> list[Path]:
    """The label maps' sidecars in ``out``."""
    return [p for p in out.glob("*.json") if not p.name.endswith((".stats.json", ".error.json"))
            and not p.name.startswith("autoorgan_run")]


def _assert_batch_went_as_planned(out: Path) -> None:
    """One series done, the two bad ones failed with their own reasons."""
    assert [json.loads(p.read_text())["input"] for p in _sidecars(out)] == ["good"]
    failures = {json.loads(p.read_text())["case_id"]: json.loads(p.read_text())["error"]
                for p in out.glob("*.error.json")}
    assert len(failures) == 2
    assert any("single slice" in error for error in failures.values()), failures
    assert any(case.startswith("broken") for case in failures), failures


def _leaks_outside_dicom_seg(out: Path, console: str) -> dict[str, list[str]]:
    """The identifiers found in any file of ``out`` but DICOM SEG objects, and in ``console``."""
    files = [p for p in out.rglob("*") if p.is_file()]
    leaks = {str(p.relative_to(out)): found for p in files if p.suffix != ".dcm" and (found := _file_leaks(p))}
    if found := _leaks(console.encode()):
        leaks["console"] = found
    return leaks


@pytest.mark.slow
def test_no_identifiers_in_outputs_logs_or_errors(identified_batch: Path, trained_models: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run_debug(["predict", "--task", FIXTURE_TASK, "-i", str(identified_batch), "-o", str(out),
                       "--models-dir", str(trained_models), "--device", "cpu", "--statistics", "--preview",
                       "--output-type", "dicom-seg"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    _assert_batch_went_as_planned(out)
    seg = next(out.glob("*.seg.dcm"))
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.name.split(".", 1)[1] if "." in p.name else p.name for p in files}
    assert {"nii.gz", "json", "stats.json", "png", "error.json", "html", "csv", "seg.dcm"} <= kinds, kinds
    assert any(p.name.startswith("autoorgan_run") for p in files)
    # Nothing outside the DICOM SEG names the patient, nor does anything printed or logged.
    assert _leaks_outside_dicom_seg(out, proc.stdout + proc.stderr) == {}
    # The SEG carries the patient module, as the standard requires.
    seg_ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert str(seg_ds.PatientName) == IDENTIFIERS["PatientName"] and seg_ds.PatientID == IDENTIFIERS["PatientID"]


#: The seven tasks of ``--task all``, each cut down to three of its structures, so that one tiny
#: real model (a copy of the shipped demo model, its ``dataset.json`` renamed) serves each.
ALL_TASKS_CUT_DOWN = {
    "skeleton": ("skull", "vertebrae", "rib"),
    "vertebrae": ("vertebrae_L3", "vertebrae_L4", "vertebrae_L5"),
    "ribs": ("rib_left_11", "rib_right_11", "rib_left_12"),
    "upper_limb": ("humerus_left", "humerus_right", "radius_left"),
    "hip": ("hip_left", "hip_right", "sacrum"),
    "lower_limb": ("femur_left", "femur_right", "patella_left"),
    "organs": ("spleen", "kidney_right", "kidney_left"),
}


def _demo_models_for_all(base: Path) -> tuple[Path, Path]:
    """A models folder and a task file under which ``--task all`` runs seven copies of the demo
    model, one per task."""
    source = demo_models_dir() / "Dataset990_DemoPelvis"
    tasks = {}
    for i, (task, names) in enumerate(ALL_TASKS_CUT_DOWN.items()):
        dataset_id = 981 + i
        folder = base / "models" / f"Dataset{dataset_id}_Privacy{task.title().replace('_', '')}"
        shutil.copytree(source, folder)
        for dataset_json in folder.rglob("dataset.json"):
            data = json.loads(dataset_json.read_text(encoding="utf-8"))
            data["labels"] = {"background": 0, **{name: v for v, name in enumerate(names, start=1)}}
            data["autoorgan"]["task"] = task
            dataset_json.write_text(json.dumps(data), encoding="utf-8")
        tasks[task] = {"dataset_id": dataset_id, "labels": {str(v): name for v, name in enumerate(names, start=1)}}
    tasks["skeleton"]["subdivisions"] = {"2": "vertebrae", "3": "ribs"}
    tasks_file = base / "tasks.json"
    tasks_file.write_text(json.dumps({"tasks": tasks}), encoding="utf-8")
    return base / "models", tasks_file


@pytest.mark.slow
def test_no_identifiers_in_a_task_all_run(real_data: Path, tmp_path: Path) -> None:
    """``--task all``: seven models, one whole-body label map, each task's own map kept,
    statistics, preview, SEG, overview, run record, failure records, console."""
    models, tasks_file = _demo_models_for_all(tmp_path / "demo_all")
    inputs = tmp_path / "in"
    _dicom_series(inputs / "good", demo_phantom(11).ct)
    _add_bad_series(real_data, inputs)
    out = tmp_path / "out"
    proc = _run_debug(["predict", "--task", "all", "-i", str(inputs), "-o", str(out), "--models-dir", str(models),
                       "--tasks-file", str(tasks_file), "--device", "cpu", "--statistics", "--preview",
                       "--output-type", "dicom-seg", "--keep-task-maps"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    _assert_batch_went_as_planned(out)
    (sidecar,) = _sidecars(out)
    case = sidecar.name.removesuffix(".json")
    assert json.loads(sidecar.read_text())["task"] == "all"
    assert sorted(p.name for p in (out / case).iterdir()) == sorted(f"{t}.nii.gz" for t in ALL_TASKS_CUT_DOWN)
    table = whole_body_table()
    allowed = {table.value_of(name) for names in ALL_TASKS_CUT_DOWN.values() for name in names}
    written = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz"))))) - {0}
    assert written and written <= allowed, written  # the merged whole-body map, in whole-body values
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.name.split(".", 1)[1] if "." in p.name else p.name for p in files}
    assert {"nii.gz", "json", "stats.json", "png", "error.json", "html", "csv", "seg.dcm"} <= kinds, kinds
    assert any(p.name.startswith("autoorgan_run") for p in files)
    assert _leaks_outside_dicom_seg(out, proc.stdout + proc.stderr) == {}


def test_typer_never_shows_local_variables() -> None:
    assert app.pretty_exceptions_show_locals is False


def test_unexpected_exception_traceback_shows_no_locals(tmp_path: Path) -> None:
    """An unexpected exception inside a command prints a traceback without the frames' variables."""
    script = tmp_path / "crash.py"
    script.write_text(
        "import os, sys\n"
        "from autoorgan import api, cli\n"
        "def exploding_predict(**kwargs):\n"
        "    patient_name = os.environ['SECRET_VALUE']\n"
        "    raise RuntimeError('unexpected failure inside predict')\n"
        "api.predict = exploding_predict\n"
        "sys.argv = ['autoorgan', 'predict', '--task', 'hip', '-i', sys.argv[1], '-o', sys.argv[2]]\n"
        "cli.main()\n",
        encoding="utf-8",
    )
    (tmp_path / "in").mkdir()
    env = {**os.environ, "SECRET_VALUE": IDENTIFIERS["PatientName"], "COLUMNS": "200"}
    env.pop("_TYPER_STANDARD_TRACEBACK", None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "in"), str(tmp_path / "out")],
                          check=False, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "RuntimeError" in text and "unexpected failure inside predict" in text
    assert "exploding_predict" in text  # a traceback was printed ...
    assert "Qorpheus" not in text and "patient_name =" not in text.replace("patient_name = os.environ", "")
    assert "kwargs" not in text.replace("**kwargs", "")  # ... without the frames' locals
    shutil.rmtree(tmp_path / "in")
