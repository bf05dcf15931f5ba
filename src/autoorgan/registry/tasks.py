"""The task registry: which models exist, where nnU-Net keeps them, and what their labels mean.

The seven AutoOrgan tasks live as data in ``configs/tasks.json`` (shipped inside the package).
The registry also holds the demo task (``demo/tasks.json``): a tiny model trained on synthetic
phantoms and shipped inside the package, so it is found in the package's ``demo/models`` folder
whatever the models folder is (:attr:`Task.models_dir`); it is no part of the whole-body table.
A user task file (TOML or JSON, same shape) can add custom models or change a built-in one, and
single fields can be overridden for one run. This module is torch-free and cheap to import, so
the CLI builds its choices and help from it without loading nnU-Net.

Task-file shape (TOML shown; JSON uses the same keys)::

    [defaults]                 # optional: defaults for the tasks of this file
    trainer = "nnUNetTrainer"

    [tasks.my_liver]
    dataset_id = 501
    description = "Liver, retrained on our scanners"
    [tasks.my_liver.labels]
    1 = "liver"
    [tasks.my_liver.colors]    # optional: display colours ("#rrggbb" or [r, g, b]) by structure
    liver = "#96552d"

    [tasks.ribs]               # change one field of a built-in task
    dataset_id = 888
"""

from __future__ import annotations

import json
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published for Python 3.10 as tomli
    import tomli as tomllib

from autoorgan.errors import TaskError
from autoorgan.io.safe_paths import portable_name_problem, shown
from autoorgan.registry.colors import RGB, parse_color

#: Fields that a task inherits from the table's defaults and that can be overridden per run.
#: Said wherever the demo model appears (console, sidecar, demo summary).
DEMO_NOTE = ("autoorgan DEMO MODEL: a tiny network trained on synthetic phantoms only; "
             "it shows the pipeline and is not for real CT")
MODEL_FIELDS = ("trainer", "fold", "configuration", "plans", "orientation")
_TASK_FIELDS = {"dataset_id", "description", "labels", "subdivisions", "colors", *MODEL_FIELDS}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: Trainer, plans and configuration names: they become parts of the model folder's name.
_MODEL_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
#: An integer written as text (label values are table keys, so always text in TOML and JSON).
_INT_TEXT_RE = re.compile(r"\s*\d{1,9}\s*", re.ASCII)
#: Largest task file read (a task table is a few kB; this refuses a wrong file quickly).
MAX_TASK_FILE_BYTES = 4 * 1024 * 1024
_ORIENTATION_RE = re.compile(r"^[RL][AP][SI]$|^[RL][SI][AP]$|^[AP][RL][SI]$|^[AP][SI][RL]$|^[SI][RL][AP]$|^[SI][AP][RL]$")


def normalize_name(name: str) -> str:
    """Turn a user-typed task or structure name into its canonical form.

    ``"Upper Limb"``, ``"upper-limb"`` and ``"UPPER_LIMB"`` all become ``"upper_limb"``.
    """
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def value_by_name(labels: Mapping[int, str], name: str) -> int | None:
    """The value of the structure called ``name`` (forgiving, see :func:`normalize_name`) in a
    value → name table, or ``None``."""
    wanted = normalize_name(name)
    return next((value for value, label in labels.items() if normalize_name(label) == wanted), None)


