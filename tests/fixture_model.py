"""The fixture models: the hip model's task, training data and tiny architecture, its training
through ``autoorgan train``, and the checked-in model zips the test session installs
(shared by conftest, the multi-task fixtures, ``build_fixture_models.py`` and tests)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from autoorgan.demo import DEMO_PLANS, DEMO_SCHEDULE, DEMO_SPACING, TRAINING_ORIENTATIONS, TRAINING_SEEDS
from autoorgan.demo.phantom import Phantom, make_phantom, reorient

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
    return schedule_options(TRAIN_SCHEDULE)


def pelvis_phantom(seed: int) -> Phantom:
    """A pelvis crop of a whole-body phantom (4×4×5 mm voxels)."""
    return make_phantom(seed, spacing=DEMO_SPACING).crop_to(FIXTURE_STRUCTURES, 12.0)


# ---------------------------------------------------------------------------------------------
# Training through ``autoorgan train``

#: A short schedule of the same recipe, for the tests that need a model trained in the session
#: (training folder contents, the export of a fresh training); see tests/test_fixture_models.py.
SHORT_TRAIN_SCHEDULE = {**TRAIN_SCHEDULE, "epochs": 12}


def schedule_options(schedule: Mapping[str, Any]) -> list[str]:
    """``autoorgan train`` options of a schedule (``{"epochs": 45, ...}`` → ``--epochs 45 ...``)."""
    options: list[str] = []
    for key, value in schedule.items():
        options += [f"--{key.replace('_', '-')}", str(value)]
    return options


def train_fixture_model(base: Path, schedule: Mapping[str, Any] = TRAIN_SCHEDULE) -> Path:
    """Train the fixture task's model with ``autoorgan train`` in ``base`` (training data, nnU-Net
    work folder, plans override); returns the models folder ``base/models``.

    The training data are the pelvis phantoms of :data:`TRAIN_SEEDS`, stored in the orientations
    :data:`TRAIN_ORIENTATIONS`; the network is :data:`TINY_PLANS`. Raises ``RuntimeError`` when
    the command fails.
    """
    return _train_on_pelvis_phantoms(base, TRAIN_ORIENTATIONS, schedule)


#: Fixture models trained the way models trained elsewhere reach users: the pelvis phantoms all
#: stored in one orientation other than RAS, fed to nnU-Net as stored (task orientation "native"),
#: and no orientation recorded in the model's dataset.json. ``autoorgan calibrate`` must find it.
STORED_ORIENTATIONS: dict[str, str] = {"hip_stored_lps.zip": "LPS", "hip_stored_pil.zip": "PIL"}
#: Their schedule: the recipe's.
STORED_SCHEDULE = dict(TRAIN_SCHEDULE)


def train_stored_orientation_model(base: Path, codes: str, schedule: Mapping[str, Any] = STORED_SCHEDULE) -> Path:
    """Train the fixture task's model on phantoms all stored as ``codes`` and fed as stored; returns
    the models folder ``base/models``. The model's ``dataset.json`` keeps nnU-Net's fields only, as
    a model trained with plain nnU-Net has: nothing tells autoorgan its orientation."""
    from autoorgan.models.store import find_model
    from autoorgan.registry.tasks import load_registry

    tasks_file = base / "as_stored.json"
    base.mkdir(parents=True, exist_ok=True)
    tasks_file.write_text(json.dumps({"tasks": {FIXTURE_TASK: {"orientation": "native"}}}), encoding="utf-8")
    models = _train_on_pelvis_phantoms(base, [codes] * len(TRAIN_SEEDS), schedule, "--tasks-file", str(tasks_file))
    location = find_model(load_registry().get_task(FIXTURE_TASK), models)
    if location is None:
        raise RuntimeError(f"training left no model of task {FIXTURE_TASK} in {models}")
    dataset_json = location.folder / "dataset.json"
    fields = json.loads(dataset_json.read_text(encoding="utf-8"))
    fields.pop("autoorgan", None)
    dataset_json.write_text(json.dumps(fields, indent=4), encoding="utf-8")
    return models


def _train_on_pelvis_phantoms(base: Path, orientations: Sequence[str], schedule: Mapping[str, Any],
                              *options: str) -> Path:
    """``autoorgan train`` of the fixture task on the pelvis phantoms of :data:`TRAIN_SEEDS`, each
    stored in its entry of ``orientations``, with the tiny plans and ``options``; returns
    ``base/models``."""
    from typer.testing import CliRunner

    from autoorgan.cli.app import app
    from autoorgan.registry.tasks import load_registry

    task = load_registry().get_task(FIXTURE_TASK)
    for earlier in ("data", "models", "work"):
        shutil.rmtree(base / earlier, ignore_errors=True)
    data = base / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i, (seed, codes) in enumerate(zip(TRAIN_SEEDS, orientations, strict=True)):
        phantom = pelvis_phantom(seed)
        sitk.WriteImage(reorient(phantom.ct, codes), str(data / "images" / f"pelvis_{i}.nii.gz"))
        sitk.WriteImage(reorient(phantom.labels_for(task.labels), codes), str(data / "labels" / f"pelvis_{i}.nii.gz"))
    models = base / "models"
    plans_override = base / "tiny_plans.json"
    plans_override.write_text(json.dumps(TINY_PLANS), encoding="utf-8")
    result = CliRunner().invoke(app, [
        "train", "--task", FIXTURE_TASK, "--data", str(data), "--models-dir", str(models),
        "--work-dir", str(base / "work"), "--device", "cpu", *schedule_options(schedule),
        "--plans-override", str(plans_override), "--augmentation-workers", "0", "--quiet", *options,
    ])
    if result.exit_code != 0:
        raise RuntimeError(f"autoorgan train --task {FIXTURE_TASK} failed (exit {result.exit_code}): "
                           f"{result.output}{result.exception!r}")
    return models


# ---------------------------------------------------------------------------------------------
# The checked-in model zips

#: nnU-Net model zips of the fixture models (written by tests/build_fixture_models.py).
FIXTURE_MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"
#: SHA-256 of each zip and how the zips were made.
FIXTURE_CHECKSUMS = FIXTURE_MODELS_DIR / "checksums.json"
#: The zips each session fixture installs, by fixture.
FIXTURE_ARCHIVES: dict[str, tuple[str, ...]] = {
    "trained_models": ("fixture_hip.zip",),
    "whole_body_models": ("whole_body_skeleton.zip", "whole_body_hip.zip", "whole_body_lower_limb.zip"),
    "stored_orientation_models": tuple(STORED_ORIENTATIONS),
}
REBUILD_HINT = "rebuild them with: python tests/build_fixture_models.py (see tests/data/models/README.md)"


class FixtureModelError(RuntimeError):
    """A checked-in fixture model zip is missing, altered, or refused by ``install-weights``."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_archive(name: str, directory: Path = FIXTURE_MODELS_DIR) -> tuple[Path, str]:
    """The zip ``name`` of ``directory`` and its SHA-256, checked against ``checksums.json``."""
    table_path = directory / FIXTURE_CHECKSUMS.name
    if not table_path.is_file():
        raise FixtureModelError(f"{table_path} is missing; {REBUILD_HINT}")
    expected = json.loads(table_path.read_text(encoding="utf-8"))["archives"].get(name, {}).get("sha256")
    archive = directory / name
    if expected is None:
        raise FixtureModelError(f"{table_path} lists no SHA-256 for {name}; {REBUILD_HINT}")
    if not archive.is_file():
        raise FixtureModelError(f"fixture model {archive} is missing; {REBUILD_HINT}")
    actual = sha256_of(archive)
    if actual != expected:
        raise FixtureModelError(f"fixture model {archive} has SHA-256 {actual}, but {table_path} records "
                                f"{expected}: the zip was changed or replaced; {REBUILD_HINT}")
    return archive, expected


def install_fixture_archives(names: Sequence[str], models_dir: Path, directory: Path = FIXTURE_MODELS_DIR) -> Path:
    """Install the zips ``names`` into ``models_dir`` the way a user installs weights
    (``autoorgan install-weights ZIP --sha256 HEX``), each after its checksum was verified."""
    from typer.testing import CliRunner

    from autoorgan.cli.app import app

    for name in names:
        archive, digest = verified_archive(name, directory)
        result = CliRunner().invoke(app, ["install-weights", str(archive), "--models-dir", str(models_dir),
                                          "--sha256", digest])
        if result.exit_code != 0:
            raise FixtureModelError(f"autoorgan install-weights {archive} failed (exit {result.exit_code}): "
                                    f"{result.output}{result.exception!r}")
    return models_dir
