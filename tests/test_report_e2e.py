"""``autoorgan predict --statistics --preview`` end to end with the real fixture model."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient
from autoorgan.models.store import find_model
from autoorgan.registry.tasks import load_registry
from autoorgan.report.preview import PREVIEW_WIDTH
from fixture_model import FIXTURE_STRUCTURES, FIXTURE_TASK, pelvis_phantom
from html_check import load_page

pytestmark = pytest.mark.e2e
runner = CliRunner()
HIP = load_registry().get_task(FIXTURE_TASK)


def _write_cases(folder: Path, names: list[str], codes: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        ct = pelvis_phantom(500 + i).ct
        sitk.WriteImage(reorient(ct, codes[i]) if codes else ct, str(folder / f"{name}.nii.gz"))


def _predict(models: Path, inp: Path, out: Path, *extra: str) -> object:
    return runner.invoke(app, ["predict", "--task", FIXTURE_TASK, "-i", str(inp), "-o", str(out), "--models-dir",
                               str(models), "--device", "cpu", "--quiet", *extra])


def test_predict_with_statistics_and_preview(trained_models: Path, tmp_path: Path) -> None:
    _write_cases(tmp_path / "in", ["p1", "p 2"], codes=["RAS", "PIR"])
    out = tmp_path / "out"
    result = _predict(trained_models, tmp_path / "in", out, "--statistics", "--preview")
    assert result.exit_code == 0, result.output

    # per case: statistics agree with the label map and the CT it was made from
    for case in ("p1", "p 2"):
        seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        ct = sitk.ReadImage(str(tmp_path / "in" / f"{case}.nii.gz"))
        labels, hu = sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(ct)
        document = json.loads((out / f"{case}.stats.json").read_text())
        assert document["case"] == case and document["task"] == "hip"
        assert list(document["structures"]) == FIXTURE_STRUCTURES
        voxel_ml = float(np.prod(ct.GetSpacing())) / 1000
        for value, name in HIP.labels.items():
            entry = document["structures"][name]
            mask = labels == value
            assert entry["voxels"] == int(mask.sum()) > 0
            # written to 3 decimals (ml, mm) and 2 (HU)
            assert entry["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, abs=0.0005)
            assert entry["intensity_mean"] == pytest.approx(float(hu[mask].mean()), abs=0.005)
            assert entry["intensity_median"] == pytest.approx(float(np.median(hu[mask])), abs=0.005)
            centre_index = np.argwhere(mask)[:, ::-1].mean(axis=0)  # numpy is z, y, x
            assert entry["centroid_mm"] == pytest.approx(seg.TransformContinuousIndexToPhysicalPoint(
                centre_index.tolist()), abs=0.0006)
        # hip_left is on the patient's left: larger LPS x than hip_right, whatever the storage
        s = document["structures"]
        assert s["hip_left"]["centroid_mm"][0] > s["hip_right"]["centroid_mm"][0]
        sidecar = json.loads((out / f"{case}.json").read_text())
        assert sidecar["reports"] == {"statistics": f"{case}.stats.json", "preview": f"{case}.png"}
        picture = imread(str(out / f"{case}.png"))
        assert picture.shape[1] == PREVIEW_WIDTH and picture[..., :3].std() > 0.05

    # the same phantom stored RAS or PIR gives the same statistics table rows (phantoms 500, 501 differ)
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert [(r["case"], r["structure"]) for r in rows] == [(c, n) for c in ("p 2", "p1") for n in FIXTURE_STRUCTURES]
    assert all(int(r["voxels"]) > 0 and float(r["volume_ml"]) > 0 for r in rows)

    # run record of this shard
    records = list(out.glob("autoorgan_run-part0of1-*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert {c["case"]: c["status"] for c in record["cases"]} == {"p1": "done", "p 2": "done"}
    assert all(c["seconds"] > 0 and c["error"] is None for c in record["cases"])
    checkpoint = find_model(HIP, trained_models).checkpoint
    assert record["model"]["checkpoints"] == [{"file": str(checkpoint),
                                              "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}]
    assert record["options"]["statistics"] is True and record["options"]["preview"] is True
    assert record["device"]["device"] == "cpu" and record["versions"]["nnunetv2"].startswith("2.")

    # the overview page opens from disk with every picture
    report = load_page(out / "index.html")
    assert report.rows == 2 and report.broken_images == [] and len(report.images) == 2
    assert report.console == []
    page = (out / "index.html").read_text()
    assert "hip_left" in page and str(tmp_path) not in page
    hrefs = set(re.findall(r'href="([^"]+)"', page))
    # each case links its viewer page, which `autoorgan view` serves (tests/test_viewer.py)
    assert {h for h in hrefs if h.startswith(".view/")} == {".view/p1", ".view/p%202"}
    links = {unquote(h) for h in hrefs if not h.startswith(".view/")}
    assert {"p1.nii.gz", "p 2.nii.gz", "p1.stats.json", "p1.png", "statistics.csv"} <= links
    assert all((out / link).is_file() for link in links)  # every link to a file is relative and resolves


def test_continue_keeps_earlier_cases_in_the_overview(trained_models: Path, tmp_path: Path) -> None:
    _write_cases(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    first = api.predict(task=FIXTURE_TASK, input=tmp_path / "in", output=out, models_dir=trained_models,
                        device="cpu")  # no --statistics/--preview the first time
    assert first.count("done") == 2 and not list(out.glob("*.png")) and not (out / "statistics.csv").exists()
    assert (out / "index.html").is_file() and len(list(out.glob("autoorgan_run*.json"))) == 1
    # without --statistics the overview still lists the volumes (voxel counts × voxel volume)
    for case in ("a", "b"):
        labels = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel())
        voxel_ml = float(np.prod(labels.GetSpacing())) / 1000
        recorded = json.loads((out / f"{case}.json").read_text())["volumes_ml"]
        assert recorded == {name: pytest.approx(counts[v] * voxel_ml, abs=0.0005) for v, name in HIP.labels.items()}
    first_page = (out / "index.html").read_text()
    ml = json.loads((out / "a.json").read_text())["volumes_ml"]["hip_left"]
    assert f"hip_left: {ml:.1f}" in first_page
    (out / "b.json").unlink()  # b must be redone
    again = api.predict(task=FIXTURE_TASK, input=tmp_path / "in", output=out, models_dir=trained_models,
                        device="cpu", resume=True, statistics=True, preview=True)
    assert {r.case_id: r.status for r in again.results} == {"a": "skipped", "b": "done"}
    # the skipped case got its statistics and preview from its existing label map
    assert (out / "a.stats.json").is_file() and (out / "a.png").is_file()
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert sorted({r["case"] for r in rows}) == ["a", "b"]
    assert len(list(out.glob("autoorgan_run*.json"))) == 2
    report = load_page(out / "index.html")
    assert report.rows == 2 and len(report.images) == 2 and report.broken_images == []
    page = (out / "index.html").read_text()
    assert "done (earlier run)" not in page  # a was done in the first run, with its time


def test_shards_write_their_own_records_and_the_last_overview_covers_all(trained_models: Path,
                                                                         tmp_path: Path) -> None:
    _write_cases(tmp_path / "in", ["s1", "s2", "s3"])
    out = tmp_path / "out"
    for part in (0, 1):
        result = _predict(trained_models, tmp_path / "in", out, "--statistics", "--part-id", str(part),
                          "--num-parts", "2")
        assert result.exit_code == 0, result.output
    records = sorted(p.name for p in out.glob("autoorgan_run*.json"))
    assert len(records) == 2
    assert records[0].startswith("autoorgan_run-part0of2-") and records[1].startswith("autoorgan_run-part1of2-")
    cases = [c["case"] for r in records for c in json.loads((out / r).read_text())["cases"]]
    assert sorted(cases) == ["s1", "s2", "s3"]
    assert sorted({r["case"] for r in csv.DictReader((out / "statistics.csv").open())}) == ["s1", "s2", "s3"]
    assert load_page(out / "index.html").rows == 3
