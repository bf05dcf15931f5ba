"""Reading CT volumes and describing their grid.

SimpleITK reads every supported format. What it reads is checked here, once, so that later
steps can rely on a 3D scalar volume with a sane grid and at least one finite intensity; the
header is checked before any voxel is read (:mod:`autoorgan.io.image_checks`). Every failure
becomes a :class:`~autoorgan.errors.CaseError` that names the file and the problem in one line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoorgan.errors import CaseError
from autoorgan.io import image_checks

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


#: The ITK reader for each file ending: a file is read as what its name says, never as whatever
#: ITK recognises in it (a PNG named ``.nii.gz`` is not read as a 2D image).
_IMAGE_IO = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
             ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO"}
_FORMAT = {"NiftiImageIO": "NIfTI", "MetaImageIO": "MetaImage", "NrrdImageIO": "NRRD"}


def read_volume(path: Path) -> Volume:
    """Read a 3D scalar image; :class:`CaseError` for anything that is not one.

    Before any voxel is read, the header is checked (:mod:`autoorgan.io.image_checks`): its
    geometry, its size against the voxel limit, and the bytes the file holds against those it
    declares, so a short or impossible file fails at once, without allocating the volume.
    Pixel data are then fully decoded here, so nothing fails later mid-prediction.
    """
    name = path.name
    if path.is_file() and path.stat().st_size == 0:
        raise CaseError(f"{name}: file is empty")
    ending = next((e for e in sorted(_IMAGE_IO, key=len, reverse=True) if name.lower().endswith(e)), None)
    nifti = image_checks.check_nifti(path) if ending in (".nii", ".nii.gz") else None
    if ending in image_checks.FILE_CHECKS:
        image_checks.FILE_CHECKS[ending](path)
    if nifti is not None and nifti.version == 2:  # ITK's NIfTI reader fails on it, printing to stderr
        raise CaseError(f"{name}: a NIfTI-2 file, which SimpleITK cannot read; save it as NIfTI-1 "
                        "(e.g. with nibabel)")
    reader = _information(path, ending)
    check_information(reader, name)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CaseError(f"{name}: cannot read image ({_first_line(exc, path)})") from None
    volume = volume_from_image(image, name, check_finite=nifti is None)
    if nifti is not None:
        _restore_non_finite(volume, image_checks.nifti_non_finite(path, nifti), name)
    return volume


def _information(path: Path, ending: str | None) -> sitk.ImageFileReader:
    """An ITK reader of ``path`` whose header has been read (no voxels yet)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if ending in _IMAGE_IO:
        reader.SetImageIO(_IMAGE_IO[ending])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        text = _first_line(exc, path)
        if "Refusing to change spacing" in text:
            text = "invalid voxel spacing in the header (zero, negative or not a number)"
        elif "is not recognized as" in text or "Unable to determine ImageIO" in text:
            kind = _FORMAT.get(_IMAGE_IO.get(ending or "", ""), "supported image")
            text = f"not a {kind} file"
        raise CaseError(f"{path.name}: cannot read image ({text})") from None
    return reader


def check_information(reader: sitk.ImageFileReader, name: str) -> None:
    """Refuse, from the header ITK read, what cannot be a CT volume: complex or several values
    per voxel, not 3D, fewer than 2 voxels along an axis, more voxels than the limit, a grid
    that cannot place voxels in the world (:func:`~autoorgan.io.image_checks.geometry_problem`)."""
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    size = tuple(int(s) for s in reader.GetSize())
    shape = "x".join(str(s) for s in size)
    if "complex" in pixel:
        raise CaseError(f"{name}: voxels are complex numbers ({pixel}); a CT has real intensities")
    if reader.GetNumberOfComponents() != 1:
        raise CaseError(f"{name}: image has {reader.GetNumberOfComponents()} components per voxel ({pixel}); "
                        "a CT has one intensity per voxel")
    dim = reader.GetDimension()
    if dim == 4 and size[3] == 1:
        dim, size = 3, size[:3]
    if dim != 3:
        raise CaseError(f"{name}: image is {dim}D ({shape}); a 3D CT volume is needed")
    image_checks.check_voxel_count(name, size)
    if min(size) < 2:
        raise CaseError(f"{name}: image {shape} is a single slice, not a volume")
    spacing, origin = reader.GetSpacing()[:3], reader.GetOrigin()[:3]
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(reader.GetDimension(), -1)[:3, :3]
    problem = image_checks.geometry_problem(spacing, origin, direction.ravel())
    if problem:
        raise CaseError(f"{name}: {problem}")


def _restore_non_finite(volume: Volume, mask: np.ndarray | None, name: str) -> None:
    """Put back the NaN/infinite voxels ITK read as 0 (``mask`` from the NIfTI file itself);
    :class:`CaseError` if no voxel is finite."""
    if mask is not None and mask.any():
        mask = mask.reshape(volume.array.shape)  # a 4D file of one volume: the same voxels
        if mask.all():
            raise CaseError(f"{name}: {NO_FINITE_VOXEL}")
        volume.array = volume.array.astype(np.result_type(volume.array.dtype, np.float32), copy=False)
        volume.array[mask] = np.nan
    elif not _any_finite(volume.array):
        raise CaseError(f"{name}: {NO_FINITE_VOXEL}")


#: Why an image without a single finite intensity is refused.
NO_FINITE_VOXEL = "image holds no finite intensity (every voxel is NaN or infinite)"


def _any_finite(array: np.ndarray) -> bool:
    """Whether any voxel is finite, looking slab by slab (the first slab settles a normal CT)."""
    if not np.issubdtype(array.dtype, np.floating):
        return True
    return any(np.isfinite(array[..., k : k + 8]).any() for k in range(0, array.shape[-1], 8))


def volume_from_image(image: sitk.Image, name: str, *, check_finite: bool = True) -> Volume:
    """Check that ``image`` is a usable 3D scalar volume and convert it to a :class:`Volume`:
    one real value per voxel, 3D, a grid that places voxels in the world, and (``check_finite``)
    at least one finite intensity."""
    dim = image.GetDimension()
    pixel = image.GetPixelIDTypeAsString()
    if "complex" in pixel:
        raise CaseError(f"{name}: voxels are complex numbers ({pixel}); a CT has real intensities")
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
    problem = image_checks.geometry_problem(geometry.spacing, geometry.origin, geometry.direction)
    if problem:
        raise CaseError(f"{name}: {problem}")
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise CaseError(f"{name}: cannot decode voxel data ({_first_line(exc)})") from None
    volume = Volume(array=np.ascontiguousarray(array.transpose(2, 1, 0)), geometry=geometry)
    if check_finite and not _any_finite(volume.array):
        raise CaseError(f"{name}: {NO_FINITE_VOXEL}")
    return volume


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
