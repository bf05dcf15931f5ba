"""Hostile models and model archives: plans.json that names code, checkpoints that need code,
zip-slip entries, symbolic links, zip bombs and lying headers, half-installed archives.

Each hostile file is built raw (``zipfile.ZipInfo`` names as given, patched headers, pickles with
globals), so every refusal tested here would let the attack through if the check were gone; where
cheap, the same model run with ``--trust-checkpoint`` shows the payload really fires.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from autoorgan import engine
from autoorgan.cli.app import app
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.errors import InstallError
from autoorgan.models import store as models
from autoorgan.models.store import install_weights
from autoorgan.registry.tasks import load_registry

runner = CliRunner()
MODEL_REL = "Dataset990_DemoPelvis/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
CHECKPOINT_REL = f"{MODEL_REL}/fold_0/checkpoint_final.pth"


def _invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "250"}, terminal_width=250)


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _error_line(output: str) -> str:
    """The one error line of a refused command (besides it, only INFO lines: no traceback)."""
    errors = [line for line in _lines(output) if line.startswith("error:")]
    others = [line for line in _lines(output) if not line.startswith("error:") and " INFO " not in line]
    assert len(errors) == 1 and others == [], output
    return errors[0]


def _demo_copy(target: Path) -> Path:
    """A models folder holding a copy of the shipped demo model."""
    shutil.copytree(demo_models_dir(), target)
    return target


def _edit_plans(models_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to the 3d_fullres configuration of the demo model's plans.json."""
    path = models_dir / MODEL_REL / "plans.json"
    plans = json.loads(path.read_text())
    edit(plans["configurations"]["3d_fullres"])
    path.write_text(json.dumps(plans, indent=2))


def _arch(configuration: dict[str, Any]) -> dict[str, Any]:
    return configuration["architecture"]


def _model_zip(models_dir: Path, archive: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
               compression: int = zipfile.ZIP_STORED) -> Path:
    """Every file of ``models_dir`` plus ``extra`` entries written raw (names exactly as given)."""
    with zipfile.ZipFile(archive, "w", compression) as out:
        for path in sorted(p for p in models_dir.rglob("*") if p.is_file()):
            out.write(path, path.relative_to(models_dir).as_posix())
        for info, data in extra:
            out.writestr(info, data)
    return archive


def _nothing_installed(models_dir: Path) -> None:
    """The models folder holds nothing: no model, no partial copy, no temporary folder."""
    assert not models_dir.exists() or list(models_dir.iterdir()) == [], sorted(models_dir.rglob("*"))


def _predict_args(models_dir: Path, tmp_path: Path) -> list[str]:
    inputs = tmp_path / "in"
    if not inputs.exists():
        inputs.mkdir()
        sitk.WriteImage(demo_phantom(3).ct, str(inputs / "c.nii.gz"))
    return ["predict", "--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()), "--models-dir",
            str(models_dir), "-i", str(inputs), "-o", str(tmp_path / "out"), "--device", "cpu", "--quiet"]


class _Payload:
    """Unpickling this runs ``touch marker`` through os.system (a checkpoint that must never load)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def restore_root_logging():  # type: ignore[no-untyped-def]
    """A trusted hostile plans file calls logging.basicConfig(force=True): put the root logger back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# predict: plans.json may name only nnU-Net's own code


def _refused_at_predict(models_dir: Path, edit: Any, tmp_path: Path, *fragments: str) -> list[str]:
    """Edit the model's plans with ``edit``, predict: exit 3 and one line naming plans.json, the
    offending entries and --trust-checkpoint. Returns the predict arguments for a trusted rerun."""
    _edit_plans(models_dir, edit)
    args = _predict_args(models_dir, tmp_path)
    result = _invoke(*args)
    assert result.exit_code == 3, result.output
    lines = _lines(result.output)
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in ("plans.json", "--trust-checkpoint", *fragments):
        assert fragment in lines[0], (fragment, lines[0])
    return args


