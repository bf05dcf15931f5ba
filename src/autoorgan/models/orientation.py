"""Which orientation a model takes its arrays in, and where that knowledge comes from.

nnU-Net learns the storage axis order of its training arrays and ignores direction matrices, so a
model must be fed arrays in the orientation it was trained in. Nothing in nnU-Net's model folder
says which that was. autoorgan takes it from, in this order:

1. ``--orientation CODES|native`` for one run;
2. the calibration record beside the model (:data:`CALIBRATION_FILE`, written by
   ``autoorgan calibrate``, which measures it);
3. the task table's ``orientation``;
4. the model's own ``dataset.json``: the orientation ``autoorgan train`` records, or nnU-Net's
   ``NibabelIOWithReorient`` reader, which stores every training image as RAS;
5. else :data:`~autoorgan.io.orientation.DEFAULT_ORIENTATION`, with a warning naming
   ``autoorgan calibrate``.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoorgan.errors import ModelLoadError
from autoorgan.io.orientation import DEFAULT_ORIENTATION, orientation_label, parse_orientation
from autoorgan.io.writing import write_json
from autoorgan.registry.tasks import Task

log = logging.getLogger(__name__)

#: The calibration record's name, in the model's ``{trainer}__{plans}__{configuration}`` folder
#: (so ``export-weights`` and ``install-weights`` carry it along with the model).
CALIBRATION_FILE = "autoorgan_calibration.json"
#: Largest calibration record read (one is a few kB).
MAX_RECORD_BYTES = 1 << 20
#: nnU-Net's reader that reorients every image to RAS before training and prediction.
NNUNET_RAS_READER = "NibabelIOWithReorient"


class OrientationSource(str, enum.Enum):
    """Where a model's orientation came from, strongest first."""

    OPTION = "--orientation"
    CALIBRATION = "calibration"
    TASK_TABLE = "task table"
    DATASET_JSON = "dataset.json"
    DEFAULT = "default"


@dataclass(frozen=True)
class ModelOrientation:
    """The orientation a model is fed in (``codes``; ``None``: arrays as stored) and its source."""

    codes: str | None
    source: OrientationSource
    #: What the source said, for records and messages (e.g. the calibration's margin).
    detail: str = ""

    @property
    def label(self) -> str:
        return orientation_label(self.codes)

    def record(self) -> dict[str, Any]:
        """The sidecar's account: the orientation used and where it came from."""
        entry: dict[str, Any] = {"orientation": self.label, "source": self.source.value}
        if self.detail:
            entry["detail"] = self.detail
        return entry


def read_calibration(model_folder: Path) -> dict[str, Any] | None:
    """The calibration record in ``model_folder``, or ``None`` if there is none; a record that
    cannot be used is a :class:`ModelLoadError` line (a model must not silently fall back)."""
    path = model_folder / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise ModelLoadError(f"{path} is larger than a calibration record can be; remove it and run "
                                 "'autoorgan calibrate' again")
        record = json.loads(path.read_text(encoding="utf-8"))
        parse_orientation(str(record["orientation"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"the calibration record {path} cannot be used ({type(exc).__name__}: {exc}); "
                             "remove it and run 'autoorgan calibrate' again") from None
    if not isinstance(record, dict):
        raise ModelLoadError(f"the calibration record {path} is not a JSON object; remove it and run "
                             "'autoorgan calibrate' again")
    return record


def write_calibration(model_folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` beside the model (atomically) and return its path."""
    path = model_folder / CALIBRATION_FILE
    write_json(record, path)
    return path


def dataset_json_orientation(dataset_json: Path) -> str | None:
    """The orientation a model's ``dataset.json`` states, or ``None`` if it states none: the one
    ``autoorgan train`` recorded (axis codes; ``native`` says nothing about the arrays), else RAS
    for nnU-Net's ``NibabelIOWithReorient`` reader."""
    try:
        fields = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict):
        return None
    recorded = fields.get("autoorgan")
    if isinstance(recorded, dict) and isinstance(recorded.get("orientation"), str):
        try:
            codes = parse_orientation(recorded["orientation"])
        except ValueError:
            codes = None
        if codes is not None:
            return codes
    if fields.get("overwrite_image_reader_writer") == NNUNET_RAS_READER:
        return "RAS"
    return None


def resolve_model_orientation(task: Task, model_folder: Path, override: str | None = None) -> ModelOrientation:
    """The orientation to feed ``task``'s model (in ``model_folder``) in: see the module's order.

    ``override`` is ``--orientation`` (axis codes or ``native``).
    """
    if override is not None:
        try:
            return ModelOrientation(parse_orientation(override), OrientationSource.OPTION)
        except ValueError as exc:
            raise ModelLoadError(f"--orientation: {exc}") from None
    record = read_calibration(model_folder)
    if record is not None:
        margin = record.get("margin")
        detail = f"{CALIBRATION_FILE}" + (f", margin {margin:.3f}" if isinstance(margin, (int, float)) else "")
        return ModelOrientation(parse_orientation(str(record["orientation"])), OrientationSource.CALIBRATION, detail)
    if task.orientation is not None:
        return ModelOrientation(parse_orientation(task.orientation), OrientationSource.TASK_TABLE)
    stated = dataset_json_orientation(model_folder / "dataset.json")
    if stated is not None:
        return ModelOrientation(stated, OrientationSource.DATASET_JSON)
    return ModelOrientation(DEFAULT_ORIENTATION, OrientationSource.DEFAULT)


def default_orientation_warning(task: Task) -> str:
    """The one line a run prints for a model whose orientation is only the default."""
    return (f"task '{task.name}': nothing records the orientation its model was trained in, so "
            f"{DEFAULT_ORIENTATION} is assumed; if the labels look wrong, run 'autoorgan calibrate --task "
            f"{task.name} -i CT' once (or pass --orientation)")


__all__ = ["CALIBRATION_FILE", "ModelOrientation", "OrientationSource", "dataset_json_orientation",
           "read_calibration", "resolve_model_orientation", "write_calibration"]
