"""One predict run, for one task or several: from the options to a :class:`BatchJob` and its result.

The same path serves every run: the task selection is resolved (one task, with its one-model
overrides, or several), the cases of this shard are found, the models located and checked, one
:class:`~autoorgan.batch.job.CaseSegmenter` chosen (one task's model, or the cascade of several
in whole-body values), and the steps of the options are put in order. What ``--continue``
compares (``output_options`` and ``made_with``) derives from the option fields marked as
affecting outputs or labels (:class:`autoorgan.options.Affects`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan.batch.job import BatchJob, BatchResult, BatchStep, CaseSegmenter, CaseStep, ProgressListener
from autoorgan.batch.sharding import check_shard, select_shard
from autoorgan.errors import InputError, ModelLoadError, ModelNotFoundError
from autoorgan.io.cases import Case, case_id_of, find_cases, image_suffix
from autoorgan.models.orientation import (
    ModelOrientation,
    OrientationSource,
    default_orientation_warning,
    resolve_model_orientation,
)
from autoorgan.models.store import (
    ModelLocation,
    describe_models_dir,
    find_model,
    install_hint,
    label_mismatch,
    read_model_labels,
    require_model,
    resolve_models_dir,
)
from autoorgan.options import Affects, OutputType, PredictOptions, SpeedOptions, option_fields
from autoorgan.postprocess import BONE_TASKS
from autoorgan.registry.selection import is_multi_task, resolve_task_selection, split_task_selection, whole_body_task
from autoorgan.registry.tasks import DEMO_NOTE, Task, TaskRegistry, load_registry, resolve_task
from autoorgan.steps.segment import IntensityCheck, ModelPool, TaskModel, TaskSegmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSelection:
    """The tasks of a run; ``several`` when the outputs are one whole-body map of them."""

    tasks: list[Task]
    several: bool
    #: The task table the tasks came from (several tasks: the skeleton's subdivisions are read there).
    registry: TaskRegistry | None = None

    @property
    def output_task(self) -> Task:
        """The label table of the outputs: the task's own, or the whole-body table of the tasks."""
        return whole_body_task(self.tasks) if self.several else self.tasks[0]


def select_tasks(task: str | Sequence[str], options: PredictOptions,
                 registry: TaskRegistry | None = None) -> TaskSelection:
    """The tasks ``--task`` names, with the one-model overrides of ``options`` applied to a single
    task (they cannot apply to several: :class:`InputError`)."""
    if is_multi_task(task):
        given = sorted(f"--{k.replace('_', '-')}" for k in options.model_overrides())
        if given:
            raise InputError(f"{', '.join(given)} change one model and cannot apply to several tasks; change the "
                             "models of a multi-task run in a --tasks-file")
        registry = registry or load_registry(options.tasks_file)
        return TaskSelection(resolve_task_selection(task, registry), True, registry)
    if options.keep_task_maps or options.cascade_margin is not None or not options.cascade:
        raise InputError("--keep-task-maps, --cascade-margin and --no-cascade apply only to runs with several tasks")
    name = task if isinstance(task, str) else split_task_selection(task)[0]
    return TaskSelection([resolve_task(name, tasks_file=options.tasks_file, **options.model_overrides())], False)


def predict_batch(task: str | Sequence[str], input_path: Path, output_dir: Path, options: PredictOptions,
                  listener: ProgressListener | None = None) -> BatchResult:
    """Run ``predict`` over the cases of this shard (see :func:`autoorgan.api.predict`)."""
    check_shard(options.part_id, options.num_parts)
    from autoorgan.io.dicom import set_max_archive_size

    set_max_archive_size(options.max_archive_size)
    from autoorgan.engine.device import set_cpu_threads

    set_cpu_threads(options.threads)  # before any model loads
    job = plan_batch(task, input_path, output_dir, options, listener or ProgressListener())
    return job.run()


