"""Several tasks in one ``predict`` run: task selection, checks, and the batch job.

``--task`` takes repeated options, comma lists and ``all`` (the seven tasks of the whole-body
table). A selection of one task runs exactly as before; several tasks run through
:class:`autoorgan.cascade.MultiTaskSegmenter`: each CT is read once, each model loaded once per
run, the skeleton first with subdivision models on its ROIs, and one label map in whole-body
values (:mod:`autoorgan.whole_body`) is written per case.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from autoorgan.errors import InputError, ModelNotFoundError, TaskError
from autoorgan.tasks import Task, TaskRegistry, load_registry, normalize_name
from autoorgan.whole_body import ALL, whole_body_table

if TYPE_CHECKING:
    from autoorgan.pipeline import BatchResult, ProgressListener
    from autoorgan.speed import SpeedOptions

log = logging.getLogger(__name__)


def split_task_selection(task: str | Sequence[str]) -> list[str]:
    """The task names of ``--task`` values: repeated options and comma lists, in canonical form,
    without repeats (``"ribs, Vertebrae"`` → ``["ribs", "vertebrae"]``); ``all`` stays ``all``."""
    values = [task] if isinstance(task, str) else list(task)
    names: list[str] = []
    for value in values:
        for part in str(value).split(","):
            name = normalize_name(part)
            if not name:
                raise InputError(f"empty task name in --task '{value}'")
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("no task given")
    return names


def resolve_task_selection(task: str | Sequence[str], registry: TaskRegistry) -> list[Task]:
    """The tasks of a multi-task selection in whole-body table order (``all`` = every task of it).

    Refuses tasks unknown to ``registry`` and tasks outside the whole-body table (a custom task
    of a ``--tasks-file`` runs on its own), with one line naming them.
    """
    table = whole_body_table()
    names = split_task_selection(task)
    wanted: list[str] = []
    for name in names:
        for member in (table.task_order if name == ALL else (registry.get_task(name).name,)):
            if member not in wanted:
                wanted.append(member)
    outside = [n for n in wanted if n not in table.task_order]
    if outside:
        raise TaskError(f"task(s) {', '.join(outside)} are not in the whole-body label table; a multi-task run "
                        f"takes only {', '.join(table.task_order)} (run other tasks on their own)")
    tasks = [registry.get_task(n) for n in table.task_order if n in wanted]
    for t in tasks:
        table.lookup(t)  # a task table that renamed a structure is refused here, before anything runs
    return tasks


def selection_name(tasks: Sequence[Task]) -> str:
    """The name of a task set in sidecars and ``--continue`` checks: ``all`` for the seven tasks,
    else the names in table order joined by commas."""
    names = [t.name for t in tasks]
    return ALL if names == list(whole_body_table().task_order) else ",".join(names)


def whole_body_task(tasks: Sequence[Task]) -> Task:
    """A task standing for the merged map of ``tasks`` (its whole-body labels), for the output and
    report steps that take a label table (statistics, preview, split, ROI subset, DICOM SEG).
    It has no model of its own (``dataset_id`` 0)."""
    labels = whole_body_table().labels_of_tasks([t.name for t in tasks])
    return Task(name=selection_name(tasks), dataset_id=0, labels=MappingProxyType(labels),
                description="whole-body map of " + ", ".join(t.name for t in tasks), orientation=None)


def is_multi_task(task: str | Sequence[str]) -> bool:
    """True when ``--task`` names more than one task, or ``all``."""
    names = split_task_selection(task)
    return len(names) > 1 or names == [ALL]


def predict_multi(
    *,
    task: str | Sequence[str],
    input: str | Path,
    output: str | Path,
    models_dir: str | Path | None,
    tasks_file: str | Path | None,
    overrides: dict[str, Any],
    device: str,
    part_id: int,
    num_parts: int,
    resume: bool,
    speed: SpeedOptions,
    fast: bool,
    trust_checkpoint: bool,
    listener: ProgressListener | None,
    skip_failed: bool,
    statistics: bool,
    preview: bool,
    postprocess: bool | None,
    output_type: str,
    split: bool,
    split_only: bool,
    roi_subset: str | Sequence[str] | None,
    cascade: bool,
    cascade_margin: float | None,
    keep_task_maps: bool,
) -> BatchResult:
    """The multi-task branch of :func:`autoorgan.api.predict` (same options, plus the cascade's)."""
    from autoorgan import api, engine
    from autoorgan.cascade import CascadeOptions, MultiTaskSegmenter, TaskMapsStep, TaskModel, half_patch_mm
    from autoorgan.io.cases import find_cases
    from autoorgan.models import find_model, resolve_models_dir
    from autoorgan.pipeline import BatchJob, ProgressListener
    from autoorgan.postprocess import BONE_TASKS
    from autoorgan.sharding import select_shard

    given = sorted(f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None)
    if given:
        raise InputError(f"{', '.join(given)} change one model and cannot apply to several tasks; change the "
                         "models of a multi-task run in a --tasks-file")
    if cascade_margin is not None and not cascade_margin >= 0:
        raise InputError(f"--cascade-margin must be 0 or more millimetres, got {cascade_margin}")
    if keep_task_maps and (split or split_only):
        raise InputError("--keep-task-maps and --split both write into OUT/<case>/; choose one")
    registry = load_registry(tasks_file)
    tasks = resolve_task_selection(task, registry)
    merged_task = whole_body_task(tasks)
    output_steps = api._output_steps(merged_task, output_type, split=split, split_only=split_only,
                                     roi_subset=roi_subset)
    input_path, output_dir = Path(input), Path(output)
    all_cases = find_cases(input_path, exclude=output_dir)
    cases = select_shard(all_cases, [c.case_id for c in all_cases], part_id, num_parts)
    log.info("%d case(s) in %s; %d in part %d of %d", len(all_cases), input_path, len(cases), part_id, num_parts)

    folder = resolve_models_dir(models_dir)
    locations = {}
    missing = []
    for t in tasks:
        found = find_model(t, folder)
        if found is None:
            missing.append(t)
        else:
            locations[t.name] = found
    if missing:
        raise ModelNotFoundError(
            f"no model for task(s) {', '.join(f'{t.name} (dataset {t.dataset_id})' for t in missing)} in {folder}; "
            "install them with 'autoorgan install-weights MODEL.zip' or point --models-dir at them")
    table = whole_body_table()
    models = []
    for t in tasks:
        location = locations[t.name]
        api._warn_on_label_mismatch(t, location.dataset_json)
        models.append(TaskModel(task=t, location=location, lut=table.lookup(t),
                                half_patch_mm=half_patch_mm(location.folder, t.configuration)))

    torch_device = api._device(device)

    def load(model: TaskModel) -> engine.Segmenter:
        return api.load_segmenter(model.location, model.task, torch_device, speed, trust_checkpoint=trust_checkpoint)

    repaired = frozenset(t.name for t in tasks if (postprocess if postprocess is not None else t.name in BONE_TASKS))
    segmenter = MultiTaskSegmenter(
        name=merged_task.name, models=models, table=table, load=load, nnunet_version=engine.nnunet_version(),
        skeleton=registry.get_task("skeleton"),
        options=CascadeOptions(cascade=cascade, margin_mm=cascade_margin, repair=repaired))
    options = {"task": merged_task.name, "tasks": [t.name for t in tasks], "input": str(input_path),
               "output": str(output_dir), "models_dir": None if models_dir is None else str(models_dir),
               "device": device, "part_id": part_id, "num_parts": num_parts, "resume": resume,
               "skip_failed": skip_failed, "fast": fast, **speed.as_dict(), "trust_checkpoint": trust_checkpoint,
               "statistics": statistics, "preview": preview, "cascade": cascade, "cascade_margin": cascade_margin,
               "keep_task_maps": keep_task_maps}
    job = BatchJob(
        task=merged_task,
        cases=cases,
        output_dir=output_dir,
        load_predictor=_no_single_model,
        trainer_name=lambda: "",
        nnunet_version=engine.nnunet_version(),
        resume=resume,
        listener=listener or ProgressListener(),
        skip_failed=skip_failed,
        case_segmenter=segmenter,
        **api._report_steps(merged_task, cases, [m.location.checkpoint for m in models], torch_device,
                            statistics=statistics, preview=preview, options=options, part_id=part_id,
                            num_parts=num_parts),
    )
    api._add_output_steps(job, output_steps)
    # --continue: outputs of another task set or cascade setting are not complete for this run.
    cascading = cascade and any(t.name == "skeleton" for t in tasks)
    job.output_options = {**job.output_options, "tasks": [t.name for t in tasks], "cascade": cascading,
                          "cascade_margin": cascade_margin if cascading else None, "keep_task_maps": keep_task_maps,
                          "postprocess": sorted(repaired)}
    # --continue: nor by other models or prediction settings (each model hashed once per run).
    job.made_with = {"models": {m.task.name: api.model_identity(m.task, m.location) for m in models},
                     "prediction": speed.as_dict()}
    if keep_task_maps:
        job.extra_outputs = [TaskMapsStep({t.name: t for t in tasks}, suffix=output_steps["label_suffix"]),
                             *job.extra_outputs]
    return job.run()


def _no_single_model() -> Any:
    """Never called: a multi-task job's models are loaded by its case segmenter."""
    raise RuntimeError("a multi-task run loads its models through its case segmenter")


__all__ = ["is_multi_task", "predict_multi", "resolve_task_selection", "selection_name", "split_task_selection",
           "whole_body_task"]
