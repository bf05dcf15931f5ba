"""autoorgan: bone and organ segmentation of CT images with nnU-Net v2 models.

The Python API mirrors the command line::

    import autoorgan
    result = autoorgan.predict("ribs", "ct/", "out/", device="cpu", statistics=True)

The keyword options are the fields of :class:`autoorgan.PredictOptions`, the same as the command
line's.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("autoorgan")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from autoorgan.options import PredictOptions

__all__ = ["PredictOptions", "__version__", "install_weights", "list_tasks", "predict", "task_labels"]

if TYPE_CHECKING:
    from autoorgan.api import install_weights, list_tasks, predict, task_labels


def __getattr__(name: str) -> Any:
    # The API imports SimpleITK and numpy; keep `import autoorgan` (and `--help`) cheap.
    if name in {"predict", "list_tasks", "task_labels", "install_weights"}:
        from autoorgan import api

        return getattr(api, name)
    raise AttributeError(f"module 'autoorgan' has no attribute {name!r}")
