"""Whole body in one run: ``autoorgan predict --task all`` against seven sequential ``nnUNetv2_predict`` runs.

    python benchmarks/whole_body_benchmark.py [--models /tmp/autoorgan_bench_models] [--repeats 3] [--json out.json]
    python benchmarks/whole_body_benchmark.py --quick          # smaller CT, one repetition
    python benchmarks/whole_body_benchmark.py --step-size 1.0  # fewer tiles on both sides (busy machines)
    python benchmarks/whole_body_benchmark.py --train-only     # only train (or find) the seven models

Models: one tiny nnU-Net model per task (skeleton, vertebrae, ribs, upper_limb, hip, lower_limb,
organs), *briefly trained* by ``autoorgan train`` (schedule: :data:`SCHEDULE`, architecture:
:data:`BENCH_PLANS`) on whole-body phantoms (:func:`autoorgan.demo.phantom.make_phantom`, 400 × 400 ×
900 mm at :data:`TRAIN_SPACING`) whose truth is written in each task's label space. They are
trained once and kept in ``--models`` (nnU-Net results layout); later runs reuse them.

Input: one synthetic whole-body phantom of realistic size (400 × 400 × 900 mm at 1.5 × 1.5 × 3 mm:
267 × 267 × 300 voxels, int16 ``.nii.gz``).

Compared, alternately, ``--repeats`` times (medians; :mod:`measure`):

* ``autoorgan --task all``: one process, every model loaded once, skeleton-first ROI cascade;
* ``autoorgan --no-cascade``: the same, every model on the whole image;
* ``nnUNetv2_predict x7``: seven sequential nnU-Net runs of the same models in one shell command
  (so that the peak memory covers the whole sequence), ``nnUNet_results`` = the models folder.

Both sides use the models' own test-time mirroring setting (the trainer ``nnUNetTrainerNoMirroring``
records no mirroring axes, so neither side mirrors) and the same sliding-window step
(``--step-size``, default nnU-Net's 0.5). The load
average of the machine is recorded before and after every run. Outputs are checked too: Dice per
structure between autoorgan's whole-body map, mapped back to each task's labels through the
whole-body table, and the matching ``nnUNetv2_predict`` output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Comparison, Measurement, run_measured

from autoorgan.demo import DEMO_PLANS
from autoorgan.demo.phantom import make_phantom
from autoorgan.models.store import find_model
from autoorgan.registry.tasks import Task, load_registry
from autoorgan.report.metrics import dice

log = logging.getLogger("whole_body_benchmark")

#: The seven tasks of ``--task all``, in the order nnU-Net is run (skeleton first, as the cascade).
TASKS: tuple[str, ...] = ("skeleton", "vertebrae", "ribs", "upper_limb", "hip", "lower_limb", "organs")
#: Field of view of every phantom (mm, x/y/z): a whole body from the feet to the skull.
BODY_MM: tuple[float, float, float] = (400.0, 400.0, 900.0)
#: Voxel spacing of the benchmark CT (mm, x/y/z): 267 × 267 × 300 voxels.
BENCH_SPACING: tuple[float, float, float] = (1.5, 1.5, 3.0)
#: ``--quick``: a coarser CT of the same body (133 × 133 × 150 voxels). The models' work is the
#: same (their working grid is fixed); reading, resampling and writing are smaller.
QUICK_SPACING: tuple[float, float, float] = (3.0, 3.0, 6.0)
#: Voxel spacing of the training phantoms, hence the models' working grid (mm, x/y/z): 50 × 50 × 90
#: voxels per body. Much coarser than a real model's 1.5 mm so that seven tiny models train in
#: minutes on 2 shared CPU cores and a whole-image prediction takes seconds per model (batch-1
#: 3D convolutions of tiny networks run at a few tiles per second on such CPUs).
TRAIN_SPACING: tuple[float, float, float] = (8.0, 8.0, 10.0)
TRAIN_SEEDS: tuple[int, ...] = (300, 301, 302, 303, 304)
BENCH_SEED = 7
#: The tiny architecture of the demo model with a patch of 24 × 32 × 32 voxels (z, y, x) =
#: 240 × 256 × 256 mm: like a real 3d_fullres patch (128³ at 1.5 mm = 192 mm), a fraction of the
#: body, so that the cascade's boxes (class box plus half a patch) are smaller than the image.
BENCH_PLANS: dict[str, Any] = {**DEMO_PLANS, "patch_size": [24, 32, 32]}
#: Training schedule (``autoorgan train`` options): brief, sized for 2 CPU cores. The skeleton
#: model, which decides the cascade's boxes, gets the longest, so that it finds every coarse class
#: (a skeleton model that finds nothing would skip every subdivision model and flatter the
#: cascade); the time a subdivision or organ model takes to predict does not depend on how well
#: it was trained.
SCHEDULE: dict[str, Any] = {"epochs": 5, "iterations_per_epoch": 25, "initial_lr": 0.1}
SCHEDULE_BY_TASK: dict[str, dict[str, Any]] = {
    "skeleton": {**SCHEDULE, "epochs": 40},
}
CASE = "wholebody"


def schedule_text() -> str:
    """How the models were trained, for every place that quotes figures."""
    special = ", ".join(f"{name} {s['epochs']} x {s['iterations_per_epoch']}" for name, s in SCHEDULE_BY_TASK.items())
    return (f"briefly trained tiny models ({SCHEDULE['epochs']} epochs x {SCHEDULE['iterations_per_epoch']} "
            f"iterations, {special}, "
            f"{len(TRAIN_SEEDS)} phantoms at {'x'.join(f'{s:g}' for s in TRAIN_SPACING)} mm, "
            f"patch {'x'.join(str(p) for p in BENCH_PLANS['patch_size'])})")


def trained_schedule(models: Path, tasks: Sequence[Task]) -> str:
    """How the models in ``models`` were actually trained, read from nnU-Net's own records.

    Epochs and iterations come from each fold's ``debug.json``, patch and spacing from the first
    model's ``plans.json``, so that quoted figures describe the models used even if they were
    trained with other settings than this script's current ones.
    """
    by_schedule: dict[str, list[str]] = {}
    patch = spacing = "?"
    for t in tasks:
        location = find_model(t, models)
        schedule = "?"
        if location is not None:
            debug = location.folder / t.fold_folder / "debug.json"
            if debug.is_file():
                d = json.loads(debug.read_text(encoding="utf-8"))
                schedule = f"{d.get('num_epochs', '?')}x{d.get('num_iterations_per_epoch', '?')}"
            if patch == "?":
                plans = json.loads((location.folder / "plans.json").read_text(encoding="utf-8"))
                configuration = plans["configurations"][t.configuration]
                patch = "x".join(str(v) for v in configuration["patch_size"])
                spacing = "x".join(f"{v:g}" for v in configuration["spacing"])
        by_schedule.setdefault(schedule, []).append(t.name)
    schedules = ", ".join(f"{'/'.join(names)} {schedule}" for schedule, names in by_schedule.items())
    return (f"briefly trained tiny models (epochs x iterations: {schedules}; patch {patch} voxels at "
            f"{spacing} mm, z/y/x)")


# ---------------------------------------------------------------------------------------------
# Models


def write_training_data(folder: Path, task: Task, seeds: Sequence[int]) -> None:
    """``folder/images`` and ``folder/labels``: whole-body phantoms and their truth in ``task``'s labels."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        phantom = make_phantom(seed, size_mm=BODY_MM, spacing=TRAIN_SPACING)
        sitk.WriteImage(phantom.ct, str(folder / "images" / f"body_{seed}.nii.gz"), useCompression=True)
        sitk.WriteImage(phantom.labels_for(task.labels), str(folder / "labels" / f"body_{seed}.nii.gz"),
                        useCompression=True)


