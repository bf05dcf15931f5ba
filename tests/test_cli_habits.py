"""The spellings users bring from TotalSegmentator and nnU-Net: underscore flags, space-separated
ROI lists, ``--device gpu``, ``-o seg.nii.gz`` for one CT, and ``--threads``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app, worker_arguments
from autoorgan.cli.options import normalise_arguments, underscore_aliases
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.options import PredictOptions, option_fields

runner = CliRunner()
BASE = ["--task", "hip", "-i", "in", "-o", "out"]


def _predict_command() -> Any:
    return typer.main.get_command(app).commands["predict"]  # type: ignore[attr-defined]


def _params(args: list[str]) -> dict[str, Any]:
    """What the predict command's parser makes of ``args`` (nothing runs)."""
    return dict(_predict_command().make_context("predict", [*BASE, *args]).params)


def _options(args: list[str]) -> PredictOptions:
    names = {f.name for f in option_fields()}
    return PredictOptions(**{k: v for k, v in _params(args).items() if k in names})


def _sample_value(param: Any) -> list[str]:
    """A value the parser takes for ``param`` (none for a yes/no flag)."""
    if param.is_flag:
        return []
    if param.name == "tasks_file":
        return [str(demo_tasks_file())]
    return ["2"]  # a number, a name or a path alike


def test_every_multi_word_flag_of_predict_has_an_underscore_alias() -> None:
    params = _predict_command().params
    aliases = underscore_aliases(params)
    flags = [flag for p in params for flag in (*p.opts, *p.secondary_opts)]
    assert set(aliases.values()) == {f for f in flags if f.startswith("--") and "-" in f[2:]}
    assert {"--roi_subset", "--output_type", "--step_size", "--crop_body", "--no_crop_body", "--part_id",
            "--num_parts", "--models_dir", "--tasks_file", "--no_tta", "--cascade_margin"} <= set(aliases)
    assert not set(aliases) & set(flags)


def test_each_alias_parses_like_its_dash_spelling() -> None:
    params = {flag: p for p in _predict_command().params for flag in (*p.opts, *p.secondary_opts)}
    for alias, flag in underscore_aliases(list(params.values())).items():
        value = _sample_value(params[flag])
        assert _params([alias, *value]) == _params([flag, *value]), alias
        if value:
            assert _params([f"{alias}={value[0]}"]) == _params([flag, *value]), alias


def test_aliases_build_the_same_options() -> None:
    underscored = _options(["--roi_subset", "liver", "--output_type", "nrrd", "--step_size", "0.75", "--no_crop_body",
                            "--models_dir", "m", "--tasks_file", str(demo_tasks_file()), "--max_archive_size", "3"])
    dashed = _options(["--roi-subset", "liver", "--output-type", "nrrd", "--step-size", "0.75", "--no-crop-body",
                       "--models-dir", "m", "--tasks-file", str(demo_tasks_file()), "--max-archive-size", "3"])
    assert underscored == dashed
    assert underscored.crop_body is False and underscored.step_size == 0.75
    assert _params(["--part_id", "1", "--num_parts", "3"])["part_id"] == "1"


def test_aliases_are_not_in_the_help() -> None:
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    assert "--roi-subset" in result.output and "--threads" in result.output
    for alias in underscore_aliases(_predict_command().params):
        assert alias not in result.output, alias


def test_values_that_look_like_aliases_stay_as_given() -> None:
    params = _predict_command().params
    args = ["--trainer", "--step_size", "--", "--roi_subset"]
    assert normalise_arguments(args, params, {"--roi-subset"}) == args


@pytest.mark.parametrize("args", [
    ["--roi-subset", "liver", "spleen", "kidney_left"],
    ["--roi_subset", "liver", "spleen", "kidney_left"],
    ["--roi-subset", "liver,spleen,kidney_left"],
    ["--roi-subset", "liver", "--roi-subset", "spleen", "--roi-subset", "kidney_left"],
    ["--roi-subset", "liver,spleen", "--fast", "--roi-subset=kidney_left"],
    ["--roi-subset", "liver", "spleen", "-c", "--roi_subset", "kidney_left", "--statistics"],
])
def test_roi_lists_space_separated_comma_separated_or_repeated(args: list[str]) -> None:
    assert _options(args).roi_subset == ("liver", "spleen", "kidney_left")


def test_a_space_separated_roi_list_ends_at_the_next_option() -> None:
    params = _params(["--roi-subset", "liver", "spleen", "-o", "elsewhere", "--step-size", "0.75"])
    assert params["roi_subset"] == "liver,spleen"
    assert params["output"] == Path("elsewhere") and params["step_size"] == 0.75
    # The worker command line carries the list comma-separated, and reads back the same.
    options = _options(["--roi-subset", "liver", "spleen"])
    assert _options(options.worker_arguments()) == options


def test_an_roi_flag_without_a_value_is_clicks_own_error() -> None:
    result = runner.invoke(app, ["predict", *BASE, "--roi-subset"])
    assert result.exit_code == 2 and "requires an argument" in result.output


