"""Segmenting an image held in memory, through the same path as ``predict``.

:func:`segment_image` writes the image, as one case, into a private temporary folder (MetaImage
``.mha``, which keeps the grid in double precision), runs :func:`autoorgan.runs.predict.predict_batch`
on it into a second temporary folder (or into ``output`` when the files are to be kept), reads the
label map and its sidecar back, and returns the label map in the kind of the input with exactly the
input's grid: copied from the input, never taken from the files. The temporary folders are removed
whatever happens.

Inputs:

- a SimpleITK image (3D): the labels come back as a SimpleITK image;
- a nibabel NIfTI image (``Nifti1Image``, ``Nifti2Image``): the labels come back as an image of the
  same class with the input's affine and its qform/sform codes;
- a NumPy array indexed ``[x, y, z]`` (nibabel's order and the order of ``spacing``; an array from
  ``sitk.GetArrayFromImage``, indexed ``[z, y, x]``, is passed as ``array.transpose(2, 1, 0)``) with
  ``spacing`` (mm, required), ``origin`` and ``direction`` in SimpleITK's convention (LPS world
  coordinates; ``direction`` the 3×3 matrix, row by row, whose columns are the directions of the
  x, y and z axes; defaults: origin 0, identity): the labels come back as an array of the same shape.

Options of :class:`~autoorgan.options.PredictOptions` that only concern files or batches are
refused with :class:`InputError` (see :data:`REFUSED` and :data:`FILES_ONLY`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoorgan.batch.job import ProgressListener
from autoorgan.errors import AutoOrganError, CaseError, InputError, OutputError
from autoorgan.options import OutputType, PredictOptions

if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk

#: Options that have no meaning for one image held in memory: refused when not at their default.
REFUSED = {
    "resume": "there are no earlier outputs to continue",
    "skip_failed": "there are no earlier outputs to continue",
    "part_id": "one image is not split into parts",
    "num_parts": "one image is not split into parts",
    "split_only": "segment() returns the label map",
    "max_archive_size": "it applies to DICOM zip archives",
}
#: Options that only add files: accepted with ``output=`` (the folder that keeps them).
FILES_ONLY = ("statistics", "preview", "split", "keep_task_maps", "output_type")
#: The temporary folders' prefix.
TEMP_PREFIX = "autoorgan-segment-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, eq=False)
class Segmented:
    """The result of :func:`autoorgan.api.segment`.

    ``labels``: the label map, of the input's kind (SimpleITK image, nibabel image or NumPy array)
    on exactly the input's grid; ``label_table``: label value → structure name; ``sidecar``: what
    ``predict`` records next to the label map (task, model, options, timing).
    """

    labels: Any
    label_table: dict[int, str]
    sidecar: dict[str, Any]


def check_in_memory_options(options: PredictOptions, *, keeps_files: bool) -> None:
    """:class:`InputError` for an option that makes no sense in memory, or that writes files when
    no ``output`` folder keeps them."""
    defaults = {f.name: f.default for f in dataclasses.fields(PredictOptions)}
    for name, why in REFUSED.items():
        if getattr(options, name) != defaults[name]:
            raise InputError(f"segment() does not take {name}: {why}")
    if options.output_type in (OutputType.DICOM_SEG, OutputType.RTSTRUCT):
        raise InputError(f"segment() does not take output_type='{options.output_type.value}': it needs a DICOM "
                         "input read from files")
    if not keeps_files:
        given = [name for name in FILES_ONLY if getattr(options, name) != defaults[name]]
        if given:
            raise InputError(f"{', '.join(given)} only add files; pass output=FOLDER to keep them")


@dataclass(frozen=True)
class _Source:
    """The input as a SimpleITK image, and how to give a ``[x, y, z]`` label array the input's kind."""

    image: sitk.Image
    back: Callable[[np.ndarray], Any]