def plan_batch(task: str | Sequence[str], input_path: Path, output_dir: Path, options: PredictOptions,
               listener: ProgressListener) -> BatchJob:
    """The batch job of a predict run: its cases, its segmenter and its steps.

    ``output_dir`` may name a label map file for one input file (``-o seg.nii.gz``): the job then
    writes into the file's folder, the case named by the file (its sidecar ``seg.json``); the run
    record and ``index.html`` go into that folder too.
    """
    output_file = output_file_of(input_path, output_dir)
    if output_file is not None:
        output_dir = output_file.parent
    if options.keep_task_maps and (options.split or options.split_only):
        raise InputError("--keep-task-maps and --split both write into OUT/<case>/; choose one")
    selection = select_tasks(task, options)
    if any(t.demo for t in selection.tasks):
        log.warning("%s", DEMO_NOTE)
    output_task = selection.output_task
    outputs = OutputPlan.of(output_task, options)
    label_suffix = outputs.label_suffix if output_file is None else file_label_suffix(output_file, options)
    all_cases = find_cases(input_path, exclude=output_dir)
    if output_file is not None:
        all_cases = named_by_output_file(all_cases, input_path, output_file, label_suffix)
    cases = select_shard(all_cases, [c.case_id for c in all_cases], options.part_id, options.num_parts)
    log.info("%d case(s) in %s; %d in part %d of %d", len(all_cases), input_path, len(cases), options.part_id,
             options.num_parts)
    locations = locate_models(selection, options.models_dir)
    selection = adopt_model_folders(selection, locations)
    orientations: dict[str, ModelOrientation] = {}
    for t in selection.tasks:
        warn_on_label_mismatch(t, locations[t.name].dataset_json)
        orientations[t.name] = resolve_model_orientation(t, locations[t.name].folder, options.orientation)
        if orientations[t.name].source is OrientationSource.DEFAULT:
            log.warning("%s", default_orientation_warning(t))

    from autoorgan import engine

    torch_device = resolve_device(options.device)
    speed = options.speed()
    pool = ModelPool(lambda model: load_segmenter(model.location, model.task, torch_device, speed,
                                                  trust_checkpoint=options.trust_checkpoint))
    repaired = sorted(t.name for t in selection.tasks if repairs(t, options))
    segmenter = make_segmenter(selection, locations, orientations, pool, options, repaired,
                               engine.nnunet_version())
    # --continue: a case is complete only for the same outputs (the fields that affect them, as
    # this run resolved them) and the same models and prediction settings.
    output_options: dict[str, Any] = {"tasks": [t.name for t in selection.tasks], **outputs.recorded}
    boxes = cascading(selection, options)
    resolved = {"postprocess": repaired, "cascade": boxes, "cascade_margin": options.cascade_margin if boxes else None}
    given = options.as_record()  # the speed settings resolved
    for f in option_fields(Affects.OUTPUTS):
        output_options.setdefault(f.name, resolved.get(f.name, given[f.name]))
    # The precision each model runs in on this machine (auto: the CPU's bfloat16, the model's check).
    precisions = {t.name: engine.resolve_precision(speed.precision, torch_device, locations[t.name].folder)
                  for t in selection.tasks}
    made_with = {"models": {t.name: {**model_identity(t, locations[t.name]), "precision": precisions[t.name].label,
                                     "orientation": orientations[t.name].label}
                            for t in selection.tasks},
                 "prediction": {f.name: given[f.name] for f in option_fields(Affects.LABELS)}}
    extra: list[CaseStep] = []
    if options.keep_task_maps:
        from autoorgan.steps.cascade import TaskMapsStep

        extra.append(TaskMapsStep({t.name: t for t in selection.tasks}, suffix=outputs.mask_suffix))
    reports = report_steps(output_task, cases, [locations[t.name].checkpoint for t in selection.tasks], torch_device,
                           options=options, record={"task": output_task.name,
                                                    "tasks": [t.name for t in selection.tasks],
                                                    "input": str(input_path),
                                                    "output": str(output_file or output_dir),
                                                    "precision_resolved": {name: choice.as_dict() for name, choice
                                                                           in precisions.items()}})
    return BatchJob(
        task=output_task, cases=cases, output_dir=output_dir, segmenter=segmenter, resume=options.resume,
        listener=listener, skip_failed=options.skip_failed, postprocess=[IntensityCheck(), *outputs.postprocess],
        extra_outputs=[*extra, *reports.case_steps, *outputs.extra_outputs], finalizers=reports.finalizers,
        abort_steps=reports.abort_steps, label_suffix=label_suffix,
        write_label_map=not options.split_only, output_options=output_options, made_with=made_with)


