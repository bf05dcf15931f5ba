"""The batch loop: each case read, segmented (by a :class:`CaseSegmenter`), stepped and written.

A batch never stops for one bad case: each case's failure is caught, reported in one line and
recorded, and the loop goes on. Outputs are written atomically: the old sidecar goes first, then the
extra outputs, the label map (its checksum noted) and the new sidecar last, so a case counts as done
only when everything it produces is complete and belongs together (:mod:`autoorgan.batch.outputs`).

Several runs may share an output folder. A run removes only temporary files nobody is writing
(:mod:`autoorgan.io.writing`), and when a case fails it removes only the label map it wrote itself,
never one another run has put there since. An interruption (Ctrl-C, or SIGTERM through
:mod:`autoorgan.batch.interrupts`) aborts the batch like an output error: the run record and the
overview are written, then the interruption goes on to the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from autoorgan.batch.failures import clear_failure, read_failure, write_failure
from autoorgan.batch.outputs import (
    LABEL_SHA256_KEY,
    LABEL_SIZE_KEY,
    MADE_WITH_KEY,
    OUTPUT_OPTIONS_KEY,
    CaseOutputs,
    reserved_case_id_problem,
)
from autoorgan.errors import AutoOrganError, CaseError, ModelLoadError, OutputError
from autoorgan.io.cases import Case
from autoorgan.io.image import Volume, image_from_array
from autoorgan.io.reading import read_case
from autoorgan.io.writing import (
    all_temporaries,
    remove_abandoned,
    remove_if_unchanged,
    write_image_digest,
    write_json,
)
from autoorgan.registry.tasks import Task

log = logging.getLogger(__name__)

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class CaseResult:
    """How one case went."""

    case_id: str
    status: Status
    seconds: float = 0.0
    #: Why a failed case failed, naming no case (the case is ``case_id``; the failure record and the
    #: log line name the input file too, see :func:`failure_reason`).
    error: str | None = None
    output: Path | None = None


@dataclass
class BatchResult:
    """All cases of a run (of this shard)."""

    results: list[CaseResult] = field(default_factory=list)
    #: Why the batch stopped before its end (the model could not load, the output folder failed).
    aborted: str | None = None

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


class ProgressListener:
    """Receives progress of a batch. The default does nothing; the CLI draws progress bars."""

    def batch_started(self, total: int, to_do: int) -> None:
        """``total`` cases in this shard, ``to_do`` of them not yet complete."""

    def case_started(self, case_id: str) -> None:
        """Work on a case begins."""

    def case_stage(self, case_id: str, stage: str) -> None:
        """A case enters a stage: ``reading``, ``loading model``, ``predicting``, ``writing``."""

    def case_progress(self, case_id: str, done: int, total: int) -> None:
        """The network of the case's current stage has run ``done`` of ``total`` sliding-window
        tiles (sent after each group of tiles; a new model or region starts again at 0)."""

    def case_finished(self, result: CaseResult) -> None:
        """A case ended (done, skipped or failed)."""


#: Key of :attr:`CaseContext.artifacts` with header fields (name → text) that the batch writes
#: into the label map's file with the map (3D Slicer's segment descriptions of a ``.seg.nrrd``).
LABEL_MAP_FIELDS = "label_map_fields"


@dataclass
class CaseContext:
    """What one case has produced so far, handed to post-processing steps and output writers.

    ``labels`` is the label map on the input's grid (``[x, y, z]``); steps may replace it.
    ``sidecar`` is written last; steps add their own sections (e.g. ``"postprocess"``).
    """

    case: Case
    volume: Volume
    task: Task
    outputs: CaseOutputs
    labels: np.ndarray
    sidecar: dict[str, Any] = field(default_factory=dict)
    #: Intermediate results of the prediction that extra outputs may write (e.g. ``"task_maps"``,
    #: each task's own map in a multi-task run).
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segmentation:
    """What a :class:`CaseSegmenter` made of one case: the label map (``[x, y, z]`` on the input's
    grid), the sidecar it describes, and intermediate results for extra outputs."""

    labels: np.ndarray
    sidecar: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: Seconds per stage of the prediction, kept in the sidecar's ``"timing"``.
    timing: dict[str, float] = field(default_factory=dict)


class CaseSegmenter(Protocol):
    """Segments a whole case: one task's model (:class:`autoorgan.steps.segment.TaskSegmenter`) or
    several (:class:`autoorgan.steps.cascade.MultiTaskSegmenter`). It loads its models when a case
    first needs them and reports stages to ``listener``."""

    #: The dataset a finished sidecar records (``None`` for a merged map of several tasks).
    @property
    def dataset_id(self) -> int | None: ...

    def __call__(self, case: Case, volume: Volume, out: CaseOutputs, listener: ProgressListener) -> Segmentation: ...


class CaseStep(Protocol):
    """A step run on each predicted case, in order: post-processing (changes ``ctx.labels``)
    or an extra output (statistics, preview, per-structure masks, DICOM SEG...).

    Steps run after prediction; extra outputs must be written atomically (see
    :mod:`autoorgan.io.writing`). ``name`` appears in progress displays.
    """

    @property
    def name(self) -> str: ...

    def __call__(self, ctx: CaseContext) -> None: ...


class BatchStep(Protocol):
    """Runs once after all cases of the batch (e.g. a CSV of all statistics, an HTML overview)."""

    def __call__(self, results: BatchResult, output_dir: Path) -> None: ...


def failure_reason(case: Case, text: str) -> str:
    """``text`` (an error's message) without the names of ``case`` it starts with.

    Readers prefix their messages with the input's file name or the case id; the batch names the
    case itself, once: the summary by its id, the failure record and the log by its input's name.
    """
    reason = text.strip()
    names = [n for n in {case.name, case.case_id} if n]
    stripped = True
    while stripped:
        stripped = False
        for name in names:
            if reason.startswith(f"{name}: ") and len(reason) > len(name) + 2:
                reason, stripped = reason[len(name) + 2:].lstrip(), True
    return reason or "unknown error"


def record_timing(case_id: str, stages: dict[str, float], total: float) -> dict[str, float]:
    """Seconds per stage of one case (``read``, ``preprocess``, ``network``, ``export``, ``write``
    and ``total`` up to the sidecar), logged at DEBUG and kept in the sidecar's ``"timing"``."""
    timing = {name: round(float(seconds), 3) for name, seconds in stages.items()}
    timing["total"] = round(float(total), 3)
    log.debug("%s: %s", case_id, ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timing.items()))
    return timing


