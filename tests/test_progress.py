"""Progress a person can read during ``predict``: tile progress from the sliding window to the
batch's listener, the terminal display (percentage, ETA), one line per case elsewhere, and the
summary that names each failed case once."""

from __future__ import annotations

import re
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from rich.console import Console

from autoorgan import api, engine
from autoorgan.batch.job import BatchResult, CaseResult, ProgressListener, failure_reason
from autoorgan.cli.progress import RichProgress, clock
from autoorgan.demo import DEMO_STRUCTURES, DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.demo.phantom import make_phantom
from autoorgan.io.cases import Case
from autoorgan.models.store import require_model
from autoorgan.registry.tasks import load_registry


class TileRecorder(ProgressListener):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.stages: list[str] = []

    def case_stage(self, case_id: str, stage: str) -> None:
        self.stages.append(stage)

    def case_progress(self, case_id: str, done: int, total: int) -> None:
        self.calls.append((case_id, done, total))


def _assert_counts_up(calls: list[tuple[int, int]]) -> int:
    """The calls of one prediction: from 0 up to the total, never back; returns the total."""
    assert calls, "no progress reported"
    total = calls[0][1]
    assert total > 0 and all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == total and done == sorted(done)
    return total


@pytest.mark.e2e
def test_a_demo_prediction_reports_its_tiles_to_the_listener(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(demo_phantom(3).ct, str(inputs / "pelvis.nii.gz"))
    recorder = TileRecorder()
    result = api.predict(DEMO_TASK, inputs, tmp_path / "out", listener=recorder, tasks_file=demo_tasks_file(),
                         models_dir=demo_models_dir(), device="cpu")
    assert result.ok, [r.error for r in result.results]
    assert {case for case, _, _ in recorder.calls} == {"pelvis"}
    _assert_counts_up([(d, t) for _, d, t in recorder.calls])
    assert "predicting" in recorder.stages


@pytest.mark.e2e
@pytest.mark.parametrize("tile_batch", [1, 2], ids=["nnunet-loop", "grouped"])
def test_the_segmenter_reports_whole_image_and_region_tiles(tile_batch: int) -> None:
    task = load_registry(demo_tasks_file())[DEMO_TASK]
    folder = require_model(task, demo_models_dir()).folder
    segmenter = engine.Segmenter(folder, task.fold, torch.device("cpu"), tile_batch=tile_batch)
    calls: list[tuple[int, int]] = []
    segmenter.progress = lambda done, total: calls.append((done, total))
    image = make_phantom(5, spacing=(4.0, 4.0, 5.0)).crop_to(list(DEMO_STRUCTURES), 40.0).ct
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    segmenter.predict(array, (5.0, 4.0, 4.0))
    assert _assert_counts_up(calls) == segmenter.last_tiles[0] > 1
    calls.clear()
    z, y, x = array.shape
    segmenter.predict(array, (5.0, 4.0, 4.0), roi=(slice(0, z // 3), slice(0, y // 2), slice(0, x // 2)))
    assert _assert_counts_up(calls) == segmenter.last_tiles[0] < segmenter.last_tiles[1]
    segmenter.progress = None
    calls.clear()
    segmenter.predict(array, (5.0, 4.0, 4.0))
    assert not calls


def _run_batch(listener: RichProgress, *, pause: float = 0.0) -> None:
    """Three cases: one complete before the run, one done after reporting its tiles, one failed."""
    listener.batch_started(3, 2)
    listener.case_finished(CaseResult("old", "skipped"))
    listener.case_started("ct_01")
    listener.case_stage("ct_01", "predicting")
    for done in range(0, 9, 2):
        listener.case_progress("ct_01", done, 8)
        time.sleep(pause)
    listener.case_finished(CaseResult("ct_01", "done", 12.34))
    listener.case_started("ct_02")
    listener.case_finished(CaseResult("ct_02", "failed", 0.5, error="cannot read image"))


def test_a_console_that_is_no_terminal_gets_one_clean_line_per_case() -> None:
    console = Console(file=StringIO(), force_terminal=False, width=100)
    assert not console.is_terminal
    with RichProgress(console) as listener:
        _run_batch(listener)
    assert console.file.getvalue().splitlines() == ["skipped old (0.0 s)", "done ct_01 (12.3 s)",
                                                    "failed ct_02 (0.5 s)"]


def test_quiet_prints_nothing() -> None:
    for terminal in (False, True):
        console = Console(file=StringIO(), force_terminal=terminal, width=100)
        with RichProgress(console, enabled=False) as listener:
            _run_batch(listener)
        assert console.file.getvalue() == ""


def test_a_terminal_shows_tiles_percentage_elapsed_time_and_estimates() -> None:
    console = Console(file=StringIO(), force_terminal=True, width=140, color_system=None)
    with RichProgress(console) as listener:
        listener.batch_started(4, 4)
        listener.case_started("ct_01")
        listener.case_stage("ct_01", "predicting")
        listener.case_progress("ct_01", 0, 20)
        time.sleep(0.05)
        listener.case_progress("ct_01", 5, 20)
        listener._progress.refresh()
        screen = console.file.getvalue()
        listener.case_finished(CaseResult("ct_01", "done", 2.0))
        listener.case_started("ct_02")
        listener._progress.refresh()
        later = console.file.getvalue()[len(screen):]
    case_line = [line for line in screen.splitlines() if "ct_01: predicting" in line][-1]
    assert "5/20 tiles  25%" in case_line and re.search(r"ETA \d+:\d\d", case_line), case_line
    assert re.search(r"\d:\d\d:\d\d", case_line)  # the case's elapsed time
    batch_line = [line for line in screen.splitlines() if "cases" in line][-1]
    # the first case's estimate stands for each of the 4 cases
    assert "0/4 cases   0%" in batch_line and "ETA" in batch_line, batch_line
    # after one case of 2.0 s, the 3 left take about 6 s
    batch_line = [line for line in later.splitlines() if "cases" in line][-1]
    assert "1/4 cases  25%" in batch_line and re.search(r"ETA 0:0[56]", batch_line), batch_line
    assert "✓ ct_01 (2.0 s)" in console.file.getvalue()


def test_clock() -> None:
    assert [clock(s) for s in (0, 4.6, 61, 3600 + 62, -3)] == ["0:00", "0:05", "1:01", "1:01:02", "0:00"]


def test_the_failure_reason_leaves_the_naming_to_the_batch() -> None:
    dicom = Case("head_tilt", Path("in/dicom"))
    assert failure_reason(dicom, "head_tilt: DICOM series has a gantry tilt") == "DICOM series has a gantry tilt"
    assert failure_reason(dicom, "dicom: head_tilt: uneven slices") == "uneven slices"
    image = Case("bad\nname", Path("in/bad\nname.nii.gz"))
    assert failure_reason(image, "bad\nname.nii.gz: cannot read image") == "cannot read image"
    assert failure_reason(image, "cannot read image: bad\nname.nii.gz") == "cannot read image: bad\nname.nii.gz"
    assert failure_reason(image, "bad\nname.nii.gz: ") == "bad\nname.nii.gz:"


def test_the_summary_names_each_failed_case_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib

    cli = importlib.import_module("autoorgan.cli.app")
    console = Console(file=StringIO(), force_terminal=False, width=200)
    monkeypatch.setattr(cli, "console", console)
    result = BatchResult([CaseResult("ok", "done", 1.0),
                          CaseResult("head_tilt", "failed", 0.2, error="DICOM series has a gantry tilt")])
    cli._print_summary(result, tmp_path)
    lines = console.file.getvalue().splitlines()
    assert lines[1] == "  failed head_tilt: DICOM series has a gantry tilt"


@pytest.mark.e2e
def test_a_failed_case_is_named_once_in_the_summary_and_fully_in_its_record(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from autoorgan.cli.app import app

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sitk.WriteImage(demo_phantom(3).ct, str(inputs / "good.nii.gz"))
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    result = CliRunner().invoke(app, ["predict", "--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()),
                                      "--models-dir", str(demo_models_dir()), "-i", str(inputs), "-o", str(out),
                                      "--device", "cpu"], env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 1, result.output
    summary = [line for line in result.output.splitlines() if line.startswith("  failed ")]
    assert len(summary) == 1 and summary[0].startswith("  failed broken: ") and summary[0].count("broken") == 1
    # not a terminal: one line per case, no bars
    assert re.search(r"^done good \(\d+\.\d s\)$", result.output, re.MULTILINE), result.output
    assert re.search(r"^failed broken \(\d+\.\d s\)$", result.output, re.MULTILINE), result.output
    assert "tiles" not in result.output
    record = json.loads((out / "broken.error.json").read_text())
    assert record["case_id"] == "broken" and record["error"].startswith("broken.nii.gz: ")
    assert record["error"].count("broken") == 1
