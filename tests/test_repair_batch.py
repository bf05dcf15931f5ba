"""``autoorgan repair`` as a batch: failure records, ``--continue``, ``--skip-failed``, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.batch.outputs import CaseOutputs, done_sidecar
from autoorgan.cli.app import app
from autoorgan.io.image import Geometry, image_from_array
from autoorgan.io.writing import all_temporaries
from postprocess_maps import RAS, RIB, spine_and_ribs

runner = CliRunner()
GOOD = ("a", "c")


def _write(array: np.ndarray, geometry: Geometry, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image_from_array(array, geometry), str(path))
    return path


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def _broken_sides() -> tuple[np.ndarray, np.ndarray]:
    """(a ribs map with rib 9's sides swapped, the map it should be repaired to)."""
    reference, _ = spine_and_ribs()
    broken = reference.copy()
    broken[reference == RIB["rib_left_9"]] = RIB["rib_right_9"]
    return broken, reference


def _maps(folder: Path) -> np.ndarray:
    """A folder of ribs maps: ``a`` and ``c`` good (to repair), ``b`` not a label map,
    ``d`` with a value outside the table, ``e`` unreadable. Returns the repaired ``a``/``c``."""
    broken, reference = _broken_sides()
    for case in GOOD:
        _write(broken, RAS, folder / f"{case}.nii.gz")
    _write(broken.astype(np.float32) + 0.5, RAS, folder / "b.nii.gz")
    unknown = broken.copy()
    unknown[0, 0, 0] = 200
    _write(unknown, RAS, folder / "d.nii.gz")
    (folder / "e.nii.gz").write_bytes(b"not an image at all" * 20)
    return reference


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _no_temporaries(folder: Path) -> None:
    assert not all_temporaries(folder)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def _repair(*args: str) -> object:
    return runner.invoke(app, ["repair", "--task", "ribs", *args])


def test_a_broken_map_fails_alone_with_a_failure_record(tmp_path: Path) -> None:
    expected = _maps(tmp_path / "maps")
    out = tmp_path / "out"
    result = _repair("-i", str(tmp_path / "maps"), "-o", str(out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for case in GOOD:
        assert np.array_equal(_read(out / f"{case}.nii.gz"), expected)
        sidecar = done_sidecar(CaseOutputs(out, case), "ribs")
        assert sidecar is not None and sidecar["input"] == f"{case}.nii.gz"
        assert {"task", "labels", "label_map", "input", "companions", "postprocess", "versions"} <= set(sidecar)
        assert sidecar["postprocess"]["changed_voxels"] == int((expected != _read(tmp_path / "maps" / "a.nii.gz"))
                                                               .sum())
        assert f"{case}: {sidecar['postprocess']['changed_voxels']} voxel(s) changed" in result.output
        assert not (out / f"{case}.error.json").exists()
    reasons = {"b": "not a label map", "d": "label value(s) 200 are not in the label table", "e": "e.nii.gz"}
    for case, reason in reasons.items():
        record = json.loads((out / f"{case}.error.json").read_text())
        assert record["case_id"] == case and reason in record["error"]
        assert not (out / f"{case}.nii.gz").exists() and not (out / f"{case}.json").exists()
        assert "failed" in result.output and reason in result.output
    _no_temporaries(out)


def test_continue_skips_complete_maps_and_retries_failed_ones(tmp_path: Path) -> None:
    expected = _maps(tmp_path / "maps")
    out = tmp_path / "out"
    assert _repair("-i", str(tmp_path / "maps"), "-o", str(out)).exit_code == 1
    stamps = {p.name: _stamp(p) for case in GOOD for p in (out / f"{case}.nii.gz", out / f"{case}.json")}
    broken, _ = _broken_sides()
    _write(broken, RAS, tmp_path / "maps" / "b.nii.gz")  # b fixed; d and e still fail

    result = _repair("-i", str(tmp_path / "maps"), "-o", str(out), "--continue")
    assert result.exit_code == 1, result.output
    assert {p.name: _stamp(p) for case in GOOD for p in (out / f"{case}.nii.gz", out / f"{case}.json")} == stamps
    assert "a: already repaired" in result.output
    assert np.array_equal(_read(out / "b.nii.gz"), expected) and not (out / "b.error.json").exists()
    assert (out / "d.error.json").is_file() and (out / "e.error.json").is_file()

    for case in ("d", "e"):
        (tmp_path / "maps" / f"{case}.nii.gz").unlink()
    results = api.repair(task="ribs", input=tmp_path / "maps", output=out, resume=True)
    assert [(r.case_id, r.status, r.ok) for r in results] == [("a", "skipped", True), ("b", "skipped", True),
                                                              ("c", "skipped", True)]
    assert results[0].changed_voxels > 0 and [s["step"] for s in results[0].steps][:2] == ["islands", "sides"]
    _no_temporaries(out)


def test_continue_with_skip_failed_does_not_retry(tmp_path: Path) -> None:
    _maps(tmp_path / "maps")
    out = tmp_path / "out"
    assert _repair("-i", str(tmp_path / "maps"), "-o", str(out)).exit_code == 1
    record = (out / "b.error.json").read_text()
    broken, _ = _broken_sides()
    _write(broken, RAS, tmp_path / "maps" / "b.nii.gz")
    result = _repair("-i", str(tmp_path / "maps"), "-o", str(out), "--continue", "--skip-failed")
    assert result.exit_code == 1 and "not retried" in result.output
    assert not (out / "b.nii.gz").exists() and (out / "b.error.json").read_text() == record
    results = api.repair(task="ribs", input=tmp_path / "maps", output=out, resume=True, skip_failed=True)
    by_case = {r.case_id: r for r in results}
    assert by_case["b"].status == "failed" and "earlier failure" in (by_case["b"].error or "")
    assert by_case["a"].status == "skipped"


def test_continue_redoes_maps_repaired_another_way(tmp_path: Path) -> None:
    broken, expected = _broken_sides()
    _write(broken, RAS, tmp_path / "maps" / "a.nii.gz")
    out = tmp_path / "out"
    first = api.repair(task="ribs", input=tmp_path / "maps", output=out, steps=["islands"])
    assert [s["step"] for s in first[0].steps] == ["islands"] and np.array_equal(_read(out / "a.nii.gz"), broken)
    again = api.repair(task="ribs", input=tmp_path / "maps", output=out, resume=True)
    assert again[0].status == "done" and np.array_equal(_read(out / "a.nii.gz"), expected)
    assert api.repair(task="ribs", input=tmp_path / "maps", output=out, resume=True)[0].status == "skipped"


def test_single_file_to_a_file_and_continue(tmp_path: Path) -> None:
    broken, expected = _broken_sides()
    source = _write(broken, RAS, tmp_path / "in" / "ribs.nii.gz")
    target = tmp_path / "out" / "fixed.nii.gz"
    result = _repair("-i", str(source), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert np.array_equal(_read(target), expected)
    assert sitk.ReadImage(str(target)).GetPixelID() == sitk.ReadImage(str(source)).GetPixelID()
    sidecar = json.loads((tmp_path / "out" / "fixed.json").read_text())
    assert sidecar["label_map"] == "fixed.nii.gz" and sidecar["input"] == "ribs.nii.gz"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fixed.json", "fixed.nii.gz"]
    stamps = (_stamp(target), _stamp(tmp_path / "out" / "fixed.json"))
    result = _repair("-i", str(source), "-o", str(target), "-c")
    assert result.exit_code == 0 and "fixed: already repaired" in result.output
    assert (_stamp(target), _stamp(tmp_path / "out" / "fixed.json")) == stamps


def test_single_broken_file_gets_a_failure_record_beside_the_output(tmp_path: Path) -> None:
    reference, _ = spine_and_ribs()
    reference[0, 0, 0] = 200
    source = _write(reference, RAS, tmp_path / "ribs.nii.gz")
    result = _repair("-i", str(source), "-o", str(tmp_path / "out" / "fixed.nii.gz"))
    assert result.exit_code == 1 and "label value(s) 200" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fixed.error.json"]


def test_a_numbering_left_for_a_person_is_flagged_in_the_sidecar_and_the_log(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The left ribs one number up (a consistent series) beside the right ribs, no vertebrae:
    nothing says which side is right, so the map is kept and the case says a person should look."""
    reference, _ = spine_and_ribs()
    shifted = reference.copy()
    for k in (9, 10, 11, 12):
        shifted[reference == RIB[f"rib_left_{k}"]] = RIB[f"rib_left_{k - 1}"]
    _write(shifted, RAS, tmp_path / "maps" / "a.nii.gz")
    with caplog.at_level("WARNING", logger="autoorgan"):
        [result] = api.repair(task="ribs", input=tmp_path / "maps", output=tmp_path / "out")
    assert result.status == "done" and np.array_equal(_read(tmp_path / "out" / "a.nii.gz"), shifted)
    sidecar = json.loads((tmp_path / "out" / "a.json").read_text())
    [flag] = sidecar["postprocess"]["flags"]
    assert flag.startswith("ribs: left and right ribs at the same height carry different numbers (rib_left_8 beside "
                           "rib_right_9")
    assert any(r.getMessage().startswith("a: repair needs a look: ribs: left and right ribs") for r in caplog.records)