def train_models(models: Path, work: Path, tasks: Sequence[str] = TASKS) -> dict[str, float]:
    """Train (with ``autoorgan train``) every task's model missing from ``models``; seconds per task trained."""
    registry = load_registry()
    plans_file = work / "bench_plans.json"
    work.mkdir(parents=True, exist_ok=True)
    plans_file.write_text(json.dumps(BENCH_PLANS), encoding="utf-8")
    seconds: dict[str, float] = {}
    for name in tasks:
        task = registry.get_task(name)
        if find_model(task, models) is not None:
            continue
        data = work / "data" / name
        shutil.rmtree(data, ignore_errors=True)
        write_training_data(data, task, TRAIN_SEEDS)
        start = time.perf_counter()
        schedule = SCHEDULE_BY_TASK.get(name, SCHEDULE)
        command = ["autoorgan", "train", "--task", name, "--data", str(data), "--models-dir", str(models),
                   "--work-dir", str(work / "nnunet"), "--device", "cpu",
                   "--epochs", str(schedule["epochs"]), "--iterations-per-epoch", str(schedule["iterations_per_epoch"]),
                   "--initial-lr", str(schedule["initial_lr"]), "--plans-override", str(plans_file),
                   "--augmentation-workers", "0", "--seed", "0", "--quiet"]
        log.info("training %s: %s", name, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"autoorgan train --task {name} failed (exit {result.returncode}):\n"
                               f"{(result.stdout + result.stderr)[-3000:]}")
        seconds[name] = time.perf_counter() - start
        log.info("trained %s in %.0f s", name, seconds[name])
    if seconds:
        record = models / "bench_training.json"
        previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        previous.update({"schedule": SCHEDULE, "schedule_by_task": SCHEDULE_BY_TASK, "plans": BENCH_PLANS, "spacing": TRAIN_SPACING,
                         "seeds": list(TRAIN_SEEDS), "seconds": {**previous.get("seconds", {}), **seconds}})
        record.write_text(json.dumps(previous, indent=2), encoding="utf-8")
    return seconds



