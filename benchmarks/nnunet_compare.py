"""``autoorgan predict`` against ``nnUNetv2_predict``, side by side: wall time, peak RSS, Dice.

    python benchmarks/nnunet_compare.py --work /tmp/compare [--model default|tiny] [--repeats 3]
        [--inputs real,large] [--no-tta] [--extra fast] [--precision auto|fp32|bf16]

Both commands use the same model folder (``nnUNet_results`` / ``--models-dir``), the same input
file, fold 0, 3d_fullres, tile step 0.5, device CPU, and both mirror (TTA) unless ``--no-tta``
(``--disable_tta`` for nnU-Net, ``--no-tta`` for autoorgan). ``nnUNetv2_predict`` runs with
its default worker pools (``-npp 3 -nps 3``). Runs alternate (measure.py), figures are medians;
``--step`` sets the tile step of both
(a step of 1.0 bounds the network's share on slow machines; the export does not depend on it).
Dice per label compares each autoorgan output with nnU-Net's output of the same input. The
models carry RANDOM weights (bench_models.py): fine for timing and for agreement between two
pipelines, meaningless as segmentations.

``--precision`` is autoorgan's (default ``auto``: bfloat16 where the CPU has it natively,
docs/performance.md); nnU-Net predicts in float32 on the CPU. The report names the CPU, its
flags and the precision autoorgan's sidecar says ran.

Inputs: ``real`` — the real TotalSegmentator example CT (``$AUTOORGAN_TEST_DATA``, default
``../shared/data/real``); ``large`` — a synthetic 512×512×400 int16 CT at 0.8×0.8×1.5 mm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import BenchModel, make_bench_model, synthetic_ct
from measure import compare
from precision_benchmark import describe_machine

from autoorgan.report.metrics import dice_per_label

ROOT = Path(__file__).resolve().parents[1]


def real_ct() -> Path:
    data = Path(os.environ.get("AUTOORGAN_TEST_DATA", ROOT.parent / "shared" / "data" / "real"))
    return data / "totalsegmentator" / "example_ct.nii.gz"


def _input_folder(work: Path, name: str, ct: Path) -> Path:
    """A folder holding only ``ct`` under nnU-Net's name ``<case>_0000.nii.gz`` (read by both tools)."""
    folder = work / f"in_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / f"{name}_0000.nii.gz"
    if not link.exists():
        link.symlink_to(ct.resolve())
    return folder


def commands(bench: BenchModel, folder: Path, out: Path, *, tta: bool, extra: list[str],
             step: float = 0.5, precision: str | None = None) -> dict[str, list[str]]:
    """The compared command lines: nnU-Net's, autoorgan's default, and any ``extra`` autoorgan presets."""
    nnunet = ["nnUNetv2_predict", "-i", str(folder), "-o", str(out / "nnunet"), "-d", str(bench.dataset_id),
              "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "-step_size", str(step),
              "-device", "cpu"] + ([] if tta else ["--disable_tta"])
    base = [sys.executable, "-m", "autoorgan", "predict", "--task", bench.task, "--tasks-file", str(bench.tasks_file),
            "--models-dir", str(bench.results), "-i", str(folder), "--device", "cpu", "--quiet",
            "--no-postprocess", "--step-size", str(step)] + ([] if tta else ["--no-tta"])
    base += ["--precision", precision] if precision else []
    runs = {"nnUNetv2_predict": nnunet, "autoorgan": [*base, "-o", str(out / "autoorgan")]}
    for preset in extra:
        runs[f"autoorgan --{preset}"] = [*base, "-o", str(out / preset), f"--{preset}"]
    return runs


def _emptier(folder: Path):
    return lambda: shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", choices=("default", "tiny"), default="default")
    parser.add_argument("--inputs", default="real,large")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tta", action="store_true", help="--disable_tta / --no-tta on both sides")
    parser.add_argument("--extra", default="", help="autoorgan presets to add, e.g. 'fast'")
    parser.add_argument("--step", type=float, default=0.5, help="tile step of both (0.5: nnU-Net's default)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="autoorgan's --precision")
    args = parser.parse_args()
    bench = make_bench_model(args.work / "models", tiny=args.model == "tiny")
    inputs = {"real": real_ct(), "large": synthetic_ct(args.work / "large_ct.nii.gz")}
    extra = [e for e in args.extra.split(",") if e]
    env = {"nnUNet_results": str(bench.results), "nnUNet_raw": str(args.work / "raw_unused"),
           "nnUNet_preprocessed": str(args.work / "pre_unused")}
    report = {"model": args.model, "random_weights": True, "tta": not args.no_tta, "repeats": args.repeats,
              "step": args.step,
              "patch_size": bench.plans["patch_size"], "cpus": os.cpu_count(), "precision": args.precision or "auto",
              "machine": describe_machine(), "inputs": {}}
    for name in [n for n in args.inputs.split(",") if n]:
        folder = _input_folder(args.work, name, inputs[name])
        out = args.work / f"out_{name}"
        runs = commands(bench, folder, out, tta=not args.no_tta, extra=extra, step=args.step,
                        precision=args.precision)
        load_before = os.getloadavg()
        result = compare(runs, repeats=args.repeats, env=env,
                         before_each={key: _emptier(Path(cmd[cmd.index("-o") + 1])) for key, cmd in runs.items()})
        load_after = os.getloadavg()
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "nnunet" / f"{name}.nii.gz")))
        dice = {}
        for key, cmd in runs.items():
            if key == "nnUNetv2_predict":
                continue
            ours = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(cmd[cmd.index("-o") + 1]) / f"{name}_0000.nii.gz")))
            scores = dice_per_label(reference, ours)
            dice[key] = {"min": round(min(scores.values()), 5), "per_label": {k: round(v, 5) for k, v in scores.items()}}
        sidecar = json.loads((out / "autoorgan" / f"{name}_0000.json").read_text(encoding="utf-8"))
        table = result.table("nnUNetv2_predict")
        print(f"\n## {name} ({inputs[name].name}; model {args.model}, random weights, "
              f"{'TTA' if not args.no_tta else 'no TTA'}, step {args.step}; load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
        print(table)
        print("Dice vs nnUNetv2_predict (min over labels):", {k: v["min"] for k, v in dice.items()})
        print("autoorgan time split (last run, s):", sidecar.get("timing"))
        report["inputs"][name] = {
            "table": table, "dice": dice, "timing_split": sidecar.get("timing"), "load_average": [load_before, load_after],
            "precision_ran": sidecar.get("precision"),
            "runs": {k: [{"wall_s": round(m.wall_s, 2), "peak_gib": round(m.peak_gib, 3)} for m in v]
                     for k, v in result.runs.items()}}
    (args.work / f"compare_{args.model}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
