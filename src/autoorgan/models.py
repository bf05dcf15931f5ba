"""Where trained models live, how to find a task's model, and installing model archives.

The models folder has nnU-Net's results layout::

    MODELS/Dataset{ID:03d}_{Name}/{trainer}__{plans}__{configuration}/
        dataset.json  plans.json  fold_{F}/checkpoint_final.pth

It is ``--models-dir`` if given, else ``$AUTOORGAN_MODELS``, else ``$nnUNet_results`` — read
when needed, never at import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autoorgan.errors import InstallError, ModelNotFoundError
from autoorgan.tasks import Task, TaskRegistry

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_final.pth"
MODELS_ENV = "AUTOORGAN_MODELS"
NNUNET_RESULTS_ENV = "nnUNet_results"


def resolve_models_dir(models_dir: Path | str | None = None) -> Path:
    """The models folder: the argument, else ``$AUTOORGAN_MODELS``, else ``$nnUNet_results``."""
    for candidate in (models_dir, os.environ.get(MODELS_ENV), os.environ.get(NNUNET_RESULTS_ENV)):
        if candidate:
            return Path(candidate).expanduser()
    raise ModelNotFoundError(
        f"no models folder: pass --models-dir, or set {MODELS_ENV} (or {NNUNET_RESULTS_ENV}) "
        "to the folder that holds the Dataset*_ model folders"
    )


def dataset_folders(models_dir: Path, dataset_id: int) -> list[Path]:
    """Folders ``Dataset{ID:03d}_*`` in ``models_dir``."""
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())


@dataclass(frozen=True)
class ModelLocation:
    """A task's installed model: the trainer/plans/configuration folder and the fold's checkpoint."""

    folder: Path
    checkpoint: Path

    @property
    def dataset_json(self) -> Path:
        return self.folder / "dataset.json"


def find_model(task: Task, models_dir: Path) -> ModelLocation | None:
    """The installed model of ``task`` in ``models_dir``, or ``None``."""
    for dataset in dataset_folders(models_dir, task.dataset_id):
        folder = dataset / task.model_subfolder
        checkpoint = folder / task.fold_folder / CHECKPOINT_NAME
        if checkpoint.is_file() and (folder / "plans.json").is_file() and (folder / "dataset.json").is_file():
            return ModelLocation(folder=folder, checkpoint=checkpoint)
    return None


def require_model(task: Task, models_dir: Path) -> ModelLocation:
    """Like :func:`find_model`, but a missing model is a :class:`ModelNotFoundError` saying where we looked."""
    found = find_model(task, models_dir)
    if found is not None:
        return found
    expected = (f"{models_dir}/Dataset{task.dataset_id:03d}_*/{task.model_subfolder}/"
                f"{task.fold_folder}/{CHECKPOINT_NAME}")
    raise ModelNotFoundError(
        f"no model for task '{task.name}' (dataset {task.dataset_id}): looked for {expected}; "
        f"install one with 'autoorgan install-weights MODEL.zip' or point --models-dir at it"
    )


def read_model_labels(dataset_json: Path) -> dict[int, str]:
    """Label value → name from an nnU-Net ``dataset.json`` (background left out)."""
    data = json.loads(dataset_json.read_text(encoding="utf-8"))
    labels: dict[int, str] = {}
    for name, value in data.get("labels", {}).items():
        if isinstance(value, list | tuple):  # region-based training: not a plain label map
            raise InstallError(f"{dataset_json}: region-based labels are not supported ({name})")
        if int(value) != 0:
            labels[int(value)] = str(name)
    return dict(sorted(labels.items()))


def label_mismatch(task: Task, model_labels: dict[int, str]) -> str | None:
    """A one-line description of how a model's labels differ from the task table, or ``None``."""
    if dict(task.labels) == model_labels:
        return None
    missing = sorted(set(task.labels) - set(model_labels))
    extra = sorted(set(model_labels) - set(task.labels))
    renamed = sorted(v for v in set(task.labels) & set(model_labels) if task.labels[v] != model_labels[v])
    parts = []
    if missing:
        parts.append(f"values {missing} of the table are not in the model")
    if extra:
        parts.append(f"model values {extra} are not in the table")
    if renamed:
        parts.append("names differ for values " + ", ".join(
            f"{v} ({model_labels[v]!r} vs {task.labels[v]!r})" for v in renamed[:5]))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Installing nnU-Net model archives


