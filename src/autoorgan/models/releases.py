"""Known model releases: a checksum table shipped with the package, and deterministic release zips.

``configs/model_checksums.json`` lists the model archives this project knows by name, with the
SHA-256 of each. ``install-weights`` looks an archive up in it (see :func:`check_known_release`):

- the archive's file name is in the table: its checksum must match, otherwise it is refused
  (a corrupt download, or a file that is not what its name says);
- its checksum is in the table under another name (a renamed download): it is accepted as that
  release;
- neither: it installs as before, with an INFO line saying it was not verified.

An explicit ``--sha256`` takes precedence over the table. The table holds only archives whose
bytes this project can hash: the registration-gated AutoOrgan weights are not available to it, so
their entries are absent until someone who has the files adds them. The demo model is a release
the project makes itself: :func:`write_release_zip` packs a models folder into a zip whose bytes
depend only on the files (sorted order, fixed timestamps and permissions, no compression), so its
checksum is reproducible from the shipped demo model (``scripts/make_demo_model.py`` writes the
entry).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from autoorgan.errors import InstallError
from autoorgan.io.writing import atomic_path, file_digest

log = logging.getLogger(__name__)

#: File name of the checksum table inside ``configs/``.
CHECKSUMS_NAME = "model_checksums.json"
#: Timestamp of every entry of a release zip (the earliest a zip can hold).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Release:
    """One known model archive: its file name, checksum, and what it holds."""

    file: str
    sha256: str
    task: str
    version: str
    note: str = ""


def default_table_path() -> Path:
    """The checksum table shipped in the package (``configs/model_checksums.json``)."""
    return Path(str(resources.files("autoorgan") / "configs" / CHECKSUMS_NAME))


def parse_release_table(data: Mapping[str, Any], source: str) -> dict[str, Release]:
    """Releases of a checksum table (``{"releases": [{file, sha256, task, version, note}]}``) by file name."""
    entries = data.get("releases")
    if not isinstance(entries, list):
        raise InstallError(f"{source}: expected a 'releases' list")
    table: dict[str, Release] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise InstallError(f"{source}: every release needs a 'file' name")
        digest = str(entry.get("sha256", "")).lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise InstallError(f"{source}: release '{entry['file']}' has no valid sha256")
        if entry["file"] in table:
            raise InstallError(f"{source}: release '{entry['file']}' is listed twice")
        table[entry["file"]] = Release(file=entry["file"], sha256=digest, task=str(entry.get("task", "")),
                                       version=str(entry.get("version", "")), note=str(entry.get("note", "")))
    return table


def load_release_table(path: Path | None = None) -> dict[str, Release]:
    """The known releases of ``path`` (default: the shipped table); an absent file is an empty table."""
    path = default_table_path() if path is None else Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot read the model checksum table {path.name}: {exc}") from None
    if not isinstance(data, Mapping):
        raise InstallError(f"{path.name}: expected a JSON object")
    return parse_release_table(data, path.name)


def check_known_release(archive: Path, table: Mapping[str, Release] | None = None) -> Release | None:
    """Verify ``archive`` against the table of known releases (see the module docstring).

    Returns the release it was verified as, or ``None`` for an archive the table does not know.
    Raises :class:`InstallError` (one line) when its name is a known release but its bytes are not.
    """
    releases = load_release_table() if table is None else table
    actual = file_digest(archive).sha256
    known = releases.get(archive.name)
    if known is not None:
        if actual != known.sha256:
            raise InstallError(
                f"{archive.name}: sha256 {actual} does not match the known release {known.file} "
                f"(expected {known.sha256}); the file is damaged or not that release"
            )
        log.info("%s: verified as known release %s (task %s, version %s)", archive.name, known.file,
                 known.task, known.version)
        return known
    for release in releases.values():
        if release.sha256 == actual:
            log.info("%s: verified as known release %s (task %s, version %s)", archive.name, release.file,
                     release.task, release.version)
            return release
    log.info("%s: not a known release; installing it without checksum verification "
             "(pass --sha256 to verify it)", archive.name)
    return None


def write_release_zip(models_dir: Path, archive: Path) -> Path:
    """Pack every file under ``models_dir`` into ``archive`` byte-reproducibly.

    Entries are the files' paths relative to ``models_dir`` (nnU-Net's results layout, which
    ``install-weights`` and nnU-Net's own installer accept), in sorted order, stored uncompressed
    with a fixed timestamp and permissions: the same files always give the same bytes.
    Hidden files and folders are left out.
    """
    files = sorted(p for p in Path(models_dir).rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(models_dir).parts))
    if not files:
        raise InstallError(f"{models_dir} holds no files to pack")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(models_dir).as_posix(), date_time=ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_STORED
            out.writestr(info, path.read_bytes())
    return archive


def release_entry(archive: Path, *, task: str, version: str, note: str = "") -> dict[str, str]:
    """The checksum-table entry of a release archive this project made."""
    return {"file": archive.name, "sha256": file_digest(archive).sha256, "task": task, "version": version, "note": note}


#: Members of nnU-Net's export that describe the exporting machine and that a model does not need.
LOCAL_ONLY_MEMBERS = frozenset({"debug.json"})


def _without_local_paths(value: Any) -> Any:
    """``value`` (parsed JSON) with every absolute path string reduced to its file name."""
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    if isinstance(value, str) and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()):
        return PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return value


def add_model_records(archive: Path, model_folder: Path, names: Iterable[str]) -> list[str]:
    """Add the records kept beside a model (files ``names`` of ``model_folder``: the calibration
    record, the precision check) to a model zip in nnU-Net's export layout
    (``Dataset.../{trainer}__{plans}__{configuration}/``), where installing puts them back beside
    the model: ``install-weights`` moves the whole model folder into place. Returns the names of
    those there were."""
    present = [name for name in names if (model_folder / name).is_file()]
    if present:
        with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as target:
            for name in present:
                target.write(model_folder / name, f"{model_folder.parent.name}/{model_folder.name}/{name}")
    return present


def scrub_model_archive(archive: Path) -> list[str]:
    """Rewrite an nnU-Net export zip without details of the exporting machine.

    nnU-Net's exporter adds ``debug.json`` (the trainer's state, with local folders) and the
    validation ``summary.json`` names each case by its absolute path. ``debug.json`` is left
    out; in JSON members every absolute path is reduced to its file name (the metrics stay).
    Other members are copied unchanged, in order. Returns the names of the members left out.
    """
    dropped: list[str] = []
    tmp = archive.with_name(archive.name + ".scrub")
    try:
        with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if PurePosixPath(info.filename).name in LOCAL_ONLY_MEMBERS:
                    dropped.append(info.filename)
                    continue
                data = source.read(info)
                if info.filename.endswith(".json"):
                    parsed = json.loads(data.decode("utf-8"))
                    data = (json.dumps(_without_local_paths(parsed), indent=4, sort_keys=False) + "\n").encode("utf-8")
                target.writestr(info, data)
        tmp.replace(archive)
    finally:
        tmp.unlink(missing_ok=True)
    return dropped
