"""The overview page: content, escaping, relative links, and a headless Chromium load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from autoorgan.io.image import Geometry
from autoorgan.report.html import CaseRow, main_volumes, render_index, write_index
from autoorgan.report.preview import render_preview
from html_check import load_page


def _rows(folder: Path) -> list[CaseRow]:
    size = (20, 20, 20)
    labels = np.zeros(size, dtype=np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    ct = np.where(labels > 0, 200, -800).astype(np.int16)
    grid = Geometry(size, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    render_preview(ct, labels, grid, {1: "liver"}, folder / "case one.png")
    shutil.copy(folder / "case one.png", folder / "b&<x>#1.png")
    return [
        CaseRow("case one", "done", 12.34, preview="case one.png", statistics="case one.stats.json",
                volumes=[("liver", 1.0)]),
        CaseRow("b&<x>#1", "skipped", None, preview="b&<x>#1.png"),
        CaseRow("broken", "failed", 0.5, error="broken.nii.gz: file is truncated <here>"),
    ]


def test_page_content_is_escaped_and_links_are_relative(tmp_path: Path) -> None:
    text = render_index(_rows(tmp_path), title="autoorgan · liver", extra_links=[("statistics.csv", "statistics.csv")])
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    assert "b&amp;&lt;x&gt;#1" in text and "<x>" not in text
    assert 'src="b%26%3Cx%3E%231.png"' in text and 'src="case%20one.png"' in text
    assert "file is truncated &lt;here&gt;" in text
    assert "3 case(s): 2 complete, 1 failed." in text
    assert "done (earlier run)" in text and "12.3" in text and "liver: 1.0" in text
    assert str(tmp_path) not in text and "http" not in text


def test_main_volumes_are_the_largest_present() -> None:
    structures = [{"structure": n, "volume_ml": v} for n, v in
                  [("a", 1.0), ("b", 0.0), ("c", 30.0), ("d", 2.0), ("e", 5.0), ("f", 4.0), ("g", 3.0), ("h", 0.5)]]
    assert main_volumes(structures) == [("c", 30.0), ("e", 5.0), ("f", 4.0), ("g", 3.0), ("d", 2.0), ("a", 1.0)]
    assert main_volumes(structures, limit=2) == [("c", 30.0), ("e", 5.0)]


def test_page_loads_in_headless_chromium_with_every_image(tmp_path: Path) -> None:
    page = write_index(tmp_path / "index.html", _rows(tmp_path), title="overview")
    assert not list(tmp_path.glob(".*"))
    report = load_page(page)
    assert report.title == "overview" and report.rows == 3
    assert len(report.images) == 2 and report.broken_images == []
    assert all(i["width"] == 1600 for i in report.images)
    assert report.console == []
    # the check does notice a missing picture
    (tmp_path / "case one.png").unlink()
    assert [unquote(str(s)) for s in load_page(page).broken_images] == ["case one.png"]


def test_rows_link_the_other_outputs_and_the_viewer() -> None:
    row = CaseRow("c&1", "done", 1.0, label_map="c&1.nii.gz", viewer=True,
                  files={"DICOM SEG": "c&1.seg.dcm", "RTSTRUCT": "c&1.rtstruct.dcm", "Slicer .seg.nrrd": "c&1.seg.nrrd"})
    text = render_index([row, CaseRow("gone", "failed", error="bad")], title="t")
    assert 'href="c%261.seg.dcm">DICOM SEG</a>' in text and 'href="c%261.rtstruct.dcm">RTSTRUCT</a>' in text
    assert 'href="c%261.seg.nrrd">Slicer .seg.nrrd</a>' in text
    assert text.count('class="viewer"') == 1 and 'href=".view/c%261"' in text
    assert "autoorgan view" in text  # the page says how the viewer links open
    assert "autoorgan view" not in render_index([CaseRow("gone", "failed")], title="t")


def test_index_page_links_what_the_sidecars_name_and_lists_counted_volumes(tmp_path: Path) -> None:
    from autoorgan.batch.job import BatchResult, CaseResult
    from autoorgan.registry.tasks import load_registry
    from autoorgan.steps.report import IndexPage, structure_volumes

    labels = np.zeros((4, 5, 6), np.uint8)
    labels[:2] = 1
    labels[2, :3] = 3
    volumes = structure_volumes(labels, 2.5, {1: "hip_left", 2: "hip_right", 3: "sacrum"})
    assert volumes == {"hip_left": 2 * 5 * 6 * 2.5 / 1000, "sacrum": 3 * 6 * 2.5 / 1000}
    for case in ("a", "b"):
        (tmp_path / f"{case}.nii.gz").write_bytes(b"map")
        (tmp_path / f"{case}.seg.dcm").write_bytes(b"seg")
    (tmp_path / "a.json").write_text(json.dumps({
        "label_map": "a.nii.gz", "volumes_ml": {"hip_left": 301.26, "sacrum": 12.0, "junk": "x"},
        "dicom_seg": {"file": "a.seg.dcm"}, "rtstruct": {"file": "a.rtstruct.dcm"},  # not written: no link
        "seg_nrrd": "../outside.seg.nrrd"}))  # not a plain name: no link
    (tmp_path / "b.json").write_text(json.dumps({"label_map": "b.nii.gz", "dicom_seg": None,
                                                 "rtstruct": {"file": "b.seg.dcm"}}))
    results = BatchResult([CaseResult("a", "done", 1.0), CaseResult("b", "done", 1.0)])
    IndexPage(load_registry().get_task("hip"))(results, tmp_path)
    page = (tmp_path / "index.html").read_text()
    rows = page.split("<tr>")[2:]
    assert "hip_left: 301.3" in rows[0] and "sacrum: 12.0" in rows[0] and "junk" not in rows[0]
    assert 'href="a.seg.dcm">DICOM SEG</a>' in rows[0] and "RTSTRUCT" not in rows[0] and "outside" not in rows[0]
    assert 'href="b.seg.dcm">RTSTRUCT</a>' in rows[1] and "DICOM SEG" not in rows[1]
    assert 'href=".view/a"' in rows[0] and 'href=".view/b"' in rows[1]


def test_repair_flags_of_one_task_and_of_several_reach_the_index_page() -> None:
    from autoorgan.report.html import repair_flags

    one = {"postprocess": {"steps": [], "changed_voxels": 0, "flags": ["ribs: left and right ribs differ"]}}
    several = {"postprocess": {"ribs": {"steps": [], "flags": ["ribs: a"]}, "vertebrae": {"steps": [], "flags": []},
                               "skeleton": {"steps": [], "flags": ["vertebrae: b"]}}}
    assert repair_flags(one) == ["ribs: left and right ribs differ"]
    assert repair_flags(several) == ["ribs: a", "skeleton: vertebrae: b"]  # task, then step, named once
    assert repair_flags({}) == [] and repair_flags({"postprocess": {"steps": [], "flags": []}}) == []
    text = render_index([CaseRow("c", "done", 1.0, repair_flags=repair_flags(one)), CaseRow("d", "done", 1.0)], title="t")
    assert text.count("repair needs a look: ribs: left and right ribs differ") == 1
