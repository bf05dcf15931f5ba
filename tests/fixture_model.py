"""The fixture model's task, training data and tiny architecture (shared by conftest and tests)."""

from __future__ import annotations

from autoorgan.demo import DEMO_PLANS, DEMO_SCHEDULE, DEMO_SPACING, TRAINING_ORIENTATIONS, TRAINING_SEEDS
from autoorgan.phantom import Phantom, make_phantom

#: The fixture model's task: three large pelvic bones, quick to learn for a tiny network.
FIXTURE_TASK = "hip"
FIXTURE_STRUCTURES = ["hip_left", "hip_right", "sacrum"]
#: The fixture model is trained with the demo model's recipe, defined once in autoorgan.demo:
#: the tiny 3d_fullres architecture (an nnU-Net plans override), the training phantoms' seeds and
#: storage orientations, and the schedule (epochs, iterations, learning rate, seed).
TINY_PLANS = DEMO_PLANS
TRAIN_SEEDS = TRAINING_SEEDS
TRAIN_ORIENTATIONS = TRAINING_ORIENTATIONS
TRAIN_SCHEDULE = DEMO_SCHEDULE


def train_schedule_options() -> list[str]:
    """``autoorgan train`` options of :data:`TRAIN_SCHEDULE` (``--epochs 45 ... --seed 0``)."""
    options: list[str] = []
    for key, value in TRAIN_SCHEDULE.items():
        options += [f"--{key.replace('_', '-')}", str(value)]
    return options


def pelvis_phantom(seed: int) -> Phantom:
    """A pelvis crop of a whole-body phantom (4×4×5 mm voxels)."""
    return make_phantom(seed, spacing=DEMO_SPACING).crop_to(FIXTURE_STRUCTURES, 12.0)
