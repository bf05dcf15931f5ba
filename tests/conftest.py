"""Shared fixtures: the real test data folder, synthetic phantoms, and real nnU-Net models: the
fixture model installed from its checked-in zip (tests/data/models, made by
tests/build_fixture_models.py with autoorgan's own training path), and one short training through
``autoorgan train`` per session for the tests that need a model trained here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fixture_model import (
    FIXTURE_ARCHIVES,
    SHORT_TRAIN_SCHEDULE,
    FixtureModelError,
    install_fixture_archives,
    train_fixture_model,
)

#: The multi-task tests' session fixture (whole_body_models) lives there.
pytest_plugins = ["multitask_fixtures"]

ROOT = Path(__file__).resolve().parents[1]

def real_data_dir() -> Path:
    """The real CT folder: ``$AUTOORGAN_TEST_DATA``, default ``../shared/data/real``."""
    return Path(os.environ.get("AUTOORGAN_TEST_DATA", ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    folder = real_data_dir()
    if not (folder / "PROVENANCE.md").is_file():
        pytest.skip(f"real CT test data not found at {folder} (set AUTOORGAN_TEST_DATA)")
    return folder


@pytest.fixture(autouse=True)
def _no_ambient_model_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests choose their models folder explicitly; a user's environment must not leak in, and the
    per-user models folder (the default) is a private temporary folder of each test: platformdirs
    reads ``$XDG_DATA_HOME`` on Linux (subprocesses included); elsewhere its lookup is replaced."""
    for var in ("AUTOORGAN_MODELS", "nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed", "AUTOORGAN_WORK"):
        monkeypatch.delenv(var, raising=False)
    user_data = tmp_path_factory.mktemp("user-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(user_data))
    if not sys.platform.startswith("linux"):
        import platformdirs

        monkeypatch.setattr(platformdirs, "user_data_dir", lambda appname=None, *args, **kwargs: str(
            user_data / (appname or "")))


#: Marker of the tests whose ``trained_models`` must come from a training run in this session
#: (nnU-Net's training folder as ``autoorgan train`` leaves it: debug.json, logs, local paths).
FRESH_TRAINING = "fresh_training"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "trained_models" in metafunc.fixturenames and metafunc.definition.get_closest_marker(FRESH_TRAINING):
        metafunc.parametrize("trained_models", [FRESH_TRAINING], indirect=True)


@pytest.fixture(scope="session")
def hip_trained_here(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with a fixture-task model trained in this session by ``autoorgan train``
    (the fixture recipe with :data:`SHORT_TRAIN_SCHEDULE`)."""
    try:
        return train_fixture_model(tmp_path_factory.mktemp("hip_trained_here"), SHORT_TRAIN_SCHEDULE)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def installed_fixture_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the fixture model's checked-in zip (trained by ``autoorgan train`` with
    the fixture recipe), installed by ``autoorgan install-weights`` after its SHA-256 was checked."""
    models = tmp_path_factory.mktemp("fixture_model") / "models"
    try:
        return install_fixture_archives(FIXTURE_ARCHIVES["trained_models"], models)
    except FixtureModelError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def trained_models(request: pytest.FixtureRequest) -> Path:
    """A models folder holding a real nnU-Net model of the fixture task: :func:`installed_fixture_model`,
    or for tests marked ``fresh_training``, :func:`hip_trained_here`."""
    if getattr(request, "param", None) == FRESH_TRAINING:
        return request.getfixturevalue("hip_trained_here")
    return request.getfixturevalue("installed_fixture_model")
