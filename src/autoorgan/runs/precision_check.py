"""``autoorgan check-precision``: whether a model's bfloat16 labels agree with its float32 ones,
measured on the user's CTs and recorded beside the model.

``--precision auto`` runs a model in bfloat16 on a CPU that computes it natively unless the model's
check (:data:`~autoorgan.engine.precision.CHECK_FILE`) says its bfloat16 labels do not agree with
its float32 labels. This measures that: each CT is segmented twice through the ordinary predict
path (:func:`autoorgan.runs.predict.predict_batch`, without post-processing, into a temporary
folder), once with ``precision="fp32"`` and once with ``precision="bf16"``, and the two label maps
are compared structure by structure (Dice). The model agrees when the lowest Dice reaches
:data:`~autoorgan.engine.precision.MIN_DICE` and the median
:data:`~autoorgan.engine.precision.MEDIAN_DICE`. The check is written either way: a model that does
not agree is then kept in float32 by ``auto``.

On a CPU without native bfloat16 the bfloat16 run is emulated: much slower than float32, and its
numbers differ from native ones only in how a transposed convolution's bias is rounded (a few
voxels; docs/performance.md), so the check made there holds on a machine that has it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoorgan import __version__
from autoorgan.batch.job import BatchResult, CaseResult, ProgressListener
from autoorgan.engine import precision
from autoorgan.engine.precision import MEDIAN_DICE, MIN_DICE, Agreement, Bf16Support
from autoorgan.errors import InputError
from autoorgan.io.cases import find_cases
from autoorgan.models.store import ModelLocation, require_model, resolve_models_dir
from autoorgan.registry.tasks import Task, resolve_task

log = logging.getLogger(__name__)

#: The two runs compared, reference first.
RUNS = ("fp32", "bf16")
#: Called with (what runs now, runs done so far (fractional), runs in all).
Progress = Callable[[str, float, int], None]


@dataclass(frozen=True)
class Score:
    """The Dice of one structure in one CT, bfloat16 labels against float32 labels."""

    case: str
    value: int
    structure: str
    dice: float
    #: Voxels of the structure in the float32 and the bfloat16 label map.
    voxels_fp32: int
    voxels_bf16: int


@dataclass
class PrecisionCheck:
    """The result of a precision check: each structure's Dice, the agreement and where it was recorded."""

    task: Task
    location: ModelLocation
    agreement: Agreement
    scores: list[Score]
    #: This machine's bfloat16 support (the bfloat16 run was emulated where it is not native).
    support: Bf16Support
    #: Seconds of the float32 and of the bfloat16 runs.
    seconds: dict[str, float] = field(default_factory=dict)
    #: Where the check was written (``None``: not written, ``write=False``).
    check_path: Path | None = None

    @property
    def agrees(self) -> bool:
        return self.agreement.agrees

    @property
    def emulated(self) -> bool:
        """The bfloat16 run was emulated (this CPU has no native bfloat16): slower, nearly the same numbers."""
        return not self.support.native

    def worst_first(self) -> list[Score]:
        """The scores, lowest Dice first."""
        return sorted(self.scores, key=lambda s: (s.dice, s.case, s.value))


class _RunProgress(ProgressListener):
    """Turns one predict run's events into a fraction of the whole check for :data:`Progress`."""

    def __init__(self, progress: Progress, what: str, before: int, total: int):
        self.progress, self.what, self.before, self.total = progress, what, before, total
        self.cases, self.finished = 1, 0

    def _report(self, fraction: float) -> None:
        self.progress(self.what, self.before + min(1.0, (self.finished + fraction) / self.cases), self.total)

    def batch_started(self, total: int, to_do: int) -> None:
        self.cases = max(1, to_do)
        self._report(0.0)

    def case_progress(self, case_id: str, done: int, total: int) -> None:
        if total > 0:
            self._report(done / total)

    def case_finished(self, result: CaseResult) -> None:
        self.finished += 1
        self._report(0.0)


#: Loggers of the predict runs whose news is of no use here: their cases and run records are
#: temporary files, and the bfloat16 run's emulation is reported with the result.
QUIET_LOGGERS = {"fp32": ("autoorgan.runs.predict", "autoorgan.report.run_record"),
                 "bf16": ("autoorgan.runs.predict", "autoorgan.report.run_record", "autoorgan.engine.segmenter")}


@contextmanager
def _quiet(run: str) -> Iterator[None]:
    """Only warnings (only errors for the segmenter of the bfloat16 run) from :data:`QUIET_LOGGERS`."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS[run]]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        quiet = logging.ERROR if logger.name.startswith("autoorgan.engine") else logging.WARNING
        logger.setLevel(max(quiet, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _read_labels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _label_maps(result: BatchResult, what: str) -> dict[str, Path]:
    """Case id → label map of a finished run; a case that failed is an :class:`InputError` line."""
    failed = result.failed
    if failed:
        first = failed[0]
        raise InputError(f"cannot check the precision: {first.case_id} failed in the {what} run: "
                         f"{first.error or 'unknown error'}")
    maps = {}
    for case in result.results:
        if case.output is None:
            raise InputError(f"cannot check the precision: the {what} run wrote no label map for {case.case_id}")
        maps[case.case_id] = case.output
    return maps


def _unique(name: str, taken: set[str], index: int) -> str:
    """``name``, or with the input's number where another input has a case of that name."""
    return name if name not in taken else f"{name} (input {index + 1})"


