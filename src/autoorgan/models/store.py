"""Where trained models live, how to find a task's model, and installing model archives.

The models folder has nnU-Net's results layout::

    MODELS/Dataset{ID:03d}_{Name}/{trainer}__{plans}__{configuration}/
        dataset.json  plans.json  fold_{F}/checkpoint_final.pth

It is ``--models-dir`` if given, else ``$AUTOORGAN_MODELS``, else ``$nnUNet_results``, else the
per-user folder (``platformdirs.user_data_dir("autoorgan")/models``, e.g.
``~/.local/share/autoorgan/models`` on Linux; made when a model is installed) — read when needed,
never at import. :func:`models_dir_source` says which one was chosen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from autoorgan.errors import InstallError, ModelNotFoundError
from autoorgan.io.archives import MemberOverflow, stream_member
from autoorgan.io.writing import file_digest
from autoorgan.registry.tasks import Task, TaskRegistry

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_final.pth"
MODELS_ENV = "AUTOORGAN_MODELS"
NNUNET_RESULTS_ENV = "nnUNet_results"


#: Where the models folder came from, as :func:`models_dir_source` names it.
FROM_ARGUMENT = "--models-dir"
FROM_MODELS_ENV = f"${MODELS_ENV}"
FROM_NNUNET_ENV = f"${NNUNET_RESULTS_ENV}"
FROM_USER_FOLDER = "the per-user folder"


def user_models_dir() -> Path:
    """The per-user models folder: ``models`` in platformdirs' user data folder of autoorgan
    (``$XDG_DATA_HOME/autoorgan/models``, by default ``~/.local/share/autoorgan/models``, on Linux;
    ``~/Library/Application Support/autoorgan/models`` on macOS; ``%LOCALAPPDATA%\\autoorgan\\models``
    on Windows). Not created here: installing a model makes it."""
    import platformdirs

    return Path(platformdirs.user_data_dir("autoorgan", appauthor=False)) / "models"


def models_dir_source(models_dir: Path | str | None = None) -> tuple[str, Path]:
    """The models folder and where it came from: the argument (``"--models-dir"``), else
    ``$AUTOORGAN_MODELS``, else ``$nnUNet_results``, else the per-user folder
    (:func:`user_models_dir`). An empty setting counts as not set."""
    for source, candidate in ((FROM_ARGUMENT, models_dir), (FROM_MODELS_ENV, os.environ.get(MODELS_ENV)),
                              (FROM_NNUNET_ENV, os.environ.get(NNUNET_RESULTS_ENV))):
        if candidate:
            return source, Path(candidate).expanduser()
    return FROM_USER_FOLDER, user_models_dir()


def resolve_models_dir(models_dir: Path | str | None = None) -> Path:
    """The models folder (see :func:`models_dir_source`)."""
    return models_dir_source(models_dir)[1]


def _origin(models_dir: Path) -> str:
    """Where ``models_dir`` came from: the source :func:`models_dir_source` names for it when it
    is the folder the environment (or the per-user default) gives, else ``--models-dir``."""
    source, default = models_dir_source(None)
    return source if Path(models_dir).expanduser() == default else FROM_ARGUMENT


def describe_models_dir(models_dir: Path) -> str:
    """``models_dir`` for a message, with where it came from: "the models folder X (from
    $AUTOORGAN_MODELS)", or "the per-user models folder X"."""
    source = _origin(models_dir)
    if source == FROM_USER_FOLDER:
        return f"the per-user models folder {models_dir}"
    return f"the models folder {models_dir} (from {source})"


def install_hint(models_dir: Path, what: str = "it") -> str:
    """The end of a missing-model message: the command that installs into ``models_dir``, and
    how to use another folder."""
    source = _origin(models_dir)
    command = "autoorgan install-weights MODEL.zip"
    if source == FROM_ARGUMENT:
        shown = str(models_dir)
        command += f" --models-dir {shown if shlex.quote(shown) == shown else json.dumps(shown)}"
    hint = f"install {what} with '{command}'"
    if source == FROM_USER_FOLDER:
        return f"{hint}, or pass --models-dir (or set {MODELS_ENV}) to use another folder"
    return f"{hint}, or point --models-dir at the folder that holds {what}"


def dataset_folders(models_dir: Path, dataset_id: int) -> list[Path]:
    """Folders ``Dataset{ID:03d}_*`` in ``models_dir``."""
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())


