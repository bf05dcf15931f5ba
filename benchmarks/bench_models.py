"""Benchmark models: nnU-Net results folders with RANDOM weights, for timing and memory only.

    from bench_models import make_bench_model
    bench = make_bench_model(Path("/tmp/bench"))            # nnU-Net's default 3d_fullres plans
    bench = make_bench_model(Path("/tmp/bench"), tiny=True)  # a tiny architecture (memory tests)

A few synthetic phantoms (:mod:`autoorgan.demo.phantom`) at 1.5 mm, padded with air to a body-CT
size, are written as an nnU-Net raw dataset; autoorgan's ``engine.plan_and_preprocess`` runs
nnU-Net's own fingerprint and experiment planning on them, so the plans — patch size, network
depth and width, target spacing 1.5 mm — are the ones nnU-Net chooses for such a dataset. The
checkpoint holds RANDOMLY initialised weights of that network (``tests/untrained_model.py``):
label maps are noise, which is fine for timing and for comparing two exports of the same logits.
Figures measured with these models must say "random weights".
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from autoorgan import engine
from autoorgan.demo import DEMO_PLANS
from autoorgan.demo.phantom import make_phantom
from untrained_model import write_untrained_checkpoint

#: Dataset ids of the benchmark models (outside the registry's range).
DEFAULT_ID, TINY_ID = 951, 952
TRAINER, PLANS, CONFIGURATION = "nnUNetTrainer", "nnUNetPlans", "3d_fullres"
SPACING = (1.5, 1.5, 1.5)
#: Array shape (z, y, x) the phantoms are padded to: a torso CT at 1.5 mm.
PADDED_ZYX = (300, 240, 240)
LABELS = ("hip_left", "hip_right", "sacrum", "femur_left", "femur_right", "liver", "spleen", "kidney_left",
          "kidney_right")


@dataclass(frozen=True)
class BenchModel:
    """A benchmark model: its nnU-Net results folder, the model folder, and a task table for autoorgan."""

    results: Path
    model_folder: Path
    tasks_file: Path
    task: str
    dataset_id: int
    tiny: bool

    @property
    def plans(self) -> dict:
        return json.loads((self.model_folder / "plans.json").read_text(encoding="utf-8"))["configurations"][CONFIGURATION]


def _padded_case(seed: int, labels: tuple[str, ...]) -> tuple[sitk.Image, sitk.Image]:
    phantom = make_phantom(seed, spacing=SPACING)
    ct = sitk.GetArrayFromImage(phantom.ct)
    seg = np.zeros(ct.shape, dtype=np.uint8)
    for value, name in enumerate(labels, start=1):
        if name in phantom.structures:
            seg[phantom.structures[name].transpose(2, 1, 0)] = value
    out_ct = np.full(PADDED_ZYX, -1000, dtype=np.int16)
    out_seg = np.zeros(PADDED_ZYX, dtype=np.uint8)
    offset = [(p - s) // 2 for p, s in zip(PADDED_ZYX, ct.shape, strict=True)]
    box = tuple(slice(o, o + s) for o, s in zip(offset, ct.shape, strict=True))
    out_ct[box], out_seg[box] = ct, seg
    images = []
    for array in (out_ct, out_seg):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        images.append(image)
    return images[0], images[1]


def make_bench_model(base: Path, *, tiny: bool = False, cases: int = 3, labels: tuple[str, ...] = LABELS,
                     seed: int = 0) -> BenchModel:
    """Build (once; reused when present) a benchmark model under ``base``.

    ``tiny``: the demo's tiny architecture (an nnU-Net plans override) instead of nnU-Net's
    default one, for runs on very large images where only memory matters.
    """
    dataset_id = TINY_ID if tiny else DEFAULT_ID
    name = f"Dataset{dataset_id}_Bench{'Tiny' if tiny else 'Default'}"
    paths = engine.NnUNetPaths(raw=base / "raw", preprocessed=base / "preprocessed", results=base / "results")
    model_folder = base / "results" / name / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    task = f"bench_{'tiny' if tiny else 'default'}"
    tasks_file = base / f"{task}_tasks.json"
    bench = BenchModel(base / "results", model_folder, tasks_file, task, dataset_id, tiny)
    if (model_folder / "fold_0" / "checkpoint_final.pth").is_file() and tasks_file.is_file():
        return bench
    raw = base / "raw" / name
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        ct, seg = _padded_case(seed + i, labels)
        sitk.WriteImage(ct, str(raw / "imagesTr" / f"bench_{i:03d}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(seg, str(raw / "labelsTr" / f"bench_{i:03d}.nii.gz"), useCompression=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{n: v for v, n in enumerate(labels, start=1)}},
        "numTraining": cases, "file_ending": ".nii.gz"}, indent=2), encoding="utf-8")
    plans_file = engine.plan_and_preprocess(dataset_id, paths, configuration=CONFIGURATION, plans=PLANS)
    if tiny:
        engine.apply_plans_override(plans_file, CONFIGURATION, {**DEMO_PLANS, "patch_size": [64, 64, 64]})
    model_folder.mkdir(parents=True, exist_ok=True)
    (model_folder / "plans.json").write_text(plans_file.read_text(encoding="utf-8"), encoding="utf-8")
    (model_folder / "dataset.json").write_text((raw / "dataset.json").read_text(encoding="utf-8"), encoding="utf-8")
    write_untrained_checkpoint(model_folder, configuration=CONFIGURATION, trainer=TRAINER, seed=seed)
    tasks_file.write_text(json.dumps({"tasks": {task: {
        "dataset_id": dataset_id, "description": "benchmark model with RANDOM weights (timing only)",
        "trainer": TRAINER, "plans": PLANS, "configuration": CONFIGURATION, "fold": 0, "orientation": "native",
        "labels": {str(v): n for v, n in enumerate(labels, start=1)}}}}, indent=2), encoding="utf-8")
    return bench


def synthetic_ct(path: Path, shape_xyz: tuple[int, int, int] = (512, 512, 400),
                 spacing: tuple[float, float, float] = (0.8, 0.8, 1.5), seed: int = 0) -> Path:
    """A synthetic int16 CT of ``shape_xyz`` voxels at ``spacing`` (mm): a phantom body resampled onto
    that grid (air around it), written to ``path`` (reused when present)."""
    if path.is_file():
        return path
    extent = [n * s for n, s in zip(shape_xyz, spacing, strict=True)]
    phantom = make_phantom(seed, size_mm=(min(extent[0] * 0.8, 400.0), min(extent[1] * 0.6, 300.0), extent[2]),
                           spacing=(2.0, 2.0, 2.0)).ct
    reference = sitk.Image([int(n) for n in shape_xyz], sitk.sitkInt16)
    reference.SetSpacing(spacing)
    reference.SetDirection(phantom.GetDirection())
    centre = np.asarray(phantom.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in phantom.GetSize()]))
    half = np.asarray(phantom.GetDirection()).reshape(3, 3) @ ((np.asarray(shape_xyz) - 1) / 2 * np.asarray(spacing))
    reference.SetOrigin(tuple(centre - half))
    image = sitk.Resample(phantom, reference, sitk.Transform(), sitk.sitkLinear, -1000, sitk.sitkInt16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    made = make_bench_model(args.base, tiny=args.tiny)
    print(made.model_folder)
    print(json.dumps({k: made.plans[k] for k in ("patch_size", "spacing")}),
          made.plans["architecture"]["arch_kwargs"]["features_per_stage"])
