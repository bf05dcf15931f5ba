"""What an image file declares, checked before a voxel is read.

SimpleITK trusts a file's header: it allocates the declared volume before reading (a 96-byte file
declaring 512x512x600 voxels costs gigabytes), fills voxels a short file lacks with zeros, reads a
NIfTI ``pixdim`` of 0 or NaN as 1 mm, falls back silently from a broken ``sform`` to another
geometry, and reports a short MetaImage as "No such file or directory". So the header is read
here first — NIfTI with nibabel, MetaImage and NRRD as the text they are — and checked against
the bytes the file actually holds (compressed data are inflated as a stream and counted, never
kept). Every problem is a :class:`~autoorgan.errors.CaseError` of one line.
"""

from __future__ import annotations

import bz2
import io
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from autoorgan.errors import CaseError

log = logging.getLogger(__name__)

#: Largest image (voxels) read unless ``$AUTOORGAN_MAX_VOXELS`` allows more: 2^31, e.g.
#: 1024 x 1024 x 2048, already far beyond a CT series (512 x 512 x 2000 is 0.5 billion).
DEFAULT_MAX_VOXELS = 2**31
MAX_VOXELS_ENV = "AUTOORGAN_MAX_VOXELS"
#: Compressed data are inflated (and counted) to this many bytes past what the header needs.
_INFLATE_SLACK = 1 << 20
_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"


def max_voxels() -> int:
    """The voxel limit: ``$AUTOORGAN_MAX_VOXELS`` when set to a positive integer, else the default."""
    value = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if value:
        try:
            limit = int(value)
        except ValueError:
            limit = 0
        if limit > 0:
            return limit
        log.warning("ignoring %s=%r (not a positive integer)", MAX_VOXELS_ENV, value)
    return DEFAULT_MAX_VOXELS


def check_voxel_count(name: str, size: Sequence[int]) -> None:
    """:class:`CaseError` for a grid with no voxels or more than :func:`max_voxels`."""
    count = math.prod(int(s) for s in size)
    shape = "x".join(str(int(s)) for s in size)
    if count <= 0:
        raise CaseError(f"{name}: image has no voxels ({shape})")
    limit = max_voxels()
    if count > limit:
        raise CaseError(f"{name}: image declares {shape} = {count:,} voxels, more than the limit of {limit:,} "
                        f"(set {MAX_VOXELS_ENV} to allow more)")


def geometry_problem(spacing: Sequence[float], origin: Sequence[float],
                     direction: Sequence[float] | np.ndarray) -> str | None:
    """Why a grid cannot place voxels in the world, or ``None``: spacing must be finite and
    positive, the origin finite, the direction a finite rotation (or reflection) matrix."""
    spacing_a = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(spacing_a)) or np.any(spacing_a <= 0):
        return f"invalid voxel spacing {_numbers(spacing_a)}; spacing must be positive and finite"
    origin_a = np.asarray(origin, dtype=float)
    if not np.all(np.isfinite(origin_a)):
        return f"invalid origin {_numbers(origin_a)}; it must be finite"
    matrix = np.asarray(direction, dtype=float).reshape(len(spacing_a), len(spacing_a))
    if not np.all(np.isfinite(matrix)):
        return "direction matrix holds non-finite values"
    if not np.allclose(matrix @ matrix.T, np.eye(len(matrix)), atol=1e-3):
        return f"direction matrix is not a rotation (determinant {np.linalg.det(matrix):.3g})"
    return None


