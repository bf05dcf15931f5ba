"""The typed Python API: what the command line does, callable from scripts and notebooks.

All functions take keyword arguments only and raise :class:`autoorgan.errors.AutoOrganError`
subclasses for problems a user can fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan.errors import InputError, ModelLoadError
from autoorgan.io.cases import Case, find_cases
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
    task: str | Sequence[str],
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
    step_size: float | None = None,
    trust_checkpoint: bool = False,
    fast: bool = False,
    tta: bool | None = None,
    crop_body: bool | None = None,
    export: str = "torch",
    listener: ProgressListener | None = None,
    skip_failed: bool = False,
    statistics: bool = False,
    preview: bool = False,
    postprocess: bool | None = None,
    output_type: str = "nifti",
    split: bool = False,
    split_only: bool = False,
    roi_subset: str | Sequence[str] | None = None,
    cascade: bool = True,
    cascade_margin: float | None = None,
    keep_task_maps: bool = False,
    max_archive_size: float | None = None,
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
        Skip cases whose outputs are already complete (``--continue``); failed cases (those with
        an ``OUTPUT/<case>.error.json`` record) are retried unless ``skip_failed``.
    step_size:
        Sliding-window step as a fraction of the patch size (default 0.5 as nnU-Net's; larger is
        faster and moves the labels).
    fast:
        The ``--fast`` preset (:mod:`autoorgan.speed`): no mirroring and the body crop, with a
        measured Dice against the default in the README. Explicit
        ``step_size``/``tta``/``crop_body`` override it.
    tta:
        Test-time mirroring (``None``: on, off with ``fast``).
    crop_body:
        Predict only the body's bounding box (``None``: off, on with ``fast``).
    export:
        ``torch`` (streamed export, the same labels as nnU-Net's in less time and memory) or
        ``nnunet`` (nnU-Net's own export).
    trust_checkpoint:
        Load a checkpoint that needs arbitrary code to unpickle. By default such a checkpoint is
        refused: checkpoints are loaded with ``torch.load(weights_only=True)``.
    listener:
        Receives progress events.
    statistics, preview:
        Also write ``OUTPUT/<case>.stats.json`` and ``OUTPUT/statistics.csv`` (per-structure
        statistics), and ``OUTPUT/<case>.png`` (preview picture). Every run writes
        ``OUTPUT/index.html`` (overview) and its own run record ``OUTPUT/autoorgan_run-part….json``.
    postprocess:
        Anatomical repair of each label map (islands, left/right, vertebrae, ribs; see
        :mod:`autoorgan.postprocess`); ``None``: on for bone tasks, off for organs.

    output_type:
        ``nifti`` (``<case>.nii.gz``), ``nrrd`` (``<case>.nrrd``) or ``dicom-seg`` (DICOM input only:
        ``<case>.seg.dcm`` referencing the source series, besides the NIfTI label map).
    split, split_only:
        Also write one binary mask per structure, ``OUTPUT/<case>/<structure>.nii.gz``;
        ``split_only``: those masks instead of the label map.
    roi_subset:
        Keep only these structures (names of the task's labels, comma-separated or a list).
    cascade, cascade_margin, keep_task_maps:
        Several tasks (a list, a comma list, or ``all``) run in one pass (see
        :mod:`autoorgan.multitask`): one label map per case in whole-body values. With the skeleton
        task among them, subdivision models run on their coarse class's box plus a margin
        (``cascade_margin`` mm instead of half a patch) unless ``cascade`` is off;
        ``keep_task_maps`` also writes ``OUTPUT/<case>/<task>.nii.gz`` in each task's own values.
    max_archive_size:
        Cap (GB) on what one DICOM series of a ``.zip`` may inflate to, each member and all
        together (default :data:`autoorgan.io.dicom.DEFAULT_MAX_ARCHIVE_GB`); a series over it,
        or inflating like a zip bomb, fails that case.

    Returns
    -------
    BatchResult
        One :class:`~autoorgan.pipeline.CaseResult` per case of this shard.
    """
    check_shard(part_id, num_parts)
    from autoorgan.io.dicom import set_max_archive_size

    set_max_archive_size(max_archive_size)
    from autoorgan.speed import resolve_speed

    speed = resolve_speed(fast=fast, step_size=step_size, tta=tta, crop_body=crop_body, export=export)
    from autoorgan.multitask import is_multi_task, predict_multi, split_task_selection

    if is_multi_task(task):
        return predict_multi(
            task=task, input=input, output=output, models_dir=models_dir, tasks_file=tasks_file,
            overrides={"dataset_id": dataset_id, "trainer": trainer, "fold": fold, "configuration": configuration,
                       "plans": plans}, device=device, part_id=part_id, num_parts=num_parts, resume=resume,
            speed=speed, fast=fast, trust_checkpoint=trust_checkpoint, listener=listener, skip_failed=skip_failed,
            statistics=statistics, preview=preview, postprocess=postprocess, output_type=output_type, split=split,
            split_only=split_only, roi_subset=roi_subset, cascade=cascade, cascade_margin=cascade_margin,
            keep_task_maps=keep_task_maps)
    if keep_task_maps or cascade_margin is not None or not cascade:
        raise InputError("--keep-task-maps, --cascade-margin and --no-cascade apply only to runs with several tasks")
    if not isinstance(task, str):
        task = split_task_selection(task)[0]
    the_task = resolve_task(task, tasks_file=tasks_file, dataset_id=dataset_id, trainer=trainer, fold=fold,
                            configuration=configuration, plans=plans)
    output_steps = _output_steps(the_task, output_type, split=split, split_only=split_only, roi_subset=roi_subset)
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
        segmenter = load_segmenter(location, the_task, torch_device, speed, trust_checkpoint=trust_checkpoint)
        loaded.append(segmenter)
        return segmenter

    repair_steps = _postprocess_steps(the_task, postprocess)
    job = BatchJob(
        task=the_task,
        cases=cases,
        output_dir=output_dir,
        load_predictor=load,
        trainer_name=lambda: loaded[0].trainer_name if loaded else the_task.trainer,
        nnunet_version=engine.nnunet_version(),
        resume=resume,
        listener=listener or ProgressListener(),
        skip_failed=skip_failed,
        postprocess=repair_steps,
        **_report_steps(the_task, cases, location.checkpoint, torch_device, statistics=statistics, preview=preview,
                        options={"task": the_task.name, "input": str(input_path), "output": str(output_dir),
                                 "models_dir": None if models_dir is None else str(models_dir),
                                 "dataset_id": dataset_id, "trainer": trainer, "fold": fold,
                                 "configuration": configuration, "plans": plans, "device": device,
                                 "part_id": part_id, "num_parts": num_parts, "resume": resume,
                                 "skip_failed": skip_failed, "step_size": speed.step_size, "fast": fast,
                                 "tta": speed.tta, "crop_body": speed.crop_body, "export": speed.export,
                                 "trust_checkpoint": trust_checkpoint, "statistics": statistics,
                                 "preview": preview},
                        part_id=part_id, num_parts=num_parts),
    )
    _add_output_steps(job, output_steps)
    # --continue: a case repaired (or not) differently is not complete for this run.
    job.output_options = {**job.output_options, "postprocess": bool(repair_steps)}
    # --continue: nor is one made by another model or with other prediction settings.
    job.made_with = {"model": model_identity(the_task, location), "prediction": speed.as_dict()}
    return job.run()