@pytest.mark.e2e
def test_plans_naming_a_function_as_network_class_is_refused_and_runs_nothing(
        tmp_path: Path, restore_root_logging: None) -> None:
    models_dir = _demo_copy(tmp_path / "models")
    written = tmp_path / "written_by_plans.log"

    def hostile(configuration: dict[str, Any]) -> None:
        _arch(configuration)["network_class_name"] = "logging.basicConfig"
        _arch(configuration)["arch_kwargs"] = {"filename": str(written), "force": True}
        _arch(configuration)["_kw_requires_import"] = []

    args = _refused_at_predict(models_dir, hostile, tmp_path, "'logging.basicConfig'")
    assert not written.exists()
    assert not (tmp_path / "out" / "c.nii.gz").exists()
    # The check is what stopped it: trusted, nnU-Net calls logging.basicConfig(filename=...).
    trusted = _invoke(*args, "--trust-checkpoint")
    assert trusted.exit_code == 3, trusted.output
    assert written.exists()


@pytest.mark.e2e
def test_plans_importing_os_system_for_a_layer_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    models_dir = _demo_copy(tmp_path / "models")
    marker = tmp_path / "pwned"

    def hostile(configuration: dict[str, Any]) -> None:
        kwargs = _arch(configuration)["arch_kwargs"]
        kwargs["nonlin"], kwargs["nonlin_kwargs"] = "os.system", {"command": f"touch {marker}"}
        assert "nonlin" in _arch(configuration)["_kw_requires_import"]

    args = _refused_at_predict(models_dir, hostile, tmp_path, "'os.system'", "'nonlin'")
    assert not marker.exists()
    trusted = _invoke(*args, "--trust-checkpoint")
    assert trusted.exit_code == 3, trusted.output
    assert marker.exists()  # nnU-Net called os.system(command=...) while building the network


def _demo_plans() -> dict[str, Any]:
    return json.loads((demo_models_dir() / MODEL_REL / "plans.json").read_text())