@dataclass(frozen=True)
class ModelLocation:
    """A task's installed model: the trainer/plans/configuration folder and the fold's checkpoint.

    ``stands_in_for`` names the task's configured folder when it is missing and this, the
    dataset's only other model folder with the fold, is used instead (see :func:`find_model`).
    """

    folder: Path
    checkpoint: Path
    stands_in_for: str | None = None

    @property
    def dataset_json(self) -> Path:
        return self.folder / "dataset.json"

    @property
    def model_parts(self) -> tuple[str, str, str]:
        """Trainer, plans and configuration, from the folder's name."""
        trainer, plans, configuration = (self.folder.name.split("__") + ["", "", ""])[:3]
        return trainer, plans, configuration

    def note(self) -> str | None:
        """The one line said when the model stands in for the task's configured folder."""
        if self.stands_in_for is None:
            return None
        return (f"no {self.stands_in_for} in {self.folder.parent}; using its only other model, {self.folder.name} "
                "(pick another with --trainer, --plans and --configuration)")


def _is_model(folder: Path, fold_folder: str) -> bool:
    return ((folder / fold_folder / CHECKPOINT_NAME).is_file() and (folder / "plans.json").is_file()
            and (folder / "dataset.json").is_file())


def find_model(task: Task, models_dir: Path) -> ModelLocation | None:
    """The installed model of ``task`` in ``models_dir``, or ``None``. A task whose model ships in
    the package (:attr:`~autoorgan.registry.tasks.Task.models_dir`, the demo) is looked for there,
    whatever ``models_dir`` is.

    Model folders as released do not always carry the trainer, plans and configuration the task
    table names (nnU-Net's default trainer, for one). When the configured folder is missing but
    the dataset holds exactly one other model folder with the fold, that one is used
    (:attr:`ModelLocation.stands_in_for`); with several, :class:`ModelNotFoundError` lists them
    and the options that pick one.
    """
    models_dir = task.models_dir or models_dir
    datasets = dataset_folders(models_dir, task.dataset_id)
    for dataset in datasets:
        folder = dataset / task.model_subfolder
        if _is_model(folder, task.fold_folder):
            return ModelLocation(folder=folder, checkpoint=folder / task.fold_folder / CHECKPOINT_NAME)
    others = [folder for dataset in datasets for folder in sorted(dataset.iterdir())
              if folder.is_dir() and folder.name.count("__") == 2 and _is_model(folder, task.fold_folder)]
    if len(others) == 1:
        return ModelLocation(folder=others[0], checkpoint=others[0] / task.fold_folder / CHECKPOINT_NAME,
                             stands_in_for=task.model_subfolder)
    if len(others) > 1:
        raise ModelNotFoundError(
            f"no {task.model_subfolder} for task '{task.name}' in {describe_models_dir(models_dir)}, but "
            f"{len(others)} other model folders of dataset {task.dataset_id} with {task.fold_folder}: "
            f"{', '.join(f.name for f in others)}; pick one with --trainer, --plans and --configuration "
            "(or in a --tasks-file)")
    return None