def model_identity(task: Task, location: Any) -> dict[str, Any]:
    """What identifies the model that makes a task's labels, for the sidecar's ``made_with``: the
    nnU-Net dataset, trainer, plans, configuration and fold, and the SHA-256 of the checkpoint and of
    ``plans.json`` (a retrained or edited model is another model). Each file is hashed once per run
    (:func:`autoorgan.report.run_record.sha256_file` remembers it)."""
    from autoorgan.report.run_record import sha256_file

    try:
        checkpoint = sha256_file(location.checkpoint)
        plans = sha256_file(location.folder / "plans.json")
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model of task '{task.name}' in {location.folder}: "
                             f"{exc.strerror or exc}") from None
    return {"dataset_id": task.dataset_id, "trainer": task.trainer, "plans": task.plans,
            "configuration": task.configuration, "fold": str(task.fold), "checkpoint_sha256": checkpoint,
            "plans_sha256": plans}


def load_segmenter(location: Any, task: Task, torch_device: object, speed: Any, *,
                   trust_checkpoint: bool) -> Any:
    """``task``'s model (at ``location``) loaded for prediction with ``speed``'s settings; a
    checkpoint that needs code, or any failure inside nnU-Net's loader, is one :class:`ModelLoadError`
    line naming the model."""
    from autoorgan import engine

    try:
        return engine.Segmenter(location.folder, task.fold, torch_device, tile_step_size=speed.step_size,
                                trust_checkpoint=trust_checkpoint, use_mirroring=speed.tta,
                                crop_body=speed.crop_body, export=speed.export)
    except engine.UnsafeCheckpoint as exc:
        raise ModelLoadError(f"refusing to load {location.checkpoint}: {exc}; pass --trust-checkpoint only "
                             "if you trust where this model comes from") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside nnU-Net's loader
        raise ModelLoadError(f"cannot load the model of task '{task.name}' in {location.folder}: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0]) from None


def _output_steps(task: Task, output_type: str, *, split: bool, split_only: bool,
                  roi_subset: str | Sequence[str] | None) -> dict[str, Any]:
    """Checked ``--output-type/--split/--roi-subset`` as BatchJob settings and steps."""
    from autoorgan.io.dicom_seg import DicomSegStep
    from autoorgan.outputs_split import SplitMasksStep
    from autoorgan.roi import RoiSubsetStep, resolve_roi_subset

    kinds = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom-seg": ".nii.gz"}
    kind = output_type.strip().lower().replace("_", "-")
    if kind not in kinds:
        raise InputError(f"output type must be one of {', '.join(kinds)}, got '{output_type}'")
    structures = None
    if roi_subset is not None:
        names = roi_subset.split(",") if isinstance(roi_subset, str) else list(roi_subset)
        structures = resolve_roi_subset(task.labels, names, task.name)
    extra: list[Any] = []
    if split or split_only:
        extra.append(SplitMasksStep(structures, suffix=kinds[kind]))
    if kind == "dicom-seg":
        extra.append(DicomSegStep())
    # Recorded in each sidecar: ``--continue`` counts a case as complete only for the same options.
    options = {"output_type": kind, "split": bool(split or split_only), "split_only": bool(split_only),
               "roi_subset": sorted(structures.values()) if structures else None}
    return {"label_suffix": kinds[kind], "write_label_map": not split_only,
            "postprocess": [RoiSubsetStep(structures)] if structures else [], "extra_outputs": extra,
            "output_options": options}


def _add_output_steps(job: BatchJob, steps: dict[str, Any]) -> None:
    """Label-map format and the output steps: the ROI subset after other post-processing, the
    masks and DICOM SEG after the other extra outputs."""
    job.label_suffix = steps["label_suffix"]
    job.write_label_map = steps["write_label_map"]
    job.output_options = steps["output_options"]
    job.postprocess = [*job.postprocess, *steps["postprocess"]]
    job.extra_outputs = [*job.extra_outputs, *steps["extra_outputs"]]


def _postprocess_steps(task: Task, enabled: bool | None) -> list[Any]:
    """The repair step of a predict run: on by default for bone tasks."""
    from autoorgan.postprocess import BONE_TASKS
    from autoorgan.postprocess.step import RepairStep

    if enabled is None:
        enabled = task.name in BONE_TASKS
    return [RepairStep()] if enabled else []


def _report_steps(task: Task, cases: Sequence[Case], checkpoint: Path | Sequence[Path], torch_device: object, *,
                  statistics: bool, preview: bool, options: Mapping[str, Any], part_id: int,
                  num_parts: int) -> dict[str, Any]:
    """The report outputs of a predict run as BatchJob fields (see :mod:`autoorgan.report.steps`)."""
    from autoorgan.report import steps
    from autoorgan.report.run_record import RunRecorder, describe_device

    case_steps: list[steps.ReportStep] = []
    if statistics:
        case_steps.append(steps.StatisticsStep())
    if preview:
        case_steps.append(steps.PreviewStep())
    checkpoints = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint)
    recorder = RunRecorder(part_id=part_id, num_parts=num_parts, options=options, checkpoints=checkpoints,
                           device=describe_device(torch_device))
    finalizers: list[Any] = [steps.BackfillSkipped(task, cases, case_steps)] if case_steps else []
    finalizers.append(recorder)
    if statistics:
        finalizers.append(steps.StatisticsTable())
    index = steps.IndexPage(task, recorder)
    finalizers.append(index)
    # An aborted batch (interrupted, output error, model that cannot load) still gets its run record
    # (status "aborted") and the overview of what is done.
    return {"extra_outputs": case_steps, "finalizers": finalizers, "abort_steps": [recorder, index]}


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
    """Label value → structure name of ``task``; ``all``: the whole-body table of multi-task runs."""
    from autoorgan.whole_body import ALL, whole_body_table

    if task.strip().lower() == ALL:
        return dict(whole_body_table().labels)
    return dict(resolve_task(task, tasks_file=tasks_file).labels)