def _itk_source(image: sitk.Image) -> _Source:
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InputError(f"segment() needs a 3D image, got a {image.GetDimension()}D SimpleITK image")

    def back(labels: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
        out.SetSpacing(image.GetSpacing())
        out.SetOrigin(image.GetOrigin())
        out.SetDirection(image.GetDirection())
        return out

    return _Source(image, back)


def _grid_image(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                direction: Sequence[float]) -> sitk.Image:
    """An ITK image of the ``[x, y, z]`` ``array`` on the given grid (:class:`InputError` if it cannot be)."""
    import numpy as np
    import SimpleITK as sitk

    from autoorgan.io.image_checks import geometry_problem

    if array.ndim != 3:
        raise InputError(f"segment() needs a 3D image, got an array of shape {tuple(array.shape)}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise InputError(f"segment() needs real intensities, got an array of {array.dtype}")
    try:
        spacing_a = np.asarray(spacing, dtype=float).reshape(3)
        origin_a = np.asarray(origin, dtype=float).reshape(3)
        direction_a = np.asarray(direction, dtype=float).reshape(9)
    except (TypeError, ValueError):
        raise InputError("spacing and origin must be 3 numbers and direction 9 (a 3x3 matrix)") from None
    problem = geometry_problem(spacing_a.tolist(), origin_a.tolist(), direction_a)
    if problem:
        raise InputError(f"segment(): {problem}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(v) for v in spacing_a])
    image.SetOrigin([float(v) for v in origin_a])
    image.SetDirection([float(v) for v in direction_a])
    return image


def _nibabel_source(image: Any) -> _Source:
    import numpy as np

    data = np.asanyarray(image.dataobj)
    affine = np.asarray(image.affine, dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]  # nibabel's world is RAS, ITK's LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if not np.all(spacing > 0):
        raise InputError(f"segment(): the affine gives voxel sizes {spacing.tolist()}; they must be positive")
    grid = _grid_image(data, spacing, lps[:, 3], (lps[:, :3] / spacing).ravel())

    def back(labels: np.ndarray) -> Any:
        header = image.header.copy()
        header.set_data_dtype(labels.dtype)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = 0, 0
        return type(image)(np.ascontiguousarray(labels), image.affine, header=header)

    return _Source(grid, back)


def _array_source(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float] | None,
                  direction: Sequence[float] | None) -> _Source:
    grid = _grid_image(array, spacing, origin if origin is not None else (0.0, 0.0, 0.0),
                       direction if direction is not None else (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    import numpy as np

    return _Source(grid, np.ascontiguousarray)


def _is_nifti(image: Any) -> bool:
    nibabel = sys.modules.get("nibabel")  # a nibabel image cannot exist before nibabel is imported
    return nibabel is not None and isinstance(image, nibabel.Nifti1Pair)


def as_source(image: Any, *, spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
              direction: Sequence[float] | None = None) -> _Source:
    """The input ``image`` as a SimpleITK image, with the way back to its kind (see the module
    docstring). :class:`InputError` for an input of another kind, a NumPy array without ``spacing``,
    or grid keywords with an image that has its own grid."""
    import numpy as np
    import SimpleITK as sitk

    grid_given = [name for name, value in (("spacing", spacing), ("origin", origin), ("direction", direction))
                  if value is not None]
    if isinstance(image, np.ndarray):
        if spacing is None:
            raise InputError("segment() needs spacing=(x, y, z) in mm with a NumPy array (indexed [x, y, z])")
        return _array_source(image, spacing, origin, direction)
    if isinstance(image, sitk.Image) or _is_nifti(image):
        if grid_given:
            raise InputError(f"{', '.join(grid_given)}= only go with a NumPy array; this image has its own grid")
        return _itk_source(image) if isinstance(image, sitk.Image) else _nibabel_source(image)
    if isinstance(image, (str, Path)):
        raise InputError(f"segment() takes an image in memory, not a path ({image}); use autoorgan.predict "
                         "for files")
    raise InputError(f"segment() takes a SimpleITK image, a nibabel NIfTI image or a NumPy array, "
                     f"not {type(image).__module__}.{type(image).__qualname__}")


def segment_image(task: str | Sequence[str], image: Any, options: PredictOptions, *,
                  output: Path | None = None, spacing: Sequence[float] | None = None,
                  origin: Sequence[float] | None = None, direction: Sequence[float] | None = None,
                  name: str = "image", listener: ProgressListener | None = None) -> Segmented:
    """Segment ``image`` with ``task`` as ``predict`` does (see :func:`autoorgan.api.segment`)."""
    import SimpleITK as sitk

    from autoorgan.runs.predict import predict_batch

    check_in_memory_options(options, keeps_files=output is not None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"name must be 1 to 100 letters, digits, '.', '_' or '-' (not first), got {name!r}")
    source = as_source(image, spacing=spacing, origin=origin, direction=direction)
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as temporary:
        folder = Path(temporary)
        input_file = folder / "input" / f"{name}.mha"
        input_file.parent.mkdir()
        try:
            sitk.WriteImage(source.image, str(input_file), False)
        except RuntimeError as exc:
            raise OutputError(f"cannot write the image to the temporary folder {folder}: "
                              f"{str(exc).strip().splitlines()[-1]}") from None
        out_dir = output if output is not None else folder / "output"
        result = predict_batch(task, input_file, out_dir, options, listener)
        if result.failed:
            message = result.failed[0].error or "unknown error"
            raise CaseError(message.removeprefix(f"{input_file.name}: "))  # the file is ours, not the user's
        if len(result.results) != 1 or result.results[0].output is None:
            raise AutoOrganError(f"segment(): the run did not produce one label map ({result.results})")
        label_file = result.results[0].output
        try:
            sidecar = json.loads((out_dir / f"{result.results[0].case_id}.json").read_text(encoding="utf-8"))
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))).transpose(2, 1, 0)
        except (OSError, RuntimeError, ValueError) as exc:
            raise OutputError(f"cannot read back the label map {label_file.name}: {exc}") from None
    table = {int(value): str(structure) for value, structure in sidecar.get("labels", {}).items()}
    return Segmented(labels=source.back(labels), label_table=table, sidecar=sidecar)


__all__ = ["FILES_ONLY", "REFUSED", "Segmented", "as_source", "check_in_memory_options", "segment_image"]
