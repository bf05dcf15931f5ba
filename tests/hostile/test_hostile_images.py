"""Short, impossible and odd image files (issue 17, item 8 and the image parts of item 12).

Each entry of :data:`HOSTILE_IMAGES` writes one image file that must fail only its own case, with
one line naming the file and the true problem, before any voxel is allocated: a file shorter
than its header declares (plain or gzip, NIfTI, MetaImage, NRRD), geometry that cannot place
voxels (zero/NaN/negative spacing, NaN origin or sform, a singular direction), no finite voxel,
complex or vector voxels, not 3D, more voxels than the limit, empty files and files that are not
what their name says. :data:`READABLE_ODDITIES` are odd files that must be read as they are, and
a nearly constant volume (zero but for a speck, which made nnU-Net fail with "zero-size array")
gets an empty label map: nnU-Net treats zero as outside the scan and gives background there.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan import api
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.engine import nonzero_box_vanishes
from autoorgan.errors import CaseError
from autoorgan.io import image_checks
from autoorgan.io.cases import find_cases
from autoorgan.io.image import read_volume
from autoorgan.io.reading import read_case

GOOD = "good"
#: A small CT-like volume, ``[z, y, x]`` as SimpleITK gives it.
_ZYX = np.random.default_rng(17).integers(-1000, 1500, size=(8, 10, 12)).astype(np.int16)
_SPACING = (0.8, 0.9, 2.5)  # x, y, z


# -- writers ----------------------------------------------------------------------------------------


def _itk(array_zyx: np.ndarray | None = None, *, vector: bool = False) -> sitk.Image:
    image = sitk.GetImageFromArray(_ZYX if array_zyx is None else array_zyx, isVector=vector)
    image.SetSpacing(_SPACING[: image.GetDimension()] + (1.0,) * max(0, image.GetDimension() - 3))
    return image


def _nifti_bytes(array_xyz: np.ndarray | None = None, edit: Callable[[nib.Nifti1Header], None] | None = None) -> bytes:
    """A single-file NIfTI-1 image as bytes; ``edit`` changes its header as written (no fixes)."""
    array = _ZYX.transpose(2, 1, 0) if array_xyz is None else array_xyz
    image = nib.Nifti1Image(array, np.diag([-_SPACING[0], -_SPACING[1], _SPACING[2], 1.0]), dtype=array.dtype)
    data = image.to_bytes()
    if edit is None:
        return data
    header = nib.Nifti1Header(data[:348], check=False)
    edit(header)
    return header.binaryblock + data[348:]


def _write_nifti(folder: Path, name: str, data: bytes, *, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}{'.nii.gz' if gz else '.nii'}").write_bytes(gzip.compress(data) if gz else data)


def _nifti_writer(name: str, array_xyz: np.ndarray | None = None,
                  edit: Callable[[nib.Nifti1Header], None] | None = None, *, gz: bool = True,
                  cut: float | None = None) -> Callable[[Path], None]:
    """A writer of a NIfTI file; ``cut`` keeps that share of the voxel bytes (in a valid gzip when ``gz``)."""

    def write(folder: Path) -> None:
        data = _nifti_bytes(array_xyz, edit)
        if cut is not None:
            data = data[: 352 + int((len(data) - 352) * cut)]
        _write_nifti(folder, name, data, gz=gz)

    return write


def _set(**fields: object) -> Callable[[nib.Nifti1Header], None]:
    def edit(header: nib.Nifti1Header) -> None:
        for key, value in fields.items():
            if key.startswith("pixdim"):
                header["pixdim"][int(key[-1])] = value
            else:
                header[key] = value

    return edit


def _sform(matrix: np.ndarray, *, qform_code: int = 0) -> Callable[[nib.Nifti1Header], None]:
    def edit(header: nib.Nifti1Header) -> None:
        header["sform_code"], header["qform_code"] = 1, qform_code
        header["srow_x"], header["srow_y"], header["srow_z"] = matrix[0], matrix[1], matrix[2]

    return edit


def _huge_nifti_header(folder: Path) -> None:
    """A ~100-byte .nii.gz whose header declares 512x512x600 int16 voxels (3.2 GB and 50 s before)."""
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 600))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    header["pixdim"][1:4] = 0.8, 0.8, 1.0
    _write_nifti(folder, "declares_3gb", header.binaryblock + b"\0" * 4)


def _beyond_limit(folder: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((30_000, 30_000, 30_000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    header["pixdim"][1:4] = 1.0
    _write_nifti(folder, "beyond_limit", header.binaryblock + b"\0" * 4)


def _itk_writer(name: str, ending: str, image: Callable[[], sitk.Image], *, compress: bool = False,
                change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}{ending}"
        sitk.WriteImage(image(), str(path), useCompression=compress)
        if change is not None:
            change(path)

    return write


def _cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace(old: bytes, new: bytes) -> Callable[[Path], None]:
    """Replace the first match of the regular expression ``old`` in the file's header."""

    def change(path: Path) -> None:
        data = path.read_bytes()
        changed = re.sub(old, new, data, count=1)
        assert changed != data, (old, data[:400])
        path.write_bytes(changed)

    return change


