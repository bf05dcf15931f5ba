"""The predict options are declared once (autoorgan.options.PredictOptions); the command line, the
API, the worker command line, the run record and --continue's checks all follow that declaration."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_tasks_file
from autoorgan.errors import InputError
from autoorgan.options import Affects, Export, OutputType, PredictOptions, option_fields

#: A value different from the default for every field that has a command-line form.
NON_DEFAULT = {
    "step_size": 0.75, "fast": True, "tta": False, "crop_body": True, "export": "nnunet", "resume": True,
    "skip_failed": True, "statistics": True, "preview": True, "postprocess": False, "split": True,
    "split_only": True, "output_type": "dicom-seg", "roi_subset": "sacrum,hip_left", "models_dir": "m",
    "tasks_file": str(demo_tasks_file()), "dataset_id": 301, "trainer": "nnUNetTrainerX", "fold": "all",
    "configuration": "3d_lowres", "plans": "nnUNetResEncUNetMPlans", "trust_checkpoint": True, "cascade": False,
    "cascade_margin": 35.0, "keep_task_maps": True, "max_archive_size": 2.5, "device": "cpu", "threads": 2,
    "precision": "bf16", "orientation": "LPS",
}


def test_every_field_with_a_flag_has_a_non_default_value_here() -> None:
    assert {f.name for f in option_fields()} == set(NON_DEFAULT)


def _parsed_predict_options(args: list[str]) -> PredictOptions:
    """What the predict command's parser makes of ``args`` (nothing runs)."""
    command = typer.main.get_command(app)
    predict = command.commands["predict"]  # type: ignore[attr-defined]
    context = predict.make_context("predict", ["--task", "hip", "-i", "in", "-o", "out", *args])
    names = {f.name for f in option_fields()}
    return PredictOptions(**{k: v for k, v in context.params.items() if k in names})


def test_worker_arguments_read_back_as_the_same_options() -> None:
    original = PredictOptions(**NON_DEFAULT)
    args = original.worker_arguments()
    parsed = _parsed_predict_options(args)
    # The device is each worker's own (given separately); everything else arrives unchanged.
    assert dataclasses.replace(parsed, device=original.device) == original
    assert "--device" not in args and "--part-id" not in args


def test_defaults_give_no_worker_arguments_and_parse_to_the_defaults() -> None:
    assert PredictOptions().worker_arguments() == []
    assert _parsed_predict_options([]) == PredictOptions()


def test_every_option_is_in_the_help_with_its_flag() -> None:
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    for f in option_fields():
        assert f.metadata["spec"].flags[0] in result.output, f.name


def test_the_api_takes_every_option_and_refuses_unknown_names(tmp_path: Path) -> None:
    assert "settings" in inspect.signature(api.predict).parameters
    with pytest.raises(TypeError, match="unknown predict option.*colour"):
        api.predict("hip", tmp_path, tmp_path / "out", colour="red")


def test_values_are_checked_and_normalised_on_construction() -> None:
    options = PredictOptions(export="NNUNET", output_type="DICOM_SEG", fold="2", roi_subset=["liver", " spleen "],
                             models_dir="m")
    assert options.export is Export.NNUNET and options.output_type is OutputType.DICOM_SEG
    assert options.fold == 2 and options.roi_subset == ("liver", "spleen") and options.models_dir == Path("m")
    for bad, message in (({"step_size": 1.5}, r"step size must be in \(0, 1\]"),
                         ({"export": "scipy"}, "export must be one of torch, nnunet"),
                         ({"output_type": "png"}, "output type must be one of nifti, nrrd, dicom-seg"),
                         ({"fold": "first"}, "--fold must be an integer or 'all'"),
                         ({"cascade_margin": -1.0}, "--cascade-margin must be 0 or more")):
        with pytest.raises(InputError, match=message):
            PredictOptions(**bad)


def test_the_run_record_holds_every_option_as_json() -> None:
    record = PredictOptions(**NON_DEFAULT).as_record()
    assert set(record) >= {f.name for f in dataclasses.fields(PredictOptions)}
    assert json.loads(json.dumps(record))["roi_subset"] == ["sacrum", "hip_left"]
    assert record["tta"] is False and record["crop_body"] is True  # the resolved speed settings


def _one_ct(folder: Path) -> None:
    folder.mkdir()
    image = sitk.GetImageFromArray(np.full((8, 8, 8), -1000, dtype=np.int16))
    sitk.WriteImage(image, str(folder / "c.nii.gz"))


def test_continue_compares_every_field_that_affects_outputs_or_labels(tmp_path: Path) -> None:
    from autoorgan.batch.job import ProgressListener
    from autoorgan.runs.predict import plan_batch

    _one_ct(tmp_path / "in")
    options = PredictOptions(models_dir=demo_models_dir(), tasks_file=demo_tasks_file(), device="cpu")
    job = plan_batch(DEMO_TASK, tmp_path / "in", tmp_path / "out", options, ProgressListener())
    assert set(job.output_options) >= {f.name for f in option_fields(Affects.OUTPUTS)}
    # The labels' settings are compared as resolved (--fast is a preset of tta and crop_body).
    assert set(job.made_with["prediction"]) == {f.name for f in option_fields(Affects.LABELS)}
    assert job.made_with["prediction"] == {**options.speed().as_dict(), "orientation": None}
    # ... and the orientation each model is fed in, as resolved (here: the demo task table's).
    assert [m["orientation"] for m in job.made_with["models"].values()] == ["RAS"]
    assert [m["dataset_id"] for m in job.made_with["models"].values()] == [job.task.dataset_id]
    # A field that affects nothing a case holds is not compared.
    assert not {f.name for f in option_fields(Affects.NOTHING)} & set(job.output_options)