def install_weights(
    *, archive: PathLike, models_dir: PathLike | None = None, tasks_file: PathLike | None = None,
    force: bool = False, sha256: str | None = None, trust_checkpoint: bool = False,
    max_size_gb: float | None = None, max_ratio: float | None = None,
) -> list[InstalledModel]:
    """Install an nnU-Net model zip into the models folder (see :func:`autoorgan.models.install_weights`).

    ``trust_checkpoint`` skips the checks that its checkpoints and plans run no code;
    ``max_size_gb`` / ``max_ratio`` raise the caps on the unpacked size (``None``: the defaults).
    """
    from autoorgan.models import DEFAULT_MAX_RATIO, DEFAULT_MAX_SIZE_GB

    registry = load_registry(tasks_file)
    return _install_weights(Path(archive), resolve_models_dir(models_dir), registry=registry, force=force,
                            sha256=sha256, trust_checkpoint=trust_checkpoint,
                            max_size_gb=DEFAULT_MAX_SIZE_GB if max_size_gb is None else max_size_gb,
                            max_ratio=DEFAULT_MAX_RATIO if max_ratio is None else max_ratio)


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
    seed: int | None = None,
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
        resume=resume, augmentation_workers=augmentation_workers, seed=seed,
    )
    return fold_folder.parent