def _with(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    plans = _demo_plans()
    edit(plans["configurations"]["3d_fullres"])
    return plans


def _set_arch(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: _arch(c).update(values)


def _set_kwarg(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: _arch(c)["arch_kwargs"].update(values)


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.update(values)


HOSTILE_PLANS = {
    "builtin exec": (_set_arch(network_class_name="exec"), "network class 'exec'"),
    "function": (_set_arch(network_class_name="logging.basicConfig"), "network class 'logging.basicConfig'"),
    "escape by attribute": (_set_arch(network_class_name="dynamic_network_architectures.architectures.unet.torch.save"),
                            "network class"),
    "method of a network": (_set_arch(network_class_name="dynamic_network_architectures.architectures.unet."
                                      "PlainConvUNet.__init__"), "network class"),
    "torch layer as network": (_set_arch(network_class_name="torch.nn.Conv3d"), "network class 'torch.nn.Conv3d'"),
    "layer os.system": (_set_kwarg(conv_op="os.system"), "'os.system' for arch_kwargs entry 'conv_op'"),
    "layer escape by attribute": (_set_kwarg(nonlin="torch.nn.modules.module.torch.save"), "entry 'nonlin'"),
    "layer function": (_set_kwarg(nonlin="torch.nn.functional.relu"), "'torch.nn.functional.relu'"),
    "layer not a name": (_set_kwarg(norm_op=["torch.nn.InstanceNorm3d"]), "entry 'norm_op'"),
    "import list not names": (_set_arch(_kw_requires_import=[{"x": 1}]), "_kw_requires_import"),
    "preprocessor": (_set(preprocessor_name="shutil"), "preprocessor 'shutil'"),
    "resampling": (_set(resampling_fn_data="recursive_find_python_class"), "resampling_fn_data"),
    "resampling probabilities": (_set(resampling_fn_probabilities="join"), "resampling_fn_probabilities 'join'"),
    "normalization": (_set(normalization_schemes=["os"]), "normalization 'os'"),
}


@pytest.mark.parametrize("name", list(HOSTILE_PLANS))
def test_plans_names_outside_nnunet_are_refused(name: str) -> None:
    edit, expected = HOSTILE_PLANS[name]
    with pytest.raises(engine.UnsafeModel, match="^my/plans.json \\(configuration '3d_fullres'\\) .*") as caught:
        engine.check_model_code(_with(edit), "3d_fullres", source="my/plans.json")
    assert expected in str(caught.value)


@pytest.mark.slow
def test_label_manager_and_trainer_outside_nnunet_are_refused() -> None:
    plans = _demo_plans()
    plans["label_manager"] = "join"
    with pytest.raises(engine.UnsafeModel, match="label manager 'join'"):
        engine.check_model_code(plans, "3d_fullres", source="plans.json")
    for name in ("os", "join", "nnUNetTrainer.__init__", "torch"):
        with pytest.raises(engine.UnsafeModel, match=f"names trainer '{name}', which is not one of nnunetv2"):
            engine.trainer_class(name, trust=False, source="fold_0/checkpoint_final.pth")
    assert engine.trainer_class("nnUNetTrainerNoMirroring", trust=False).__module__.startswith("nnunetv2.")


def test_legitimate_plans_pass_the_check() -> None:
    plans = _demo_plans()
    for configuration in ("3d_fullres", "2d"):
        engine.check_model_code(plans, configuration, source="plans.json")
    # nnU-Net's residual-encoder networks, with explicit layer paths and a dropout op
    resenc = _with(lambda c: (
        _set_arch(network_class_name="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet")(c),
        _set_kwarg(conv_op="torch.nn.Conv3d", norm_op="torch.nn.InstanceNorm3d", dropout_op="torch.nn.Dropout3d",
                   dropout_op_kwargs={"p": 0.0})(c)))
    engine.check_model_code(resenc, "3d_fullres", source="plans.json")


def test_checking_a_name_imports_nothing_outside_the_allowed_packages(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A name outside the packages is refused by its text: the module it names is never imported."""
    marker = tmp_path / "imported"
    (tmp_path / "ao_hostile_probe.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for edit in (_set_arch(network_class_name="ao_hostile_probe.Net"), _set_kwarg(conv_op="ao_hostile_probe.Net"),
                 _set(preprocessor_name="ao_hostile_probe")):
        with pytest.raises(engine.UnsafeModel):
            engine.check_model_code(_with(edit), "3d_fullres", source="plans.json")
    assert not marker.exists() and "ao_hostile_probe" not in sys.modules


def test_inherited_configuration_is_checked_as_resolved() -> None:
    plans = _with(_set_kwarg(nonlin="os.system"))
    plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres", "batch_size": 1}
    with pytest.raises(engine.UnsafeModel, match="configuration '3d_child'.*'os.system'"):
        engine.check_model_code(plans, "3d_child", source="plans.json")
    plans = _demo_plans()
    plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres",
                                           "architecture": {**_arch(plans["configurations"]["3d_fullres"]),
                                                            "network_class_name": "posix.system"}}
    engine.check_model_code(plans, "3d_fullres", source="plans.json")  # the parent itself is fine
    with pytest.raises(engine.UnsafeModel, match="network class 'posix.system'"):
        engine.check_model_code(plans, "3d_child", source="plans.json")


def test_missing_configuration_is_a_load_error_not_a_trust_question() -> None:
    with pytest.raises(ValueError, match="no usable configuration '3d_lowres'"):
        engine.check_model_code(_demo_plans(), "3d_lowres", source="plans.json")


# ---------------------------------------------------------------------------------------------
# install-weights: the same checks, and checkpoints that need code to unpickle


def test_install_refuses_a_checkpoint_that_needs_code_and_runs_nothing(tmp_path: Path) -> None:
    source = _demo_copy(tmp_path / "source")
    marker = tmp_path / "pwned"
    checkpoint = source / CHECKPOINT_REL
    original = torch.load(checkpoint, map_location="cpu", weights_only=False)
    torch.save(dict(original, logging=_Payload(marker)), checkpoint)
    archive = _model_zip(source, tmp_path / "evil.zip")
    models_dir = tmp_path / "models"
    result = _invoke("install-weights", str(archive), "--models-dir", str(models_dir))
    assert result.exit_code == 2, result.output
    lines = [_error_line(result.output)]
    assert "evil.zip" in lines[0] and "fold_0/checkpoint_final.pth needs arbitrary code" in lines[0]
    assert "system" in lines[0] and "--trust-checkpoint" in lines[0]
    assert not marker.exists()
    _nothing_installed(models_dir)
    # Trusted, it installs; installing never unpickles it, so the payload still has not run.
    trusted = _invoke("install-weights", str(archive), "--models-dir", str(models_dir), "--trust-checkpoint")
    assert trusted.exit_code == 0, trusted.output
    assert (models_dir / CHECKPOINT_REL).read_bytes() == checkpoint.read_bytes()
    assert not marker.exists()


def test_install_refuses_plans_that_name_code(tmp_path: Path) -> None:
    source = _demo_copy(tmp_path / "source")
    _edit_plans(source, _set_kwarg(nonlin="os.system", nonlin_kwargs={"command": "true"}))
    archive = _model_zip(source, tmp_path / "plans.zip")
    with pytest.raises(InstallError, match=r"refusing to install plans.zip: Dataset990_DemoPelvis/.*/plans.json "
                                           r"\(configuration '3d_fullres'\) imports 'os.system'.*--trust-checkpoint"):
        install_weights(archive, tmp_path / "models", registry=load_registry())
    _nothing_installed(tmp_path / "models")
    installed = install_weights(archive, tmp_path / "models", registry=load_registry(), trust_checkpoint=True)
    assert [m.folder for m in installed] == [tmp_path / "models" / MODEL_REL]


def test_install_refuses_a_checkpoint_that_is_not_one(tmp_path: Path) -> None:
    source = _demo_copy(tmp_path / "source")
    checkpoint = source / CHECKPOINT_REL
    real = checkpoint.read_bytes()
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(InstallError, match="fold_0/checkpoint_final.pth cannot be loaded without running code "
                                           r"\(Unsupported operand"):
        install_weights(_model_zip(source, tmp_path / "a.zip"), tmp_path / "models", registry=load_registry())
    checkpoint.write_bytes(real[: len(real) // 2])  # a truncated download
    with pytest.raises(InstallError, match="fold_0: checkpoint_final.pth is not a readable checkpoint"):
        install_weights(_model_zip(source, tmp_path / "b.zip"), tmp_path / "models", registry=load_registry())
    _nothing_installed(tmp_path / "models")


# ---------------------------------------------------------------------------------------------
# install-weights: entries that leave the target, links, special files


def _raw(name: str, mode: int = stat.S_IFREG | 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)  # zipfile writes the name exactly as given
    info.create_system = 3
    info.external_attr = mode << 16
    return info


ESCAPES = ["../evil", "a/../../evil", "Dataset990_DemoPelvis/../../evil", "..\\evil", "a\\..\\..\\evil",
           "C:\\evil", "C:evil", "\\\\server\\share\\evil", "./../evil"]


@pytest.mark.parametrize("name", ESCAPES)
def test_entries_outside_the_target_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    archive = _model_zip(demo_models_dir(), tmp_path / "slip.zip", [(_raw(name), b"x")])
    assert name in zipfile.ZipFile(archive).namelist()  # the hostile entry really is in the archive
    models_dir = tmp_path / "deep" / "models"
    with pytest.raises(InstallError, match="refusing .* in the archive|points outside the target"):
        install_weights(archive, models_dir, registry=load_registry())
    _nothing_installed(models_dir)
    assert sorted(p.name for p in tmp_path.rglob("*") if "evil" in p.name) == []


def test_absolute_entry_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "evil"
    archive = _model_zip(demo_models_dir(), tmp_path / "abs.zip", [(_raw(str(outside)), b"x")])
    assert str(outside) in zipfile.ZipFile(archive).namelist()
    with pytest.raises(InstallError, match="refusing absolute path"):
        install_weights(archive, tmp_path / "models", registry=load_registry())
    assert not outside.exists()
    _nothing_installed(tmp_path / "models")


def test_symbolic_link_member_is_refused(tmp_path: Path) -> None:
    link = _raw(f"{MODEL_REL}/fold_0/progress.png", stat.S_IFLNK | 0o777)
    archive = _model_zip(demo_models_dir(), tmp_path / "link.zip", [(link, str(tmp_path / "target").encode())])
    assert stat.S_ISLNK(zipfile.ZipFile(archive).getinfo(link.filename).external_attr >> 16)
    with pytest.raises(InstallError, match="refusing symbolic link"):
        install_weights(archive, tmp_path / "models", registry=load_registry())
    _nothing_installed(tmp_path / "models")


@pytest.mark.parametrize("mode", [stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o644, stat.S_IFBLK | 0o644,
                                  stat.S_IFSOCK | 0o644])
def test_special_file_members_are_refused(tmp_path: Path, mode: int) -> None:
    archive = _model_zip(demo_models_dir(), tmp_path / "special.zip", [(_raw(f"{MODEL_REL}/x", mode), b"")])
    with pytest.raises(InstallError, match="not a regular file or folder"):
        install_weights(archive, tmp_path / "models", registry=load_registry())
    _nothing_installed(tmp_path / "models")


def test_duplicate_and_encrypted_members_are_refused(tmp_path: Path) -> None:
    twice = _model_zip(demo_models_dir(), tmp_path / "twice.zip",
                       [(_raw(f"{MODEL_REL}/plans.json"), b"{}")])  # a second plans.json after the first
    with pytest.raises(InstallError, match="is in the archive twice"):
        install_weights(twice, tmp_path / "models", registry=load_registry())
    locked = _model_zip(demo_models_dir(), tmp_path / "locked.zip", [(_raw(f"{MODEL_REL}/notes.txt"), b"x")])
    _patch_headers(locked, f"{MODEL_REL}/notes.txt", "flags", 0x1)  # zipfile cannot write encrypted members
    assert zipfile.ZipFile(locked).getinfo(f"{MODEL_REL}/notes.txt").flag_bits & 0x1
    with pytest.raises(InstallError, match="is encrypted"):
        install_weights(locked, tmp_path / "models", registry=load_registry())
    _nothing_installed(tmp_path / "models")


# ---------------------------------------------------------------------------------------------
# install-weights: sizes


BOMB_BYTES = 24 * 2**20  # deflates to about 24 KB


def _bomb_zip(archive: Path) -> Path:
    return _model_zip(demo_models_dir(), archive, [(f"{MODEL_REL}/fold_0/zeros.bin", bytes(BOMB_BYTES))],
                      compression=zipfile.ZIP_DEFLATED)


def test_highly_compressed_member_is_refused_before_extraction(tmp_path: Path) -> None:
    archive = _bomb_zip(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 3 * 2**20
    models_dir = tmp_path / "models"
    result = _invoke("install-weights", str(archive), "--models-dir", str(models_dir))
    assert result.exit_code == 2, result.output
    lines = [_error_line(result.output)]
    assert "zeros.bin" in lines[0] and "-fold" in lines[0] and "--max-ratio" in lines[0]
    _nothing_installed(models_dir)
    raised = _invoke("install-weights", str(archive), "--models-dir", str(models_dir), "--max-ratio", "5000")
    assert raised.exit_code == 0, raised.output
    assert (models_dir / MODEL_REL / "fold_0" / "zeros.bin").stat().st_size == BOMB_BYTES


def test_total_size_cap_and_its_option(tmp_path: Path) -> None:
    archive = _model_zip(demo_models_dir(), tmp_path / "model.zip")
    total = sum(info.file_size for info in zipfile.ZipFile(archive).infolist())
    assert total > 10**6
    models_dir = tmp_path / "models"
    result = _invoke("install-weights", str(archive), "--models-dir", str(models_dir), "--max-size", "0.001")
    assert result.exit_code == 2, result.output
    assert _error_line(result.output) == (f"error: model.zip would unpack to {total / 1e6:.1f} MB, more than the "
                                          "0.001 GB allowed; pass --max-size GB to raise the cap")
    _nothing_installed(models_dir)
    raised = _invoke("install-weights", str(archive), "--models-dir", str(models_dir), "--max-size", "0.01")
    assert raised.exit_code == 0, raised.output


#: Offsets in the local and the central file header: (signature, field offsets, name-length offset, name offset).
_HEADERS = ((b"PK\x03\x04", {"flags": 6, "size": 22}, 26, 30), (b"PK\x01\x02", {"flags": 8, "size": 24}, 28, 46))


def _patch_headers(archive: Path, member: str, field: str, value: int) -> None:
    """Set ``field`` (``flags``: OR-ed in; ``size``: the uncompressed size) in ``member``'s local and
    central headers, as a hand-made or hostile archive would have it."""
    data = bytearray(archive.read_bytes())
    for signature, offsets, length_at, name_at in _HEADERS:
        start = 0
        while (start := data.find(signature, start)) >= 0:
            length = struct.unpack_from("<H", data, start + length_at)[0]
            if bytes(data[start + name_at:start + name_at + length]) == member.encode():
                at = start + offsets[field]
                if field == "flags":
                    struct.pack_into("<H", data, at, struct.unpack_from("<H", data, at)[0] | value)
                else:
                    struct.pack_into("<I", data, at, value)
            start += 4
    archive.write_bytes(bytes(data))


def test_member_larger_than_its_header_says_is_stopped_while_streaming(tmp_path: Path) -> None:
    archive = _bomb_zip(tmp_path / "liar.zip")
    member = f"{MODEL_REL}/fold_0/zeros.bin"
    _patch_headers(archive, member, "size", 1000)
    assert zipfile.ZipFile(archive).getinfo(member).file_size == 1000  # the check before extraction passes
    models_dir = tmp_path / "models"
    with pytest.raises(InstallError, match="zeros.bin.*(damaged or its headers lie|its header declares)"):
        install_weights(archive, models_dir, registry=load_registry(), max_size_gb=0.01)
    _nothing_installed(models_dir)


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "MAX_MEMBERS", 5)
    archive = _model_zip(demo_models_dir(), tmp_path / "many.zip", [(f"{MODEL_REL}/n{i}.txt", b"") for i in range(5)])
    with pytest.raises(InstallError, match="holds 8 entries, more than the 5"):
        install_weights(archive, tmp_path / "models", registry=load_registry())


# ---------------------------------------------------------------------------------------------
# install-weights: all or nothing


def _two_model_source(tmp_path: Path) -> Path:
    """A models folder with the demo model (Dataset990) and a copy as Dataset991 (installed second)."""
    source = _demo_copy(tmp_path / "source")
    shutil.copytree(source / "Dataset990_DemoPelvis", source / "Dataset991_Second")
    return source


def test_archive_with_a_bad_later_model_installs_none_of_it(tmp_path: Path) -> None:
    source = _two_model_source(tmp_path)
    second = source / "Dataset991_Second" / MODEL_REL.split("/")[1]
    (second / "fold_0" / "checkpoint_final.pth").unlink()
    models_dir = tmp_path / "models"
    result = _invoke("install-weights", str(_model_zip(source, tmp_path / "two.zip")), "--models-dir", str(models_dir))
    assert result.exit_code == 2, result.output
    assert "Dataset991_Second" in result.output and "has no fold_*/checkpoint_final.pth" in result.output
    _nothing_installed(models_dir)  # Dataset990, checked and valid, was not installed either


def test_archive_whose_later_model_is_already_installed_installs_none_of_it(tmp_path: Path) -> None:
    source = _two_model_source(tmp_path)
    models_dir = tmp_path / "models"
    shutil.copytree(source / "Dataset991_Second", models_dir / "Dataset991_Second")
    before = sorted(p.relative_to(models_dir) for p in models_dir.rglob("*"))
    with pytest.raises(InstallError, match="already installed at .*Dataset991_Second"):
        install_weights(_model_zip(source, tmp_path / "two.zip"), models_dir, registry=load_registry())
    assert sorted(p.relative_to(models_dir) for p in models_dir.rglob("*")) == before


def test_failed_move_takes_back_what_was_moved_and_restores_replaced_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _two_model_source(tmp_path)
    models_dir = tmp_path / "models"
    old = models_dir / MODEL_REL
    shutil.copytree(source / MODEL_REL, old)
    (old / "old_marker").write_text("the model installed before")
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if "Dataset991_Second" in str(dst):
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(models.os, "replace", failing_replace)
    with pytest.raises(InstallError, match="No space left on device.*nothing was installed"):
        install_weights(_model_zip(source, tmp_path / "two.zip"), models_dir, registry=load_registry(), force=True)
    assert (old / "old_marker").read_text() == "the model installed before"
    assert sorted(p.name for p in models_dir.iterdir()) == ["Dataset990_DemoPelvis"]
    monkeypatch.setattr(models.os, "replace", real_replace)
    installed = install_weights(_model_zip(source, tmp_path / "two.zip"), models_dir, registry=load_registry(),
                                force=True)
    assert [m.folder.parent.name for m in installed] == ["Dataset990_DemoPelvis", "Dataset991_Second"]
    assert not (old / "old_marker").exists()
    assert sorted(p.name for p in models_dir.iterdir()) == ["Dataset990_DemoPelvis", "Dataset991_Second"]