def test_gpu_names_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from autoorgan.engine.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("gpu") == torch.device("cuda")
    assert resolve_device("GPU:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="does not exist: 2 CUDA device"):
        resolve_device("gpu:2")


def _write_ct(path: Path, seed: int = 1) -> sitk.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    ct = demo_phantom(seed).ct
    sitk.WriteImage(ct, str(path))
    return ct


def _demo_args(input: Path, output: Path, *more: str) -> list[str]:
    return ["predict", "--task", DEMO_TASK, "-i", str(input), "-o", str(output), "--models-dir", str(demo_models_dir()),
            "--tasks-file", str(demo_tasks_file()), "--quiet", *more]


def test_device_gpu_without_cuda_is_the_cuda_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    ct = tmp_path / "in" / "ct.nii.gz"
    _write_ct(ct)
    gpu = runner.invoke(app, _demo_args(ct, tmp_path / "out", "--device", "gpu"))
    cuda = runner.invoke(app, _demo_args(ct, tmp_path / "out", "--device", "cuda"))
    assert gpu.exit_code == cuda.exit_code == 2
    lines = [line for line in gpu.output.splitlines() if line.strip() and "DEMO MODEL" not in line]
    assert len(lines) == 1 and "CUDA is not available" in lines[0], gpu.output


@pytest.mark.e2e
def test_output_file_for_one_input_file(tmp_path: Path) -> None:
    ct = _write_ct(tmp_path / "in" / "ct.nii.gz")
    out = tmp_path / "out"
    result = runner.invoke(app, _demo_args(tmp_path / "in" / "ct.nii.gz", out / "seg.nii.gz", "--device", "cpu"))
    assert result.exit_code == 0, result.output
    # the run's own files: overview, run record, the label table for the viewers (autoorgan_<task>.*)
    case_files = sorted(p.name for p in out.iterdir() if p.name != "index.html" and not p.name.startswith("autoorgan_"))
    assert case_files == ["seg.json", "seg.nii.gz"]
    assert (out / "seg.nii.gz").is_file()  # a file, not a folder of that name
    # The run's own files go beside it.
    assert (out / "index.html").is_file() and len(list(out.glob("autoorgan_run*.json"))) == 1
    seg = sitk.ReadImage(str(out / "seg.nii.gz"))
    assert seg.GetSize() == ct.GetSize()
    assert np.allclose(seg.GetSpacing(), ct.GetSpacing()) and np.allclose(seg.GetOrigin(), ct.GetOrigin())
    assert np.allclose(seg.GetDirection(), ct.GetDirection())
    assert sitk.GetArrayViewFromImage(seg).max() > 0
    sidecar = json.loads((out / "seg.json").read_text())
    assert sidecar["task"] == DEMO_TASK
    # --continue finds it complete.
    again = runner.invoke(app, _demo_args(tmp_path / "in" / "ct.nii.gz", out / "seg.nii.gz", "--device", "cpu", "-c"))
    assert again.exit_code == 0 and "1 already complete" in again.output, again.output


def test_output_file_refused_for_a_folder_input(tmp_path: Path) -> None:
    _write_ct(tmp_path / "in" / "ct.nii.gz")
    result = runner.invoke(app, _demo_args(tmp_path / "in", tmp_path / "seg.nii.gz", "--device", "cpu"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "output must be a folder, not seg.nii.gz" in lines[0], result.output
    assert not (tmp_path / "seg.nii.gz").exists()


def test_output_file_must_match_an_explicit_nrrd_type(tmp_path: Path) -> None:
    ct = tmp_path / "in" / "ct.nii.gz"
    _write_ct(ct)
    result = runner.invoke(app, _demo_args(ct, tmp_path / "seg.nii.gz", "--device", "cpu", "--output-type", "nrrd"))
    assert result.exit_code == 2 and "writes a .nrrd file, not seg.nii.gz" in result.output


def test_threads_are_forwarded_to_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = worker_arguments(task="hip", input=Path("in"), output=Path("out"), options=PredictOptions(threads=1))
    assert args[-2:] == ["--threads", "1"]
    assert _options(args[6:]).threads == 1
    seen: dict[str, Any] = {}

    def fake_predict_multi(console: Any, *, predict_args: list[str], **kwargs: Any) -> int:
        seen["args"] = predict_args
        return 0

    import autoorgan.cli.cluster

    monkeypatch.setattr(autoorgan.cli.cluster, "predict_multi", fake_predict_multi)
    result = runner.invoke(app, ["predict", "--task", "hip", "-i", str(tmp_path), "-o", str(tmp_path / "o"),
                                 "--workers", "2", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert seen["args"][-2:] == ["--threads", "1"]


def test_threads_must_be_at_least_one() -> None:
    from autoorgan.errors import InputError

    with pytest.raises(InputError, match="--threads must be"):
        PredictOptions(threads=0)
    result = runner.invoke(app, ["predict", *BASE, "--threads", "0"])
    assert result.exit_code == 2


@pytest.mark.e2e
def test_threads_set_torchs_threads_in_the_process(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    ct = tmp_path / "in" / "ct.nii.gz"
    _write_ct(ct)
    try:
        torch.set_num_threads(2)
        result = api.predict(DEMO_TASK, ct, tmp_path / "out", models_dir=demo_models_dir(),
                             tasks_file=demo_tasks_file(), device="cpu", threads=1)
        assert result.ok
        assert torch.get_num_threads() == 1
        record = json.loads(next((tmp_path / "out").glob("autoorgan_run*.json")).read_text())
        assert record["options"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