@dataclass
class BatchJob:
    """Everything one batch run needs; :meth:`run` processes it.

    ``segmenter`` loads its models only when a case needs predicting, so a ``--continue`` over a
    finished folder never loads one. ``task`` names the label table of the outputs (a task, or
    the whole-body table of several).
    """

    task: Task
    cases: Sequence[Case]
    output_dir: Path
    segmenter: CaseSegmenter
    resume: bool = False
    listener: ProgressListener = field(default_factory=ProgressListener)
    #: Applied to ``ctx.labels`` before the label map is written (post-processing).
    postprocess: Sequence[CaseStep] = ()
    #: Run after post-processing, before the label map and the sidecar are written (extra outputs:
    #: they work on ``ctx.labels``; one that fails leaves an earlier label map in place).
    extra_outputs: Sequence[CaseStep] = ()
    #: Run once at the end of the batch.
    finalizers: Sequence[BatchStep] = ()
    #: Run when the batch aborts (``ModelLoadError``/``OutputError``, or an interruption: Ctrl-C,
    #: SIGTERM), with ``BatchResult.aborted``
    #: set, before the error goes on to the caller; a step that fails is logged and never hides
    #: the abort (e.g. the run record, where the folder still takes it).
    abort_steps: Sequence[BatchStep] = ()
    #: With ``resume``: do not retry cases that have a failure record (``--skip-failed``).
    skip_failed: bool = False
    #: Label map file ending (``.nii.gz`` or ``.nrrd``); ``write_label_map=False`` writes none
    #: (extra outputs such as per-structure masks only; the sidecar then says ``"label_map": null``).
    label_suffix: str = ".nii.gz"
    write_label_map: bool = True
    #: Options the outputs depend on (output type, split masks, ROI subset): recorded in each
    #: sidecar as ``output_options``; with ``resume`` a case is complete only for the same options.
    output_options: Mapping[str, Any] = field(default_factory=dict)
    #: What makes the labels: the model's identity and the prediction settings (see
    #: :data:`autoorgan.batch.outputs.MADE_WITH_KEY`); recorded in each sidecar, and with ``resume`` a
    #: case is complete only if it was made the same way.
    made_with: Mapping[str, Any] = field(default_factory=dict)

    def _ensure_output_dir(self) -> None:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.output_dir}: {exc.strerror or exc}") from None

    def run(self) -> BatchResult:
        self._ensure_output_dir()
        outputs = {c.case_id: CaseOutputs(self.output_dir, c.case_id, self.label_suffix) for c in self.cases}
        removed = remove_abandoned(all_temporaries(self.output_dir))
        if removed:
            log.info("removed %d temporary file(s) left by interrupted runs", removed)
        dataset_id = self.segmenter.dataset_id

        def complete(case: Case) -> bool:
            return outputs[case.case_id].is_complete(self.task.name, dataset_id, self.output_options,
                                                     self.made_with or None)

        batch = BatchResult()
        current: Case | None = None
        try:
            pending = [c for c in self.cases if not (self.resume and complete(c))]
            self.listener.batch_started(len(self.cases), len(pending))
            for case in self.cases:
                if case not in pending:
                    result = CaseResult(case.case_id, "skipped", output=outputs[case.case_id].label_map)
                    self.listener.case_finished(result)
                    batch.results.append(result)
            for case in pending:
                current = case
                earlier = read_failure(self.output_dir, case.case_id) if self.resume and self.skip_failed else None
                if earlier is not None:
                    result = CaseResult(case.case_id, "failed",
                                        error=f"{failure_reason(case, earlier.error)} (earlier failure, not retried)")
                else:
                    self.listener.case_started(case.case_id)
                    result = self._run_case(case, outputs[case.case_id])
                    if result.status == "failed":
                        write_failure(self.output_dir, case.case_id, f"{case.name}: {result.error or 'unknown error'}")
                    else:
                        clear_failure(self.output_dir, case.case_id)
                batch.results.append(result)
                current = None
                self.listener.case_finished(result)
        except (ModelLoadError, OutputError) as exc:
            batch.aborted = str(exc)
            self._after_abort(batch)
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into one (autoorgan.batch.interrupts)
            batch.aborted = str(exc) or "interrupted"
            log.warning("interrupted: writing the run record and the overview, then stopping")
            if current is not None and current.case_id not in {r.case_id for r in batch.results} \
                    and complete(current):  # the signal came just after the case finished
                batch.results.append(CaseResult(current.case_id, "done", output=outputs[current.case_id].label_map))
            self._after_abort(batch)
            raise
        for finalize in self.finalizers:
            finalize(batch, self.output_dir)
        return batch

    def _after_abort(self, batch: BatchResult) -> None:
        for step in self.abort_steps:
            try:
                step(batch, self.output_dir)
            except (AutoOrganError, OSError) as exc:
                log.warning("after the abort, %s could not run: %s", type(step).__name__, exc)

    def _run_case(self, case: Case, out: CaseOutputs) -> CaseResult:
        start = time.perf_counter()
        #: (device, inode) of the label map this run wrote: on failure only that file is removed.
        wrote_label_map: tuple[int, int] | None = None
        try:
            problem = reserved_case_id_problem(case.case_id)
            if problem is not None:
                raise CaseError(problem)
            self.listener.case_stage(case.case_id, "reading")
            volume = read_case(case)
            timing: dict[str, float] = {"read": time.perf_counter() - start}
            segmentation = self.segmenter(case, volume, out, self.listener)
            timing.update(segmentation.timing)
            ctx = CaseContext(case=case, volume=volume, task=self.task, outputs=out, labels=segmentation.labels,
                              sidecar=segmentation.sidecar, artifacts=segmentation.artifacts)
            for step in self.postprocess:
                self.listener.case_stage(case.case_id, step.name)
                step(ctx)
            # The old sidecar goes first (an old sidecar must never stand beside new outputs); the
            # extra outputs come before the label map, so one that fails leaves the old map in place.
            out.retire_sidecar()
            if self.output_options:
                ctx.sidecar[OUTPUT_OPTIONS_KEY] = dict(self.output_options)
            if self.made_with:
                ctx.sidecar[MADE_WITH_KEY] = dict(self.made_with)
            for step in self.extra_outputs:
                self.listener.case_stage(case.case_id, step.name)
                step(ctx)
            self.listener.case_stage(case.case_id, "writing")
            if self.write_label_map:
                written = time.perf_counter()
                image = image_from_array(ctx.labels, volume.geometry)
                for key, value in ctx.artifacts.get(LABEL_MAP_FIELDS, {}).items():
                    image.SetMetaData(key, value)
                digest, wrote_label_map = write_image_digest(image, out.label_map)
                ctx.sidecar["label_map"] = out.label_map.name
                ctx.sidecar[LABEL_SHA256_KEY], ctx.sidecar[LABEL_SIZE_KEY] = digest.sha256, digest.size
                timing["write"] = time.perf_counter() - written
            else:
                ctx.sidecar["label_map"] = None
            ctx.sidecar["timing"] = record_timing(case.case_id, timing, time.perf_counter() - start)
            write_json(ctx.sidecar, out.sidecar)
        except (OutputError, KeyboardInterrupt):
            # The folder cannot take this case (full, unwritable), or the run is interrupted: leave no
            # half-finished case, and never remove a label map another run has written since.
            remove_if_unchanged(out.label_map, wrote_label_map)
            raise
        except ModelLoadError:
            raise
        except (CaseError, AutoOrganError) as exc:
            reason = failure_reason(case, str(exc))
        except MemoryError:
            reason = "out of memory"
        except Exception as exc:
            # the first line of the exception's text (a name in it stays whole: names are stripped first)
            text = failure_reason(case, str(exc))
            reason = f"{type(exc).__name__}: {(text.splitlines() or [''])[0]}"
            log.debug("details of the failure of %s", case.case_id, exc_info=True)
        else:
            return CaseResult(case.case_id, "done", time.perf_counter() - start, output=out.label_map)
        # A case that failed after its label map was written must not look half done.
        remove_if_unchanged(out.label_map, wrote_label_map)
        log.error("%s: %s", case.name, reason)
        return CaseResult(case.case_id, "failed", time.perf_counter() - start, reason)