def export_weights(
    *,
    task: str,
    output: PathLike,
    models_dir: PathLike | None = None,
    tasks_file: PathLike | None = None,
    dataset_id: int | None = None,
    trainer: str | None = None,
    fold: int | str | None = None,
    configuration: str | None = None,
    plans: str | None = None,
) -> Path:
    """Write the installed model of ``task`` as a zip in nnU-Net's export format.

    The archive holds the task's configuration and fold (``dataset.json``, ``plans.json``,
    ``dataset_fingerprint.json``, ``checkpoint_final.pth``, ``progress.png`` and the validation
    summary) and is accepted by :func:`install_weights` and by nnU-Net's own install command.
    It is written to a temporary name and renamed into place. Returns the archive path.
    """
    from autoorgan import engine
    from autoorgan.errors import OutputError
    from autoorgan.io.writing import atomic_path

    the_task = resolve_task(task, tasks_file=tasks_file, dataset_id=dataset_id, trainer=trainer, fold=fold,
                            configuration=configuration, plans=plans)
    location = require_model(the_task, resolve_models_dir(models_dir))
    archive = Path(output)
    if archive.suffix.lower() != ".zip":
        raise InputError(f"the archive name must end in .zip, got {archive.name}")
    wanted = [*engine.EXPORT_MODEL_FILES, *(f"{the_task.fold_folder}/{name}" for name in engine.EXPORT_FOLD_FILES)]
    missing = [name for name in wanted if not (location.folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"cannot export {location.folder}: nnU-Net's export format needs {', '.join(missing)} "
                             "(written by a completed training, which ends with the validation)")
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(archive) as tmp:
            engine.export_model(location.folder, tmp, configuration=the_task.configuration, fold=the_task.fold,
                                trainer=the_task.trainer, plans=the_task.plans)
    except OSError as exc:
        raise OutputError(f"cannot write {archive}: {exc.strerror or exc}") from None
    log.info("exported %s fold %s to %s", location.folder, the_task.fold, archive)
    return archive


def repair(
    *,
    task: str,
    input: PathLike,  # noqa: A002 - mirrors the -i/--input option
    output: PathLike,
    vertebrae: PathLike | None = None,
    ct: PathLike | None = None,
    skeleton: PathLike | None = None,
    tasks_file: PathLike | None = None,
    steps: Sequence[str] | None = None,
) -> list[Any]:
    """Anatomically repair label maps made earlier or by other tools.

    ``input`` is a label map of ``task`` (or a folder of them); ``task="all"`` takes a merged
    map's label table from its sidecar (``<case>.json``). ``vertebrae`` (a vertebrae map, used
    to number ribs and close rib–vertebra gaps), ``ct`` and ``skeleton`` (bone for the
    junction) are files on the same grid, or folders with files of the same case names.
    ``output`` is a file for a single input, else a folder; each output keeps the input's grid
    and pixel type and gets a sidecar listing what each step changed. ``steps`` limits the
    steps run (default: all that apply: islands, sides, vertebrae, ribs, junction).

    Returns one :class:`autoorgan.postprocess.batch.RepairedCase` per label map; a map that
    cannot be read is reported there and the others go on.
    """
    from autoorgan.postprocess.batch import repair_files

    labels_all = task.strip().lower() == "all"
    the_task = None if labels_all else resolve_task(task, tasks_file=tasks_file)
    vertebra_names = dict(resolve_task("vertebrae", tasks_file=tasks_file).labels)
    return repair_files(task=the_task, labels_all=labels_all, input_path=Path(input), output=Path(output),
                        vertebrae=None if vertebrae is None else Path(vertebrae), vertebra_names=vertebra_names,
                        ct=None if ct is None else Path(ct), skeleton=None if skeleton is None else Path(skeleton),
                        steps=steps)


__all__ = ["TaskStatus", "export_weights", "install_weights", "list_tasks", "predict", "repair", "task_labels",
           "train"]