def require_model(task: Task, models_dir: Path) -> ModelLocation:
    """Like :func:`find_model`, but a missing model is a :class:`ModelNotFoundError` saying where we looked."""
    found = find_model(task, models_dir)
    if found is not None:
        return found
    if task.models_dir is not None:
        raise ModelNotFoundError(f"the model of task '{task.name}' that ships with autoorgan is missing from "
                                 f"{task.models_dir}; reinstall autoorgan")
    expected = (f"{models_dir}/Dataset{task.dataset_id:03d}_*/{task.model_subfolder}/"
                f"{task.fold_folder}/{CHECKPOINT_NAME}")
    raise ModelNotFoundError(
        f"no model for task '{task.name}' (dataset {task.dataset_id}) in {describe_models_dir(models_dir)}: "
        f"looked for {expected}; {install_hint(models_dir)}"
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


#: Default cap on an archive's total unpacked size, in GB (``install-weights --max-size``). The
#: largest nnU-Net models (five folds of a 300 M-parameter network) take a few GB.
DEFAULT_MAX_SIZE_GB = 20.0
#: Default cap on one member's unpacked / packed size (``install-weights --max-ratio``). Network
#: weights hardly compress (about 1.1-fold); deflate's own maximum is about 1030-fold, which only
#: runs of one byte reach: the zip bombs this cap is for.
DEFAULT_MAX_RATIO = 100.0
#: Members declaring less than this are not held to the ratio cap (small JSON files compress well).
RATIO_FLOOR_BYTES = 1 << 20
#: Most members an archive may hold (an nnU-Net export holds a handful per fold).
MAX_MEMBERS = 10_000
_GB = 10**9


def _size(n_bytes: float) -> str:
    """``n_bytes`` for a message: GB from 1 GB on, else MB."""
    return f"{n_bytes / _GB:.2f} GB" if n_bytes >= _GB else f"{n_bytes / 1e6:.1f} MB"


@dataclass(frozen=True)
class InstalledModel:
    """What ``install-weights`` put where, and which task it serves."""

    folder: Path
    dataset_id: int
    folds: tuple[str, ...]
    tasks: tuple[str, ...]
    label_notes: dict[str, str | None]


@dataclass(frozen=True)
class _Member:
    """An archive member that passed the checks, and where it unpacks (relative to the target)."""

    info: zipfile.ZipInfo
    path: PurePosixPath


def _member_path(info: zipfile.ZipInfo, source: str) -> PurePosixPath:
    """Where ``info`` unpacks relative to the target folder; :class:`InstallError` for an entry
    that would leave it (absolute, drive, ``..``; a backslash counts as a separator, as Windows tools
    write it), a symbolic link or other special file, or an encrypted member."""
    name = info.filename
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive:
        raise InstallError(f"{source}: refusing absolute path {name!r} in the archive")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InstallError(f"{source}: refusing entry {name!r} that points outside the target")
    if not parts:
        raise InstallError(f"{source}: refusing entry {name!r} without a name")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise InstallError(f"{source}: refusing symbolic link {name!r} in the archive")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InstallError(f"{source}: refusing {name!r}, which is not a regular file or folder")
    if info.flag_bits & 0x1:
        raise InstallError(f"{source}: {name!r} is encrypted; model archives must not be")
    return PurePosixPath(*parts)


def _checked_members(archive: zipfile.ZipFile, source: str, *, max_bytes: int,
                     max_ratio: float) -> list[_Member]:
    """The archive's members, checked from its central directory before anything is written:
    names (see :func:`_member_path`), duplicates, count, total size and each member's ratio."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InstallError(f"{source} holds {len(infos)} entries, more than the {MAX_MEMBERS} a model archive may hold")
    members: list[_Member] = []
    seen: set[PurePosixPath] = set()
    for info in infos:
        path = _member_path(info, source)
        if path in seen:
            raise InstallError(f"{source}: entry {info.filename!r} is in the archive twice")
        seen.add(path)
        if (info.file_size > RATIO_FLOOR_BYTES
                and info.file_size > max_ratio * max(info.compress_size, 1)):
            raise InstallError(
                f"{source}: {info.filename!r} would unpack {info.file_size / max(info.compress_size, 1):.0f}-fold "
                f"({_size(info.file_size)} from {_size(info.compress_size)}), more than the "
                f"{max_ratio:g}-fold allowed; pass --max-ratio to raise the cap if you trust it")
        members.append(_Member(info, path))
    dirs = {parent for m in members for parent in m.path.parents}
    clash = next((m for m in members if not m.info.is_dir() and m.path in dirs), None)
    if clash is not None:
        raise InstallError(f"{source}: entry {clash.info.filename!r} is both a file and a folder")
    total = sum(m.info.file_size for m in members)
    if total > max_bytes:
        raise InstallError(f"{source} would unpack to {_size(total)}, more than the {max_bytes / _GB:g} GB "
                           "allowed; pass --max-size GB to raise the cap")
    return members


def _extract(archive: zipfile.ZipFile, members: list[_Member], target: Path, source: str, *,
             max_bytes: int) -> None:
    """Unpack ``members`` into ``target``, counting the bytes as they stream: a member that yields
    more than its header declares, or a total above ``max_bytes``, stops the extraction (headers
    can lie; zipfile checks each member's CRC as well)."""
    total = 0
    for member in members:
        path = target.joinpath(*member.path.parts)
        if member.info.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            written = stream_member(archive, member.info, path, max_bytes - total, exclusive=True)
        except MemberOverflow as exc:
            if exc.past_declared:
                raise InstallError(f"{source}: {member.info.filename!r} unpacks to more than the "
                                   f"{member.info.file_size} bytes its header declares") from None
            raise InstallError(f"{source} unpacks to more than the {max_bytes / _GB:g} GB allowed; "
                               "pass --max-size GB to raise the cap") from None
        except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
            raise InstallError(f"{source}: cannot unpack {member.info.filename!r}: the archive is damaged or its "
                               f"headers lie ({exc})") from None
        except OSError as exc:
            raise InstallError(f"{source}: cannot unpack {member.info.filename!r} into {target.parent}: "
                               f"{exc.strerror or exc}") from None
        total += written
        if written != member.info.file_size:
            raise InstallError(f"{source}: {member.info.filename!r} unpacks to {written} bytes, not the "
                               f"{member.info.file_size} its header declares")


def _model_folders(root: Path) -> list[Path]:
    """Trainer/plans/configuration folders (those with plans.json + dataset.json) under ``root``."""
    return sorted(p.parent for p in root.glob("Dataset*_*/*/plans.json") if (p.parent / "dataset.json").is_file())


def install_weights(
    archive_path: Path, models_dir: Path, *, registry: TaskRegistry, force: bool = False,
    sha256: str | None = None, release_table: Path | None = None, trust_checkpoint: bool = False,
    max_size_gb: float = DEFAULT_MAX_SIZE_GB, max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[InstalledModel]:
    """Install an nnU-Net model zip (nnU-Net's export format) into ``models_dir``, all or nothing.

    1. With ``sha256`` the archive's checksum must match before it is opened; without it, a
       known release (``configs/model_checksums.json``, or ``release_table``) must match its
       recorded checksum (see :func:`autoorgan.models.releases.check_known_release`).
    2. From the zip's central directory, before anything is written: every entry must stay
       inside the target (no absolute paths, drives or ``..``), be a plain file or folder (no
       symbolic links), appear once; the archive may unpack to at most ``max_size_gb`` GB in all
       and no member of over 1 MiB may unpack more than ``max_ratio``-fold (zip bombs).
    3. It is unpacked into a temporary folder inside ``models_dir``, the bytes counted as they
       stream (a header that lies about a size stops it).
    4. Every model in it is checked: ``dataset.json``, ``plans.json`` and at least one
       ``fold_*/checkpoint_final.pth``; an installed model is replaced only with ``force``; and,
       unless ``trust_checkpoint``, every checkpoint must load without running code and the
       plans it is used with must name only nnU-Net's own code
       (:func:`autoorgan.engine.check_model_code`).
    5. Only then are the models moved into place; if a move fails, those already moved are
       taken back and replaced models restored. On any refusal nothing of the archive remains.
    """
    if not archive_path.is_file():
        raise InstallError(f"model archive {archive_path} does not exist")
    if not (max_size_gb > 0 and max_ratio >= 1):
        raise InstallError(f"--max-size must be positive and --max-ratio at least 1 (got {max_size_gb:g}, "
                           f"{max_ratio:g})")
    source = archive_path.name
    if sha256 is not None:
        actual = file_digest(archive_path).sha256
        if actual != sha256.strip().lower():
            raise InstallError(f"{source}: sha256 {actual} does not match the expected {sha256.strip()}")
    else:
        from autoorgan.models.releases import check_known_release, load_release_table

        check_known_release(archive_path, load_release_table(release_table))
    max_bytes = int(max_size_gb * _GB)
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InstallError(f"{source} is not a readable zip archive ({exc})") from None
    with archive:
        members = _checked_members(archive, source, max_bytes=max_bytes, max_ratio=max_ratio)
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(models_dir).free
        except OSError as exc:
            raise InstallError(f"cannot use the models folder {models_dir}: {exc.strerror or exc}") from None
        needed = sum(m.info.file_size for m in members)
        if needed > free:
            raise InstallError(f"{source} needs {_size(needed)} in {models_dir}, which has {_size(free)} free")
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=models_dir))
        try:
            unpacked = staging / "unpacked"
            _extract(archive, members, unpacked, source, max_bytes=max_bytes)
            folders = _model_folders(unpacked)
            if not folders:
                raise InstallError(
                    f"{source} holds no nnU-Net model: expected "
                    "Dataset<ID>_<Name>/<trainer>__<plans>__<configuration>/ with dataset.json and plans.json"
                )
            planned = [_plan_one(folder, unpacked, models_dir, registry, force=force, source=source,
                                 trust_checkpoint=trust_checkpoint) for folder in folders]
            _move_into_place(planned, staging, source)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for model in planned:
        log.info("installed %s into %s", model.installed.folder.relative_to(models_dir), models_dir)
    return [model.installed for model in planned]


@dataclass(frozen=True)
class _Planned:
    """A checked model of the archive: where it was unpacked, and what installing it gives."""

    unpacked: Path
    installed: InstalledModel


def _plan_one(folder: Path, unpacked: Path, models_dir: Path, registry: TaskRegistry, *, force: bool,
              source: str, trust_checkpoint: bool) -> _Planned:
    """Check one unpacked model folder (nothing is moved yet) and say what installing it gives."""
    rel = folder.relative_to(unpacked)
    checkpoints = sorted(folder.glob(f"fold_*/{CHECKPOINT_NAME}"))
    folds = tuple(p.parent.name.removeprefix("fold_") for p in checkpoints)
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
    try:
        model_labels = read_model_labels(folder / "dataset.json")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InstallError(f"{source}: {rel}/dataset.json is not a valid nnU-Net dataset.json ({exc})") from None
    if not trust_checkpoint:
        _check_code(folder, rel, checkpoints, source)
    # A task whose model ships inside the package (the demo) never uses an installed one.
    serves = [t for t in registry.values() if t.dataset_id == dataset_id and t.model_subfolder == rel.parts[1]
              and t.models_dir is None]
    if not serves:  # a model folder as released, used where the configured one is missing (see find_model)
        serves = [t for t in registry.values() if t.dataset_id == dataset_id and t.models_dir is None
                  and not (models_dir / rel.parts[0] / t.model_subfolder).is_dir()]
    notes = {t.name: label_mismatch(t, model_labels) for t in serves}
    return _Planned(folder, InstalledModel(folder=target, dataset_id=dataset_id, folds=folds,
                                           tasks=tuple(t.name for t in serves), label_notes=notes))


def _check_code(folder: Path, rel: PurePosixPath | Path, checkpoints: list[Path], source: str) -> None:
    """Refuse a model whose checkpoints need code to unpickle, or whose plans (for the
    configurations the checkpoints name) name code outside nnU-Net's own (see
    :func:`autoorgan.engine.check_model_code`).

    The trainer a checkpoint names is checked at ``predict``: it only picks one of the trainer
    classes installed on this machine, so it brings no code of its own, and looking it up
    imports every nnU-Net trainer module (10-20 s)."""
    from autoorgan import engine

    lifts = "; pass --trust-checkpoint only if you trust where this archive comes from"
    try:
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InstallError(f"{source}: {rel}/plans.json is not valid JSON ({exc})") from None
    if not isinstance(plans, dict):
        raise InstallError(f"{source}: {rel}/plans.json is not an nnU-Net plans file")
    checked: set[str] = set()
    for checkpoint in checkpoints:
        where = f"{rel}/{checkpoint.parent.name}"
        try:
            _, configuration = engine.checkpoint_summary(checkpoint)
            if configuration not in checked:
                engine.check_model_code(plans, configuration, source=f"{rel}/plans.json")
                checked.add(configuration)
        except engine.UnsafeCheckpoint as exc:
            shown = str(exc) if isinstance(exc, engine.UnsafeModel) else f"{where}/{exc}"
            raise InstallError(f"refusing to install {source}: {shown}{lifts}") from None
        except ValueError as exc:
            raise InstallError(f"{source}: {where}: {exc}") from None


def _move_into_place(planned: list[_Planned], staging: Path, source: str) -> None:
    """Move the checked models from ``staging`` to their targets, all or none: a replaced model
    is first moved aside into ``staging``; if any move fails, the models moved so far are taken
    back out and the replaced ones restored."""
    done: list[tuple[Path, Path | None, bool]] = []  # (target, replaced model moved aside, new one in place)
    made: list[Path] = []
    try:
        for i, model in enumerate(planned):
            target = model.installed.folder
            for parent in reversed(target.parents):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
            aside = None
            if target.exists():
                aside = staging / f"replaced-{i}"
                os.replace(target, aside)
            done.append((target, aside, False))
            os.replace(model.unpacked, target)
            done[-1] = (target, aside, True)
    except OSError as exc:
        for target, aside, placed in reversed(done):
            if placed:
                shutil.rmtree(target, ignore_errors=True)
            if aside is not None:
                os.replace(aside, target)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise InstallError(f"cannot install {source}: {exc.strerror or exc} ({exc.filename}); nothing was "
                           "installed") from None
