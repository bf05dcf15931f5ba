"""The typed Python API: what the command line does, callable from scripts and notebooks.

All functions take keyword arguments only and raise :class:`autoorgan.errors.AutoOrganError`
subclasses for problems a user can fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan.errors import InputError, ModelLoadError
from autoorgan.io.cases import find_cases
from autoorgan.models import (
    InstalledModel,
    find_model,
    label_mismatch,
    read_model_labels,
    require_model,
    resolve_models_dir,
)
from autoorgan.models import install_weights as _install_weights
from autoorgan.pipeline import BatchJob, BatchResult, ProgressListener
from autoorgan.sharding import check_shard, select_shard
from autoorgan.tasks import Task, load_registry, resolve_task

log = logging.getLogger(__name__)

PathLike = str | Path


def predict(
    *,
    task: str,
    input: PathLike,  # noqa: A002 - mirrors the -i/--input option
    output: PathLike,
    models_dir: PathLike | None = None,
    tasks_file: PathLike | None = None,
    dataset_id: int | None = None,
    trainer: str | None = None,
    fold: int | str | None = None,
    configuration: str | None = None,
    plans: str | None = None,
    device: str = "auto",
    part_id: int = 0,
    num_parts: int = 1,
    resume: bool = False,
    step_size: float = 0.5,
    listener: ProgressListener | None = None,
) -> BatchResult:
    """Segment every CT of ``input`` (a file or a folder) with the model of ``task``.

    Writes ``OUTPUT/<case>.nii.gz`` (label map on exactly the input's grid) and
    ``OUTPUT/<case>.json`` (task, model and label table) for each case of this shard.

    Parameters
    ----------
    task:
        Task name (forgiving: ``upper-limb``, ``"Upper Limb"``).
    input, output:
        A CT file or a folder of CT files; the output folder (created if needed).
    models_dir:
        Folder of installed models; default ``$AUTOORGAN_MODELS``, else ``$nnUNet_results``.
    tasks_file:
        A TOML/JSON task table that adds or changes tasks.
    dataset_id, trainer, fold, configuration, plans:
        One-run overrides of the task's model.
    device:
        ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    part_id, num_parts:
        Process only shard ``part_id`` of ``num_parts``; a case's shard depends only on its id.
    resume:
        Skip cases whose outputs are already complete (``--continue``).
    step_size:
        Sliding-window step as a fraction of the patch size (nnU-Net's default 0.5).
    listener:
        Receives progress events.

    Returns
    -------
    BatchResult
        One :class:`~autoorgan.pipeline.CaseResult` per case of this shard.
    """
    check_shard(part_id, num_parts)
    if not 0 < step_size <= 1:
        raise InputError(f"step size must be in (0, 1], got {step_size}")
    the_task = resolve_task(task, tasks_file=tasks_file, dataset_id=dataset_id, trainer=trainer, fold=fold,
                            configuration=configuration, plans=plans)
    input_path, output_dir = Path(input), Path(output)
    all_cases = find_cases(input_path, exclude=output_dir)
    cases = select_shard(all_cases, [c.case_id for c in all_cases], part_id, num_parts)
    log.info("%d case(s) in %s; %d in part %d of %d", len(all_cases), input_path, len(cases), part_id, num_parts)
    location = require_model(the_task, resolve_models_dir(models_dir))
    _warn_on_label_mismatch(the_task, location.dataset_json)

    from autoorgan import engine

    torch_device = _device(device)
    loaded: list[engine.Segmenter] = []

    def load() -> engine.Segmenter:
        try:
            segmenter = engine.Segmenter(location.folder, the_task.fold, torch_device, tile_step_size=step_size)
        except Exception as exc:  # noqa: BLE001 - any failure inside nnU-Net's loader
            raise ModelLoadError(f"cannot load the model in {location.folder}: {type(exc).__name__}: {exc}"
                                 .splitlines()[0]) from None
        loaded.append(segmenter)
        return segmenter

    job = BatchJob(
        task=the_task,
        cases=cases,
        output_dir=output_dir,
        load_predictor=load,
        trainer_name=lambda: loaded[0].trainer_name if loaded else the_task.trainer,
        nnunet_version=engine.nnunet_version(),
        resume=resume,
        listener=listener or ProgressListener(),
    )
    return job.run()


def _device(device: str) -> object:
    from autoorgan import engine

    try:
        return engine.resolve_device(device)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _warn_on_label_mismatch(task: Task, dataset_json: Path) -> None:
    try:
        difference = label_mismatch(task, read_model_labels(dataset_json))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {dataset_json}: {exc}") from None
    if difference:
        log.warning("the model's dataset.json labels differ from the task table of '%s' (%s); "
                    "outputs are named by the task table", task.name, difference)


@dataclass(frozen=True)
class TaskStatus:
    """A task and whether its model is installed."""

    task: Task
    model_folder: Path | None

    @property
    def installed(self) -> bool:
        return self.model_folder is not None


def list_tasks(*, tasks_file: PathLike | None = None, models_dir: PathLike | None = None) -> list[TaskStatus]:
    """Every known task with the folder of its installed model (``None`` if not installed)."""
    registry = load_registry(tasks_file)
    try:
        folder: Path | None = resolve_models_dir(models_dir)
    except Exception:  # noqa: BLE001 - no models folder configured: nothing is installed
        folder = None
    statuses = []
    for task in registry.values():
        location = find_model(task, folder) if folder is not None else None
        statuses.append(TaskStatus(task=task, model_folder=location.folder if location else None))
    return statuses


def task_labels(*, task: str, tasks_file: PathLike | None = None) -> dict[int, str]:
    """Label value → structure name of ``task``."""
    return dict(resolve_task(task, tasks_file=tasks_file).labels)


def install_weights(
    *, archive: PathLike, models_dir: PathLike | None = None, tasks_file: PathLike | None = None,
    force: bool = False,
) -> list[InstalledModel]:
    """Install an nnU-Net model zip into the models folder (see :func:`autoorgan.models.install_weights`)."""
    registry = load_registry(tasks_file)
    return _install_weights(Path(archive), resolve_models_dir(models_dir), registry=registry, force=force)


def resolve_work_dir(work_dir: PathLike | None) -> Path:
    """Where training keeps nnU-Net's raw and preprocessed data: the argument, else
    ``$AUTOORGAN_WORK``, else ``~/.cache/autoorgan``."""
    chosen = work_dir or os.environ.get("AUTOORGAN_WORK") or Path.home() / ".cache" / "autoorgan"
    return Path(chosen).expanduser()


def train(
    *,
    task: str,
    data: PathLike,
    models_dir: PathLike | None = None,
    work_dir: PathLike | None = None,
    tasks_file: PathLike | None = None,
    dataset_id: int | None = None,
    trainer: str | None = None,
    fold: int | str | None = None,
    configuration: str | None = None,
    plans: str | None = None,
    device: str = "auto",
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    initial_lr: float | None = None,
    resume: bool = False,
    plans_override: Mapping[str, Any] | None = None,
    num_processes: int = 1,
    augmentation_workers: int | None = None,
) -> Path:
    """Train the model of ``task`` on ``data`` (``images/`` + ``labels/``) with nnU-Net.

    Writes the nnU-Net raw dataset (checked against the task's label table, stored in the task's
    model orientation), runs nnU-Net's planning and preprocessing for the configuration, and
    trains the fold; the model lands in the models folder exactly where :func:`predict` finds it.
    ``resume`` continues an interrupted training from its latest checkpoint.

    Returns the trained model folder (``.../{trainer}__{plans}__{configuration}``).
    """
    from autoorgan import dataset, engine

    the_task = resolve_task(task, tasks_file=tasks_file, dataset_id=dataset_id, trainer=trainer, fold=fold,
                            configuration=configuration, plans=plans)
    work = resolve_work_dir(work_dir)
    paths = engine.NnUNetPaths(raw=work / "nnUNet_raw", preprocessed=work / "nnUNet_preprocessed",
                               results=resolve_models_dir(models_dir))
    for folder in (paths.raw, paths.preprocessed, paths.results):
        Path(str(folder)).mkdir(parents=True, exist_ok=True)
    torch_device = _device(device)
    plans_file = (Path(str(paths.preprocessed)) / dataset.dataset_folder_name(the_task) / f"{the_task.plans}.json")
    if not (resume and plans_file.is_file()):
        cases = dataset.find_training_cases(Path(data))
        log.info("checking and writing %d training case(s)", len(cases))
        dataset.write_raw_dataset(the_task, cases, Path(str(paths.raw)))
        log.info("planning and preprocessing (%s)", the_task.configuration)
        plans_file = engine.plan_and_preprocess(the_task.dataset_id, paths, configuration=the_task.configuration,
                                                plans=the_task.plans, num_processes=num_processes)
        if plans_override:
            engine.apply_plans_override(plans_file, the_task.configuration, plans_override)
    log.info("training %s fold %s on %s", the_task.model_subfolder, the_task.fold, torch_device)
    fold_folder = engine.train(
        the_task.dataset_id, paths, configuration=the_task.configuration, fold=the_task.fold,
        trainer=the_task.trainer, plans=the_task.plans, device=torch_device,
        schedule=engine.TrainingSchedule(epochs=epochs, iterations_per_epoch=iterations_per_epoch,
                                         val_iterations_per_epoch=None if iterations_per_epoch is None
                                         else max(1, iterations_per_epoch // 5), initial_lr=initial_lr),
        resume=resume, augmentation_workers=augmentation_workers,
    )
    return fold_folder.parent


__all__ = ["TaskStatus", "install_weights", "list_tasks", "predict", "task_labels", "train"]
