"""Reading CT volumes and describing their grid.

SimpleITK reads every supported format. What it reads is checked here, once, so that later
steps can rely on a 3D scalar volume with a sane grid; every failure becomes a
:class:`~autoorgan.errors.CaseError` that names the file and the problem in one line.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoorgan.errors import CaseError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """The physical grid of an image, in ITK conventions (index order x, y, z; LPS world)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        size = image.GetSize()
        spacing = image.GetSpacing()
        origin = image.GetOrigin()
        return cls(
            size=(int(size[0]), int(size[1]), int(size[2])),
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (same size) this grid's spacing, origin and direction."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_json(self) -> dict[str, list[float] | list[int]]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }


@dataclass
class Volume:
    """A CT volume as a ``[x, y, z]`` array with its grid."""

    array: np.ndarray
    geometry: Geometry


def read_volume(path: Path) -> Volume:
    """Read a 3D scalar image; :class:`CaseError` for anything that is not one.

    Pixel data are fully decoded here, so a truncated file fails now rather than mid-prediction.
    """
    name = path.name
    if path.is_file() and path.stat().st_size == 0:
        raise CaseError(f"{name}: file is empty")
    if name.lower().endswith(".gz"):
        _check_gzip(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CaseError(f"{name}: cannot read image ({_first_line(exc, path)})") from None
    return volume_from_image(image, name)


def _check_gzip(path: Path) -> None:
    """:class:`CaseError` if a gzip file is truncated or corrupt.

    ITK's NIfTI reader accepts a truncated ``.nii.gz`` and silently fills the missing voxels, so
    the stream is verified to its end (and its CRC) first.
    """
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except EOFError:
        raise CaseError(f"{path.name}: file is truncated (compressed data end early)") from None
    except (OSError, zlib.error) as exc:
        raise CaseError(f"{path.name}: corrupt compressed data ({exc})") from None


def volume_from_image(image: sitk.Image, name: str) -> Volume:
    """Check that ``image`` is a usable 3D scalar volume and convert it to a :class:`Volume`."""
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{name}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "a CT has one")
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        shape = "x".join(str(s) for s in image.GetSize())
        raise CaseError(f"{name}: image is {dim}D ({shape}); a 3D CT volume is needed")
    if min(image.GetSize()) < 2:
        shape = "x".join(str(s) for s in image.GetSize())
        raise CaseError(f"{name}: image {shape} is a single slice, not a volume")
    geometry = Geometry.of(image)
    if not all(np.isfinite(geometry.spacing)) or min(geometry.spacing) <= 0:
        raise CaseError(f"{name}: invalid voxel spacing {geometry.spacing}")
    det = float(np.linalg.det(geometry.direction_matrix))
    if not np.isfinite(det) or abs(abs(det) - 1.0) > 1e-3:
        raise CaseError(f"{name}: direction matrix is not orthonormal")
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise CaseError(f"{name}: cannot decode voxel data ({_first_line(exc)})") from None
    return Volume(array=np.ascontiguousarray(array.transpose(2, 1, 0)), geometry=geometry)


def image_from_array(array_xyz: np.ndarray, geometry: Geometry) -> sitk.Image:
    """An ITK image of ``array_xyz`` on ``geometry``'s grid."""
    if tuple(array_xyz.shape) != geometry.size:
        raise ValueError(f"array shape {array_xyz.shape} does not match grid size {geometry.size}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    return geometry.apply_to(image)


def _first_line(exc: BaseException, path: Path | None = None) -> str:
    """The informative line of an ITK exception, without the folder part of ``path``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a location line; the last line says what went wrong.
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"^sitk::ERROR:\s*", "", text)
    if path is not None:
        text = text.replace(str(path), path.name)
    return text
