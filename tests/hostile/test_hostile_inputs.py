"""Hostile and unlucky entries of an input folder (issue 17, items 4, 9, 10 and 12's file names).

Each entry of :data:`HOSTILE_INPUTS` is written into a folder beside a good demo-phantom case:
discovery must still succeed, the good case must be done, and the hostile entry must either fail
only its own case, with one line, or (where it is not named like an input) be no case at all —
never end the batch, block on a FIFO, or crash printing, records, sidecars or ``status``.

Also here: DICOM zips are read without inflating whole members and within a size and ratio cap
(lowered in the tests instead of writing gigabytes), and DICOM case ids depend only on the series
itself, so adding a series between two runs renames nothing.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app
from autoorgan.demo import DEMO_TASK, demo_models_dir, demo_phantom, demo_tasks_file
from autoorgan.errors import CaseError, InputError
from autoorgan.io import dicom
from autoorgan.io.archives import MemberOverflow, stream_member
from autoorgan.io.cases import find_cases
from autoorgan.io.reading import read_case

GOOD = "good"


@pytest.fixture(autouse=True)
def _default_archive_cap() -> Iterator[None]:
    """A test that sets ``--max-archive-size`` (in this process) leaves the default behind."""
    yield
    dicom.set_max_archive_size(None)


# -- writers of DICOM and zips ----------------------------------------------------------------------


def write_dicom_series(folder: Path, *, seed: int = 0, number: int | None = 2, description: str = "CT phantom",
                       uid: str | None = None, prefix: str = "") -> str:
    """The demo phantom as a CT DICOM series (pydicom) in ``folder``; returns its SeriesInstanceUID."""
    ct = demo_phantom(seed).ct
    array = sitk.GetArrayFromImage(ct).astype(np.int16)
    d = ct.GetDirection()
    uid = uid or generate_uid()
    frame = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(array.shape[0]):
        ds = _ct_dataset(array[k], rows_cols=array.shape[1:])
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid, frame
        if number is not None:
            ds.SeriesNumber = number
        if description:
            ds.SeriesDescription = description
        ds.ImageOrientationPatient = [float(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])]
        ds.ImagePositionPatient = [float(v) for v in ct.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.PixelSpacing = [float(ct.GetSpacing()[1]), float(ct.GetSpacing()[0])]
        ds.SliceThickness = float(ct.GetSpacing()[2])
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"{prefix}{k:03d}.dcm", enforce_file_format=True)
    return uid


def _ct_dataset(pixels: np.ndarray, rows_cols: tuple[int, int]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID = "CT", generate_uid()
    ds.Rows, ds.Columns = rows_cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    return ds


def write_good_case(folder: Path, name: str = GOOD) -> None:
    """A good demo-phantom CT beside the hostile entries."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(demo_phantom(0).ct, str(folder / f"{name}.nii.gz"))


def _dicom_zip(archive: Path, *, seed: int = 1) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(Path(tmp) / "DICOM", seed=seed)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((Path(tmp) / "DICOM").iterdir()):
                zf.write(path, f"export/DICOM/{path.name}")


