"""Every hostile input entry and image file of this folder's lists in ONE batch beside a good case.

The per-group tests check each entry alone; this one checks that they also coexist: one command
over a folder holding all of them, with the real demo model, must finish, fail exactly the hostile
cases (each with its own one-line record), finish the good case and the oddities that are readable,
and lose nothing on ``--continue`` (finished outputs untouched, no temporary files left).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hostile_images import HOSTILE_IMAGE_EXPECTED, HOSTILE_IMAGES
from test_hostile_inputs import GOOD, HOSTILE_DONE, HOSTILE_EXPECTED, HOSTILE_INPUTS, write_good_case
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_tasks_file

pytestmark = pytest.mark.e2e


def _predict(inputs: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [
        "predict", "--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()), "--models-dir",
        str(demo_models_dir()), "-i", str(inputs), "-o", str(out), "--device", "cpu", "-q", *extra,
    ], env={"COLUMNS": "250"}, terminal_width=250)
    return result.exit_code, result.output


@pytest.mark.slow
def test_all_hostile_entries_and_images_in_one_batch_lose_nothing(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_good_case(inputs)
    assert not set(dict(HOSTILE_INPUTS)) & set(dict(HOSTILE_IMAGES)), "entry names must be unique"
    for _, write in [*HOSTILE_INPUTS, *HOSTILE_IMAGES]:
        write(inputs)
    expected = {case_id: message for case_id, message in
                [*HOSTILE_EXPECTED.values(), *HOSTILE_IMAGE_EXPECTED.values()] if case_id is not None}
    done = {GOOD, *HOSTILE_DONE.values()}

    code, output = _predict(inputs, out)
    assert code == 1, output
    assert "Traceback" not in output and "\x1b" not in output
    records = {}
    for path in out.glob("*.error.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[record["case_id"]] = record["error"]
    assert set(records) == set(expected), sorted(set(records) ^ set(expected))
    for case_id, message in expected.items():
        assert message in records[case_id], (case_id, records[case_id])
        assert not (out / f"{case_id}.nii.gz").exists() and not (out / f"{case_id}.json").exists()
    finished = {case_id: (out / f"{case_id}.nii.gz").read_bytes() for case_id in done}
    assert all(finished.values())

    # a resumed run retries the failures, skips the finished cases and touches none of their files
    code, output = _predict(inputs, out, "--continue")
    assert code == 1, output
    assert {case_id: (out / f"{case_id}.nii.gz").read_bytes() for case_id in done} == finished
    assert {json.loads(p.read_text(encoding="utf-8"))["case_id"] for p in out.glob("*.error.json")} == set(expected)
    assert not [p.name for p in out.rglob(".*") if ".tmp" in p.name], "temporary files left behind"