@dataclass(frozen=True)
class Task:
    """One segmentation model: its nnU-Net identity and its label table.

    Attributes
    ----------
    name:
        Canonical task name (lower case, underscores).
    dataset_id:
        nnU-Net dataset ID; the model folder is ``Dataset{ID:03d}_*``.
    labels:
        Label value → structure name, without background (0).
    trainer, plans, configuration, fold:
        Which trained model of the dataset to use.
    orientation:
        Axis codes (nibabel convention: where each voxel index increases) of the arrays the model
        was trained on, e.g. ``"RAS"``, as the task table states it; ``"native"`` feeds arrays as
        stored; ``None``: the table does not say. Every input is permuted/flipped to the model's
        orientation before prediction and the result is brought back to the input grid; where
        that orientation comes from (option, calibration record, this table, the model's
        ``dataset.json``, the default) is :func:`autoorgan.models.orientation.resolve_model_orientation`.
    subdivisions:
        For a coarse model, which finer task subdivides each of its labels.
    colors:
        The task file's own display colours, structure name (as in ``labels``) → RGB; the others
        come from the shipped table (:func:`autoorgan.registry.colors.label_colors`).
    models_dir:
        The models folder that holds this task's model whatever the run's models folder is (the
        demo model shipped in the package); ``None``: the run's models folder. Set by the built-in
        registry only; a task file that defines or changes the task makes it an ordinary task.
    demo:
        The demo model (trained on synthetic phantoms, not for real CT): its outputs say so.
    """

    name: str
    dataset_id: int
    labels: Mapping[int, str]
    description: str = ""
    trainer: str = "nnUNetTrainerNoMirroring"
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    fold: int | str = 0
    orientation: str | None = None
    subdivisions: Mapping[int, str] = field(default_factory=dict)
    colors: Mapping[str, RGB] = field(default_factory=dict)
    models_dir: Path | None = None
    demo: bool = False

    @property
    def model_subfolder(self) -> str:
        """nnU-Net's name for the trained-model folder inside the dataset folder."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def fold_folder(self) -> str:
        """nnU-Net's name for the fold's folder (``fold_0``, ``fold_all``)."""
        return f"fold_{self.fold}"

    @property
    def max_label(self) -> int:
        return max(self.labels, default=0)

    def label_value(self, structure: str) -> int:
        """Value of a structure given by (forgiving) name; :class:`TaskError` if unknown."""
        value = value_by_name(self.labels, structure)
        if value is None:
            raise TaskError(f"task '{self.name}' has no structure '{structure}'")
        return value

    def with_overrides(self, **overrides: Any) -> Task:
        """A copy with the given model fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {"dataset_id", *MODEL_FIELDS}
        if unknown:
            raise TaskError(f"cannot override {', '.join(sorted(unknown))} of a task")
        merged = {**_task_fields(self), **given}
        return replace(_build_task(self.name, merged, source="command-line options"),
                       models_dir=self.models_dir, demo=self.demo)


def _task_fields(task: Task) -> dict[str, Any]:
    return {
        "dataset_id": task.dataset_id,
        "description": task.description,
        "labels": dict(task.labels),
        "subdivisions": dict(task.subdivisions),
        "colors": dict(task.colors),
        "trainer": task.trainer,
        "plans": task.plans,
        "configuration": task.configuration,
        "fold": task.fold,
        "orientation": task.orientation,
    }


class TaskRegistry(Mapping[str, Task]):
    """All known tasks by canonical name, with forgiving look-up."""

    def __init__(self, tasks: Mapping[str, Task]):
        self._tasks = dict(tasks)

    def __getitem__(self, name: str) -> Task:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def get_task(self, name: str) -> Task:
        """The task called ``name`` (any case, ``-``/space for ``_``); :class:`TaskError` if unknown."""
        key = normalize_name(name)
        if key in self._tasks:
            return self._tasks[key]
        known = ", ".join(self._tasks)
        raise TaskError(f"unknown task '{name}'; known tasks: {known}")