#: The endings of a label map file that ``-o`` may name (each one file: no detached header or data).
LABEL_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def output_file_of(input_path: Path, output: Path) -> Path | None:
    """The label map file ``output`` names (an image file ending, not an existing folder), or
    ``None`` for an output folder; :class:`InputError` for a folder input or another ending."""
    suffix = image_suffix(output)
    if suffix is None or output.is_dir():
        return None
    if input_path.is_dir():
        raise InputError(f"the input is a folder, so the output must be a folder, not {output.name}")
    if suffix not in LABEL_FILE_SUFFIXES:
        raise InputError(f"an output file must end in {', '.join(LABEL_FILE_SUFFIXES)}, not {output.name}")
    return output


def named_by_output_file(cases: Sequence[Case], input_path: Path, output_file: Path,
                         label_suffix: str | None = None) -> list[Case]:
    """The one case of an input file, named by the output file (``seg.nii.gz`` → ``seg``; with
    ``label_suffix`` ``.seg.nrrd``, ``brain.seg.nrrd`` → ``brain``); :class:`InputError` for an
    input of several cases (a zip of several DICOM series)."""
    if len(cases) != 1:
        raise InputError(f"{input_path.name} holds {len(cases)} cases, so the output must be a folder, "
                         f"not {output_file.name}")
    case_id = case_id_of(output_file)  # "brain.seg" for "brain.seg.nrrd"
    inner = label_suffix[: len(label_suffix) - len(image_suffix(output_file) or "")] if label_suffix else ""
    if inner and case_id.lower().endswith(inner.lower()):
        case_id = case_id[: -len(inner)]
    return [dataclasses.replace(cases[0], case_id=case_id)]


def file_label_suffix(output_file: Path, options: PredictOptions) -> str:
    """The label map ending of an output file, as the user wrote it (the file's ending decides the
    format; ``--output-type nrrd`` needs a ``.nrrd`` file)."""
    suffix = image_suffix(output_file) or ""
    if options.output_type is OutputType.NRRD and suffix != ".nrrd":
        raise InputError(f"--output-type nrrd writes a .nrrd file, not {output_file.name}")
    if options.output_type is OutputType.SEG_NRRD:
        if not output_file.name.lower().endswith(".seg.nrrd") or len(output_file.name) <= len(".seg.nrrd"):
            raise InputError(f"--output-type seg-nrrd writes a .seg.nrrd file, not {output_file.name}")
        suffix = ".seg.nrrd"
    return output_file.name[len(output_file.name) - len(suffix):]


def repairs(task: Task, options: PredictOptions) -> bool:
    """Whether ``task``'s maps are repaired: ``--postprocess``, by default for bone tasks."""
    return options.postprocess if options.postprocess is not None else task.name in BONE_TASKS


def cascading(selection: TaskSelection, options: PredictOptions) -> bool:
    """Whether the subdivision models run on the skeleton's boxes."""
    return selection.several and options.cascade and any(t.name == "skeleton" for t in selection.tasks)


