"""A 512×512×1000 CT on CPU: does ``autoorgan predict`` finish within 16 GiB of RAM?

    python benchmarks/large_ct_memory.py --work /tmp/large [--slices 1000] [--limit-gib 16] [--with-nnunet]

The CT is synthetic (int16, 0.8×0.8×1.5 mm, a phantom body in air; bench_models.synthetic_ct).
The model is bench_models' TINY architecture (plans override, patch 64³) at nnU-Net's planned
1.5 mm spacing with RANDOM weights and 9 labels: the network's cost is small and what is
measured is everything around it (tile step 1.0 by default keeps the network's share small) — reading, nnU-Net's preprocessing (resampling to 1.5 mm),
the logits, the export back to 0.8 mm and writing. Peak memory is the RSS of the whole process
tree (measure.py); exit status 1 if the run fails or exceeds ``--limit-gib``.
``--with-nnunet`` also runs ``nnUNetv2_predict`` on the same input for comparison (slow).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import make_bench_model, synthetic_ct
from measure import run_measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--limit-gib", type=float, default=16.0)
    parser.add_argument("--with-nnunet", action="store_true")
    parser.add_argument("--step", type=float, default=1.0, help="tile step (1.0 keeps the network's share small)")
    args = parser.parse_args()
    bench = make_bench_model(args.work / "models", tiny=True)
    ct = synthetic_ct(args.work / f"ct_512x512x{args.slices}.nii.gz", (512, 512, args.slices))
    folder = args.work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "large_0000.nii.gz"
    link.unlink(missing_ok=True)
    link.symlink_to(ct.resolve())
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    ours = run_measured([sys.executable, "-m", "autoorgan", "predict", "--task", bench.task, "--tasks-file",
                         str(bench.tasks_file), "--models-dir", str(bench.results), "-i", str(folder), "-o",
                         str(out / "autoorgan"), "--device", "cpu", "--no-tta", "--no-postprocess", "--quiet", "--step-size", str(args.step)])
    sidecar = out / "autoorgan" / "large_0000.json"
    timing = json.loads(sidecar.read_text(encoding="utf-8")).get("timing") if sidecar.is_file() else None
    report = {"input": f"512x512x{args.slices} int16, 0.8x0.8x1.5 mm (synthetic)",
              "model": f"tiny architecture, 1.5 mm, RANDOM weights, 9 labels, no TTA, step {args.step}",
              "load_average_before": round(load, 1),
              "autoorgan": {"exit": ours.returncode, "wall_s": round(ours.wall_s, 1),
                            "peak_gib": round(ours.peak_gib, 2), "timing": timing}}
    if ours.returncode != 0:
        print(ours.output[-3000:])
    if args.with_nnunet:
        theirs = run_measured(["nnUNetv2_predict", "-i", str(folder), "-o", str(out / "nnunet"), "-d",
                               str(bench.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer",
                               "-device", "cpu", "--disable_tta", "-step_size", str(args.step)],
                              env={"nnUNet_results": str(bench.results), "nnUNet_raw": str(args.work),
                                   "nnUNet_preprocessed": str(args.work)})
        report["nnUNetv2_predict"] = {"exit": theirs.returncode, "wall_s": round(theirs.wall_s, 1),
                                      "peak_gib": round(theirs.peak_gib, 2)}
    print(json.dumps(report, indent=2))
    (args.work / "large_ct_memory.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if ours.returncode == 0 and ours.peak_gib <= args.limit_gib else 1


if __name__ == "__main__":
    raise SystemExit(main())
