"""Exceptions that autoorgan raises for problems a user can fix.

Every error that reaches the command line is one of these: the CLI turns it into a single
line and a non-zero exit code, never a traceback. Messages name the file or setting at fault
and, where there is one, the way out.
"""

from __future__ import annotations


class AutoOrganError(Exception):
    """Base class: a problem with the user's input, settings or environment."""

    exit_code: int = 1


class TaskError(AutoOrganError):
    """An unknown task, a bad task table, or an invalid override."""

    exit_code = 2


class ModelNotFoundError(AutoOrganError):
    """The model folder or checkpoint a task needs is not installed."""

    exit_code = 3


class InputError(AutoOrganError):
    """The input path or folder as a whole cannot be used (missing, empty, duplicate case ids)."""

    exit_code = 2


class ModelLoadError(AutoOrganError):
    """An installed model cannot be loaded (corrupt checkpoint, unknown trainer, bad plans)."""

    exit_code = 3


class CaseError(AutoOrganError):
    """One case cannot be processed (unreadable, corrupt, not 3D). Other cases carry on."""


class OutputError(AutoOrganError):
    """The output folder cannot be written."""

    exit_code = 4


class InstallError(AutoOrganError):
    """A model archive is malformed, unsafe, or would overwrite an installed model."""

    exit_code = 2