@dataclass(frozen=True)
class InstalledModel:
    """What ``install-weights`` put where, and which task it serves."""

    folder: Path
    dataset_id: int
    folds: tuple[str, ...]
    tasks: tuple[str, ...]
    label_notes: dict[str, str | None]


def _safe_members(archive: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in archive.infolist():
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or path.is_absolute():
            raise InstallError(f"{source.name}: refusing absolute path '{name}' in the archive")
        if ".." in path.parts:
            raise InstallError(f"{source.name}: refusing entry '{name}' that points outside the target")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise InstallError(f"{source.name}: refusing symbolic link '{name}' in the archive")
        members.append(info)
    return members


def _model_folders(root: Path) -> list[Path]:
    """Trainer/plans/configuration folders (those with plans.json + dataset.json) under ``root``."""
    return sorted(p.parent for p in root.glob("Dataset*_*/*/plans.json") if (p.parent / "dataset.json").is_file())


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def install_weights(
    archive_path: Path, models_dir: Path, *, registry: TaskRegistry, force: bool = False,
    sha256: str | None = None, release_table: Path | None = None,
) -> list[InstalledModel]:
    """Install an nnU-Net model zip (nnU-Net's export format) into ``models_dir``.

    The archive is checked before anything is written: every entry must stay inside the target,
    each model folder needs ``dataset.json``, ``plans.json`` and at least one
    ``fold_*/checkpoint_final.pth``, and an installed model is replaced only with ``force``.
    Extraction goes to a temporary folder inside ``models_dir`` and is moved into place.
    With ``sha256`` the archive's checksum must match before it is opened; without it, a known
    release (``configs/model_checksums.json``, or ``release_table``) must match its recorded
    checksum (see :func:`autoorgan.releases.check_known_release`).
    """
    if not archive_path.is_file():
        raise InstallError(f"model archive {archive_path} does not exist")
    if sha256 is not None:
        actual = file_sha256(archive_path)
        if actual != sha256.strip().lower():
            raise InstallError(f"{archive_path.name}: sha256 {actual} does not match the expected {sha256.strip()}")
    else:
        from autoorgan.releases import check_known_release, load_release_table

        check_known_release(archive_path, load_release_table(release_table))
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InstallError(f"{archive_path.name} is not a readable zip archive ({exc})") from None
    with archive:
        members = _safe_members(archive, archive_path)
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=models_dir))
        try:
            archive.extractall(staging, members=members)
            folders = _model_folders(staging)
            if not folders:
                raise InstallError(
                    f"{archive_path.name} holds no nnU-Net model: expected "
                    "Dataset<ID>_<Name>/<trainer>__<plans>__<configuration>/ with dataset.json and plans.json"
                )
            installed = [_install_one(folder, staging, models_dir, registry, force, archive_path.name)
                         for folder in folders]
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return installed


def _install_one(folder: Path, staging: Path, models_dir: Path, registry: TaskRegistry,
                 force: bool, source: str) -> InstalledModel:
    rel = folder.relative_to(staging)
    folds = tuple(sorted(p.parent.name.removeprefix("fold_") for p in folder.glob(f"fold_*/{CHECKPOINT_NAME}")))
    if not folds:
        raise InstallError(f"{source}: {rel} has no fold_*/{CHECKPOINT_NAME}")
    dataset_name = rel.parts[0]
    try:
        dataset_id = int(dataset_name.removeprefix("Dataset").split("_", 1)[0])
    except ValueError:
        raise InstallError(f"{source}: '{dataset_name}' is not an nnU-Net dataset folder name") from None
    target = models_dir / rel
    if target.exists() and not force:
        raise InstallError(f"a model is already installed at {target}; pass --force to replace it")
    model_labels = read_model_labels(folder / "dataset.json")
    config = rel.parts[1]
    serves = [t for t in registry.values()
              if t.dataset_id == dataset_id and t.model_subfolder == config]
    notes = {t.name: label_mismatch(t, model_labels) for t in serves}
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(folder), str(target))
    log.info("installed %s into %s", rel, models_dir)
    return InstalledModel(folder=target, dataset_id=dataset_id, folds=folds,
                          tasks=tuple(t.name for t in serves), label_notes=notes)