def _patch_zip_headers(archive: Path, *, flags: int = 0, method: int | None = None,
                       file_size: int | None = None) -> None:
    """Rewrite raw fields of every local and central header (what ``zipfile`` cannot write):
    OR ``flags`` into the flag bits, set the compression method or the declared size."""
    data = bytearray(archive.read_bytes())
    for signature, flag_at, method_at, size_at in ((b"PK\x03\x04", 6, 8, 22), (b"PK\x01\x02", 8, 10, 24)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            struct.pack_into("<H", data, at + flag_at, struct.unpack_from("<H", data, at + flag_at)[0] | flags)
            if method is not None:
                struct.pack_into("<H", data, at + method_at, method)
            if file_size is not None:
                struct.pack_into("<I", data, at + size_at, file_size)
            start = at + 4
    archive.write_bytes(bytes(data))


def _bomb_member(size: int) -> bytes:
    """A valid CT DICOM slice whose pixel data are ``size`` bytes of zeros (inflates ~1000:1)."""
    side = int(np.sqrt(size // 2))
    ds = _ct_dataset(np.zeros((side, side), np.int16), rows_cols=(side, side))
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), 1, "bomb"
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1.0, 0, 0, 0, 1.0, 0], [0.0, 0, 0]
    ds.PixelSpacing = [1.0, 1.0]
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_zip_bomb(archive: Path, size: int = 40 * 2**20) -> None:
    """A zip whose one DICOM member inflates to ``size`` bytes of zeros from a few tens of KB."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("bomb/slice.dcm", _bomb_member(size))


# -- the hostile entries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One hostile entry: how to write it, and what it must become.

    ``case_id``: the case that must fail, with ``message`` in its one-line error; ``None``: the
    entry makes no failing case (skipped, never opened, or read despite its oddity: ``done`` is
    then the id of the case that must be done).
    """

    name: str
    write: Callable[[Path], None]
    case_id: str | None
    message: str = ""
    done: str | None = None


def _symlink_loop(folder: Path) -> None:
    (folder / "loop.nii.gz").symlink_to("loop.nii.gz")


def _folder_loop(folder: Path) -> None:
    (folder / "loop_sub").mkdir()
    (folder / "loop_sub" / "up").symlink_to("..")


def _dangling(folder: Path) -> None:
    (folder / "gone.nii.gz").symlink_to(folder / "missing.nii.gz")


def _non_utf8(folder: Path) -> None:
    name = os.fsdecode(b"ct_\xff\xfe.nii.gz")
    sitk.WriteImage(demo_phantom(2).ct, str(folder / ".writing_non_utf8.nii.gz"))  # SimpleITK needs UTF-8
    os.rename(folder / ".writing_non_utf8.nii.gz", folder / name)


def _non_utf8_dicom_folder(folder: Path) -> None:
    write_dicom_series(folder / os.fsdecode(b"pat_\xe9"), seed=3, description="")


def _encrypted_zip(folder: Path) -> None:
    _dicom_zip(folder / "locked.zip")
    _patch_zip_headers(folder / "locked.zip", flags=0x1)


def _corrupt_zip(folder: Path) -> None:
    (folder / "corrupt.zip").write_bytes(b"PK\x03\x04 this is not a zip archive at all" * 10)


def _truncated_zip(folder: Path) -> None:
    _dicom_zip(folder / "cut.zip")
    data = (folder / "cut.zip").read_bytes()
    (folder / "cut.zip").write_bytes(data[: len(data) // 2])


def _unsupported_method_zip(folder: Path) -> None:
    _dicom_zip(folder / "ppmd.zip")
    _patch_zip_headers(folder / "ppmd.zip", method=98)  # PPMd: not in Python's zipfile


def _zip_bomb(folder: Path) -> None:
    write_zip_bomb(folder / "bomb.zip")


def _lying_zip(folder: Path) -> None:
    """A DICOM zip whose headers declare each member 1 KB: it may not inflate past that."""
    _dicom_zip(folder / "liar.zip")
    _patch_zip_headers(folder / "liar.zip", file_size=1024)


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "fifo.nii.gz")


def _fifo_unnamed(folder: Path) -> None:
    os.mkfifo(folder / "fifo_pipe")


def _fifo_dcm(folder: Path) -> None:
    (folder / "dicom_fifo").mkdir()
    os.mkfifo(folder / "dicom_fifo" / "slice.dcm")


def _folder_named_image(folder: Path) -> None:
    (folder / "dir_as_image.nii.gz").mkdir()
    (folder / "dir_as_image.nii.gz" / "inside.txt").write_text("a folder, not an image")


def _folder_named_zip(folder: Path) -> None:
    (folder / "dir_as_zip.zip").mkdir()


def _newline_name(folder: Path) -> None:
    (folder / "bad\nname.nii.gz").write_bytes(b"\x1f\x8b not really gzip")


def _device(folder: Path) -> None:
    (folder / "dev_null.nii.gz").symlink_to("/dev/null")


LONG_NAME = "n" * 240


def _long_name(folder: Path) -> None:
    """A name near the 255-byte limit: outputs and their temporaries would not fit."""
    sitk.WriteImage(demo_phantom(5).ct, str(folder / f"{LONG_NAME}.nii.gz"))


def _empty_image(folder: Path) -> None:
    (folder / "zero_bytes.nii.gz").write_bytes(b"")


def _zip_member_escapes(folder: Path) -> None:
    """A DICOM zip whose member names climb out of any folder (raw names, as zipfile would strip)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(Path(tmp), seed=6, number=7, description="slip")
        with zipfile.ZipFile(folder / "slip.zip", "w") as zf:
            for path in sorted(Path(tmp).iterdir()):
                info = zipfile.ZipInfo(f"../../{path.name}")
                zf.writestr(info, path.read_bytes())


HOSTILE = [
    Hostile("symlink_loop", _symlink_loop, "loop", "loop.nii.gz is a symbolic link loop, not an image file"),
    Hostile("folder_symlink_loop", _folder_loop, None),
    Hostile("dangling_symlink", _dangling, "gone", "gone.nii.gz is a dangling symbolic link, not an image file"),
    Hostile("non_utf8_name", _non_utf8, "ct_\\xff\\xfe", "ct_\\xff\\xfe.nii.gz: the file name is not valid UTF-8"),
    Hostile("non_utf8_dicom_folder", _non_utf8_dicom_folder, None, done="pat_series2"),  # via safe links
    Hostile("encrypted_zip", _encrypted_zip, "locked", "locked.zip: the archive is encrypted"),
    Hostile("corrupt_zip", _corrupt_zip, "corrupt", "corrupt.zip: not a readable zip archive"),
    Hostile("truncated_zip", _truncated_zip, "cut", "cut.zip: not a readable zip archive"),
    Hostile("unsupported_zip_method", _unsupported_method_zip, "ppmd",
            "ppmd.zip: member 'export/DICOM/000.dcm' uses compression method 98 (ppmd), which Python's zipfile"),
    Hostile("zip_bomb", _zip_bomb, "bomb_1_bomb", "member 'bomb/slice.dcm' of bomb.zip would inflate "),
    Hostile("lying_zip_sizes", _lying_zip, "liar", "liar.zip: not a readable zip archive (Bad CRC-32"),
    Hostile("fifo_named_image", _fifo, "fifo", "fifo.nii.gz is a FIFO (named pipe), not an image file"),
    Hostile("fifo_other_name", _fifo_unnamed, None),
    Hostile("fifo_dcm_in_subfolder", _fifo_dcm, None),
    Hostile("folder_named_like_image", _folder_named_image, "dir_as_image",
            "dir_as_image.nii.gz is a folder, not an image file"),
    Hostile("folder_named_like_zip", _folder_named_zip, "dir_as_zip", "dir_as_zip.zip is a folder, not a zip archive"),
    Hostile("newline_in_name", _newline_name, "bad\nname", ""),
    Hostile("device_named_image", _device, "dev_null", "dev_null.nii.gz is a device file, not an image file"),
    Hostile("name_too_long_for_outputs", _long_name, None, done=f"{LONG_NAME[:120]}_0c441b63"),
    Hostile("empty_image_file", _empty_image, "zero_bytes", "zero_bytes.nii.gz"),
    Hostile("zip_member_names_climbing_out", _zip_member_escapes, None, done="slip_7_slip"),
]

#: ``(name, writer)``: each writer puts one hostile entry into an input folder (see :class:`Hostile`
#: for what each must become; :data:`HOSTILE_EXPECTED` maps a name to its failing case id and a
#: fragment of its message, the case id ``None`` where the entry is no failing case).
HOSTILE_INPUTS: list[tuple[str, Callable[[Path], None]]] = [(h.name, h.write) for h in HOSTILE]
HOSTILE_EXPECTED: dict[str, tuple[str | None, str]] = {h.name: (h.case_id, h.message) for h in HOSTILE}
#: The hostile entries that must give a case that is done (read despite their oddity), by id.
HOSTILE_DONE: dict[str, str] = {h.name: h.done for h in HOSTILE if h.done is not None}


def _one_line(text: str, name_with_newline: bool = False) -> bool:
    return "\n" not in (text.replace("bad\nname", "") if name_with_newline else text)


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_entry_fails_only_its_own_case(hostile: Hostile, tmp_path: Path) -> None:
    """Discovery succeeds beside a good case; the hostile case fails with its one line on reading."""
    folder = tmp_path / "in"
    write_good_case(folder)
    hostile.write(folder)
    cases = {c.case_id: c for c in find_cases(folder, exclude=tmp_path / "out")}
    assert GOOD in cases
    read_case(cases[GOOD])
    if hostile.case_id is None:
        assert sorted(cases) == sorted({GOOD, hostile.done} - {None})
        if hostile.done is not None:
            read_case(cases[hostile.done])
        return
    assert hostile.case_id in cases, sorted(cases)
    with pytest.raises(CaseError) as caught:
        read_case(cases[hostile.case_id])
    assert hostile.message in str(caught.value)
    assert _one_line(str(caught.value), name_with_newline=True)
    str(caught.value).encode("utf-8")  # prints and records, whatever the file name's bytes


def test_non_utf8_dicom_folder_is_read_through_safe_links(tmp_path: Path) -> None:
    """SimpleITK aborts the whole process on a path that is not UTF-8: such series are read via links."""
    folder = tmp_path / "in"
    _non_utf8_dicom_folder(folder)
    (case,) = find_cases(folder)
    assert case.case_id == "pat_series2" and case.name == "pat_\\xe9"
    volume = read_case(case)
    assert volume.geometry.size == demo_phantom(3).ct.GetSize()
    assert not list(Path(tempfile.gettempdir()).glob("autoorgan-dicom-*"))


def test_fifo_as_input_is_exit_2_in_one_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match=r"is a FIFO \(named pipe\), not a file or folder$"):
        find_cases(tmp_path / "ct.nii.gz")
    result = CliRunner().invoke(app, ["predict", "--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()),
                                      "--models-dir", str(demo_models_dir()), "-i", str(tmp_path / "ct.nii.gz"),
                                      "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "FIFO" in result.output and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output


def test_symlink_loop_and_non_utf8_path_as_input_are_exit_2(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(InputError, match="is a symbolic link loop, not a file or folder"):
        find_cases(tmp_path / "loop")
    write_good_case(tmp_path / "cafe")  # SimpleITK cannot write there itself
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    (tmp_path / "cafe").rename(folder)
    with pytest.raises(InputError, match=r"caf\\xe9: the path is not valid UTF-8") as caught:
        find_cases(folder)
    str(caught.value).encode("utf-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_file_fails_only_itself(tmp_path: Path) -> None:
    write_good_case(tmp_path)
    write_good_case(tmp_path, "locked")
    (tmp_path / "locked.nii.gz").chmod(0)
    cases = {c.case_id: c for c in find_cases(tmp_path)}
    with pytest.raises(CaseError):
        read_case(cases["locked"])


# -- DICOM zips: streamed headers, caps on sizes and ratios ---------------------------------------


def test_zip_headers_are_streamed_never_inflated_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scanning a zip whose DICOM member inflates to 40 MiB reads a few KB of it, never all."""
    write_zip_bomb(tmp_path / "bomb.zip")
    read_sizes: list[int] = []
    original = zipfile.ZipExtFile.read

    def spy(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = original(self, n)
        read_sizes.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: pytest.fail("a member was read whole"))
    (case,) = find_cases(tmp_path / "bomb.zip")
    assert case.case_id == "bomb_1_bomb" and case.dicom is not None
    assert sum(read_sizes) < 2**20, sum(read_sizes)


def test_header_scan_stops_at_its_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """A member whose header runs on (a huge element before the pixels) costs at most the cap."""
    ds = pydicom.dcmread(BytesIO(_bomb_member(2**12)))
    block = ds.private_block(0x0009, "AUTOORGAN TEST", create=True)
    block.add_new(0x10, "OB", bytes(3 * 2**20))  # a 3 MiB private element before the pixel data
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with zipfile.ZipFile(tmp_path / "long.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s.dcm", buffer.getvalue())
    assert len(find_cases(tmp_path / "long.zip")) == 1  # under the real cap: found
    monkeypatch.setattr(dicom, "_HEADER_READ_CAP", 2**20)
    with pytest.raises(InputError, match="holds no DICOM images"):
        find_cases(tmp_path / "long.zip")
    assert "long.zip: member 's.dcm' skipped: header larger than 1 MiB" in caplog.text


def test_zip_bomb_fails_its_case_with_one_line(tmp_path: Path) -> None:
    write_zip_bomb(tmp_path / "bomb.zip")
    (case,) = find_cases(tmp_path / "bomb.zip")
    with pytest.raises(CaseError) as caught:
        read_case(case)
    message = str(caught.value)
    assert message.startswith("bomb_1_bomb: member 'bomb/slice.dcm' of bomb.zip would inflate ")
    assert "over the 100:1 limit for a DICOM archive (a zip bomb?)" in message and "\n" not in message
    assert not list(Path(tempfile.gettempdir()).glob("autoorgan-dicom-*"))


def test_archive_size_cap_counts_members_and_totals_and_can_be_raised(tmp_path: Path) -> None:
    """The cap is lowered here instead of writing gigabytes (the phantom's slices are ~2 KB each)."""
    _dicom_zip(tmp_path / "scan.zip")
    (case,) = find_cases(tmp_path / "scan.zip")
    with zipfile.ZipFile(tmp_path / "scan.zip") as zf:
        infos = zf.infolist()
    member, total = max(i.file_size for i in infos), sum(i.file_size for i in infos)
    dicom.set_max_archive_size(member / 2 / 1e9)
    with pytest.raises(CaseError, match=r"member 'export/DICOM/000.dcm' of scan.zip inflates to \d+ bytes, "
                                        r"over the \d+ bytes limit for a DICOM archive; raise the limit "
                                        r"with --max-archive-size \(GB\)"):
        read_case(case)
    dicom.set_max_archive_size((total - 1) / 1e9)
    with pytest.raises(CaseError, match=rf"the series' {len(infos)} members in scan.zip inflate to {total} "
                                        r"bytes, over the"):
        read_case(case)
    dicom.set_max_archive_size((total + 1) / 1e9)
    assert read_case(case).geometry.size == demo_phantom(1).ct.GetSize()
    with pytest.raises(InputError, match="--max-archive-size must be a positive number of GB, got -1"):
        dicom.set_max_archive_size(-1)


def test_streamed_extraction_stops_at_the_cap_whatever_the_headers_say(tmp_path: Path) -> None:
    """Sizes are counted while inflating: a member that inflates past its declared size, or past
    what is left of the cap, stops there (the header checks alone would let it pass)."""
    _dicom_zip(tmp_path / "scan.zip")
    with zipfile.ZipFile(tmp_path / "scan.zip") as zf:
        info = zf.infolist()[0]
        lying = copy.copy(info)
        lying.file_size = 100
        with pytest.raises(MemberOverflow) as past_header:
            stream_member(_Uncapped(zf), lying, tmp_path / "m.dcm", 10**9)  # type: ignore[arg-type]
        assert past_header.value.past_declared and past_header.value.declared == 100
        with pytest.raises(MemberOverflow) as past_budget:
            stream_member(zf, info, tmp_path / "m.dcm", 200)
        assert not past_budget.value.past_declared
        assert stream_member(zf, info, tmp_path / "m.dcm", info.file_size) == info.file_size


class _Uncapped:
    """A zip reader that, like a buggy or different unzipper, inflates a member whole whatever
    its header declares."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self._zf = zf

    def open(self, info: zipfile.ZipInfo) -> object:
        return self._zf.open(info.filename)


def test_lying_zip_headers_cannot_get_past(tmp_path: Path) -> None:
    """Members declared 1 KB that inflate to more: Python's zipfile stops at the declared size and
    the CRC check fails, so the archive is refused as a whole (in a folder: its own case fails)."""
    _lying_zip(tmp_path)
    with pytest.raises(InputError, match=r"^liar.zip: not a readable zip archive \(Bad CRC-32 for file"):
        find_cases(tmp_path / "liar.zip")


# -- DICOM case ids that never change when a series is added ------------------------------------


def test_adding_series_never_renames_existing_cases(tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_dicom_series(study / "patient1", seed=0, number=2, description="CT Body")
    write_dicom_series(study / "patient2", seed=1, number=None, description="")
    first = {c.case_id: c.dicom.series_uid for c in find_cases(study)}
    assert sorted(first) == ["patient1_2_CT_Body", "patient2"]
    # a second series in each folder, one more folder, a multi-frame-free series with no number
    write_dicom_series(study / "patient1", seed=2, number=3, description="CT Lung", prefix="b")
    write_dicom_series(study / "patient2", seed=3, number=5, description="", prefix="b")
    write_dicom_series(study / "patient0", seed=4, number=2, description="CT Body")
    second = {c.case_id: c.dicom.series_uid for c in find_cases(study)}
    assert {k: second[k] for k in first} == first  # the same ids name the same series
    assert sorted(second) == ["patient0_2_CT_Body", "patient1_2_CT_Body", "patient1_3_CT_Lung", "patient2",
                              "patient2_series5"]


def test_clashing_series_get_hashes_of_their_own_uid_never_positions(tmp_path: Path) -> None:
    folder = tmp_path / "study" / "p"
    uid_a = write_dicom_series(folder, seed=0, number=2, description="CT", prefix="a")
    uid_b = write_dicom_series(folder, seed=1, number=2, description="CT", prefix="b")
    first = {c.dicom.series_uid: c.case_id for c in find_cases(tmp_path / "study")}
    assert first[uid_a] == f"p_2_CT_{dicom._series_hash(_series(uid_a))}"
    assert first[uid_b] != first[uid_a] and first[uid_b].startswith("p_2_CT_")
    uid_c = write_dicom_series(folder, seed=2, number=2, description="CT", prefix="0")  # sorts first
    second = {c.dicom.series_uid: c.case_id for c in find_cases(tmp_path / "study")}
    assert second[uid_a] == first[uid_a] and second[uid_b] == first[uid_b] and len(set(second.values())) == 3
    assert uid_c in second


def _series(uid: str) -> dicom.DicomSeries:
    return dicom.DicomSeries(root=Path("."), files=("x",), series_uid=uid, series_number=2, description="CT",
                             modality="CT", folder="p", multiframe=False)


def _predict(inputs: Path, out: Path, *, resume: bool = False) -> dict[str, str]:
    result = api.predict(task=DEMO_TASK, tasks_file=demo_tasks_file(), models_dir=demo_models_dir(), input=inputs,
                         output=out, device="cpu", resume=resume)
    return {r.case_id: r.status for r in result.results}


@pytest.mark.e2e
def test_continue_after_adding_a_series_skips_exactly_the_done_cases(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_dicom_series(inputs / "exam", seed=0, number=2, description="CT Body")
    assert _predict(inputs, out) == {"exam_2_CT_Body": "done"}
    write_dicom_series(inputs / "exam", seed=1, number=4, description="CT Body", prefix="late")
    assert _predict(inputs, out, resume=True) == {"exam_2_CT_Body": "skipped", "exam_4_CT_Body": "done"}
    sidecar = json.loads((out / "exam_2_CT_Body.json").read_text())
    assert sidecar["dicom"]["series_number"] == 2


# -- the whole batch through the CLI ---------------------------------------------------------------


@pytest.mark.e2e
def test_all_hostile_entries_in_one_batch_beside_a_good_case(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_good_case(inputs)
    for hostile in HOSTILE:
        hostile.write(inputs)
    runner = CliRunner()
    common = ["--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()), "--models-dir", str(demo_models_dir())]
    result = runner.invoke(app, ["predict", *common, "-i", str(inputs), "-o", str(out), "--device", "cpu", "-q"],
                           env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for case_id in [GOOD, *HOSTILE_DONE.values()]:
        assert (out / f"{case_id}.nii.gz").is_file() and (out / f"{case_id}.json").is_file(), case_id
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.parent.glob("*.dcm"))  # nothing climbed out
    failing = {h.case_id: h.message for h in HOSTILE if h.case_id is not None}
    records = {}
    for path in out.glob("*.error.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[record["case_id"]] = record["error"]
    assert set(records) == set(failing), sorted(records)
    for case_id, message in failing.items():
        assert message in records[case_id], (case_id, records[case_id])
    # the newline in a name survives whole in its record; on the console it stays one line, escaped
    # (the summary names the case by its id, the log line by its file)
    assert records["bad\nname"].startswith("bad\nname.nii.gz: ")
    assert "failed bad\\nname: " in result.output and "bad\\nname.nii.gz: " in result.output
    status = runner.invoke(app, ["status", "-i", str(inputs), "-o", str(out)], env={"COLUMNS": "250"},
                           terminal_width=250)
    assert status.exit_code in (0, 1), status.output
    assert "Traceback" not in status.output and "ct_\\xff\\xfe" in status.output


def test_training_data_refuses_a_fifo_named_like_an_image_without_opening_it(tmp_path: Path) -> None:
    from autoorgan.training.dataset import find_training_cases

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
        os.mkfifo(tmp_path / sub / "c1.nii.gz")
    with pytest.raises(InputError, match=r"^training data: c1.nii.gz is a FIFO \(named pipe\), not an image file$"):
        find_training_cases(tmp_path)


@pytest.mark.e2e
def test_max_archive_size_option_fails_only_the_zip_and_is_checked(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_good_case(inputs)
    _dicom_zip(inputs / "scan.zip")
    common = ["predict", "--task", DEMO_TASK, "--tasks-file", str(demo_tasks_file()), "--models-dir",
              str(demo_models_dir()), "-i", str(inputs), "-o", str(out), "--device", "cpu", "-q"]
    runner = CliRunner()
    result = runner.invoke(app, [*common, "--max-archive-size", "0.00001"], env={"COLUMNS": "250"},
                           terminal_width=250)
    assert result.exit_code == 1, result.output
    record = json.loads((out / "scan_2_CT_phantom.error.json").read_text())
    assert "members in scan.zip inflate to" in record["error"] and "over the 10000 bytes limit" in record["error"]
    assert (out / f"{GOOD}.nii.gz").is_file()
    raised = runner.invoke(app, [*common, "--continue", "--max-archive-size", "1"])
    assert raised.exit_code == 0, raised.output
    assert (out / "scan_2_CT_phantom.nii.gz").is_file() and not (out / "scan_2_CT_phantom.error.json").exists()
    refused = runner.invoke(app, [*common, "--max-archive-size", "0"])
    assert refused.exit_code == 2 and "--max-archive-size must be a positive number of GB, got 0" in refused.output