# ---------------------------------------------------------------------------------------------
# Input, commands and measurement


def write_input(work: Path, spacing: Sequence[float], tasks: Sequence[Task]) -> tuple[Path, Path, dict[str, Path]]:
    """The benchmark CT (``work/input/CASE.nii.gz``), nnU-Net's copy (``CASE_0000.nii.gz``) and each task's truth."""
    ct_file = work / "input" / f"{CASE}.nii.gz"
    nnunet_in = work / "nnunet_input"
    truth_dir = work / "truth"
    truth = {t.name: truth_dir / f"{t.name}.nii.gz" for t in tasks}
    stamp = work / "input" / "spacing.json"
    wanted = json.dumps({"seed": BENCH_SEED, "size_mm": BODY_MM, "spacing": list(spacing)})
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted and all(p.is_file() for p in truth.values()):
        return ct_file, nnunet_in, truth
    for folder in (ct_file.parent, nnunet_in, truth_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    phantom = make_phantom(BENCH_SEED, size_mm=BODY_MM, spacing=tuple(spacing))  # type: ignore[arg-type]
    if phantom.ct.GetPixelID() != sitk.sitkInt16:
        raise RuntimeError("the phantom CT is expected as int16")
    sitk.WriteImage(phantom.ct, str(ct_file), useCompression=True)
    shutil.copyfile(ct_file, nnunet_in / f"{CASE}_0000.nii.gz")
    for t in tasks:
        sitk.WriteImage(phantom.labels_for(t.labels), str(truth[t.name]), useCompression=True)
    stamp.write_text(wanted, encoding="utf-8")
    log.info("benchmark CT: %s voxels of %s mm, %s", "x".join(map(str, phantom.ct.GetSize())),
             "x".join(f"{s:g}" for s in spacing), ct_file)
    return ct_file, nnunet_in, truth


def autoorgan_command(ct_file: Path, out: Path, models: Path, *, cascade: bool, step_size: float = 0.5,
                      extra: Sequence[str] = ()) -> list[str]:
    """``autoorgan predict --task all`` on the CPU (``--no-cascade``: every model on the whole image).

    ``--no-postprocess``: nnU-Net does not repair either, so both sides produce the models' raw
    labels and their Dice compares like with like."""
    command = ["autoorgan", "predict", "--task", "all", "-i", str(ct_file), "-o", str(out), "--device", "cpu",
               "--models-dir", str(models), "--step-size", f"{step_size:g}", "--no-postprocess", "--quiet"]
    return command + ([] if cascade else ["--no-cascade"]) + list(extra)


def nnunet_command(nnunet_in: Path, outs: Mapping[str, Path], tasks: Sequence[Task], *,
                   step_size: float = 0.5) -> list[str]:
    """One shell command running ``nnUNetv2_predict`` for each task in turn (stopping at the first failure)."""
    import shlex

    steps = []
    for t in tasks:
        steps.append(" ".join(shlex.quote(a) for a in [
            "nnUNetv2_predict", "-i", str(nnunet_in), "-o", str(outs[t.name]), "-d", str(t.dataset_id),
            "-c", t.configuration, "-tr", t.trainer, "-p", t.plans, "-f", str(t.fold), "-device", "cpu",
            "-step_size", f"{step_size:g}"]))
    return ["bash", "-c", " && ".join(steps)]


def nnunet_env(models: Path, scratch: Path) -> dict[str, str]:
    """nnU-Net's three folders, explicitly: results = the models folder, raw/preprocessed = empty scratch."""
    (scratch / "raw").mkdir(parents=True, exist_ok=True)
    (scratch / "preprocessed").mkdir(parents=True, exist_ok=True)
    return {"nnUNet_results": str(models), "nnUNet_raw": str(scratch / "raw"),
            "nnUNet_preprocessed": str(scratch / "preprocessed")}


@dataclass
class Run:
    """One measured run and the machine's 1-minute load average just before and just after it."""

    name: str
    repetition: int
    wall_s: float
    peak_gib: float
    load_before: float
    load_after: float


def run_alternating(commands: Mapping[str, Sequence[str]], *, repeats: int,
                    env: Mapping[str, Mapping[str, str]], before_each: Mapping[str, Callable[[], None]],
                    ) -> tuple[Comparison, list[Run]]:
    """Run the commands in turn, ``repeats`` rounds (:func:`measure.run_measured`); a failure raises."""
    comparison = Comparison({name: [] for name in commands})
    runs: list[Run] = []
    for repetition in range(repeats):
        for name, command in commands.items():
            before_each[name]()
            load_before = os.getloadavg()[0]
            m: Measurement = run_measured(command, env=env.get(name))
            load_after = os.getloadavg()[0]
            if m.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {m.returncode}):\n{m.output[-3000:]}")
            comparison.runs[name].append(m)
            runs.append(Run(name, repetition, m.wall_s, m.peak_gib, load_before, load_after))
            log.info("%s #%d: %.1f s, peak %.2f GiB (load %.1f -> %.1f)", name, repetition + 1, m.wall_s,
                     m.peak_gib, load_before, load_after)
    return comparison, runs