def make_segmenter(selection: TaskSelection, locations: dict[str, ModelLocation],
                   orientations: dict[str, ModelOrientation], pool: ModelPool, options: PredictOptions,
                   repaired: Sequence[str], nnunet_version: str) -> CaseSegmenter:
    """The run's segmenter: one task's model, or the cascade of several in whole-body values."""
    if not selection.several:
        task = selection.tasks[0]
        return TaskSegmenter(TaskModel(task, locations[task.name], orientations[task.name]), pool, nnunet_version,
                             repair=bool(repaired))
    from autoorgan.registry.whole_body import whole_body_table
    from autoorgan.steps.cascade import CascadeOptions, MultiTaskSegmenter, half_patch_mm

    table = whole_body_table()
    models = [TaskModel(task=t, location=locations[t.name], orientation=orientations[t.name], lut=table.lookup(t),
                        half_patch_mm=half_patch_mm(locations[t.name].folder, t.configuration))
              for t in selection.tasks]
    return MultiTaskSegmenter(
        name=selection.output_task.name, models=models, table=table, pool=pool, nnunet_version=nnunet_version,
        skeleton=(selection.registry or load_registry(options.tasks_file)).get_task("skeleton"),
        options=CascadeOptions(cascade=options.cascade, margin_mm=options.cascade_margin,
                               repair=frozenset(repaired)))


def locate_models(selection: TaskSelection, models_dir: Path | None) -> dict[str, ModelLocation]:
    """The installed model of each task; one error naming every missing one."""
    folder = resolve_models_dir(models_dir)
    if not selection.several:
        task = selection.tasks[0]
        return {task.name: require_model(task, folder)}
    found = {t.name: find_model(t, folder) for t in selection.tasks}
    missing = [t for t in selection.tasks if found[t.name] is None]
    if missing:
        raise ModelNotFoundError(
            f"no model for task(s) {', '.join(f'{t.name} (dataset {t.dataset_id})' for t in missing)} in "
            f"{describe_models_dir(folder)}; {install_hint(folder, 'them')}")
    return {name: location for name, location in found.items() if location is not None}


def adopt_model_folders(selection: TaskSelection, locations: dict[str, ModelLocation]) -> TaskSelection:
    """The tasks whose model stands in for their missing configured folder (see
    :func:`autoorgan.models.store.find_model`) take that folder's trainer, plans and configuration,
    with a one-line note each; the others are unchanged."""
    tasks = []
    for t in selection.tasks:
        location = locations[t.name]
        if location.stands_in_for is not None:
            log.warning("task '%s': %s", t.name, location.note())
            trainer, plans, configuration = location.model_parts
            t = dataclasses.replace(t, trainer=trainer, plans=plans, configuration=configuration)
        tasks.append(t)
    return dataclasses.replace(selection, tasks=tasks)


@dataclass(frozen=True)
class OutputPlan:
    """The label-map format and the output steps of a run: the ROI subset after the repair, the
    per-structure masks and the DICOM SEG or RT structure set after the other extra outputs."""

    label_suffix: str
    #: File ending of per-structure masks and per-task maps.
    mask_suffix: str
    postprocess: list[CaseStep]
    extra_outputs: list[CaseStep]
    #: How this run resolved the output fields, for ``output_options``.
    recorded: dict[str, Any]

    @classmethod
    def of(cls, task: Task, options: PredictOptions) -> OutputPlan:
        from autoorgan.io.dicom_seg import DicomSegStep
        from autoorgan.io.rtstruct import RtStructStep
        from autoorgan.registry.colors import label_colors
        from autoorgan.steps.roi import RoiSubsetStep, resolve_roi_subset
        from autoorgan.steps.split import SplitMasksStep

        kind = options.output_type
        structures = None
        if options.roi_subset is not None:
            structures = resolve_roi_subset(task.labels, list(options.roi_subset), task.name)
        extra: list[CaseStep] = []
        if options.split or options.split_only:
            extra.append(SplitMasksStep(structures, suffix=kind.mask_suffix))
        if kind is OutputType.DICOM_SEG:
            extra.append(DicomSegStep(label_colors(task.labels, task.colors)))
        if kind is OutputType.RTSTRUCT:
            extra.append(RtStructStep(label_colors(task.labels, task.colors)))
        if kind is OutputType.SEG_NRRD:
            from autoorgan.steps.viewer_files import SegNrrdStep

            extra.append(SegNrrdStep())
        recorded = {"output_type": kind.value, "split": bool(options.split or options.split_only),
                    "split_only": bool(options.split_only),
                    "roi_subset": sorted(structures.values()) if structures else None}
        return cls(label_suffix=kind.suffix, mask_suffix=kind.mask_suffix, postprocess=[RoiSubsetStep(structures)] if structures else [],
                   extra_outputs=extra, recorded=recorded)


