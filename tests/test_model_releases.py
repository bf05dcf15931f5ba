"""Model archives: the checksum table of known releases, and exports free of local details."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo import demo_models_dir
from autoorgan.errors import InstallError
from autoorgan.models import releases
from autoorgan.models.releases import (
    check_known_release,
    default_table_path,
    load_release_table,
    parse_release_table,
    write_release_zip,
)
from autoorgan.models.store import install_weights
from autoorgan.registry.tasks import load_registry

runner = CliRunner()


def _invoke(*args: str):
    """Run the CLI with a wide terminal, so log lines are not wrapped."""
    return runner.invoke(app, list(args), env={"COLUMNS": "250"}, terminal_width=250)
DEMO_RELEASE = "autoorgan_demo_pelvis_model.zip"
DEMO_MODEL_REL = "Dataset990_DemoPelvis/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tampered_copy(source: Path, target: Path) -> Path:
    """A copy of a release zip with one byte of the stored checkpoint changed."""
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return target


def _table(tmp_path: Path, entries: list[dict[str, str]]) -> Path:
    path = tmp_path / "checksums.json"
    path.write_text(json.dumps({"releases": entries}), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The shipped table and the demo release


def test_shipped_table_lists_the_demo_release_with_the_checksum_of_the_shipped_files(tmp_path: Path) -> None:
    table = load_release_table()
    assert default_table_path().name == "model_checksums.json"
    assert DEMO_RELEASE in table and table[DEMO_RELEASE].task == "demo_pelvis"
    first = write_release_zip(demo_models_dir(), tmp_path / "a" / DEMO_RELEASE)
    second = write_release_zip(demo_models_dir(), tmp_path / "b" / DEMO_RELEASE)
    assert first.read_bytes() == second.read_bytes()
    assert _sha(first) == table[DEMO_RELEASE].sha256
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert f"{DEMO_MODEL_REL}/fold_0/checkpoint_final.pth" in names
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_known_release_installs_verified(tmp_path: Path) -> None:
    archive = write_release_zip(demo_models_dir(), tmp_path / DEMO_RELEASE)
    result = _invoke("install-weights", str(archive), "--models-dir", str(tmp_path / "models"))
    assert result.exit_code == 0, result.output
    assert f"verified as known release {DEMO_RELEASE}" in result.output
    installed = tmp_path / "models" / DEMO_MODEL_REL / "fold_0" / "checkpoint_final.pth"
    assert installed.read_bytes() == (demo_models_dir() / DEMO_MODEL_REL / "fold_0" / "checkpoint_final.pth").read_bytes()


def test_renamed_known_release_is_recognised_by_its_checksum(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = write_release_zip(demo_models_dir(), tmp_path / "downloaded (1).zip")
    with caplog.at_level(logging.INFO, logger="autoorgan.models.releases"):
        release = check_known_release(archive)
    assert release is not None and release.file == DEMO_RELEASE
    assert f"downloaded (1).zip: verified as known release {DEMO_RELEASE}" in caplog.text


def test_damaged_known_release_is_refused_with_one_line_and_nothing_installed(tmp_path: Path) -> None:
    good = write_release_zip(demo_models_dir(), tmp_path / "good" / DEMO_RELEASE)
    bad = _tampered_copy(good, tmp_path / "bad" / DEMO_RELEASE)
    models = tmp_path / "models"
    result = _invoke("install-weights", str(bad), "--models-dir", str(models))
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:") and DEMO_RELEASE in lines[0]
    assert _sha(bad) in lines[0] and "does not match the known release" in lines[0]
    assert "Traceback" not in result.output
    assert not (models / DEMO_MODEL_REL).exists()


def test_explicit_sha256_takes_precedence_over_the_table(tmp_path: Path) -> None:
    archive = write_release_zip(demo_models_dir(), tmp_path / "model.zip")
    table = _table(tmp_path, [{"file": "model.zip", "sha256": "0" * 64, "task": "demo_pelvis", "version": "x"}])
    registry = load_registry()
    with pytest.raises(InstallError, match="does not match the known release model.zip"):
        install_weights(archive, tmp_path / "m1", registry=registry, release_table=table)
    installed = install_weights(archive, tmp_path / "m2", registry=registry, release_table=table,
                                sha256=_sha(archive).upper())
    assert [m.folder for m in installed] == [tmp_path / "m2" / DEMO_MODEL_REL]
    with pytest.raises(InstallError, match="does not match the expected"):
        install_weights(archive, tmp_path / "m3", registry=registry, release_table=table, sha256="1" * 64)
    assert not (tmp_path / "m3" / DEMO_MODEL_REL).exists()


def test_unknown_archive_installs_with_an_info_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_release_zip(demo_models_dir(), tmp_path / "my_model.zip")
    monkeypatch.setattr(releases, "default_table_path", lambda: _table(tmp_path, []))
    result = _invoke("install-weights", str(archive), "--models-dir", str(tmp_path / "models"))
    assert result.exit_code == 0, result.output
    assert "my_model.zip: not a known release; installing it without checksum verification" in result.output
    assert (tmp_path / "models" / DEMO_MODEL_REL / "plans.json").is_file()


def test_malformed_tables_are_refused() -> None:
    with pytest.raises(InstallError, match="no valid sha256"):
        parse_release_table({"releases": [{"file": "a.zip", "sha256": "abc"}]}, "t.json")
    with pytest.raises(InstallError, match="listed twice"):
        parse_release_table({"releases": [{"file": "a.zip", "sha256": "a" * 64}] * 2}, "t.json")
    with pytest.raises(InstallError, match="'releases' list"):
        parse_release_table({"release": []}, "t.json")
    assert parse_release_table({"releases": [{"file": "a.zip", "sha256": "A" * 64}]}, "t.json")["a.zip"].sha256 == "a" * 64


@pytest.mark.slow
def test_checksum_table_ships_in_the_wheel(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    with zipfile.ZipFile(next(tmp_path.glob("autoorgan-*.whl"))) as wheel:
        assert wheel.read("autoorgan/configs/model_checksums.json") == (root / "configs" / "model_checksums.json").read_bytes()


# ---------------------------------------------------------------------------------------------
# export-weights leaves the exporting machine out


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.fresh_training
def test_export_has_no_debug_json_and_no_local_paths(trained_models: Path, tmp_path: Path) -> None:
    archive = tmp_path / "export" / "hip_model.zip"
    result = runner.invoke(app, ["export-weights", "--task", "hip", "-o", str(archive), "--models-dir",
                                 str(trained_models)])
    assert result.exit_code == 0, result.output
    source_fold = next(trained_models.glob("Dataset114_*/*/fold_0"))
    assert (source_fold / "debug.json").is_file()  # nnU-Net wrote it; the export must leave it out
    local = {str(trained_models.resolve()), str(trained_models), str(trained_models.resolve().parent), str(tmp_path)}
    summary_paths = json.loads((source_fold / "validation" / "summary.json").read_text())["metric_per_case"][0]
    local |= {str(Path(summary_paths["reference_file"]).parent), str(Path(summary_paths["prediction_file"]).parent)}
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert not any(Path(n).name == "debug.json" for n in names), names
        assert any(n.endswith("fold_0/checkpoint_final.pth") for n in names)
        for name in names:
            data = zf.read(name)
            for path in local:
                assert path.encode() not in data, (name, path)
        summary = json.loads(zf.read(next(n for n in names if n.endswith("validation/summary.json"))))
    case = summary["metric_per_case"][0]
    assert "/" not in case["prediction_file"] and case["prediction_file"].endswith(".nii.gz")
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        json.loads((source_fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"])
    # nnU-Net's own installer and autoorgan's accept the cleaned archive.
    from autoorgan.engine import install_model_archive

    install_model_archive(archive, tmp_path / "nnunet_results")
    assert next((tmp_path / "nnunet_results").glob("Dataset114_*/*/fold_0/checkpoint_final.pth")).is_file()
    shutil.rmtree(tmp_path / "nnunet_results")
    installed = install_weights(archive, tmp_path / "models", registry=load_registry())
    assert installed[0].tasks == ("hip",)
