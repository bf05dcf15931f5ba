"""Names from user data that become file names, and output paths that stay in the output folder.

Structure (label) names of a task table become file names (``--split`` writes
``OUT/<case>/<structure>.nii.gz``), and case ids become file and folder names. A name such as
``../../x`` or ``/abs/x`` would put a file outside the output folder. Two defences:

* :func:`portable_name_problem`, the rule a structure name of a task table must pass when the
  table is loaded: a single, portable file name (no separators, no ``.``/``..``, no control
  characters, none of the characters Windows forbids, not hidden, at most
  :data:`MAX_NAME_BYTES` bytes);
* :func:`path_inside`, through which per-case and per-structure output paths are built: each
  part must be one plain path component, and the folder that will hold the file, with symbolic
  links resolved, must lie inside the output folder. It holds even for names that never passed
  the load-time rule (a :class:`~autoorgan.registry.tasks.Task` built in Python, a case id).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from autoorgan.errors import CaseError

#: Longest structure name in UTF-8 bytes: leaves room for the file ending and the temporary
#: name of an atomic write within the usual 255-byte limit of a file name.
MAX_NAME_BYTES = 128
#: Unicode categories refused in names: control (C0, DEL, C1), format (bidirectional overrides,
#: zero-width characters), lone surrogates, line and paragraph separators.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Characters that are path separators or forbidden in file names on Windows.
_FORBIDDEN = frozenset('/\\:*?"<>|')
#: Device names Windows reserves whatever the ending (``CON.nii.gz`` cannot be created there).
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                              *(f"LPT{i}" for i in range(1, 10))})


class UnsafePathError(CaseError):
    """An output path built from a name would not be a plain file inside the output folder.

    A :class:`~autoorgan.errors.CaseError`: the case whose name it is fails, the batch goes on.
    """


def shown(name: object) -> str:
    """``name`` quoted, with control characters as visible escapes (``'a\\x1bb'``), for messages."""
    return ascii(name) if isinstance(name, str) and _has_control(name) else f"'{name}'"


def _has_control(name: str) -> bool:
    return any(unicodedata.category(ch) in _CONTROL_CATEGORIES for ch in name)


def component_problem(name: str) -> str | None:
    """Why ``name`` is not one plain path component (empty, ``.``, ``..``, a separator, NUL), or ``None``.

    This is the structural minimum for every name that becomes part of an output path; it allows
    what the file system allows (a case id taken from an existing file's name is fine).
    """
    if not isinstance(name, str) or not name:
        return "it is empty"
    if name in (".", ".."):
        return f"'{name}' is not a file name"
    if "\x00" in name:
        return "it contains a NUL character"
    for sep in (os.sep, os.altsep, "/"):
        if sep and sep in name:
            return f"it contains the path separator '{sep}'"
    return None


def portable_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a structure name (it becomes a portable file name), or ``None``.

    Surrounding white space is ignored (task tables strip it); control characters anywhere are not.
    """
    if not isinstance(name, str) or not name.strip():
        return "it is empty"
    for ch in name:
        if unicodedata.category(ch) in _CONTROL_CATEGORIES:
            return f"it contains the control character {ch!a}"
    name = name.strip()  # task tables strip names
    if name in (".", ".."):
        return f"'{name}' is not a file name"
    forbidden = sorted(set(name) & _FORBIDDEN)
    if forbidden:
        return f"it contains '{forbidden[0]}' (not allowed in file names: {''.join(sorted(_FORBIDDEN))})"
    if name.startswith("."):
        return "it starts with '.' (a hidden file)"
    if name.split(".")[0].upper() in _WINDOWS_DEVICES:
        return "it is a device name reserved by Windows"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def path_inside(folder: Path, *parts: str) -> Path:
    """``folder / parts[0] / parts[1] ...``, proven to stay inside ``folder``.

    Every part must be one plain path component (:func:`component_problem`), and the folder that
    will hold the file, with symbolic links resolved, must lie inside ``folder`` (resolved too).
    The last part itself is not followed: atomic writes replace it rather than write through it.
    Raises :class:`UnsafePathError` otherwise, naming the part at fault.
    """
    if not parts:
        raise ValueError("path_inside needs at least one name")
    for part in parts:
        problem = component_problem(part)
        if problem is not None:
            raise UnsafePathError(f"{shown(part)} cannot be part of an output path: {problem}")
    target = Path(folder).joinpath(*parts)
    root = Path(folder).resolve()
    holder = target.parent.resolve()
    if holder != root and root not in holder.parents:
        raise UnsafePathError(f"{shown(str(target))} would be written outside the output folder {root} "
                              f"(it resolves to {holder})")
    return target


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (Python's surrogate escapes) written as
    ``\\xNN``, so that it prints, encodes to UTF-8 and goes into JSON; other text unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")


__all__ = ["MAX_NAME_BYTES", "UnsafePathError", "component_problem", "path_inside", "portable_name_problem", "printable",
           "shown"]
