"""Atomic writes: a target is either absent or complete; interrupted writes leave only hidden temporaries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.batch.outputs import LABEL_SHA256_KEY, LABEL_SIZE_KEY, CaseOutputs
from autoorgan.errors import OutputError
from autoorgan.io.writing import (
    ABANDONED_AFTER_SECONDS,
    atomic_path,
    file_digest,
    leftover_temporaries,
    temporary_sibling,
    write_image,
    write_json,
)


def test_temporary_keeps_the_image_ending_and_is_hidden(tmp_path: Path) -> None:
    tmp = temporary_sibling(tmp_path / "case.v2.nii.gz")
    assert tmp.name.startswith(".case.v2.tmp-") and tmp.name.endswith(".nii.gz")
    assert tmp.parent == tmp_path


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_image_and_json(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    write_image(img, tmp_path / "x.nii.gz")
    write_json({"a": 1}, tmp_path / "x.json")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "x.nii.gz"))).sum() == np.arange(24).sum()
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.nii.gz"]


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.json"
    with pytest.raises(OutputError, match="cannot write"):
        write_json({}, missing)


def test_leftovers_are_found_per_case(tmp_path: Path) -> None:
    for name in (".a.tmp-123.nii.gz", ".a.tmp-9.json", ".ab.tmp-1.nii.gz", ".a[1].tmp-2.json", "a.nii.gz",
                 ".a.stats.tmp-5.json", ".a.b.tmp-6.nii.gz"):
        (tmp_path / name).write_text("x")
        old = time.time() - ABANDONED_AFTER_SECONDS - 60  # no owner in the name: removed only when old
        os.utime(tmp_path / name, (old, old))
    assert [p.name for p in leftover_temporaries(tmp_path, "a")] == [".a.tmp-123.nii.gz", ".a.tmp-9.json"]
    assert [p.name for p in leftover_temporaries(tmp_path, "a[1]")] == [".a[1].tmp-2.json"]
    assert CaseOutputs(tmp_path, "a").remove_leftovers() == 3  # its label map, sidecar and statistics
    assert (tmp_path / ".a.b.tmp-6.nii.gz").exists()  # case "a.b" is another case
    assert (tmp_path / ".ab.tmp-1.nii.gz").exists() and (tmp_path / "a.nii.gz").exists()


def test_completeness_needs_label_map_and_matching_sidecar(tmp_path: Path) -> None:
    out = CaseOutputs(tmp_path, "c")
    assert not out.is_complete("ribs", 998)
    out.label_map.write_bytes(b"x")
    assert not out.is_complete("ribs", 998)  # no sidecar yet: the run died between the two
    out.sidecar.write_text("{trunc")
    assert not out.is_complete("ribs", 998)
    out.sidecar.write_text(json.dumps({"task": "ribs", "dataset_id": 998}))
    assert not out.is_complete("ribs", 998)  # no checksum: cannot tell it is this label map's sidecar
    digest = file_digest(out.label_map)
    out.sidecar.write_text(json.dumps({"task": "ribs", "dataset_id": 998, "label_map": "c.nii.gz",
                                       LABEL_SHA256_KEY: digest.sha256, LABEL_SIZE_KEY: digest.size}))
    assert out.is_complete("ribs", 998)
    assert not out.is_complete("ribs", 888)
    assert not out.is_complete("organs", 998)