def _numbers(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# ---------------------------------------------------------------------------------------------
# Counting the bytes a file holds


def inflated_size(stream: BinaryIO, name: str, *, needed: int, method: str = "zlib") -> int:
    """Bytes the compressed ``stream`` inflates to, counted chunk by chunk (nothing is kept).

    ``method`` is ``zlib`` (zlib or gzip data, several gzip members too) or ``bzip2``. Counting
    stops ``_INFLATE_SLACK`` bytes past ``needed``, so a stream far longer than its header needs
    costs no more than the data it should hold. Corrupt data (a bad CRC included) are a
    :class:`CaseError`; so is a stream that ends early although it already held ``needed`` bytes
    (its end, with the checksum, is missing). A shorter count is returned for the caller to name.
    """

    def new() -> Any:
        return bz2.BZ2Decompressor() if method == "bzip2" else zlib.decompressobj(32 + zlib.MAX_WBITS)

    limit = needed + _INFLATE_SLACK
    inflater, total, data = new(), 0, b""
    try:
        while total <= limit:
            if not data and _drained(inflater):
                data = stream.read(_CHUNK)
                if not data:
                    break
            total += len(inflater.decompress(data, _CHUNK))
            data = getattr(inflater, "unconsumed_tail", b"")
            if inflater.eof:
                rest = inflater.unused_data
                if rest[:2] != _GZIP_MAGIC and rest[:3] != b"BZh":
                    return total  # the stream is complete; bytes after it are ignored, as ITK does
                inflater, data = new(), rest  # a further gzip/bzip2 member
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise CaseError(f"{name}: corrupt compressed data ({exc})") from None
    if total >= needed and total <= limit:
        raise CaseError(f"{name}: file is truncated (compressed data end early)")
    return total


def _drained(inflater: Any) -> bool:
    """Whether ``inflater`` has given all the output of the input it was fed."""
    return bool(getattr(inflater, "needs_input", True)) and not getattr(inflater, "unconsumed_tail", b"")


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _describe(size: Sequence[int], dtype: str) -> str:
    return f"{'x'.join(str(int(s)) for s in size)} voxels of {dtype}"


def _truncated(name: str, size: Sequence[int], dtype: str, needed: int, held: int) -> CaseError:
    return CaseError(f"{name}: file is truncated: its header declares {_describe(size, dtype)} "
                     f"({needed:,} bytes of voxel data) but it holds {max(held, 0):,}")


# ---------------------------------------------------------------------------------------------
# NIfTI


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI file's voxels are: byte offset (in the decompressed stream), dtype, shape."""

    compressed: bool
    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    #: 1 or 2 (NIfTI-1 or NIfTI-2)
    version: int = 1


def open_nifti(path: Path) -> io.BufferedIOBase:
    """``path``'s NIfTI byte stream: inflated if the file is gzip data, whatever its name says
    (a plain ``.nii`` named ``.nii.gz`` is read as what it is, as ITK does)."""
    import gzip

    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")


def check_nifti(path: Path) -> NiftiLayout:
    """Check a NIfTI file's header and that the file holds every voxel it declares.

    nibabel reads the header as written (no fixes); refused are: no NIfTI-1/2 header, an
    unknown data type, a ``pixdim`` of a spatial axis that is not a positive number (ITK would
    read 1 mm), non-finite ``qform`` values or a non-finite or singular ``sform`` where their
    codes say they are used (ITK would silently take another geometry), a non-finite scaling,
    more voxels than the limit, and fewer data bytes than declared.
    """
    name = path.name
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    with open_nifti(path) as stream:
        try:
            head = stream.read(540)
        except EOFError:
            raise CaseError(f"{name}: file is truncated (compressed data end within the header)") from None
        except (OSError, zlib.error) as exc:
            raise CaseError(f"{name}: corrupt compressed data ({exc})") from None
        header = _nifti_header(head, name)
        try:
            dtype = header.get_data_dtype()
            shape = tuple(int(n) for n in header.get_data_shape())
        except Exception:  # noqa: BLE001 - nibabel raises several kinds for a bad datatype or dim
            raise CaseError(f"{name}: NIfTI header has an unknown data type or invalid dimensions") from None
        _check_nifti_geometry(header, name, len(shape))
        check_voxel_count(name, shape or (0,))
        offset = int(header.get_data_offset())
        needed = math.prod(shape) * dtype.itemsize
    if compressed:
        with path.open("rb") as raw:
            held = inflated_size(raw, name, needed=offset + needed)
    else:
        held = _file_size(path)
    if held < offset + needed:
        raise _truncated(name, shape, str(dtype), needed, held - offset)
    return NiftiLayout(compressed=compressed, offset=offset, dtype=dtype, shape=shape,
                       version=2 if int(header.sizeof_hdr) == 540 else 1)


def _nifti_header(head: bytes, name: str) -> Any:
    """nibabel's NIfTI-1 or NIfTI-2 header of ``head`` (unchecked, unfixed), or :class:`CaseError`."""
    import nibabel as nib

    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        block = head[: klass.template_dtype.itemsize]
        if len(block) < klass.template_dtype.itemsize:
            continue
        for order in ("<", ">"):
            candidate = np.frombuffer(block[:4], dtype=f"{order}i4")[0]
            if candidate == klass.sizeof_hdr:
                header = klass(block, endianness=order, check=False)
                if bytes(header["magic"]).rstrip(b"\0") in (b"n+1", b"n+2"):
                    return header
    raise CaseError(f"{name}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")


def _check_nifti_geometry(header: Any, name: str, ndim: int) -> None:
    """Refuse header geometry that ITK would silently replace (see :func:`check_nifti`)."""
    spatial = min(ndim, 3)
    pixdim = np.asarray(header["pixdim"][1 : 1 + spatial], dtype=float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise CaseError(f"{name}: invalid voxel size in the NIfTI header (pixdim {_numbers(pixdim)}); "
                        "sizes must be positive numbers")
    if int(header["qform_code"]) > 0:
        values = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                                             "qoffset_z")]
        if not np.all(np.isfinite(values)):
            raise CaseError(f"{name}: the NIfTI header's qform holds non-finite values")
    if int(header["sform_code"]) > 0:
        rows = np.asarray([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=float)
        if not np.all(np.isfinite(rows)):
            raise CaseError(f"{name}: the NIfTI header's sform holds non-finite values")
        matrix = rows[:, :3]
        norms = np.linalg.norm(matrix, axis=0)
        if np.any(norms == 0) or abs(np.linalg.det(matrix / norms)) < 1e-6:
            raise CaseError(f"{name}: the NIfTI header's sform is singular (it maps the volume onto a plane)")
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    scaled = np.isfinite(slope) and slope != 0  # a zero or NaN slope means "not scaled"
    if np.isinf(slope) or (scaled and not np.isfinite(inter)):
        raise CaseError(f"{name}: the NIfTI header's intensity scaling (scl_slope, scl_inter) is not finite")


def nifti_non_finite(path: Path, layout: NiftiLayout) -> np.ndarray | None:
    """Mask (``[x, y, z]``) of the NaN and infinite voxels of a floating-point NIfTI file, or
    ``None`` for other data types.

    ITK turns such voxels into 0 (water) while reading; the mask lets the caller restore them,
    so that an image of nothing but NaN is refused and partial NaN is treated as for other formats.
    """
    from nibabel.volumeutils import array_from_file

    if layout.dtype.kind != "f":
        return None
    with open_nifti(path) as stream:
        raw = array_from_file(layout.shape, layout.dtype, stream, offset=layout.offset, order="F", mmap=False)
        return ~np.isfinite(raw)


# ---------------------------------------------------------------------------------------------
# MetaImage (.mha / .mhd)

#: Bytes per element of MetaImage's element types (MetaIO's own table).
_MET_SIZES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4, "ULONG": 4,
              "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}
_META_GEOMETRY = ("ElementSpacing", "ElementSize", "Offset", "Position", "Origin", "TransformMatrix",
                  "Rotation", "Orientation")


def check_metaimage(path: Path) -> None:
    """Check a MetaImage header's geometry and that its data (in the file or the file it names)
    hold every voxel declared; ITK reports a short file as "No such file or directory"."""
    name = path.name
    fields, header_end = _text_header(path, separator="=", last_key="ElementDataFile")
    required = ("NDims", "DimSize", "ElementType", "ElementDataFile")
    if any(k not in fields for k in required):
        raise CaseError(f"{name}: not a MetaImage file (no {', '.join(k for k in required if k not in fields)})")
    for key in _META_GEOMETRY:
        if key in fields and not _finite_numbers(fields[key]):
            raise CaseError(f"{name}: MetaImage header field {key} holds values that are not finite numbers")
    for key in ("ElementSpacing", "ElementSize"):
        if key in fields and any(v <= 0 for v in _numbers_of(fields[key])):
            raise CaseError(f"{name}: invalid voxel spacing in the MetaImage header ({key} = {fields[key]}); "
                            "spacing must be positive")
    size = _int_list(fields["DimSize"], name, "DimSize")
    check_voxel_count(name, size)
    element = fields["ElementType"].upper().removeprefix("MET_")
    channels = _int_field(fields, "ElementNumberOfChannels", 1, name)
    if element not in _MET_SIZES:
        return  # ITK names the unsupported type itself
    needed = math.prod(size) * channels * _MET_SIZES[element]
    data_file = fields["ElementDataFile"]
    compressed = fields.get("CompressedData", "false").lower() == "true"
    if data_file.upper() == "LOCAL":
        data, start = path, header_end
    elif " " in data_file or data_file.upper() == "LIST":
        return  # a list or pattern of slice files: ITK checks each
    else:
        data, start = path.parent / data_file, 0
        if not data.is_file():
            raise CaseError(f"{name}: its data file {data_file} is missing (or not a regular file)")
    header_size = _int_field(fields, "HeaderSize", 0, name)
    if compressed:
        with data.open("rb") as stream:
            stream.seek(start)
            held = inflated_size(stream, name, needed=needed)
    elif header_size == -1:  # the data are the file's last bytes
        held = _file_size(data) - start
    else:
        held = _file_size(data) - start - header_size
    if held < needed:
        raise _truncated(name, size, fields["ElementType"], needed, held)


# ---------------------------------------------------------------------------------------------
# NRRD (.nrrd / .nhdr)


def check_nrrd(path: Path) -> None:
    """Check an NRRD header's geometry and that its raw or gzip/bzip2 data hold every voxel
    declared."""
    name = path.name
    with path.open("rb") as stream:
        if not stream.read(4) == b"NRRD":
            raise CaseError(f"{name}: not an NRRD file (it does not start with NRRD)")
    fields, header_end = _text_header(path, separator=":", blank_line_ends=True)
    if "sizes" not in fields or "type" not in fields:
        raise CaseError(f"{name}: not an NRRD file (no sizes or type field)")
    for key in ("space origin", "space directions"):  # axes without a vector say "none", never NaN
        if key in fields and re.search(r"nan|inf", fields[key], re.IGNORECASE):
            raise CaseError(f"{name}: NRRD header field '{key}' holds values that are not finite numbers")
    size = _int_list(fields["sizes"], name, "sizes")
    _check_nrrd_spacings(fields, name, len(size))
    check_voxel_count(name, size)
    itemsize = _nrrd_type_size(fields["type"])
    if itemsize is None:
        return  # "block" or an unknown type: ITK names it
    needed = math.prod(size) * itemsize
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        data, start = path, header_end
    elif " " in data_file.strip() or data_file.strip().upper().startswith("LIST"):
        return  # several data files: ITK reads each
    else:
        data, start = path.parent / data_file.strip(), 0
        if not data.is_file():
            raise CaseError(f"{name}: its data file {data_file.strip()} is missing (or not a regular file)")
    skip = _int_field(fields, "byte skip", 0, name)
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz", "bzip2", "bz2"):
        with data.open("rb") as stream:
            stream.seek(start)
            held = inflated_size(stream, name, needed=needed + max(skip, 0),
                                 method="bzip2" if encoding.startswith("bz") else "zlib") - max(skip, 0)
    elif encoding == "raw":
        held = _file_size(data) - start - max(skip, 0)
    else:
        return  # text encodings: ITK parses every value and reports a short file itself
    if held < needed:
        raise _truncated(name, size, fields.get("type", "?"), needed, held)


def _check_nrrd_spacings(fields: dict[str, str], name: str, axes: int) -> None:
    """Refuse a ``spacings`` value that is not a positive number on a spatial axis (NaN is allowed
    only on other axes, such as a vector axis; ITK would read a spatial NaN as 1 mm)."""
    if "spacings" not in fields:
        return
    kinds = fields.get("kinds", "").split() or ["domain"] * axes
    for value, kind in zip(fields["spacings"].split(), kinds, strict=False):
        if kind.lower() not in ("domain", "space"):
            continue
        number = float(value) if _NUMBER.fullmatch(value) or value.lower() in ("nan", "inf", "-inf") else None
        if number is None or not math.isfinite(number) or number <= 0:
            raise CaseError(f"{name}: invalid voxel spacing in the NRRD header (spacings: {fields['spacings']}); "
                            "spacing must be positive and finite")


def _nrrd_type_size(type_name: str) -> int | None:
    """Bytes of one value of an NRRD ``type`` (``short``, ``int16_t``, ``unsigned long long``...)."""
    text = type_name.lower()
    bits = re.search(r"(8|16|32|64)", text)
    if bits:
        return int(bits.group()) // 8
    words = (("char", 1), ("short", 2), ("long", 8), ("double", 8), ("float", 4), ("int", 4))
    return next((n for word, n in words if word in text), None)


# ---------------------------------------------------------------------------------------------
# Text headers


def _text_header(path: Path, *, separator: str, last_key: str | None = None,
                 blank_line_ends: bool = False) -> tuple[dict[str, str], int]:
    """The ``key <separator> value`` fields of a text header and the byte offset where it ends.

    The header ends after the ``last_key`` line (MetaImage) or at the first empty line (NRRD),
    or at the end of the file; it is read line by line, at most 64 KiB.
    """
    fields: dict[str, str] = {}
    with path.open("rb") as stream:
        while stream.tell() < 65536:
            raw = stream.readline(4096)
            if not raw:
                break
            line = raw.decode("latin-1").rstrip("\r\n")
            if blank_line_ends and not line.strip():
                break
            if line.startswith("#") or separator not in line:
                continue
            key, _, value = line.partition(separator)
            key = key.strip()
            fields.setdefault(key, value.strip())
            if key == last_key:
                break
        return fields, stream.tell()


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _finite_numbers(text: str) -> bool:
    """Whether ``text`` is a list of finite numbers (``nan``, ``inf`` and junk are not)."""
    parts = text.split()
    return bool(parts) and all(_NUMBER.fullmatch(p) and math.isfinite(float(p)) for p in parts)


def _numbers_of(text: str) -> list[float]:
    return [float(p) for p in text.split()]


def _int_field(fields: dict[str, str], key: str, default: int, name: str) -> int:
    """The whole number of header field ``key`` (``default`` when absent); :class:`CaseError` if not one."""
    text = fields.get(key, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise CaseError(f"{name}: header field {key} is not a whole number ({text[:40]})") from None


def _int_list(text: str, name: str, key: str) -> list[int]:
    try:
        values = [int(p) for p in text.split()]
    except ValueError:
        raise CaseError(f"{name}: header field {key} is not a list of whole numbers ({text[:40]})") from None
    if not values:
        raise CaseError(f"{name}: header field {key} is empty")
    return values


#: The header checks by file ending (lower case), beside :func:`check_nifti`.
FILE_CHECKS: dict[str, Callable[[Path], None]] = {
    ".mha": check_metaimage,
    ".mhd": check_metaimage,
    ".nrrd": check_nrrd,
    ".nhdr": check_nrrd,
}