def _data_file(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Apply ``change`` to the .raw data file beside a .mhd/.nhdr header."""
    return lambda header: change(header.with_suffix(".raw"))


def _nrrd_spacings_nan(folder: Path) -> None:
    """An NRRD with per-axis ``spacings`` (no world space), one NaN on a spatial axis (ITK: 1 mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nrrd_spnan.nrrd"
    sitk.WriteImage(_itk(), str(path))
    data = path.read_bytes()
    data = re.sub(rb"space: [^\n]*\n|space origin: [^\n]*\n", b"", data)
    path.write_bytes(re.sub(rb"space directions: [^\n]*", b"spacings: 0.8 nan 2.5", data, count=1))


def _bad_gzip_crc(folder: Path) -> None:
    data = bytearray(gzip.compress(_nifti_bytes()))
    data[-8] ^= 0xFF  # the CRC-32 of the trailer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad_crc.nii.gz").write_bytes(bytes(data))


def _nifti2(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti2Image(_ZYX.transpose(2, 1, 0), np.diag([0.8, 0.9, 2.5, 1.0])), folder / "nifti2.nii.gz")


def _png_named_nifti(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(folder / "picture.png"))
    (folder / "picture.png").rename(folder / "picture.nii.gz")


def _empty(name: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")

    return write


def _text(name: str, text: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")

    return write


_ALL_NAN = np.full((12, 10, 8), np.nan, np.float32)
_NAN_INF = _ALL_NAN.copy()
_NAN_INF[::2] = np.inf
_SINGULAR = np.array([[-0.8, -0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0]])
_NAN_OFFSET = np.array([[-0.8, 0.0, 0.0, np.nan], [0.0, -0.9, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0]])


@dataclass(frozen=True)
class HostileImage:
    """An image file that must fail only its own case (``case_id``) with ``message`` in its one line."""

    name: str
    write: Callable[[Path], None]
    case_id: str
    message: str


HOSTILE = [
    # item 8: short files
    HostileImage("gzip_with_half_the_voxels", _nifti_writer("half_gz", cut=0.5), "half_gz",
                 "half_gz.nii.gz: file is truncated: its header declares 12x10x8 voxels of int16 (1,920 bytes of "
                 "voxel data) but it holds 960"),
    HostileImage("raw_nii_cut_in_half", _nifti_writer("half_raw", gz=False, cut=0.5), "half_raw",
                 "half_raw.nii: file is truncated: its header declares 12x10x8 voxels of int16 (1,920 bytes of "
                 "voxel data) but it holds 960"),
    HostileImage("tiny_file_declaring_3gb", _huge_nifti_header, "declares_3gb",
                 "declares_3gb.nii.gz: file is truncated: its header declares 512x512x600 voxels of int16 "
                 "(314,572,800 bytes of voxel data) but it holds 0"),
    HostileImage("gzip_bad_crc", _bad_gzip_crc, "bad_crc", "bad_crc.nii.gz: corrupt compressed data"),
    HostileImage("mha_truncated", _itk_writer("cut_mha", ".mha", _itk, change=_cut_half), "cut_mha",
                 "cut_mha.mha: file is truncated: its header declares 12x10x8 voxels of MET_SHORT (1,920 bytes"),
    HostileImage("mha_compressed_truncated", _itk_writer("cut_zmha", ".mha", _itk, compress=True, change=_cut_half),
                 "cut_zmha", "cut_zmha.mha: file is truncated: its header declares 12x10x8 voxels of MET_SHORT"),
    HostileImage("mhd_short_raw", _itk_writer("short_raw", ".mhd", _itk, change=_data_file(_cut_half)), "short_raw",
                 "short_raw.mhd: file is truncated: its header declares 12x10x8 voxels of MET_SHORT (1,920 bytes of "
                 "voxel data) but it holds 960"),
    HostileImage("mhd_missing_raw", _itk_writer("no_raw", ".mhd", _itk, change=_data_file(Path.unlink)), "no_raw",
                 "no_raw.mhd: its data file no_raw.raw is missing (or not a regular file)"),
    HostileImage("nrrd_truncated", _itk_writer("cut_nrrd", ".nrrd", _itk, change=_cut_half), "cut_nrrd",
                 "cut_nrrd.nrrd: file is truncated: its header declares 12x10x8 voxels of short (1,920 bytes"),
    HostileImage("nrrd_gzip_truncated", _itk_writer("cut_znrrd", ".nrrd", _itk, compress=True, change=_cut_half),
                 "cut_znrrd", "cut_znrrd.nrrd: file is truncated: its header declares 12x10x8 voxels of short"),
    HostileImage("nhdr_short_raw", _itk_writer("short_nhdr", ".nhdr", _itk, change=_data_file(_cut_half)),
                 "short_nhdr", "short_nhdr.nhdr: file is truncated"),
    # item 8: impossible geometry
    HostileImage("pixdim_zero", _nifti_writer("pixdim_zero", edit=_set(pixdim1=0.0)), "pixdim_zero",
                 "pixdim_zero.nii.gz: invalid voxel size in the NIfTI header (pixdim (0, 0.9, 2.5)); sizes must be "
                 "positive numbers"),
    HostileImage("pixdim_nan", _nifti_writer("pixdim_nan", edit=_set(pixdim3=np.nan)), "pixdim_nan",
                 "pixdim_nan.nii.gz: invalid voxel size in the NIfTI header (pixdim (0.8, 0.9, nan))"),
    HostileImage("pixdim_negative", _nifti_writer("pixdim_neg", edit=_set(pixdim2=-0.9)), "pixdim_neg",
                 "pixdim_neg.nii.gz: invalid voxel size in the NIfTI header (pixdim (0.8, -0.9, 2.5))"),
    HostileImage("sform_nan_offset", _nifti_writer("sform_nan", edit=_sform(_NAN_OFFSET)), "sform_nan",
                 "sform_nan.nii.gz: the NIfTI header's sform holds non-finite values"),
    HostileImage("sform_singular", _nifti_writer("sform_flat", edit=_sform(_SINGULAR)), "sform_flat",
                 "sform_flat.nii.gz: the NIfTI header's sform is singular (it maps the volume onto a plane)"),
    HostileImage("qform_nan", _nifti_writer("qform_nan", edit=_set(qform_code=1, sform_code=0, qoffset_y=np.nan)),
                 "qform_nan", "qform_nan.nii.gz: the NIfTI header's qform holds non-finite values"),
    HostileImage("scaling_infinite", _nifti_writer("scl_inf", edit=_set(scl_slope=np.inf)), "scl_inf",
                 "scl_inf.nii.gz: the NIfTI header's intensity scaling (scl_slope, scl_inter) is not finite"),
    HostileImage("mha_spacing_zero", _itk_writer("sp0", ".mha", _itk, change=_replace(rb"ElementSpacing = [\d.]+",
                                                                                     b"ElementSpacing = 0")),
                 "sp0", "sp0.mha: invalid voxel spacing in the MetaImage header (ElementSpacing = 0 "),
    HostileImage("mha_spacing_nan", _itk_writer("spnan", ".mha", _itk, change=_replace(rb"ElementSpacing = [\d.]+",
                                                                                      b"ElementSpacing = nan")),
                 "spnan", "spnan.mha: MetaImage header field ElementSpacing holds values that are not finite numbers"),
    HostileImage("mha_origin_nan", _itk_writer("onan", ".mha", _itk, change=_replace(rb"Offset = 0 0 0",
                                                                                    b"Offset = 0 nan 0")),
                 "onan", "onan.mha: MetaImage header field Offset holds values that are not finite numbers"),
    HostileImage("mha_direction_singular",
                 _itk_writer("flat", ".mha", _itk, change=_replace(rb"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                                                   b"TransformMatrix = 1 0 0 1 0 0 0 0 1")),
                 "flat", "flat.mha: direction matrix is not a rotation (determinant 0)"),
    HostileImage("nrrd_origin_nan",
                 _itk_writer("nrrd_onan", ".nrrd", _itk,
                             change=_replace(rb"space origin: \(0,0,0\)", b"space origin: (0,nan,0)")),
                 "nrrd_onan", "nrrd_onan.nrrd: NRRD header field 'space origin' holds values that are not finite"),
    HostileImage("nrrd_spacing_zero",
                 _itk_writer("nrrd_sp0", ".nrrd", _itk,
                             change=_replace(rb"space directions: \([\d.]+", b"space directions: (0")),
                 "nrrd_sp0", "nrrd_sp0.nrrd: invalid voxel spacing (0, 0.9, 2.5); spacing must be positive and finite"),
    HostileImage("nrrd_spacings_nan", _nrrd_spacings_nan, "nrrd_spnan",
                 "nrrd_spnan.nrrd: invalid voxel spacing in the NRRD header (spacings: 0.8 nan 2.5)"),
    # item 8: no finite voxel (ITK reads NIfTI NaN as 0: the file itself is looked at)
    HostileImage("all_nan", _nifti_writer("all_nan", _ALL_NAN), "all_nan",
                 "all_nan.nii.gz: image holds no finite intensity (every voxel is NaN or infinite)"),
    HostileImage("nan_and_inf", _nifti_writer("nan_inf", _NAN_INF, gz=False), "nan_inf",
                 "nan_inf.nii: image holds no finite intensity"),
    HostileImage("mha_all_nan", _itk_writer("mha_nan", ".mha", lambda: _itk(_ALL_NAN.transpose(2, 1, 0))), "mha_nan",
                 "mha_nan.mha: image holds no finite intensity"),
    # item 12 and more: what a CT cannot be
    HostileImage("complex_voxels", _nifti_writer("complex", (_ZYX.transpose(2, 1, 0) + 1j).astype(np.complex64)),
                 "complex", "complex.nii.gz: voxels are complex numbers (complex of 32-bit float); a CT has real "
                 "intensities"),
    HostileImage("complex_mha", _itk_writer("complex_mha", ".mha",
                                            lambda: sitk.GetImageFromArray((_ZYX + 1j).astype(np.complex64))),
                 "complex_mha", "complex_mha.mha: image has 2 components per voxel"),  # MetaImage: 2 channels
    HostileImage("rgb_voxels", _itk_writer("rgb", ".nii.gz", lambda: _itk(np.zeros((8, 10, 12, 3), np.uint8),
                                                                           vector=True)),
                 "rgb", "rgb.nii.gz: image has 3 components per voxel (vector of 8-bit unsigned integer)"),
    HostileImage("two_d", _itk_writer("flat2d", ".nrrd", lambda: _itk(_ZYX[0])), "flat2d",
                 "flat2d.nrrd: image is 2D (12x10); a 3D CT volume is needed"),
    HostileImage("four_d", _nifti_writer("dynamic", np.stack([_ZYX.transpose(2, 1, 0)] * 2, axis=-1)), "dynamic",
                 "dynamic.nii.gz: image is 4D (12x10x8x2); a 3D CT volume is needed"),
    HostileImage("single_slice", _itk_writer("one_slice", ".mha", lambda: _itk(_ZYX[:1])), "one_slice",
                 "one_slice.mha: image 12x10x1 is a single slice, not a volume"),
    HostileImage("zero_sized_axis", _nifti_writer("no_voxels", edit=_set(dim=[3, 12, 0, 8, 1, 1, 1, 1])),
                 "no_voxels", "no_voxels.nii.gz: image has no voxels (12x0x8)"),
    HostileImage("beyond_voxel_limit", _beyond_limit, "beyond_limit",
                 "beyond_limit.nii.gz: image declares 30000x30000x30000 = 27,000,000,000,000 voxels, more than "
                 "the limit of 2,147,483,648 (set AUTOORGAN_MAX_VOXELS to allow more)"),
    HostileImage("unknown_datatype", _nifti_writer("odd_type", edit=_set(datatype=9999)), "odd_type",
                 "odd_type.nii.gz: NIfTI header has an unknown data type or invalid dimensions"),
    HostileImage("nifti_2", _nifti2, "nifti2",
                 "nifti2.nii.gz: a NIfTI-2 file, which SimpleITK cannot read; save it as NIfTI-1 (e.g. with nibabel)"),
    HostileImage("zero_length_nii_gz", _empty("zero_length.nii.gz"), "zero_length",
                 "zero_length.nii.gz: file is empty"),
    HostileImage("zero_length_mha", _empty("empty_mha.mha"), "empty_mha", "empty_mha.mha: file is empty"),
    HostileImage("png_named_nii_gz", _png_named_nifti, "picture",
                 "picture.nii.gz: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)"),
    HostileImage("text_named_nii", _text("notes.nii", "patient notes, not an image\n" * 20), "notes",
                 "notes.nii: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)"),
    HostileImage("text_named_mha", _text("notes_mha.mha", "hello = world\n"), "notes_mha",
                 "notes_mha.mha: not a MetaImage file (no NDims, DimSize, ElementType, ElementDataFile)"),
    HostileImage("text_named_nrrd", _text("notes_nrrd.nrrd", "hello\n"), "notes_nrrd",
                 "notes_nrrd.nrrd: not an NRRD file (it does not start with NRRD)"),
]

#: ``(name, writer)``: each writer puts one hostile image file into an input folder; the case must
#: fail alone, in one line (:data:`HOSTILE_IMAGE_EXPECTED`: name → failing case id, message fragment).
HOSTILE_IMAGES: list[tuple[str, Callable[[Path], None]]] = [(h.name, h.write) for h in HOSTILE]
HOSTILE_IMAGE_EXPECTED: dict[str, tuple[str, str]] = {h.name: (h.case_id, h.message) for h in HOSTILE}


def write_good_case(folder: Path, name: str = GOOD) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(demo_phantom(3).ct, str(folder / f"{name}.nii.gz"))


# -- each hostile image alone -----------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_image_fails_its_case_in_one_line(hostile: HostileImage, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_good_case(folder)
    hostile.write(folder)
    cases = {c.case_id: c for c in find_cases(folder)}
    assert set(cases) == {GOOD, hostile.case_id}
    assert read_case(cases[GOOD]).geometry.size == demo_phantom(3).ct.GetSize()
    start = time.perf_counter()
    with pytest.raises(CaseError) as caught:
        read_case(cases[hostile.case_id])
    message = str(caught.value)
    assert hostile.message in message, message
    assert "\n" not in message and message.startswith(cases[hostile.case_id].path.name + ": ")
    assert "No such file or directory" not in message
    assert time.perf_counter() - start < 2.0


def test_tiny_file_declaring_3gb_fails_without_allocating(tmp_path: Path) -> None:
    """Under a 1.5 GB address-space limit (the volume alone would take 3.2 GB), the refusal is the
    truncation, found from the header — never an allocation failure."""
    _huge_nifti_header(tmp_path)
    path = tmp_path / "declares_3gb.nii.gz"
    assert path.stat().st_size < 120
    script = ("import resource, sys\n"
              "from autoorgan.io.image import read_volume\n"
              "from autoorgan.errors import CaseError\n"
              "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
              "try:\n    read_volume(__import__('pathlib').Path(sys.argv[1]))\n"
              "except CaseError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("but it holds 0"), done.stdout


# -- odd files that are read as what they are --------------------------------------------------------


def test_plain_nifti_named_nii_gz_is_read_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "plain.nii.gz").write_bytes(_nifti_bytes())
    volume = read_volume(tmp_path / "plain.nii.gz")
    assert np.array_equal(volume.array, _ZYX.transpose(2, 1, 0))
    assert np.allclose(volume.geometry.spacing, _SPACING)


def test_uint64_voxels_are_read_exactly(tmp_path: Path) -> None:
    values = _ZYX.transpose(2, 1, 0).astype(np.int64).astype(np.uint64)  # negatives wrap to ~1.8e19
    _write_nifti(tmp_path, "wide", _nifti_bytes(values))
    volume = read_volume(tmp_path / "wide.nii.gz")
    assert volume.array.dtype == np.uint64 and np.array_equal(volume.array, values)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_partly_nan_image_keeps_nan_where_the_file_has_it(tmp_path: Path, ending: str) -> None:
    """ITK reads a NIfTI NaN or infinity as 0 (water); the volume keeps them non-finite, as for other
    formats, so that prediction fills them like air (see autoorgan.steps.segment.prepare_intensities)."""
    array = _ZYX.transpose(2, 1, 0).astype(np.float32)
    array[0, 0, 0], array[3, 4, 5], array[11, 9, 7] = np.nan, np.inf, -np.inf
    path = tmp_path / f"part{ending}"
    if ending.startswith(".nii"):
        _write_nifti(tmp_path, "part", _nifti_bytes(array), gz=ending == ".nii.gz")
    else:
        sitk.WriteImage(_itk(array.transpose(2, 1, 0)), str(path))
    volume = read_volume(path)
    assert np.array_equal(~np.isfinite(volume.array), ~np.isfinite(array))
    assert np.array_equal(volume.array[np.isfinite(array)], array[np.isfinite(array)])


def test_one_volume_4d_nifti_keeps_its_nan(tmp_path: Path) -> None:
    array = _ZYX.transpose(2, 1, 0).astype(np.float32)[..., None]
    array[2, 3, 4, 0] = np.nan
    _write_nifti(tmp_path, "one_volume", _nifti_bytes(array), gz=False)
    volume = read_volume(tmp_path / "one_volume.nii")
    assert volume.array.shape == (12, 10, 8)
    assert np.array_equal(np.argwhere(np.isnan(volume.array)), [[2, 3, 4]])


def test_big_endian_nifti_is_read_exactly(tmp_path: Path) -> None:
    header = nib.Nifti1Header(endianness=">")
    image = nib.Nifti1Image(_ZYX.transpose(2, 1, 0).astype(">i2"), np.diag([0.8, 0.9, 2.5, 1.0]), header=header)
    nib.save(image, tmp_path / "big.nii.gz")
    volume = read_volume(tmp_path / "big.nii.gz")
    assert np.array_equal(volume.array, _ZYX.transpose(2, 1, 0)) and np.allclose(volume.geometry.spacing, _SPACING)


def test_voxel_limit_can_be_raised_and_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_nifti(tmp_path, "ct", _nifti_bytes())
    monkeypatch.setenv(image_checks.MAX_VOXELS_ENV, "959")
    with pytest.raises(CaseError, match=r"^ct.nii.gz: image declares 12x10x8 = 960 voxels, more than the limit of "
                                        r"959 \(set AUTOORGAN_MAX_VOXELS to allow more\)$"):
        read_volume(tmp_path / "ct.nii.gz")
    monkeypatch.setenv(image_checks.MAX_VOXELS_ENV, "960")
    assert read_volume(tmp_path / "ct.nii.gz").array.size == 960
    monkeypatch.setenv(image_checks.MAX_VOXELS_ENV, "lots")
    assert image_checks.max_voxels() == image_checks.DEFAULT_MAX_VOXELS


def test_gzip_bomb_behind_a_small_header_is_counted_not_inflated_whole(tmp_path: Path) -> None:
    """A stream far longer than its header needs is counted only to just past the need."""
    data = _nifti_bytes() + b"\0" * (64 << 20)
    _write_nifti(tmp_path, "long", data)
    start = time.perf_counter()
    assert read_volume(tmp_path / "long.nii.gz").array.shape == (12, 10, 8)
    with (tmp_path / "long.nii.gz").open("rb") as stream:
        counted = image_checks.inflated_size(stream, "long.nii.gz", needed=2272)
    assert 2272 < counted <= 2272 + (1 << 20) + (1 << 16)
    assert time.perf_counter() - start < 5.0


def test_multi_member_gzip_and_zlib_streams_are_counted(tmp_path: Path) -> None:
    data = os.urandom(5000)
    two = gzip.compress(data[:3000]) + gzip.compress(data[3000:])
    assert image_checks.inflated_size(io.BytesIO(two), "x", needed=5000) == 5000
    assert image_checks.inflated_size(io.BytesIO(zlib.compress(data)), "x", needed=5000) == 5000
    import bz2

    assert image_checks.inflated_size(io.BytesIO(bz2.compress(data)), "x", needed=5000, method="bzip2") == 5000
    assert image_checks.inflated_size(io.BytesIO(zlib.compress(data)[:-20]), "x", needed=5000) < 5000
    with pytest.raises(CaseError, match=r"^x: corrupt compressed data"):
        image_checks.inflated_size(io.BytesIO(b"\x1f\x8b\x08\x00garbage-garbage"), "x", needed=10)


# -- geometry and the nearly constant volume, as pure functions ---------------------------------------


@pytest.mark.parametrize(("spacing", "origin", "direction", "problem"), [
    ((1, 1, 1), (0, 0, 0), np.eye(3), None),
    ((1, 1, 1), (0, 0, 0), np.diag([-1, -1, 1]), None),
    ((1, 0, 1), (0, 0, 0), np.eye(3), "invalid voxel spacing (1, 0, 1)"),
    ((1, -1, 1), (0, 0, 0), np.eye(3), "invalid voxel spacing (1, -1, 1)"),
    ((1, float("inf"), 1), (0, 0, 0), np.eye(3), "invalid voxel spacing (1, inf, 1)"),
    ((1, 1, 1), (0, float("nan"), 0), np.eye(3), "invalid origin (0, nan, 0)"),
    ((1, 1, 1), (0, 0, 0), np.diag([1, 1, float("nan")]), "direction matrix holds non-finite values"),
    ((1, 1, 1), (0, 0, 0), np.zeros((3, 3)), "direction matrix is not a rotation (determinant 0)"),
    ((1, 1, 1), (0, 0, 0), np.diag([2, 1, 1]), "direction matrix is not a rotation (determinant 2)"),
])
def test_geometry_problem(spacing: tuple[float, ...], origin: tuple[float, ...], direction: np.ndarray,
                          problem: str | None) -> None:
    found = image_checks.geometry_problem(spacing, origin, np.asarray(direction, float).ravel())
    assert (found is None) if problem is None else (found is not None and found.startswith(problem)), found


def test_nonzero_box_vanishes_exactly_where_nnunet_resampling_gives_no_voxel() -> None:
    zeros = np.zeros((40, 60, 60), np.float32)
    speck = zeros.copy()
    speck[20, 30, 30] = 300.0
    target = (5.0, 4.0, 4.0)
    assert nonzero_box_vanishes(speck, (1.0, 1.0, 1.0), target, (0, 1, 2))
    assert not nonzero_box_vanishes(speck, (4.0, 4.0, 5.0), target, (0, 1, 2))  # one working voxel: kept
    assert not nonzero_box_vanishes(zeros, (1.0, 1.0, 1.0), target, (0, 1, 2))  # nnU-Net predicts it whole
    assert not nonzero_box_vanishes(zeros - 1024, (1.0, 1.0, 1.0), target, (0, 1, 2))
    line = zeros.copy()
    line[20, 30, 20:40] = 300.0  # 20 mm along x, 1 mm along z and y
    assert nonzero_box_vanishes(line, (1.0, 1.0, 1.0), target, (0, 1, 2))
    # the target spacing is in transposed order: (z, y, x) -> (x, z, y)
    assert nonzero_box_vanishes(speck, (1.0, 1.0, 3.0), (7.0, 1.0, 1.0), (2, 0, 1))  # x: 3 mm of 7
    assert not nonzero_box_vanishes(speck, (1.0, 1.0, 3.0), (5.0, 1.0, 1.0), (2, 0, 1))  # x: 3 mm of 5


# -- the whole batch with the real demo model ----------------------------------------------------------


def _nearly_constant(folder: Path) -> dict[str, str]:
    """Nearly constant volumes on the demo phantom's grid; returns case id → what is expected."""
    ct = demo_phantom(3).ct
    shape = sitk.GetArrayViewFromImage(ct).shape

    def write(name: str, array: np.ndarray, spacing: tuple[float, float, float] | None = None) -> None:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
        if spacing is not None:
            image.SetSpacing(spacing)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))

    speck = np.zeros(shape, np.int16)
    speck[5, 8, 12] = 300
    write("zero_but_a_speck", speck, (1.0, 1.0, 1.0))  # nnU-Net failed: "zero-size array"
    write("all_zero", np.zeros(shape, np.int16))
    air = np.full(shape, -1024, np.int16)
    air[5, 8, 12] = 300
    write("air_but_a_speck", air)
    return {"zero_but_a_speck": "empty", "all_zero": "any", "air_but_a_speck": "any"}


@pytest.mark.e2e
@pytest.mark.slow
def test_hostile_images_fail_alone_and_nearly_constant_volumes_are_done(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_good_case(inputs)
    for hostile in HOSTILE:
        hostile.write(inputs)
    constant = _nearly_constant(inputs)
    result = api.predict(task=DEMO_TASK, tasks_file=demo_tasks_file(), models_dir=demo_models_dir(), input=inputs,
                         output=out, device="cpu")
    status = {r.case_id: r for r in result.results}
    assert {c for c, r in status.items() if r.status == "done"} == {GOOD, *constant}
    for hostile in HOSTILE:
        error = status[hostile.case_id].error or ""
        reason = hostile.message.partition(": ")[2]  # the result is the reason; the failure record names the file
        assert reason in error and "\n" not in error, (hostile.name, error)
        assert not (out / f"{hostile.case_id}.nii.gz").exists()
    good = sitk.ReadImage(str(out / f"{GOOD}.nii.gz"))
    assert sitk.GetArrayViewFromImage(good).any()
    for case_id, expected in constant.items():
        labels = sitk.ReadImage(str(out / f"{case_id}.nii.gz"))
        source = sitk.ReadImage(str(inputs / f"{case_id}.nii.gz"))
        assert labels.GetSize() == source.GetSize() and np.allclose(labels.GetSpacing(), source.GetSpacing())
        if expected == "empty":
            assert not sitk.GetArrayViewFromImage(labels).any()
        assert json.loads((out / f"{case_id}.json").read_text(encoding="utf-8"))["warnings"]
