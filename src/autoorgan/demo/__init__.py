"""The demo: the whole pipeline on a synthetic phantom with a small demo model shipped in the package.

The demo model (task ``demo_pelvis``: hip_left, hip_right, sacrum) is a tiny nnU-Net network
trained by ``scripts/make_demo_model.py`` on synthetic phantoms only (:mod:`autoorgan.demo.phantom`).
It exists to show, on any machine and without the registration-gated AutoOrgan weights, what
autoorgan does: it is a demo model, not for real CT.

:func:`run_demo` synthesizes a fresh phantom (the pelvic region of a whole-body-like phantom),
segments it with the demo model through the normal ``predict`` path (post-processing,
statistics and preview included), and scores the result against the phantom's truth (Dice per
structure).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from autoorgan.registry.tasks import DEMO_NOTE

log = logging.getLogger(__name__)

#: Task name of the demo model (defined in this package's ``tasks.json``; a built-in task, whose
#: model is found in :func:`demo_models_dir` whatever the models folder is).
DEMO_TASK = "demo_pelvis"
#: Structures of the demo task (the phantom crop is taken around them).
DEMO_STRUCTURES = ("hip_left", "hip_right", "sacrum")
#: Voxel spacing of the demo phantoms (mm, x/y/z).
DEMO_SPACING = (4.0, 4.0, 5.0)
#: Seeds of the training phantoms (the demo itself uses other seeds). The single source of the
#: training recipe: ``scripts/make_demo_model.py`` and the test suite's fixture model both use it.
TRAINING_SEEDS = tuple(range(100, 112))
#: Storage orientations of the training phantoms (one per seed): training brings them all to the
#: model's orientation, so the model learns left from right whatever the storage order.
TRAINING_ORIENTATIONS = ("RAS", "LPS", "LAS", "PIR", "RAS", "LPS", "SAR", "RAS", "ILP", "RAS", "LAI", "RAS")
#: A tiny 3d_fullres architecture (nnU-Net plans override): ~0.3 M parameters.
DEMO_PLANS: dict[str, Any] = {
    "patch_size": [16, 24, 32],
    "batch_size": 2,
    "architecture": {"arch_kwargs": {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "kernel_sizes": [[3, 3, 3]] * 4,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
    }},
}
#: Training schedule of the demo model (``autoorgan train`` options / :func:`autoorgan.api.train`
#: keywords): long enough for the sides of the pelvis to pass Dice 0.9 reliably.
DEMO_SCHEDULE: dict[str, Any] = {"epochs": 45, "iterations_per_epoch": 25, "initial_lr": 0.1, "seed": 0}
#: The demo model is installed only if every structure reaches this Dice on the demo phantom.
DEMO_MIN_DICE = 0.9


def demo_shortfalls(dice: dict[str, float]) -> dict[str, float | None]:
    """Structures of :data:`DEMO_STRUCTURES` whose Dice is below :data:`DEMO_MIN_DICE` (``None``: not
    scored). Empty when a demo model may be installed (``scripts/make_demo_model.py``)."""
    short: dict[str, float | None] = {}
    for name in DEMO_STRUCTURES:
        score = dice.get(name)
        if score is None or not score >= DEMO_MIN_DICE:
            short[name] = score
    return short


def demo_tasks_file() -> Path:
    """The task table that defines :data:`DEMO_TASK`."""
    return Path(str(resources.files(__name__) / "tasks.json"))


def demo_models_dir() -> Path:
    """The models folder (nnU-Net results layout) holding the shipped demo model."""
    from autoorgan.registry.tasks import demo_models_dir as shipped

    return shipped()


def demo_phantom(seed: int):
    """A demo phantom: the pelvic region of a synthetic whole-body phantom (4×4×5 mm voxels)."""
    from autoorgan.demo.phantom import make_phantom

    return make_phantom(seed, spacing=DEMO_SPACING).crop_to(list(DEMO_STRUCTURES), 12.0)


def train_with_recipe(work: Path, case: Callable[[int], tuple[Any, Any]] | None = None, *,
                      device: str = "cpu") -> Path:
    """Train a model of :data:`DEMO_TASK` with the demo recipe; returns the trained model folder.

    The training data (``work/data``: one phantom per :data:`TRAINING_SEEDS`, stored in its
    :data:`TRAINING_ORIENTATIONS` order) comes from ``case(seed)`` → (CT, label map) — by default
    :func:`demo_phantom` and its labels; the models land in ``work/models``. Used by
    ``scripts/make_demo_model.py`` and by benchmarks that need the recipe on other phantoms.
    """
    import SimpleITK as sitk

    from autoorgan import api
    from autoorgan.demo.phantom import reorient
    from autoorgan.registry.tasks import load_registry

    if case is None:
        labels = load_registry(demo_tasks_file()).get_task(DEMO_TASK).labels

        def case(seed: int) -> tuple[Any, Any]:
            phantom = demo_phantom(seed)
            return phantom.ct, phantom.labels_for(labels)

    data = work / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i, (seed, codes) in enumerate(zip(TRAINING_SEEDS, TRAINING_ORIENTATIONS, strict=True)):
        ct, truth = case(seed)
        sitk.WriteImage(reorient(ct, codes), str(data / "images" / f"phantom_{i}.nii.gz"))
        sitk.WriteImage(reorient(truth, codes), str(data / "labels" / f"phantom_{i}.nii.gz"))
    return api.train(task=DEMO_TASK, tasks_file=demo_tasks_file(), data=data, models_dir=work / "models",
                     work_dir=work / "work", device=device, plans_override=DEMO_PLANS, augmentation_workers=0,
                     **DEMO_SCHEDULE)


@dataclass
class DemoResult:
    """What the demo produced and how well the demo model did."""

    output_dir: Path
    ct: Path
    truth: Path
    label_map: Path
    dice: dict[str, float]
    seconds: float
    extra_files: list[Path] = field(default_factory=list)

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.dice.values()))) if self.dice else 0.0


def run_demo(*, output: Path, device: str = "cpu", seed: int = 1, models_dir: Path | None = None) -> DemoResult:
    """Synthesize a phantom, segment it with the demo model, and score it against the truth.

    ``models_dir`` is the models folder holding the demo model (default: the one shipped in the
    package, through the built-in task; ``scripts/make_demo_model.py`` passes a freshly trained
    one to check it before installing it).

    Writes into ``output``: ``phantom/demo_ct.nii.gz`` (the CT), ``phantom/demo_truth.nii.gz``
    (its true labels), ``segmentation/`` (the post-processed prediction with its sidecar,
    statistics and preview, as ``predict`` writes them) and ``demo_summary.json`` (Dice per
    structure).
    """
    import SimpleITK as sitk

    from autoorgan import api
    from autoorgan.errors import AutoOrganError
    from autoorgan.io.writing import write_image, write_json
    from autoorgan.registry.tasks import load_registry
    from autoorgan.report.metrics import dice_per_label

    start = time.perf_counter()
    output = Path(output)
    task = load_registry(demo_tasks_file()).get_task(DEMO_TASK)
    log.info("%s", DEMO_NOTE)
    phantom = demo_phantom(seed)
    phantom_dir, seg_dir = output / "phantom", output / "segmentation"
    phantom_dir.mkdir(parents=True, exist_ok=True)
    ct_path = write_image(phantom.ct, phantom_dir / "demo_ct.nii.gz")
    truth_path = write_image(phantom.labels_for(task.labels), phantom_dir / "demo_truth.nii.gz")
    log.info("synthesized phantom (seed %d, %s voxels) in %s", seed, "×".join(map(str, phantom.ct.GetSize())),
             phantom_dir)
    # The built-in task finds the shipped model; another models folder needs the task file's
    # task (an ordinary task, looked for in the models folder).
    where: dict[str, Any] = {} if models_dir is None else {"tasks_file": demo_tasks_file(), "models_dir": models_dir}
    result = api.predict(task=DEMO_TASK, **where, input=ct_path, output=seg_dir, device=device, postprocess=True,
                         statistics=True, preview=True)
    if not result.ok:
        raise AutoOrganError(f"the demo prediction failed: {result.failed[0].error}")
    label_path = seg_dir / "demo_ct.nii.gz"
    sidecar_path = seg_dir / "demo_ct.json"
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    sidecar["model_note"] = DEMO_NOTE
    write_json(sidecar, sidecar_path)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    scores = dice_per_label(truth, predicted, task.labels)
    dice = {task.labels[value]: round(score, 4) for value, score in scores.items()}
    seconds = time.perf_counter() - start
    extras = sorted(p for p in seg_dir.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p not in (label_path, sidecar_path))
    demo = DemoResult(output_dir=output, ct=ct_path, truth=truth_path, label_map=label_path, dice=dice,
                      seconds=seconds, extra_files=extras)
    write_json({"model_note": DEMO_NOTE, "task": DEMO_TASK, "seed": seed, "dice": dice,
                "mean_dice": round(demo.mean_dice, 4), "seconds": round(seconds, 2),
                "ct": str(ct_path.relative_to(output)), "truth": str(truth_path.relative_to(output)),
                "label_map": str(label_path.relative_to(output))},
               output / "demo_summary.json")
    return demo