# ---------------------------------------------------------------------------------------------
# Output check


def task_lookup(whole_labels: Mapping[int, str], whole_task_of: Mapping[int, str], task: Task,
                skeleton: Task) -> np.ndarray:
    """Whole-body value → ``task``'s label value (0 where the structure is not ``task``'s).

    A structure of ``task`` maps to its own value. For the skeleton task, a structure of a
    subdivision task also maps to the coarse class that task subdivides (``hip_left`` → ``hip``),
    since the whole-body map gives such voxels to the finer model.
    """
    lut = np.zeros(max(whole_labels, default=0) + 1, dtype=np.uint16)
    by_name = {name.lower(): value for value, name in task.labels.items()}
    coarse_of_task = {sub: value for value, sub in skeleton.subdivisions.items()} if task.name == skeleton.name else {}
    for value, name in whole_labels.items():
        owner = whole_task_of[value]
        if owner == task.name and name.lower() in by_name:
            lut[value] = by_name[name.lower()]
        elif owner in coarse_of_task:
            lut[value] = coarse_of_task[owner]
    return lut


def dice_table(reference: np.ndarray, prediction: np.ndarray, labels: Mapping[int, str]) -> dict[str, float]:
    """Dice per structure present in either map (name → Dice)."""
    present = (set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist())) - {0}
    return {labels[v]: dice(reference == v, prediction == v) for v in sorted(present) if v in labels}


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def check_outputs(whole_map: Path, nnunet_outs: Mapping[str, Path], truth: Mapping[str, Path],
                  tasks: Sequence[Task], skeleton: Task) -> dict[str, dict[str, dict[str, float]]]:
    """Per task: Dice of autoorgan's whole-body map (mapped back) against nnU-Net's map, and nnU-Net's against truth."""
    from autoorgan.registry.whole_body import whole_body_table

    table = whole_body_table()
    whole_image = sitk.ReadImage(str(whole_map))
    whole = sitk.GetArrayFromImage(whole_image)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for t in tasks:
        theirs_image = sitk.ReadImage(str(nnunet_outs[t.name] / f"{CASE}.nii.gz"))
        same_grid = (theirs_image.GetSize() == whole_image.GetSize()
                     and np.allclose(theirs_image.GetSpacing(), whole_image.GetSpacing())
                     and np.allclose(theirs_image.GetOrigin(), whole_image.GetOrigin())
                     and np.allclose(theirs_image.GetDirection(), whole_image.GetDirection()))
        if not same_grid:
            raise RuntimeError(f"{t.name}: autoorgan's and nnU-Net's maps are not on the same grid")
        theirs = sitk.GetArrayFromImage(theirs_image)
        ours = task_lookup(table.labels, table.task_of, t, skeleton)[whole]
        result[t.name] = {"autoorgan_vs_nnunet": dice_table(theirs, ours, t.labels),
                          "nnunet_vs_truth": dice_table(_read(truth[t.name]), theirs, t.labels)}
    return result


