"""``autoorgan calibrate``: does it find the orientation a model was trained in, how sure is it, how
long does it take, and what it changes for the labels.

    python benchmarks/calibration_benchmark.py fixtures            # the stored-orientation fixture models
    python benchmarks/calibration_benchmark.py timing [--candidates N]   # nnU-Net's default architecture

``fixtures``: each of ``tests/data/models/hip_stored_*.zip`` (a hip model trained on pelvis
phantoms all stored LPS, or PIL, fed as stored; nothing records it) is installed into a fresh
folder. The pelvis phantom of seed 4242 (unseen in training) is stored RAS, LPS, LAS and oblique
(11°) and predicted with ``--no-postprocess`` before calibration (RAS assumed) and after; Dice
against the phantom's truth per structure. Calibration uses the same phantom stored SAR (neither
RAS nor the model's order). Reports the winner, its margin and runner-up, the number of
candidates and the time.

``timing``: the time of one calibration on the real ``example_ct`` (TotalSegmentator's test CT,
122×101×112 at 3 mm) with nnU-Net's default 3d_fullres architecture at 1.5 mm (RANDOM weights,
``bench_models.py``: the scores mean nothing, the time is a real model's). ``--candidates N``
tries only the first N orientations (the time per candidate is reported as well).

Results go to ``benchmarks/results/<date>_calibration.json`` with the CPU model, flags and load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from typer.testing import CliRunner

from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient, rotate
from autoorgan.io.orientation import all_axcodes
from autoorgan.runs.calibrate import CalibrationRefused, calibrate
from fixture_model import FIXTURE_STRUCTURES, STORED_ORIENTATIONS, install_fixture_archives, pelvis_phantom

NAMES = dict(enumerate(FIXTURE_STRUCTURES, start=1))
COPIES = ("RAS", "LPS", "LAS", "oblique")
CALIBRATION_CODES = "SAR"
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict[str, Any]:
    """The CPU model, the flags that matter for the network, the cores and the load."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(flags_line.split(":", 1)[-1].split())
    return {"cpu": model, "flags": sorted(f for f in FLAGS if f in present), "cores": os.cpu_count(),
            "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _copy(image: sitk.Image, codes: str) -> sitk.Image:
    return rotate(image, 11.0, (1.0, 1.0, 0.0)) if codes == "oblique" else reorient(image, codes)


def _dice(predicted: np.ndarray, truth: np.ndarray) -> list[float]:
    return [round(float(2 * np.sum((predicted == v) & (truth == v))
                        / max(1, np.sum(predicted == v) + np.sum(truth == v))), 3) for v in NAMES]


def _predict_dice(models: Path, copies: Path, truth: dict[str, np.ndarray], out: Path) -> dict[str, list[float]]:
    result = CliRunner().invoke(app, ["predict", "--task", "hip", "-i", str(copies), "-o", str(out), "--device",
                                      "cpu", "--models-dir", str(models), "--no-postprocess", "--quiet"])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return {codes: _dice(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"pelvis_{codes}.nii.gz"))), truth[codes])
            for codes in COPIES}


def fixtures(work: Path) -> list[dict[str, Any]]:
    phantom = pelvis_phantom(4242)
    copies = work / "copies"
    copies.mkdir(parents=True)
    truth = {}
    for codes in COPIES:
        sitk.WriteImage(_copy(phantom.ct, codes), str(copies / f"pelvis_{codes}.nii.gz"))
        truth[codes] = sitk.GetArrayFromImage(_copy(phantom.labels_for(NAMES), codes))
    ct = work / "calibration" / "pelvis.nii.gz"
    ct.parent.mkdir()
    sitk.WriteImage(reorient(phantom.ct, CALIBRATION_CODES), str(ct))
    rows = []
    for archive, trained_in in STORED_ORIENTATIONS.items():
        models = install_fixture_archives([archive], work / archive / "models")
        before = _predict_dice(models, copies, truth, work / archive / "before")
        started = time.perf_counter()
        try:
            result, refused = calibrate("hip", [ct], models_dir=models, device="cpu"), False
        except CalibrationRefused as exc:
            result, refused = exc.calibration, True
        seconds = time.perf_counter() - started
        after = _predict_dice(models, copies, truth, work / archive / "after")
        row = {"model": archive, "trained_in": trained_in, "calibration_ct": f"phantom 4242 stored {CALIBRATION_CODES}",
               "found": result.winner.codes, "refused": refused, "margin": round(result.margin, 3),
               "runner_up": result.runner_up.codes if result.runner_up else None,
               "candidates": len(result.candidates), "seconds": round(seconds, 1),
               "top": [c.record() for c in result.candidates[:4]],
               "dice_before": before, "dice_after": after, "structures": list(NAMES.values())}
        print(json.dumps({k: row[k] for k in ("model", "trained_in", "found", "refused", "margin", "runner_up",
                                              "seconds")}),
              flush=True)
        print("  before", before, "\n  after ", after, flush=True)
        rows.append(row)
    return rows


def timing(work: Path, candidates: int | None) -> dict[str, Any]:
    from bench_models import make_bench_model

    bench = make_bench_model(work / "bench")
    ct = Path(os.environ.get("AUTOORGAN_TEST_DATA", ROOT.parent / "shared" / "data" / "real")) / "totalsegmentator" / "example_ct.nii.gz"
    codes = all_axcodes()[:candidates] if candidates else None
    started = time.perf_counter()
    try:
        result = calibrate(bench.task, [ct], models_dir=bench.results, tasks_file=bench.tasks_file, device="cpu",
                           candidates=codes, write=False)
    except CalibrationRefused as exc:  # random weights: a refusal is expected, the time is what counts
        result = exc.calibration
    seconds = time.perf_counter() - started
    row = {"model": "nnU-Net default 3d_fullres (1.5 mm, random weights)", "ct": "example_ct (122x101x112, 3 mm)",
           "patch_size": list(json.loads((bench.model_folder / "plans.json").read_text())["configurations"]
                              ["3d_fullres"]["patch_size"]),
           "candidates": len(result.candidates), "seconds": round(seconds, 1),
           "seconds_per_candidate": round(seconds / len(result.candidates), 2)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["fixtures", "timing"])
    parser.add_argument("--candidates", type=int, default=None, help="timing: try only the first N orientations")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="calibration_") as scratch:
        work = args.work or Path(scratch)
        results = {"machine": machine()}
        if args.what == "fixtures":
            results["fixtures"] = fixtures(work)
        else:
            results["timing"] = timing(work, args.candidates)
    target = ROOT / "benchmarks" / "results" / f"{date.today().isoformat()}_calibration.json"
    existing = json.loads(target.read_text()) if target.is_file() else {}
    existing[args.what] = results
    target.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
