"""The typed Python API: what the command line does, callable from scripts and notebooks.

Functions raise :class:`autoorgan.errors.AutoOrganError` subclasses for problems a user can fix.
``predict`` takes the options of :class:`autoorgan.options.PredictOptions` as keywords;
``segment`` does the same for an image held in memory (SimpleITK, nibabel or NumPy).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoorgan.batch.job import BatchResult, ProgressListener
from autoorgan.errors import InputError, ModelLoadError, ModelNotFoundError
from autoorgan.models.store import (
    InstalledModel,
    find_model,
    require_model,
    resolve_models_dir,
)
from autoorgan.models.store import install_weights as _install_weights
from autoorgan.options import PredictOptions, build_options
from autoorgan.registry.tasks import Task, load_registry, resolve_task
from autoorgan.runs.segment import Segmented, segment_image

if TYPE_CHECKING:
    from autoorgan.runs.precision_check import PrecisionCheck, Progress

log = logging.getLogger(__name__)

PathLike = str | Path


def predict(
    task: str | Sequence[str],
    input: PathLike,
    output: PathLike,
    *,
    listener: ProgressListener | None = None,
    options: PredictOptions | None = None,
    **settings: Any,
) -> BatchResult:
    """Segment every CT of ``input`` (a file or a folder) with the model of ``task``.

    Writes ``OUTPUT/<case>.nii.gz`` (label map on exactly the input's grid) and
    ``OUTPUT/<case>.json`` (task, model and label table) for each case of this shard, and per run
    ``OUTPUT/index.html`` (overview) and a run record ``OUTPUT/autoorgan_run-part….json``.

    ``task`` is a task name (forgiving: ``upper-limb``, ``"Upper Limb"``), or several (a list, a
    comma list, or ``all``): they run in one pass and write one label map per case in whole-body
    values. ``settings`` are the fields of :class:`autoorgan.options.PredictOptions`, the same
    options as the command line's (``device="cpu"``, ``fast=True``, ``resume=True`` for
    ``--continue``, ``roi_subset=["liver", "spleen"]``...); ``options`` is a built set of them
    (``settings`` go on top). ``listener`` receives progress events.

    Returns one :class:`~autoorgan.batch.job.CaseResult` per case of this shard; raises
    :class:`~autoorgan.errors.AutoOrganError` subclasses for what a user can fix.
    """
    from autoorgan.runs.predict import predict_batch

    try:
        chosen = build_options(options, **settings)
    except TypeError as exc:
        raise TypeError(f"predict(): {exc}") from None
    return predict_batch(task, Path(input), Path(output), chosen, listener)


def segment(
    image: Any,
    task: str | Sequence[str],
    *,
    output: PathLike | None = None,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    name: str = "image",
    listener: ProgressListener | None = None,
    options: PredictOptions | None = None,
    **settings: Any,
) -> Segmented:
    """Segment an image held in memory with the model of ``task``: the same run as :func:`predict`.

    ``image`` is a 3D SimpleITK image, a nibabel NIfTI image (``Nifti1Image``/``Nifti2Image``), or a
    NumPy array indexed ``[x, y, z]`` (as nibabel's; pass ``sitk.GetArrayFromImage(img)`` as
    ``.transpose(2, 1, 0)``) with ``spacing`` (mm along x, y, z; required), ``origin`` and
    ``direction`` (9 numbers, row by row) in SimpleITK's LPS convention (defaults: 0 and identity).

    The image is written as one case into a private temporary folder and segmented by
    :func:`predict`'s code; the label map and its sidecar are read back and the temporary folders
    removed. Returns :class:`~autoorgan.runs.segment.Segmented`: ``labels`` of the input's kind
    (SimpleITK image / nibabel image with the input's affine / NumPy array) with exactly the input's
    grid, ``label_table`` (value → structure name) and ``sidecar``. ``task`` and ``settings`` are
    :func:`predict`'s. Nothing is written elsewhere unless ``output`` names a folder: it then keeps
    ``OUTPUT/<name>.nii.gz``, ``OUTPUT/<name>.json`` and the run's report files, and takes the
    options that only add files (``statistics``, ``preview``, ``split``, ``keep_task_maps``,
    ``output_type="nrrd"``). Options for batches of files (``resume``, ``skip_failed``,
    ``split_only``, ``max_archive_size``, ``part_id``/``num_parts``) are refused
    (:class:`~autoorgan.errors.InputError`), as is an input of another kind; an image the run cannot
    segment raises :class:`~autoorgan.errors.CaseError` with the case's one-line reason.
    """
    try:
        chosen = build_options(options, **settings)
    except TypeError as exc:
        raise TypeError(f"segment(): {exc}") from None
    return segment_image(task, image, chosen, output=None if output is None else Path(output), spacing=spacing,
                         origin=origin, direction=direction, name=name, listener=listener)


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
    folder = resolve_models_dir(models_dir)  # always a folder: at the least the per-user one
    statuses = []
    for task in registry.values():
        try:
            location = find_model(task, folder)
        except ModelNotFoundError:  # several model folders could serve it: predict says which
            location = None
        statuses.append(TaskStatus(task=task, model_folder=location.folder if location else None))
    return statuses


def task_labels(task: str, *, tasks_file: PathLike | None = None) -> dict[int, str]:
    """Label value → structure name of ``task``; ``all``: the whole-body table of multi-task runs."""
    from autoorgan.registry.whole_body import ALL, whole_body_table

    if task.strip().lower() == ALL:
        return dict(whole_body_table().labels)
    return dict(resolve_task(task, tasks_file=tasks_file).labels)


def install_weights(
    archive: PathLike, *, models_dir: PathLike | None = None, tasks_file: PathLike | None = None,
    force: bool = False, sha256: str | None = None, trust_checkpoint: bool = False,
    max_size_gb: float | None = None, max_ratio: float | None = None,
) -> list[InstalledModel]:
    """Install an nnU-Net model zip into the models folder (see :func:`autoorgan.models.store.install_weights`).

    ``trust_checkpoint`` skips the checks that its checkpoints and plans run no code;
    ``max_size_gb`` / ``max_ratio`` raise the caps on the unpacked size (``None``: the defaults).
    """
    from autoorgan.models.store import DEFAULT_MAX_RATIO, DEFAULT_MAX_SIZE_GB

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
    task: str,
    data: PathLike,
    *,
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
    from autoorgan import engine
    from autoorgan.runs.predict import resolve_device
    from autoorgan.training import dataset

    the_task = resolve_task(task, tasks_file=tasks_file, dataset_id=dataset_id, trainer=trainer, fold=fold,
                            configuration=configuration, plans=plans)
    work = resolve_work_dir(work_dir)
    paths = engine.NnUNetPaths(raw=work / "nnUNet_raw", preprocessed=work / "nnUNet_preprocessed",
                               results=resolve_models_dir(models_dir))
    for folder in (paths.raw, paths.preprocessed, paths.results):
        Path(str(folder)).mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
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


def calibrate(
    task: str,
    inputs: PathLike | Sequence[PathLike],
    *,
    models_dir: PathLike | None = None,
    tasks_file: PathLike | None = None,
    device: str = "auto",
    candidates: Sequence[str] | None = None,
    min_margin: float | None = None,
    write: bool = True,
    trust_checkpoint: bool = False,
    progress: Any = None,
) -> Any:
    """Measure the orientation the installed model of ``task`` was trained in, from CTs whose
    geometry is known (``inputs``: image files or DICOM series), and record it beside the model
    (``autoorgan_calibration.json``), where :func:`predict` takes it from.

    Returns the :class:`autoorgan.runs.calibrate.Calibration` (candidates best first, winner,
    margin); raises :class:`autoorgan.runs.calibrate.CalibrationRefused` (nothing recorded) when
    the winner's margin is below ``min_margin`` (default
    :data:`autoorgan.runs.calibrate.MIN_MARGIN`). See :mod:`autoorgan.runs.calibrate` for the scores.
    """
    from autoorgan.runs.calibrate import MIN_MARGIN
    from autoorgan.runs.calibrate import calibrate as _calibrate

    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    return _calibrate(task, paths, models_dir=Path(models_dir) if models_dir is not None else None,
                      tasks_file=Path(tasks_file) if tasks_file is not None else None, device=device,
                      candidates=candidates, min_margin=MIN_MARGIN if min_margin is None else min_margin,
                      write=write, trust_checkpoint=trust_checkpoint, progress=progress)


def check_precision(
    task: str,
    inputs: PathLike | Sequence[PathLike],
    *,
    models_dir: PathLike | None = None,
    tasks_file: PathLike | None = None,
    device: str = "cpu",
    min_dice: float | None = None,
    median_dice: float | None = None,
    write: bool = True,
    trust_checkpoint: bool = False,
    progress: Progress | None = None,
) -> PrecisionCheck:
    """Check whether the installed model of ``task`` gives the same labels in bfloat16 as in float32
    on the CTs ``inputs`` (image files, DICOM series or folders of them), and record the result
    beside the model (``autoorgan_precision.json``), where ``--precision auto`` reads it: a model
    that does not agree is kept in float32 there.

    Each CT is segmented twice by :func:`predict`'s code on the CPU (``precision="fp32"`` and
    ``"bf16"``, without post-processing, into a temporary folder) and each structure's Dice is
    measured; the model agrees when the lowest Dice reaches ``min_dice`` and the median
    ``median_dice`` (defaults :data:`autoorgan.engine.precision.MIN_DICE` and
    :data:`~autoorgan.engine.precision.MEDIAN_DICE`, 0.99 and 0.999; only stricter bounds are
    accepted). Returns the :class:`autoorgan.runs.precision_check.PrecisionCheck` (``agrees``, the
    scores, ``check_path``; ``write=False`` records nothing). A model that does not agree is not an
    error; a task, model or CT that cannot be used raises an
    :class:`~autoorgan.errors.AutoOrganError`. See :mod:`autoorgan.runs.precision_check`.
    """
    from autoorgan.engine.precision import MEDIAN_DICE, MIN_DICE
    from autoorgan.runs.precision_check import check_precision as _check_precision

    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    return _check_precision(task, paths, models_dir=Path(models_dir) if models_dir is not None else None,
                            tasks_file=Path(tasks_file) if tasks_file is not None else None, device=device,
                            min_dice=MIN_DICE if min_dice is None else min_dice,
                            median_dice=MEDIAN_DICE if median_dice is None else median_dice,
                            write=write, trust_checkpoint=trust_checkpoint, progress=progress)


def export_weights(
    task: str,
    output: PathLike,
    *,
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
    summary), and the records kept beside the model where there are any: its calibration record
    (see :func:`calibrate`) and its precision check (see :func:`check_precision`), which
    :func:`install_weights` puts back beside the model; it is accepted by nnU-Net's own install
    command too.
    It is written to a temporary name and renamed into place. Returns the archive path.
    """
    from autoorgan import engine
    from autoorgan.engine.precision import CHECK_FILE
    from autoorgan.errors import OutputError
    from autoorgan.io.writing import atomic_path
    from autoorgan.models.orientation import CALIBRATION_FILE
    from autoorgan.models.releases import add_model_records, scrub_model_archive

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
            add_model_records(tmp, location.folder, [CALIBRATION_FILE, CHECK_FILE])
            scrub_model_archive(tmp)  # no details of this machine in the archive
    except OSError as exc:
        raise OutputError(f"cannot write {archive}: {exc.strerror or exc}") from None
    log.info("exported %s fold %s to %s", location.folder, the_task.fold, archive)
    return archive


