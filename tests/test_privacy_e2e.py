"""No patient identifiers anywhere autoorgan writes or says, and no local variables in tracebacks.

A batch of DICOM series carrying distinctive identifying values (patient name, ID, birth date,
institution, accession number, referring physician) runs through the CLI with debug logging, on a
success path and on failure paths (an unreadable series, a refused single-slice series), with
statistics, preview, DICOM SEG, the overview page, run records and failure records. Every output
file and all console/log text is then searched for those values.

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

import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from autoorgan.cli import app
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
    image = sitk.Cast(pelvis_phantom(seed).ct, sitk.sitkInt16)
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


@pytest.fixture
def identified_batch(real_data: Path, tmp_path: Path) -> Path:
    """Three series carrying the identifiers: a readable phantom, an unreadable real series (pixel
    data cut off), a real single slice."""
    inputs = tmp_path / "in"
    _phantom_series(inputs / "good", 7)
    broken = _identified_copy(sorted((real_data / "dcmqi_ct3slice" / "dicom").iterdir()), inputs / "broken")
    data = broken[1].read_bytes()
    broken[1].write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    _identified_copy([real_data / "pydicom_edge" / "CT_small.dcm"], inputs / "single")
    return inputs


def test_no_identifiers_in_outputs_logs_or_errors(identified_batch: Path, trained_models: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "autoorgan", "-v", "predict", "--task", FIXTURE_TASK, "-i", str(identified_batch),
               "-o", str(out), "--models-dir", str(trained_models), "--device", "cpu", "--statistics", "--preview",
               "--output-type", "dicom-seg"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, encoding="utf-8", env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "DEBUG" in console  # debug logging was on
    # The batch went as expected: one series done, two failed with their own reasons.
    sidecars = [p for p in out.glob("*.json") if not p.name.endswith((".stats.json", ".error.json"))
                and not p.name.startswith("autoorgan_run")]
    assert [json.loads(p.read_text())["input"] for p in sidecars] == ["good"]
    failures = {json.loads(p.read_text())["case_id"]: json.loads(p.read_text())["error"]
                for p in out.glob("*.error.json")}
    assert len(failures) == 2
    assert any("single slice" in error for error in failures.values()), failures
    assert any(case.startswith("broken") for case in failures), failures
    seg = next(out.glob("*.seg.dcm"))
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.name.split(".", 1)[1] if "." in p.name else p.name for p in files}
    assert {"nii.gz", "json", "stats.json", "png", "error.json", "html", "csv", "seg.dcm"} <= kinds, kinds
    assert any(p.name.startswith("autoorgan_run") for p in files)
    # Nothing outside the DICOM SEG names the patient, nor does anything printed or logged.
    leaks = {str(p.relative_to(out)): found for p in files if p.suffix != ".dcm" and (found := _file_leaks(p))}
    assert leaks == {}
    assert _leaks(console.encode()) == []
    # The SEG carries the patient module, as the standard requires.
    seg_ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert str(seg_ds.PatientName) == IDENTIFIERS["PatientName"] and seg_ds.PatientID == IDENTIFIERS["PatientID"]


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