def _parse_int(value: Any, what: str, source: str) -> int:
    if isinstance(value, bool):
        raise TaskError(f"{source}: {what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_TEXT_RE.fullmatch(value):
        return int(value)
    raise TaskError(f"{source}: {what} must be an integer, got {_short(value)}")


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for a one-line message: control characters escaped, long values cut."""
    text = ascii(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_label_table(raw: Any, task: str, source: str) -> dict[int, str]:
    """Validate a label table (value → name) and return it with integer keys, sorted.

    Refuses non-integer or negative values, label 0 (background is implicit), empty or
    duplicate names (case-insensitive), and names that cannot be a portable file name (they
    become ``<structure>.nii.gz`` with ``--split``; see
    :func:`~autoorgan.io.safe_paths.portable_name_problem`) — with a message naming the task and
    the file.
    """
    where = f"{source}: task '{task}'"
    if not isinstance(raw, Mapping) or not raw:
        raise TaskError(f"{where}: 'labels' must be a non-empty table of value = name")
    table: dict[int, str] = {}
    seen: dict[str, int] = {}
    for key, name in raw.items():
        value = _parse_int(key, f"label value {key!r} of task '{task}'", source)
        if value == 0:
            raise TaskError(f"{where}: label 0 is the background and cannot name a structure ({name!r})")
        if value < 0 or value > 65535:
            raise TaskError(f"{where}: label value {value} is outside 1..65535")
        if value in table:
            raise TaskError(f"{where}: label value {value} is given twice")
        if not isinstance(name, str) or not name.strip():
            raise TaskError(f"{where}: label {value} needs a non-empty name, got {_short(name)}")
        problem = portable_name_problem(name)
        if problem is not None:
            raise TaskError(f"{where}: label {value} cannot be called {_short(name)}: {problem} "
                            "(structure names become file names)")
        canonical = normalize_name(name)
        if canonical in seen:
            raise TaskError(f"{where}: structure name {shown(name)} is used by labels {seen[canonical]} and {value}")
        seen[canonical] = value
        table[value] = name.strip()
    return dict(sorted(table.items()))


def _build_task(name: str, fields: Mapping[str, Any], source: str) -> Task:
    unknown = set(fields) - _TASK_FIELDS
    if unknown:
        raise TaskError(f"{source}: task '{name}' has unknown field(s): {', '.join(sorted(unknown))}")
    if "dataset_id" not in fields:
        raise TaskError(f"{source}: task '{name}' needs a dataset_id")
    if "labels" not in fields:
        raise TaskError(f"{source}: task '{name}' needs a labels table")
    dataset_id = _parse_int(fields["dataset_id"], f"dataset_id of task '{name}'", source)
    if not 1 <= dataset_id <= 999:
        raise TaskError(f"{source}: dataset_id of task '{name}' must be 1..999, got {dataset_id}")
    labels = parse_label_table(fields["labels"], name, source)
    fold = fields.get("fold", 0)
    if fold != "all":
        fold = _parse_int(fold, f"fold of task '{name}'", source)
    orientation = fields.get("orientation")
    if orientation is not None:
        orientation = str(orientation).upper()
        if orientation in {"NONE", "NATIVE", ""}:
            orientation = "native"
        elif not _ORIENTATION_RE.match(orientation):
            raise TaskError(
                f"{source}: orientation of task '{name}' must be three axis codes such as 'RAS' or 'LPS', "
                f"or 'native', got {fields['orientation']!r}"
            )
    subdivisions = _parse_subdivisions(fields.get("subdivisions"), labels, name, source)
    colors = _parse_colors(fields.get("colors"), labels, name, source)
    for key, value in (("trainer", fields.get("trainer")), ("plans", fields.get("plans")),
                       ("configuration", fields.get("configuration"))):
        if value is not None and (not isinstance(value, str) or not _MODEL_PART_RE.fullmatch(value) or "__" in value):
            raise TaskError(f"{source}: {key} of task '{name}' must be a plain name (letters, digits, '_', '-', "
                            f"'.'; no '__'), got {_short(value)}")
    description = fields.get("description", "")
    if not isinstance(description, str):
        raise TaskError(f"{source}: description of task '{name}' must be text, got {_short(description)}")
    return Task(
        name=name,
        dataset_id=dataset_id,
        labels=MappingProxyType(labels),
        description=description,
        trainer=fields.get("trainer", "nnUNetTrainerNoMirroring"),
        plans=fields.get("plans", "nnUNetPlans"),
        configuration=fields.get("configuration", "3d_fullres"),
        fold=fold,
        orientation=orientation,
        subdivisions=MappingProxyType(subdivisions),
        colors=MappingProxyType(colors),
    )


def _parse_subdivisions(raw: Any, labels: Mapping[int, str], task: str, source: str) -> dict[int, str]:
    """``subdivisions``: a table of label value (of this task) → name of the task that subdivides it."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TaskError(f"{source}: 'subdivisions' of task '{task}' must be a table of label value = task name, "
                        f"got {type(raw).__name__}")
    table: dict[int, str] = {}
    for key, value in raw.items():
        label = _parse_int(key, f"subdivision key {_short(key)} of task '{task}'", source)
        if label not in labels:
            raise TaskError(f"{source}: subdivision key {label} of task '{task}' is not one of its labels")
        if not isinstance(value, str) or not _NAME_RE.match(normalize_name(value)):
            raise TaskError(f"{source}: subdivision {label} of task '{task}' must name a task, got {_short(value)}")
        table[label] = normalize_name(value)
    return table


def _parse_colors(raw: Any, labels: Mapping[int, str], task: str, source: str) -> dict[str, RGB]:
    """``colors``: a table of structure name (one of the task's labels) → ``"#rrggbb"`` or
    ``[r, g, b]``; returned keyed by the name as the label table spells it."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TaskError(f"{source}: 'colors' of task '{task}' must be a table of structure name = \"#rrggbb\", "
                        f"got {type(raw).__name__}")
    table: dict[str, RGB] = {}
    for key, value in raw.items():
        structure = labels.get(value_by_name(labels, str(key)) or 0)
        if structure is None:
            raise TaskError(f"{source}: colour of {_short(key)} in task '{task}': not one of its structures")
        try:
            table[structure] = parse_color(value)
        except ValueError as exc:
            raise TaskError(f"{source}: colour of '{structure}' in task '{task}' {exc}") from None
    return table


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """JSON object hook: a key given twice is an error (json would keep the last silently)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise TaskError(f"task file {path}: key {shown(key)} is given twice")
        result[key] = value
    return result


