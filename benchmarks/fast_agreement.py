"""How far each faster approximation moves the labels: Dice of ``--step-size 0.7``, ``--crop-body``,
``--no-tta`` and the ``--fast`` preset against the default prediction.

    python benchmarks/fast_agreement.py [--work /tmp/fast_agreement] [--cases 8] [--json out.json]
    python benchmarks/fast_agreement.py --model padded    # trains its own model first (~2.5 min)

Model: ``--model demo`` (default) is the demo model shipped with autoorgan (a tiny network
*trained* on tight synthetic pelvis crops). ``--model padded`` first trains a model of the same
task with the same recipe (:mod:`autoorgan.demo`: architecture, schedule, seeds, orientations)
on the training phantoms padded with air like the inputs, so that the model knows the kind of
image it is asked about. Inputs: ``--cases`` fresh demo phantoms (seeds from 200, none used in
training), each padded with 40 mm of air on the left, right, front and back, as a CT's field of
view holds air around the body (without it the body crop has nothing to remove). Every variant predicts the same files; Dice per structure and case is measured against
the default run (mirroring as the model allows, step 0.5, no crop), and against the phantom's
truth for reference. The demo model was trained without mirroring, so ``--no-tta`` cannot change
its labels; the script says so rather than quoting it as a measurement of mirroring.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoorgan import api
from autoorgan.demo import (
    DEMO_TASK,
    demo_models_dir,
    demo_phantom,
    demo_tasks_file,
    train_with_recipe,
)
from autoorgan.registry.tasks import load_registry
from autoorgan.report.metrics import dice_per_label

#: The variants, as ``api.predict`` keywords on top of the default.
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "--step-size 0.7": {"step_size": 0.7},
    "--crop-body": {"crop_body": True},
    "--no-tta": {"tta": False},
    "--fast": {"fast": True},
}
AIR_MM = 40.0
FIRST_SEED = 200


def padded_case(seed: int) -> tuple[sitk.Image, sitk.Image]:
    """The demo phantom of ``seed`` and its truth, padded with air (-1000 HU) in x and y."""
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    phantom = demo_phantom(seed)
    pad = [round(AIR_MM / s) for s in phantom.ct.GetSpacing()[:2]] + [0]
    ct = sitk.ConstantPad(phantom.ct, pad, pad, -1000)
    truth = sitk.ConstantPad(phantom.labels_for(task.labels), pad, pad, 0)
    return ct, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fast_agreement"))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--model", choices=("demo", "padded"), default="demo",
                        help="the shipped demo model, or one trained here on air-padded phantoms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    shutil.rmtree(args.work, ignore_errors=True)
    models_dir = (demo_models_dir() if args.model == "demo"
                  else train_with_recipe(args.work / "training", padded_case).parents[1])
    inputs, truths = args.work / "in", {}
    inputs.mkdir(parents=True)
    for seed in range(FIRST_SEED, FIRST_SEED + args.cases):
        ct, truth = padded_case(seed)
        sitk.WriteImage(ct, str(inputs / f"case_{seed}.nii.gz"))
        truths[f"case_{seed}"] = sitk.GetArrayFromImage(truth)
    seconds: dict[str, float] = {}
    for name, options in VARIANTS.items():
        result = api.predict(task=DEMO_TASK, tasks_file=demo_tasks_file(), models_dir=models_dir,
                             input=inputs, output=args.work / name.strip("-").replace(" ", "_"), device="cpu",
                             **options)  # type: ignore[arg-type]
        if not result.ok:
            sys.exit(f"{name} failed: {[r.error for r in result.results if r.error]}")
        seconds[name] = sum(r.seconds for r in result.results)

    def labels(variant: str, case: str) -> np.ndarray:
        folder = args.work / variant.strip("-").replace(" ", "_")
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))

    model_name = ("shipped demo model" if args.model == "demo"
                  else "demo recipe trained on air-padded phantoms") + " (trained, no mirroring axes)"
    report: dict[str, object] = {"model": model_name, "cases": args.cases,
                                 "air_padding_mm": AIR_MM, "variants": {}}
    print(f"{args.cases} padded demo phantoms, {model_name}; Dice per structure and case, min / median:")
    print("| variant | vs default: min | median | vs truth: min | median | seconds (all cases) |")
    print("|---|---|---|---|---|---|")
    for name in VARIANTS:
        to_default, to_truth = [], []
        for case, truth in truths.items():
            ours = labels(name, case)
            to_default += list(dice_per_label(labels("default", case), ours, task.labels).values())
            to_truth += list(dice_per_label(truth, ours, task.labels).values())
        row = {"vs_default_min": min(to_default), "vs_default_median": statistics.median(to_default),
               "vs_truth_min": min(to_truth), "vs_truth_median": statistics.median(to_truth),
               "seconds": seconds[name]}
        report["variants"][name] = row  # type: ignore[index]
        print(f"| {name} | {row['vs_default_min']:.4f} | {row['vs_default_median']:.4f} | "
              f"{row['vs_truth_min']:.3f} | {row['vs_truth_median']:.3f} | {row['seconds']:.1f} |")
    print("(--no-tta: the model allows no mirroring, so it equals the default by construction)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