def repair(
    task: str,
    input: PathLike,
    output: PathLike,
    *,
    vertebrae: PathLike | None = None,
    ct: PathLike | None = None,
    skeleton: PathLike | None = None,
    tasks_file: PathLike | None = None,
    steps: Sequence[str] | None = None,
    resume: bool = False,
    skip_failed: bool = False,
    listener: ProgressListener | None = None,
) -> list[Any]:
    """Anatomically repair label maps made earlier or by other tools.

    ``input`` is a label map of ``task`` (or a folder of them); ``task="all"`` takes a merged
    map's label table from its sidecar (``<case>.json``). ``vertebrae`` (a vertebrae map, used
    to number ribs and close rib–vertebra gaps), ``ct`` and ``skeleton`` (bone for the
    junction) are files on the same grid, or folders with files of the same case names.
    ``output`` is a file for a single input, else a folder; each output keeps the input's grid
    and pixel type and gets a sidecar listing what each step changed. ``steps`` limits the
    steps run (default: all that apply: islands, sides, vertebrae, ribs, junction).

    The maps are repaired as a batch like :func:`predict`'s: outputs are written atomically, a map
    that fails gets a failure record (``OUT/<case>.error.json``) and the others go on. ``resume``
    skips the maps whose outputs are complete (repaired the same way); with it, ``skip_failed``
    does not retry the maps that failed before.

    Returns one :class:`autoorgan.steps.repair_files.RepairedCase` per label map (``status`` done,
    skipped or failed; ``error`` says why a map failed).
    """
    from autoorgan.steps.repair_files import repair_files

    labels_all = task.strip().lower() == "all"
    the_task = None if labels_all else resolve_task(task, tasks_file=tasks_file)
    vertebra_names = dict(resolve_task("vertebrae", tasks_file=tasks_file).labels)
    companions = {what: None if path is None else Path(path)
                  for what, path in (("vertebrae", vertebrae), ("ct", ct), ("skeleton", skeleton))}
    return repair_files(task=the_task, input_path=Path(input), output=Path(output), companions=companions,
                        vertebra_names=vertebra_names, steps=steps, resume=resume, skip_failed=skip_failed,
                        listener=listener)


__all__ = ["Segmented", "TaskStatus", "check_precision", "export_weights", "install_weights", "list_tasks", "predict",
           "repair", "segment", "task_labels", "train"]