def _read_table_file(path: Path) -> dict[str, Any]:
    """The task file's top-level table; :class:`TaskError` (one line naming the file) for anything
    that is not a regular, not too large, UTF-8 file of valid TOML or JSON with a table at the top."""
    text = _read_text(path)
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
        else:
            raise TaskError(f"task file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"task file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    except RecursionError:
        raise TaskError(f"task file {path} is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks", {}), dict):
        raise TaskError(f"task file {path} must hold a 'tasks' table")
    return data


def _read_text(path: Path) -> str:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block or never end
            raise TaskError(f"task file {path} is not a regular file")
        if path.stat().st_size > MAX_TASK_FILE_BYTES:
            raise TaskError(f"task file {path} is larger than {MAX_TASK_FILE_BYTES // 2**20} MiB; "
                            "is it the right file?")
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TaskError(f"task file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                        f"{exc.start})") from None


def _merge_tables(base: dict[str, Task], data: Mapping[str, Any], source: str) -> dict[str, Task]:
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise TaskError(f"{source}: 'defaults' must be a table")
    bad = set(defaults) - set(MODEL_FIELDS)
    if bad:
        raise TaskError(f"{source}: unknown default(s): {', '.join(sorted(bad))}")
    tasks = dict(base)
    for raw_name, raw_fields in (data.get("tasks") or {}).items():
        name = normalize_name(str(raw_name))
        if not _NAME_RE.match(name) or name == "all":
            raise TaskError(f"{source}: {shown(str(raw_name))} is not a usable task name")
        if not isinstance(raw_fields, Mapping):
            raise TaskError(f"{source}: task {shown(str(raw_name))} must be a table")
        fields = dict(_task_fields(tasks[name])) if name in tasks else {}
        fields.update({k: v for k, v in defaults.items() if name not in tasks})
        fields.update(raw_fields)
        tasks[name] = _build_task(name, fields, source)
    return tasks


@lru_cache(maxsize=1)
def _builtin_table() -> dict[str, Any]:
    ref = resources.files("autoorgan") / "configs" / "tasks.json"
    return json.loads(ref.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _demo_table() -> dict[str, Any]:
    ref = resources.files("autoorgan") / "demo" / "tasks.json"
    return json.loads(ref.read_text(encoding="utf-8"))


def demo_models_dir() -> Path:
    """The models folder (nnU-Net results layout) shipped in the package with the demo model."""
    return Path(str(resources.files("autoorgan") / "demo" / "models"))


def _demo_tasks() -> dict[str, Task]:
    """The demo task(s) of ``demo/tasks.json``, found in :func:`demo_models_dir`."""
    tasks = _merge_tables({}, _demo_table(), "built-in demo task table")
    return {name: replace(task, models_dir=demo_models_dir(), demo=True) for name, task in tasks.items()}


def load_registry(tasks_file: Path | str | None = None) -> TaskRegistry:
    """The built-in tasks (the seven AutoOrgan tasks, then the demo task), extended or changed by
    ``tasks_file`` (TOML or JSON) if given. A task that ``tasks_file`` defines or changes is an
    ordinary task: its model is looked for in the models folder, the demo's too."""
    tasks = _merge_tables({}, _builtin_table(), "built-in task table")
    for name, task in _demo_tasks().items():
        tasks.setdefault(name, task)
    if tasks_file is not None:
        path = Path(tasks_file)
        tasks = _merge_tables(tasks, _read_table_file(path), str(path))
    return TaskRegistry(tasks)


def resolve_task(
    name: str,
    *,
    tasks_file: Path | str | None = None,
    dataset_id: int | None = None,
    trainer: str | None = None,
    fold: int | str | None = None,
    configuration: str | None = None,
    plans: str | None = None,
    orientation: str | None = None,
) -> Task:
    """Look a task up and apply one-run overrides of its model fields."""
    task = load_registry(tasks_file).get_task(name)
    return task.with_overrides(
        dataset_id=dataset_id, trainer=trainer, fold=fold, configuration=configuration,
        plans=plans, orientation=orientation,
    )
