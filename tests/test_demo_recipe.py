"""The demo model's recipe is one, shared with the fixture model, and its script installs only a good model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoorgan.demo import (
    DEMO_MIN_DICE,
    DEMO_SCHEDULE,
    DEMO_STRUCTURES,
    TRAINING_ORIENTATIONS,
    TRAINING_SEEDS,
    demo_shortfalls,
)
from autoorgan.demo.phantom import reorient
from fixture_model import TRAIN_ORIENTATIONS, TRAIN_SEEDS, pelvis_phantom, train_schedule_options

ROOT = Path(__file__).resolve().parents[1]


def test_shortfalls_name_every_structure_below_the_bar_or_missing() -> None:
    good = {name: 0.95 for name in DEMO_STRUCTURES}
    assert demo_shortfalls(good) == {}
    assert demo_shortfalls({**good, "hip_right": DEMO_MIN_DICE}) == {}
    assert demo_shortfalls({**good, "hip_right": 0.89}) == {"hip_right": 0.89}
    assert demo_shortfalls({"hip_left": 0.99}) == {"hip_right": None, "sacrum": None}
    assert list(demo_shortfalls({**good, "sacrum": float("nan")})) == ["sacrum"]


def test_fixture_model_trains_with_the_demo_recipe() -> None:
    assert TRAIN_SEEDS is TRAINING_SEEDS and TRAIN_ORIENTATIONS is TRAINING_ORIENTATIONS
    assert len(TRAINING_SEEDS) == len(TRAINING_ORIENTATIONS) == 12
    assert train_schedule_options() == ["--epochs", "45", "--iterations-per-epoch", "25", "--initial-lr", "0.1",
                                        "--seed", "0"]
    assert DEMO_SCHEDULE["seed"] == 0
    # Every storage orientation is a real one: the phantom reorients to it and keeps its voxel count.
    phantom = pelvis_phantom(TRAINING_SEEDS[0])
    for codes in set(TRAINING_ORIENTATIONS):
        image = reorient(phantom.ct, codes)
        assert sorted(image.GetSize()) == sorted(phantom.ct.GetSize())


@pytest.mark.slow
def test_script_has_no_shortcut_around_training_and_evaluation() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_model.py"), "--help"],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--from-trained" not in result.stdout
    assert "--output" in result.stdout and "--release-dir" in result.stdout

