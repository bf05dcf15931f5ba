"""autoorgan: bone and organ segmentation of CT images with nnU-Net v2 models.

The Python API mirrors the command line::

    import autoorgan
    result = autoorgan.predict("ribs", "ct/", "out/", device="cpu", statistics=True)

The keyword options are the fields of :class:`autoorgan.PredictOptions`, the same as the command
line's. An image held in memory (SimpleITK, nibabel or NumPy) is segmented by the same run::

    seg = autoorgan.segment(image, task="ribs", device="cpu")
    seg.labels, seg.label_table
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("autoorgan")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from autoorgan.options import PredictOptions

__all__ = ["PredictOptions", "Segmented", "__version__", "calibrate", "check_precision", "export_weights",
           "install_weights", "list_tasks", "predict", "repair", "segment", "task_labels", "train"]
#: Names of :mod:`autoorgan.api` exported here, imported on first use.
_API = frozenset(__all__) - {"PredictOptions", "__version__"}

if TYPE_CHECKING:
    from autoorgan.api import (
        Segmented,
        calibrate,
        check_precision,
        export_weights,
        install_weights,
        list_tasks,
        predict,
        repair,
        segment,
        task_labels,
        train,
    )


def __getattr__(name: str) -> Any:
    # The API imports SimpleITK and numpy; keep `import autoorgan` (and `--help`) cheap.
    if name in _API:
        from autoorgan import api

        return getattr(api, name)
    raise AttributeError(f"module 'autoorgan' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public API (with the lazy names), not the helpers this module imports.
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