def summarize_dice(scores: Mapping[str, float]) -> str:
    """``mean / min (worst structure)`` of a Dice table, or ``-`` when empty."""
    if not scores:
        return "-"
    worst = min(scores, key=scores.__getitem__)
    return f"{statistics.mean(scores.values()):.3f} / {scores[worst]:.3f} ({worst})"


# ---------------------------------------------------------------------------------------------
# Report


def cascade_summary(sidecar: Mapping[str, Any]) -> str:
    """One line per autoorgan run from its sidecar: each task's seconds, box fraction or skip, and the stages."""
    runs = (sidecar.get("cascade") or {}).get("runs") or {}
    parts = []
    for name, run in runs.items():
        if run.get("status") == "skipped":
            parts.append(f"{name} skipped")
        else:
            box = f" on {100 * run['box_fraction']:.0f}% of the image" if "box_fraction" in run else ""
            if "tiles" in run and "box_fraction" in run:
                box += f" ({run['tiles']['ran']} of {run['tiles']['whole_image']} tiles)"
            parts.append(f"{name} {run.get('seconds', float('nan')):.1f} s{box}")
    timing = sidecar.get("timing") or {}
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in timing.items())
    return "; ".join(parts) + (f" (stages: {stages})" if stages else "")


def report(comparison: Comparison, runs: Sequence[Run], baseline: str, subject: str, ct_size: Sequence[int],
           spacing: Sequence[float], step_size: float, models_text: str, dice_by_variant: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
           sidecars: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The Markdown report: the measured table, the ratios against the targets, load and Dice."""
    wall = comparison.median_wall(subject) / comparison.median_wall(baseline)
    memory = comparison.median_peak_gib(subject) / comparison.median_peak_gib(baseline)
    loads = [r.load_before for r in runs] + [r.load_after for r in runs]
    lines = [
        (f"Whole-body phantom CT {'x'.join(map(str, ct_size))} voxels at {'x'.join(f'{s:g}' for s in spacing)} mm, "
         f"CPU only ({os.cpu_count()} cores), {models_text}, sliding-window step {step_size:g} on both sides; "
         f"medians of {len(comparison.runs[baseline])} "
         "alternating run(s), wall time and peak RSS of the whole process tree."),
        "",
        comparison.table(baseline),
        "",
        (f"- wall-time ratio `{subject}` / `{baseline}`: **{wall:.2f}** (target <= 0.5, aim 0.33): "
         f"{'met' if wall <= 0.5 else 'MISSED'}"),
        f"- peak-memory ratio: **{memory:.2f}** (target <= 1.0): {'met' if memory <= 1.0 else 'MISSED'}",
        f"- `--task all` per CT: {comparison.median_wall(subject):.1f} s, {comparison.median_peak_gib(subject):.2f} GiB",
        (f"- 1-minute load average around the runs: median {statistics.median(loads):.1f}, "
         f"range {min(loads):.1f}-{max(loads):.1f}"),
    ]
    for name, sidecar in (sidecars or {}).items():
        lines.append(f"- `{name}`, last run, per task: {cascade_summary(sidecar)}")
    if dice_by_variant:
        lines += ["", "| task | " + " | ".join(f"{v}: Dice vs nnU-Net, mean / min" for v in dice_by_variant)
                  + " | nnU-Net vs phantom truth, mean / min |",
                  "|---|" + "---|" * (len(dice_by_variant) + 1)]
        first = next(iter(dice_by_variant.values()))
        for task in first:
            cells = [summarize_dice(d[task]["autoorgan_vs_nnunet"]) for d in dice_by_variant.values()]
            lines.append(f"| {task} | " + " | ".join(cells) + f" | {summarize_dice(first[task]['nnunet_vs_truth'])} |")
    return "\n".join(lines)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("/tmp/autoorgan_bench_models"),
                        help="models folder (trained here once, reused later)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoorgan_bench_work"),
                        help="scratch folder: training data, nnU-Net folders, inputs and outputs")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a coarser CT ({'x'.join(f'{s:g}' for s in QUICK_SPACING)} mm), one round")
    parser.add_argument("--only", choices=("all", "nnunet"), default="all",
                        help="nnunet: measure the nnUNetv2_predict side alone")
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window step of both sides (fraction of the patch; 0.5 is nnU-Net's default)")
    parser.add_argument("--no-check", action="store_true", help="skip the Dice check of the outputs")
    parser.add_argument("--train-only", action="store_true", help="only train (or find) the seven models")
    parser.add_argument("--train-tasks", default=",".join(TASKS),
                        help="with --train-only: which models to train (comma-separated; default all seven)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")

    chosen = [t.strip() for t in args.train_tasks.split(",") if t.strip()] if args.train_only else list(TASKS)
    unknown = sorted(set(chosen) - set(TASKS))
    if unknown:
        parser.error(f"--train-tasks: unknown task(s) {', '.join(unknown)}")
    trained = train_models(args.models, args.work / "train", chosen)
    if args.train_only:
        print(f"models in {args.models} ({schedule_text()}); trained now: "
              + (", ".join(f"{k} {v:.0f} s" for k, v in trained.items()) or "none"))
        return

    registry = load_registry()
    tasks = [registry.get_task(name) for name in TASKS]
    skeleton = registry.get_task("skeleton")
    models_text = trained_schedule(args.models, tasks)
    spacing = QUICK_SPACING if args.quick else BENCH_SPACING
    ct_file, nnunet_in, truth = write_input(args.work / ("quick" if args.quick else "full"), spacing, tasks)
    ct_size = sitk.ReadImage(str(ct_file)).GetSize()
    out = args.work / "out"
    nnunet_outs = {t.name: out / "nnunet" / t.name for t in tasks}
    baseline, subject, flat = "nnUNetv2_predict x7", "autoorgan --task all", "autoorgan --task all --no-cascade"
    commands: dict[str, list[str]] = {}
    folders: dict[str, list[Path]] = {baseline: list(nnunet_outs.values())}
    if args.only == "all":
        commands[subject] = autoorgan_command(ct_file, out / "cascade", args.models, cascade=True,
                                              step_size=args.step_size)
        commands[flat] = autoorgan_command(ct_file, out / "no_cascade", args.models, cascade=False,
                                           step_size=args.step_size)
        folders[subject], folders[flat] = [out / "cascade"], [out / "no_cascade"]
    commands[baseline] = nnunet_command(nnunet_in, nnunet_outs, tasks, step_size=args.step_size)

    def fresh(paths: list[Path]) -> Callable[[], None]:
        def hook() -> None:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
        return hook

    env = {baseline: nnunet_env(args.models, args.work / "nnunet_scratch")}
    comparison, runs = run_alternating(commands, repeats=repeats, env=env,
                                       before_each={name: fresh(folders[name]) for name in commands})

    dice_by_variant: dict[str, Any] = {}
    if args.only == "all" and not args.no_check:
        for name, folder in ((flat, out / "no_cascade"), (subject, out / "cascade")):
            dice_by_variant[name] = check_outputs(folder / f"{CASE}.nii.gz", nnunet_outs, truth, tasks, skeleton)
    sidecars = {}
    for name, folder in ((subject, out / "cascade"), (flat, out / "no_cascade")):
        if (folder / f"{CASE}.json").is_file():
            sidecars[name] = json.loads((folder / f"{CASE}.json").read_text(encoding="utf-8"))
    if args.only == "all":
        print(report(comparison, runs, baseline, subject, ct_size, spacing, args.step_size, models_text,
                     dice_by_variant, sidecars))
    else:
        print(f"{baseline} on {'x'.join(map(str, ct_size))} voxels: median {comparison.median_wall(baseline):.1f} s, "
              f"{comparison.median_peak_gib(baseline):.2f} GiB over {repeats} run(s) ({models_text})")
    if args.json:
        args.json.write_text(json.dumps({
            "ct_size": list(ct_size), "spacing": list(spacing), "models": models_text, "step_size": args.step_size, "repeats": repeats,
            "cpu_count": os.cpu_count(), "commands": commands,
            "medians": {n: {"wall_s": comparison.median_wall(n), "peak_gib": comparison.median_peak_gib(n)}
                        for n in commands},
            "runs": [asdict(r) for r in runs], "dice": dice_by_variant,
            "autoorgan_sidecars": sidecars,
        }, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