def check_precision(task_name: str, inputs: Sequence[Path], *, models_dir: Path | None = None,
                    tasks_file: Path | None = None, device: str = "cpu", min_dice: float = MIN_DICE,
                    median_dice: float = MEDIAN_DICE, write: bool = True, trust_checkpoint: bool = False,
                    progress: Progress | None = None) -> PrecisionCheck:
    """Segment the CTs ``inputs`` (files, DICOM series or folders of them) with the installed model
    of ``task_name`` in float32 and in bfloat16, compare the label maps structure by structure and,
    with ``write``, record the agreement beside the model
    (:func:`~autoorgan.engine.precision.write_precision_check`), where ``--precision auto`` reads it.

    ``min_dice`` and ``median_dice`` are the bounds the lowest and the median Dice must reach; they
    may be stricter than :data:`~autoorgan.engine.precision.MIN_DICE` and
    :data:`~autoorgan.engine.precision.MEDIAN_DICE`, not looser (the check lets ``auto`` choose
    bfloat16). The check runs on the CPU, where ``--precision`` applies: ``device`` must be ``cpu``. A task,
    model or CT that cannot be used is an :class:`~autoorgan.errors.AutoOrganError`; a model that
    does not agree is not an error (``result.agrees`` is false, and the check is written).
    """
    from autoorgan.options import build_options
    from autoorgan.runs.predict import predict_batch

    if device.strip().lower() != "cpu":
        raise InputError(f"--device {device}: the precision check runs on the CPU (--precision applies only "
                         "there; CUDA runs nnU-Net's own float16)")
    for flag, bound, least in (("--min-dice", min_dice, MIN_DICE), ("--median-dice", median_dice, MEDIAN_DICE)):
        if not least <= bound <= 1.0:
            raise InputError(f"{flag} must be from {least:g} to 1 (a check may be stricter than the default, not "
                             f"looser), got {bound:g}")
    started = time.perf_counter()
    task = resolve_task(task_name, tasks_file=tasks_file)
    models = resolve_models_dir(models_dir)
    location = require_model(task, models)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("no CT given: pass one or more with -i CT")
    for path in paths:
        if not find_cases(path):
            raise InputError(f"no CT found in {path}")
    support = precision.cpu_bf16_support()
    if not support.native:
        log.debug("this CPU has no native bfloat16 (%s): the bfloat16 run is emulated, slower",
                  support.describe())
    options = {run: build_options(None, precision=run, device="cpu", postprocess=False, models_dir=models,
                                  tasks_file=tasks_file, trust_checkpoint=trust_checkpoint) for run in RUNS}
    total = len(RUNS) * len(paths)
    seconds = dict.fromkeys(RUNS, 0.0)
    dice: dict[str, dict[int, float]] = {}
    scores: list[Score] = []
    with tempfile.TemporaryDirectory(prefix="autoorgan-precision-") as tmp:
        for index, path in enumerate(paths):
            maps: dict[str, dict[str, Path]] = {}
            for run in RUNS:
                what = f"{run} {path.name}"
                done = len(RUNS) * index + RUNS.index(run)
                listener = ProgressListener() if progress is None else _RunProgress(progress, what, done, total)
                began = time.perf_counter()
                with _quiet(run):
                    result = predict_batch(task.name, path, Path(tmp) / f"{index}" / run, options[run], listener)
                seconds[run] += time.perf_counter() - began
                maps[run] = _label_maps(result, run)
            for case_id in sorted(maps["fp32"]):
                if case_id not in maps["bf16"]:
                    raise InputError(f"cannot check the precision: the bf16 run has no label map for {case_id}")
                reference, other = _read_labels(maps["fp32"][case_id]), _read_labels(maps["bf16"][case_id])
                values = sorted((set(np.unique(reference).tolist()) | set(np.unique(other).tolist())) - {0})
                name = _unique(case_id, set(dice), index)
                dice[name] = precision.dice_scores(reference, other, values)
                scores += [Score(case=name, value=v, structure=task.labels.get(v, f"label {v}"), dice=d,
                                 voxels_fp32=int(np.count_nonzero(reference == v)),
                                 voxels_bf16=int(np.count_nonzero(other == v))) for v, d in dice[name].items()]
                log.info("%s: bf16 against fp32, min Dice %.5f", name, min(dice[name].values(), default=float("nan")))
            if progress is not None:
                progress(f"compared {path.name}", len(RUNS) * (index + 1), total)
    agreement = Agreement(dice, min_dice_bound=min_dice, median_dice_bound=median_dice)
    if not agreement.scores:
        raise InputError(f"the model of task '{task.name}' finds no structure in "
                         f"{', '.join(str(p) for p in paths)} in float32 or bfloat16; nothing was recorded. "
                         "Check with a CT that shows the task's structures")
    check = PrecisionCheck(task=task, location=location, agreement=agreement, scores=scores, support=support,
                           seconds=seconds)
    log.info("precision check of %s: min Dice %.5f, median %.5f over %d structure(s) in %d CT(s): %s (%.1f s)",
             task.name, agreement.min_dice, agreement.median_dice, len(agreement.scores), len(dice),
             "agrees" if agreement.agrees else "does not agree", time.perf_counter() - started)
    if write:
        cases = ", ".join(sorted(dice)[:10]) + (", ..." if len(dice) > 10 else "")
        check.check_path = precision.write_precision_check(
            location.folder, agreement, fold=task.fold,
            note=f"autoorgan check-precision {__version__} on {cases}")
        log.info("wrote %s", check.check_path)
    return check


__all__ = ["RUNS", "PrecisionCheck", "Progress", "Score", "check_precision"]