@dataclass(frozen=True)
class ReportPlan:
    """The report outputs of a run (see :mod:`autoorgan.steps.report`)."""

    case_steps: list[CaseStep]
    finalizers: list[BatchStep]
    #: Run when the batch aborts: an aborted batch (interrupted, output error, a model that cannot
    #: load) still gets its run record (status "aborted") and the overview of what is done.
    abort_steps: list[BatchStep]


def report_steps(task: Task, cases: Sequence[Case], checkpoints: Sequence[Path], torch_device: object, *,
                 options: PredictOptions, record: dict[str, Any]) -> ReportPlan:
    """Volumes (always), statistics and previews per case; the statistics table, run record and
    overview per run."""
    from autoorgan.report.run_record import RunRecorder, describe_device
    from autoorgan.steps import report

    case_steps: list[report.ReportStep] = []
    if options.statistics:
        case_steps.append(report.StatisticsStep())
    if options.preview:
        case_steps.append(report.PreviewStep())
    recorder = RunRecorder(part_id=options.part_id, num_parts=options.num_parts,
                           options={**record, **options.as_record()}, checkpoints=list(checkpoints),
                           device=describe_device(torch_device))
    finalizers: list[BatchStep] = [report.BackfillSkipped(task, cases, case_steps)] if case_steps else []
    finalizers.append(recorder)
    if options.statistics:
        finalizers.append(report.StatisticsTable())
    from autoorgan.steps.viewer_files import ViewerLabelTables

    finalizers.append(ViewerLabelTables(task))
    index = report.IndexPage(task, recorder)
    finalizers.append(index)
    return ReportPlan(case_steps=[report.VolumesStep(), *case_steps], finalizers=finalizers,
                      abort_steps=[recorder, index])


def model_identity(task: Task, location: ModelLocation) -> dict[str, Any]:
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


def load_segmenter(location: ModelLocation, task: Task, torch_device: object, speed: SpeedOptions, *,
                   trust_checkpoint: bool) -> Any:
    """``task``'s model (at ``location``) loaded for prediction with ``speed``'s settings; a
    checkpoint that needs code, or any failure inside nnU-Net's loader, is one :class:`ModelLoadError`
    line naming the model."""
    from autoorgan import engine

    try:
        return engine.Segmenter(location.folder, task.fold, torch_device, tile_step_size=speed.step_size,
                                trust_checkpoint=trust_checkpoint, use_mirroring=speed.tta,
                                crop_body=speed.crop_body, export=speed.export, precision=speed.precision)
    except engine.UnsafeCheckpoint as exc:
        raise ModelLoadError(f"refusing to load {location.checkpoint}: {exc}; pass --trust-checkpoint only "
                             "if you trust where this model comes from") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside nnU-Net's loader
        raise ModelLoadError(f"cannot load the model of task '{task.name}' in {location.folder}: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0]) from None


def resolve_device(device: str) -> object:
    """The torch device of ``--device`` (:class:`InputError` for an unknown or absent one)."""
    from autoorgan import engine

    try:
        return engine.resolve_device(device)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def warn_on_label_mismatch(task: Task, dataset_json: Path) -> None:
    """Log when the model's ``dataset.json`` labels differ from the task table (outputs are named
    by the table)."""
    try:
        difference = label_mismatch(task, read_model_labels(dataset_json))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {dataset_json}: {exc}") from None
    if difference:
        log.warning("the model's dataset.json labels differ from the task table of '%s' (%s); "
                    "outputs are named by the task table", task.name, difference)


__all__ = ["TaskSelection", "plan_batch", "predict_batch", "select_tasks"]
