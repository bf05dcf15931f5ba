"""``autoorgan calibrate``: measure the orientation a model was trained in, from CTs of known geometry.

nnU-Net learns the storage axis order of its training arrays; nothing in its model folder records
it. Calibration runs the model on a CT whose direction matrix is right, fed in each of the 48
axis-aligned orientations (every order of the axes, each either way), and scores each candidate
by four terms of 0 to 1 each, summed (and averaged over the CTs):

- **anatomy** (:mod:`autoorgan.anatomy.checks`, in patient coordinates): the fraction of tests
  passed: left/right structures on their side with midline structures between them, numbered
  structures and head-to-feet and front-to-back levels in order, organs on their side;
- **certainty**: the model's mean top softmax probability ``p`` over its foreground, as
  ``-log10(1 - p) / 2`` (0.9 gives 0.5, 0.99 and more give 1): a model fed its training
  orientation is surer of what it labels, which carries tasks without sided or numbered labels;
- **coherence**: the fraction of each structure's voxels in its largest connected piece (labels
  of a model fed the wrong orientation scatter);
- **foreground**: the foreground volume against the candidate that finds the most, reaching 1 at
  half of it (a model fed the wrong orientation may find too little; finding more is no merit).

Candidates whose labels are the same as the winner's (mean Dice at least
:data:`SAME_LABELS_DICE`: e.g. a left-right mirror for a model without sided labels on a
symmetric body) do not compete; the **margin** is the winner's lead over the best candidate that
gives other labels. Below :data:`MIN_MARGIN` calibration refuses.

It stays cheap: each candidate predicts only a box around the body's centre, one patch of the
model on its largest side (:func:`centre_box`), without test-time mirroring.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan import __version__
from autoorgan.anatomy.checks import check_anatomy
from autoorgan.errors import AutoOrganError, InputError
from autoorgan.io.cases import Case, find_cases
from autoorgan.io.image import Geometry, Volume
from autoorgan.io.orientation import all_axcodes, parse_orientation
from autoorgan.io.reading import read_case
from autoorgan.io.writing import file_digest
from autoorgan.models.orientation import CALIBRATION_FILE, write_calibration
from autoorgan.models.store import ModelLocation, require_model, resolve_models_dir
from autoorgan.registry.tasks import Task, resolve_task
from autoorgan.steps.segment import segment_volume

log = logging.getLogger(__name__)

#: The least lead of the winner over the best candidate with other labels that calibration trusts
#: (in score units: each term runs from 0 to 1).
MIN_MARGIN = 0.1
#: Candidates whose labels agree with the winner's at least this well (mean Dice) do not compete.
SAME_LABELS_DICE = 0.9
#: The foreground term reaches 1 at this fraction of the largest foreground found.
FOREGROUND_ENOUGH = 0.5
#: Voxels brighter than this (HU) are the body whose centre the box is placed on.
BODY_HU = -500.0


class CalibrationRefused(AutoOrganError):
    """Calibration cannot trust its winner (margin too small, no foreground): nothing is recorded.
    ``calibration`` holds the candidates tried, for the table."""

    exit_code = 1

    def __init__(self, message: str, calibration: Calibration):
        super().__init__(message)
        self.calibration = calibration


@dataclass
class Candidate:
    """One orientation tried, and its scores (averaged over the CTs)."""

    codes: str
    score: float = 0.0
    anatomy: float = 0.0
    confidence: float = 0.0
    certainty: float = 0.0
    coherence: float = 0.0
    foreground: float = 0.0
    foreground_ml: float = 0.0
    #: The anatomical tests made and the failures, summed over the CTs.
    tested: int = 0
    failures: list[str] = field(default_factory=list)
    #: Mean Dice of its labels against the winner's (set once the winner is known).
    same_as_winner: float | None = None

    def record(self) -> dict[str, Any]:
        return {"orientation": self.codes, "score": round(self.score, 4), "anatomy": round(self.anatomy, 4),
                "certainty": round(self.certainty, 4), "coherence": round(self.coherence, 4),
                "foreground": round(self.foreground, 4), "confidence": round(self.confidence, 4),
                "foreground_ml": round(self.foreground_ml, 2), "anatomy_tests": self.tested,
                "anatomy_failures": self.failures[:5],
                "dice_with_winner": None if self.same_as_winner is None else round(self.same_as_winner, 4)}


@dataclass
class Calibration:
    """The result of a calibration: the candidates best first, the winner and its margin."""

    task: Task
    location: ModelLocation
    candidates: list[Candidate]
    inputs: list[dict[str, Any]]
    seconds: float
    min_margin: float = MIN_MARGIN
    #: Where the record was written (``None``: not written).
    record_path: Path | None = None

    @property
    def winner(self) -> Candidate:
        return self.candidates[0]

    @property
    def runner_up(self) -> Candidate | None:
        """The best candidate whose labels differ from the winner's."""
        return next((c for c in self.candidates[1:] if (c.same_as_winner or 0.0) < SAME_LABELS_DICE), None)

    @property
    def margin(self) -> float:
        runner = self.runner_up
        return self.winner.score if runner is None else self.winner.score - runner.score

    @property
    def trusted(self) -> bool:
        return self.winner.foreground_ml > 0 and self.margin >= self.min_margin

    def record(self) -> dict[str, Any]:
        """The calibration record kept beside the model (:data:`CALIBRATION_FILE`)."""
        runner = self.runner_up
        return {
            "orientation": self.winner.codes,
            "margin": round(self.margin, 4),
            "min_margin": self.min_margin,
            "runner_up": None if runner is None else runner.codes,
            "task": self.task.name,
            "dataset_id": self.task.dataset_id,
            "model_folder": self.location.folder.name,
            "fold": str(self.task.fold),
            "inputs": self.inputs,
            "candidates": [c.record() for c in self.candidates],
            "seconds": round(self.seconds, 1),
            "autoorgan": __version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def centre_box(volume: Volume, extent_mm: float) -> tuple[slice, slice, slice]:
    """A box of about ``extent_mm`` on each side around the body's centre (the median position of
    the voxels brighter than :data:`BODY_HU`, else the image's centre), inside the image."""
    array = volume.array
    step = max(1, int(np.ceil((array.size / 2_000_000) ** (1 / 3))))
    body = np.argwhere(array[::step, ::step, ::step] > BODY_HU) * step
    centre = np.median(body, axis=0) if len(body) else (np.asarray(array.shape) - 1) / 2
    box = []
    for axis in range(3):
        half = int(np.ceil(extent_mm / volume.geometry.spacing[axis] / 2))
        n = array.shape[axis]
        start = int(np.clip(round(float(centre[axis])) - half, 0, max(0, n - 2 * half)))
        box.append(slice(start, min(n, start + 2 * half)))
    return (box[0], box[1], box[2])


def crop(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """The part of ``volume`` inside ``box``, on its own grid (same voxels, same world positions)."""
    geo = volume.geometry
    start = np.asarray([s.start for s in box], dtype=float)
    origin = np.asarray(geo.origin) + geo.direction_matrix @ (start * np.asarray(geo.spacing))
    array = np.ascontiguousarray(volume.array[box])
    size = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
    return Volume(array=array, geometry=Geometry(size=size, spacing=geo.spacing, direction=geo.direction,
                                                 origin=(float(origin[0]), float(origin[1]), float(origin[2]))))


def certainty(confidence: float) -> float:
    """``-log10(1 - confidence) / 2``, from 0 to 1 (see the module docstring)."""
    return float(np.clip(-np.log10(max(1e-6, 1.0 - confidence)) / 2, 0.0, 1.0))


def coherence(labels: np.ndarray) -> float:
    """The fraction of the labelled voxels that lie in their structure's largest connected piece
    (26-connected); 0 for an empty map."""
    import cc3d

    total = largest = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        pieces = cc3d.connected_components((labels == value).view(np.uint8), connectivity=26)
        sizes = np.bincount(pieces.ravel())[1:]
        largest += int(sizes.max())
        total += int(sizes.sum())
    return largest / total if total else 0.0


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels present in either map (1.0 when both are empty)."""
    values = [v for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    if not values:
        return 1.0
    scores = []
    for v in values:
        x, y = a == v, b == v
        scores.append(2.0 * np.count_nonzero(x & y) / (np.count_nonzero(x) + np.count_nonzero(y)))
    return float(np.mean(scores))


def _identity(case: Case, volume: Volume) -> dict[str, Any]:
    """What identifies a calibration CT: the file's SHA-256, or for DICOM its series UID and the
    SHA-256 of its voxels."""
    if case.dicom is None:
        return {"name": case.name, "sha256": file_digest(case.path).sha256}
    voxels = hashlib.sha256(np.ascontiguousarray(volume.array).tobytes()).hexdigest()
    return {"name": case.name, "series_uid": case.dicom.sidecar().get("series_instance_uid"),
            "voxels_sha256": voxels}


#: Called with (candidates done, candidates in all) as calibration runs.
Progress = Callable[[int, int], None]


def calibrate(task_name: str, inputs: Sequence[Path], *, models_dir: Path | None = None,
              tasks_file: Path | None = None, device: str = "auto", candidates: Sequence[str] | None = None,
              min_margin: float = MIN_MARGIN, write: bool = True, trust_checkpoint: bool = False,
              progress: Progress | None = None) -> Calibration:
    """Find the orientation ``task_name``'s installed model was trained in, from the CTs ``inputs``
    (image files or DICOM series whose direction matrices are right); write the record beside the
    model when the winner is trusted (``write``), else raise :class:`CalibrationRefused`.

    ``candidates`` limits the orientations tried (default all 48).
    """
    from autoorgan.options import PredictOptions
    from autoorgan.runs.predict import load_segmenter, resolve_device

    started = time.perf_counter()
    task = resolve_task(task_name, tasks_file=tasks_file)
    location = require_model(task, resolve_models_dir(models_dir))
    cases = [c for path in inputs for c in find_cases(Path(path))]
    if not cases:
        raise InputError("no CT found in " + ", ".join(str(p) for p in inputs))
    try:
        codes = [parse_orientation(c) or "" for c in candidates] if candidates else all_axcodes()
    except ValueError as exc:
        raise InputError(f"candidate orientations: {exc}") from None
    if "" in codes:
        raise InputError("candidate orientations are axis codes; 'native' is not one")
    # Without test-time mirroring: it averages away part of what tells the orientations apart, at
    # up to eight times the cost.
    segmenter = load_segmenter(location, task, resolve_device(device), PredictOptions(tta=False).speed(),
                               trust_checkpoint=trust_checkpoint)
    segmenter.measure_confidence = True
    extent = float(max(np.asarray(segmenter.patch_size) * np.asarray(segmenter.working_spacing)))
    tried = {c: Candidate(c) for c in codes}
    maps: dict[str, list[np.ndarray]] = {c: [] for c in codes}
    identities = []
    total, done = len(codes) * len(cases), 0
    for case in cases:
        volume = read_case(case)
        identities.append(_identity(case, volume))
        part = crop(volume, centre_box(volume, extent))
        for c in codes:
            labels = segment_volume(part, task, segmenter, orientation=c)
            confidence, foreground_ml = segmenter.last_confidence or (0.0, 0.0)
            report = check_anatomy(labels, part.geometry, task.labels, ct=part.array)
            candidate = tried[c]
            candidate.confidence += confidence / len(cases)
            candidate.certainty += certainty(confidence) / len(cases)
            candidate.coherence += coherence(labels) / len(cases)
            candidate.foreground_ml += foreground_ml / len(cases)
            candidate.anatomy += (report.score or 0.0) / len(cases)
            candidate.tested += report.tested
            candidate.failures += report.failures
            maps[c].append(labels[::2, ::2, ::2].copy())
            done += 1
            if progress is not None:
                progress(done, total)
    most = max(c.foreground_ml for c in tried.values())
    for candidate in tried.values():
        candidate.foreground = min(1.0, candidate.foreground_ml / most / FOREGROUND_ENOUGH) if most > 0 else 0.0
        candidate.score = candidate.anatomy + candidate.certainty + candidate.coherence + candidate.foreground
    ranked = sorted(tried.values(), key=lambda c: (-c.score, c.codes))
    best = maps[ranked[0].codes]
    for candidate in ranked:
        candidate.same_as_winner = float(np.mean([mean_dice(a, b) for a, b in zip(maps[candidate.codes], best,
                                                                                   strict=True)]))
    result = Calibration(task=task, location=location, candidates=ranked, inputs=identities,
                         seconds=time.perf_counter() - started, min_margin=min_margin)
    log.info("calibration of %s: %s wins by %.3f over %s (%.1f s)", task.name, result.winner.codes, result.margin,
             result.runner_up.codes if result.runner_up else "nothing", result.seconds)
    if result.winner.foreground_ml <= 0:
        raise CalibrationRefused(f"the model of task '{task.name}' finds nothing in any orientation of "
                                 f"{', '.join(c.name for c in cases)}; nothing was recorded. Calibrate with a CT "
                                 "that shows the task's structures", result)
    if not result.trusted:
        raise CalibrationRefused(
            f"calibration of task '{task.name}' is not sure: {result.winner.codes} leads "
            f"{result.runner_up.codes if result.runner_up else '-'} by only {result.margin:.3f} "
            f"(at least {min_margin:g} needed); nothing was recorded. Try a CT that shows more of the task's "
            "structures, or several CTs (-i CT -i CT2)", result)
    if write:
        result.record_path = write_calibration(location.folder, result.record())
        log.info("wrote %s", result.record_path)
    return result


__all__ = ["CALIBRATION_FILE", "Calibration", "CalibrationRefused", "Candidate", "calibrate"]
