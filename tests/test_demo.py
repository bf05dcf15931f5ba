"""``autoorgan demo``: the shipped demo model segments a fresh synthetic phantom well."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo import DEMO_NOTE, demo_models_dir

pytestmark = pytest.mark.e2e


def test_demo_runs_and_reports_dice_of_at_least_0_9(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "demo"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "DEMO MODEL" in result.output and "not for real CT" in result.output
    assert "mean Dice" in result.output
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["dice"]) == {"hip_left", "hip_right", "sacrum"}
    assert min(summary["dice"].values()) >= 0.9, summary["dice"]
    assert summary["model_note"] == DEMO_NOTE
    ct = sitk.ReadImage(str(tmp_path / "demo" / "phantom" / "demo_ct.nii.gz"))
    seg = sitk.ReadImage(str(tmp_path / "demo" / "segmentation" / "demo_ct.nii.gz"))
    assert seg.GetSize() == ct.GetSize() and np.allclose(seg.GetOrigin(), ct.GetOrigin())
    sidecar = json.loads((tmp_path / "demo" / "segmentation" / "demo_ct.json").read_text())
    assert sidecar["task"] == "demo_pelvis" and sidecar["model_note"] == DEMO_NOTE


def test_demo_model_is_small_and_marked_as_demo() -> None:
    files = [p for p in demo_models_dir().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5_000_000
    dataset = json.loads(next(demo_models_dir().rglob("dataset.json")).read_text())
    assert dataset["description"] == DEMO_NOTE


@pytest.mark.slow
def test_wheel_ships_the_demo_model(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    with zipfile.ZipFile(next(tmp_path.glob("autoorgan-*.whl"))) as archive:
        names = set(archive.namelist())
        assert "autoorgan/demo/tasks.json" in names
        for source in demo_models_dir().rglob("*"):
            if source.is_file():
                name = "autoorgan/demo/models/" + source.relative_to(demo_models_dir()).as_posix()
                assert archive.read(name) == source.read_bytes()
