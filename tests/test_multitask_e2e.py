"""Several tasks in one ``predict`` run, end to end with real nnU-Net models (skeleton, hip and
lower_limb, trained in this session on CPU): the cascade agrees with whole-image prediction,
each model is loaded once per run, absent classes skip their model, geometry is kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoorgan import api
from autoorgan.batch.job import ProgressListener
from autoorgan.cli.app import app
from autoorgan.demo.phantom import reorient
from autoorgan.registry.tasks import load_registry
from autoorgan.registry.whole_body import whole_body_table
from autoorgan.report.metrics import dice_per_label
from multitask_fixtures import SOFT_TISSUE_ABOVE_MM, lower_body_phantom, with_soft_tissue_above, without

pytestmark = pytest.mark.e2e
runner = CliRunner()
REGISTRY = load_registry()
TASKS = "skeleton,hip,lower_limb"


class LoadCounter(ProgressListener):
    """Counts the ``loading model <task>`` stages of a run, and the cases finished."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.loads_by_case: dict[str, list[str]] = {}
        self.finished: list[str] = []

    def case_stage(self, case_id: str, stage: str) -> None:
        if stage.startswith("loading model"):
            task = stage.removeprefix("loading model").strip()
            self.loads.append(task)
            self.loads_by_case.setdefault(case_id, []).append(task)

    def case_finished(self, result: object) -> None:
        self.finished.append(result.status)


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def lower_body_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lower_body_in")
    for i, seed in enumerate((410, 411)):
        ct = with_soft_tissue_above(lower_body_phantom(seed).ct, SOFT_TISSUE_ABOVE_MM, seed)
        sitk.WriteImage(ct, str(folder / f"case_{i}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def cascade_run(whole_body_models: Path, lower_body_cases: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadCounter]:
    out = tmp_path_factory.mktemp("cascade_out")
    counter = LoadCounter()
    result = api.predict(task=["skeleton", "hip,lower_limb"], input=lower_body_cases, output=out,
                         models_dir=whole_body_models, device="cpu", keep_task_maps=True, listener=counter)
    assert result.ok and result.count("done") == 2
    return out, counter


def test_each_model_is_loaded_once_for_the_batch(cascade_run: tuple[Path, LoadCounter]) -> None:
    _, counter = cascade_run
    assert counter.finished == ["done", "done"]
    assert sorted(counter.loads) == ["hip", "lower_limb", "skeleton"]
    assert counter.loads[0] == "skeleton"  # the skeleton runs first


def _predict(cases: Path, out: Path, models: Path, *options: str) -> None:
    result = runner.invoke(app, ["predict", "--task", "skeleton", "--task", "hip,lower_limb", *options,
                                 "--keep-task-maps", "-i", str(cases), "-o", str(out),
                                 "--models-dir", str(models), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_cascade_runs_fewer_tiles_and_gives_the_whole_images_labels_in_its_box(
        whole_body_models: Path, lower_body_cases: Path, tmp_path: Path) -> None:
    """The models' own labels (no repair): each subdivision model (hip, lower_limb) runs only the
    tiles reaching into its box, and inside the box its labels are the whole image's, voxel for
    voxel; outside the box it labels nothing."""
    cascade_out, whole_out = tmp_path / "cascade", tmp_path / "whole"
    _predict(lower_body_cases, cascade_out, whole_body_models, "--no-postprocess")
    _predict(lower_body_cases, whole_out, whole_body_models, "--no-postprocess", "--no-cascade")
    for case in ("case_0", "case_1"):
        sidecar = json.loads((cascade_out / f"{case}.json").read_text(encoding="utf-8"))
        runs = sidecar["cascade"]["runs"]
        assert sidecar["cascade"]["enabled"] is True and sidecar["cascade"]["skipped"] == []
        assert runs["skeleton"]["status"] == "ran" and "box" not in runs["skeleton"]
        for name in ("hip", "lower_limb"):
            assert runs[name]["status"] == "ran" and len(runs[name]["box"]) == 3
            assert runs[name]["box_fraction"] < 0.9  # a real part of the image
            tiles = runs[name]["tiles"]
            assert tiles["ran"] < tiles["whole_image"], f"{name} ran every tile in {case}"
            cascade_map = _read(cascade_out / case / f"{name}.nii.gz")
            whole_map = _read(whole_out / case / f"{name}.nii.gz")
            (x0, x1), (y0, y1), (z0, z1) = runs[name]["box"]
            box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
            assert len(np.unique(whole_map[box])) >= 3, f"{name} found too little in {case}"
            assert np.array_equal(cascade_map[box], whole_map[box]), f"{name} differs inside its box in {case}"
            outside = cascade_map.copy()
            outside[box] = 0
            assert not outside.any(), f"{name} labelled voxels outside its box in {case}"
        whole_sidecar = json.loads((whole_out / f"{case}.json").read_text(encoding="utf-8"))
        assert whole_sidecar["cascade"]["enabled"] is False
        assert all("box" not in r for r in whole_sidecar["cascade"]["runs"].values())


def test_cascade_agrees_with_whole_image_prediction(whole_body_models: Path, lower_body_cases: Path,
                                                    cascade_run: tuple[Path, LoadCounter], tmp_path: Path) -> None:
    """As users run it (repair on), per subdivision model and structure, against every model on the
    whole image: inside the model's box Dice >= 0.99; outside it the cascade labels nothing, so
    every difference there must be a voxel the whole-image run labelled where the phantom has no
    such structure (a false positive of the briefly trained model, never anatomy the box cut off),
    and the cascade's Dice against the phantom's truth is never lower. Where the task maps agree,
    the merged whole-body maps agree too."""
    cascade_out, _ = cascade_run
    whole_out = tmp_path / "whole"
    _predict(lower_body_cases, whole_out, whole_body_models, "--no-cascade")
    compared = {"hip": 0, "lower_limb": 0}
    for case, seed in (("case_0", 410), ("case_1", 411)):
        sidecar = json.loads((cascade_out / f"{case}.json").read_text(encoding="utf-8"))
        agree = None
        for name in ("hip", "lower_limb"):
            task = REGISTRY[name]
            cascade_map = _read(cascade_out / case / f"{name}.nii.gz")
            whole_map = _read(whole_out / case / f"{name}.nii.gz")
            truth = sitk.GetArrayFromImage(with_soft_tissue_above(
                lower_body_phantom(seed).labels_for(task.labels), SOFT_TISSUE_ABOVE_MM, seed, labels=True))
            assert truth.shape == cascade_map.shape
            (x0, x1), (y0, y1), (z0, z1) = sidecar["cascade"]["runs"][name]["box"]
            box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
            present = [v for v in task.labels if (whole_map == v).any() or (cascade_map == v).any()]
            assert len(present) >= 2, f"{name} found {present} in {case}"
            inside = dice_per_label(whole_map[box], cascade_map[box], {v: task.labels[v] for v in present})
            to_truth = {"cascade": dice_per_label(truth, cascade_map, {v: task.labels[v] for v in present}),
                        "whole": dice_per_label(truth, whole_map, {v: task.labels[v] for v in present})}
            for value, score in inside.items():
                assert score >= 0.99, f"{case} {task.labels[value]}: Dice {score:.4f} cascade vs whole image in its box"
                assert to_truth["cascade"][value] >= to_truth["whole"][value] - 1e-9, (case, task.labels[value],
                                                                                       to_truth)
                compared[name] += 1
            outside = cascade_map != whole_map
            outside[box] = False
            lost = outside & (truth > 0) & (truth == whole_map)
            assert not lost.any(), f"{name}: the cascade dropped {int(lost.sum())} true voxels outside its box in {case}"
            agree = (cascade_map == whole_map) if agree is None else agree & (cascade_map == whole_map)
        merged, whole_merged = _read(cascade_out / f"{case}.nii.gz"), _read(whole_out / f"{case}.nii.gz")
        assert np.mean(merged[agree] == whole_merged[agree]) >= 0.9999
    assert compared["hip"] >= 4 and compared["lower_limb"] >= 4


def test_merged_map_sidecar_and_geometry(cascade_run: tuple[Path, LoadCounter], lower_body_cases: Path) -> None:
    out, _ = cascade_run
    table = whole_body_table()
    ct = sitk.ReadImage(str(lower_body_cases / "case_0.nii.gz"))
    merged_image = sitk.ReadImage(str(out / "case_0.nii.gz"))
    _assert_same_grid(merged_image, ct)
    merged = sitk.GetArrayFromImage(merged_image)
    sidecar = json.loads((out / "case_0.json").read_text())
    assert sidecar["task"] == TASKS and sidecar["tasks"] == ["skeleton", "hip", "lower_limb"]
    assert sidecar["dataset_id"] is None
    assert {k: v["dataset_id"] for k, v in sidecar["models"].items()} == {"skeleton": 106, "hip": 114,
                                                                           "lower_limb": 112}
    assert sidecar["labels"] == {str(v): n for v, n in table.labels_of_tasks(["skeleton", "hip", "lower_limb"]).items()}
    assert sidecar["task_maps"] == {"skeleton": "case_0/skeleton.nii.gz", "hip": "case_0/hip.nii.gz",
                                    "lower_limb": "case_0/lower_limb.nii.gz"}
    assert set(sidecar["postprocess"]) == {"skeleton", "hip", "lower_limb"}
    values = set(np.unique(merged).tolist()) - {0}
    assert values <= {int(v) for v in sidecar["labels"]}
    # The finer models claim the pelvis and the femurs: their whole-body values are in the map.
    assert values & {71, 72, 73} and values & {74, 75}
    # The merge rule on the real maps: where only the hip model labelled a voxel it has the hip
    # value; where hip and lower_limb both did, the skeleton's class decides, else hip precedes.
    hip_map = _read(out / "case_0" / "hip.nii.gz")
    limb_map = _read(out / "case_0" / "lower_limb.nii.gz")
    skeleton_map = _read(out / "case_0" / "skeleton.nii.gz")
    hip_lut, limb_lut = table.lookup(REGISTRY["hip"]), table.lookup(REGISTRY["lower_limb"])
    only_hip = (hip_map > 0) & (limb_map == 0)
    assert only_hip.any() and np.array_equal(merged[only_hip], hip_lut[hip_map[only_hip]])
    both = (hip_map > 0) & (limb_map > 0)
    limb_wins = both & (skeleton_map == 6)
    assert np.array_equal(merged[limb_wins], limb_lut[limb_map[limb_wins]])
    assert np.array_equal(merged[both & ~limb_wins], hip_lut[hip_map[both & ~limb_wins]])
    # Skeleton voxels that no finer model claims keep their coarse value.
    unclaimed = (skeleton_map > 0) & (hip_map == 0) & (limb_map == 0)
    assert np.array_equal(merged[unclaimed], skeleton_map[unclaimed])


def test_a_subdivision_model_is_skipped_and_not_loaded_when_its_class_is_absent(
        whole_body_models: Path, tmp_path: Path) -> None:
    # Case "a_lumbar": the lumbar spine above pelvis and femurs (no hip, no lower_limb class);
    # case "b_lower_body": pelvis and femurs. Both continue upwards like the training images. The
    # arms are painted over in both (the fixture's skeleton model has seen too little of them to
    # name them reliably).
    phantom = lower_body_phantom(412)
    painted = without(phantom, ["humerus_left", "humerus_right"])
    top = max(int(np.argwhere(phantom.structures[n])[:, 2].max())
              for n in ("hip_left", "hip_right", "femur_left", "femur_right"))
    (tmp_path / "in").mkdir()
    for name, ct in (("a_lumbar", painted.ct[:, :, top + 1:]), ("b_lower_body", painted.ct)):
        taller = with_soft_tissue_above(ct, SOFT_TISSUE_ABOVE_MM, 412)
        sitk.WriteImage(taller, str(tmp_path / "in" / f"{name}.nii.gz"))
    counter = LoadCounter()
    result = api.predict(task=TASKS, input=tmp_path / "in", output=tmp_path / "out",
                         models_dir=whole_body_models, device="cpu", listener=counter, keep_task_maps=True)
    assert result.ok and result.count("done") == 2
    # The lumbar case needed only the skeleton model; the next case loaded the two others, once.
    assert counter.loads_by_case == {"a_lumbar": ["skeleton"], "b_lower_body": ["hip", "lower_limb"]}
    lumbar = json.loads((tmp_path / "out" / "a_lumbar.json").read_text())
    skeleton_map = _read(tmp_path / "out" / "a_lumbar" / "skeleton.nii.gz")
    assert not np.isin(skeleton_map, [5, 6]).any() and (skeleton_map == 2).any()
    assert lumbar["cascade"]["skipped"] == ["hip", "lower_limb"]
    assert lumbar["cascade"]["runs"]["lower_limb"] == {"status": "skipped",
                                                       "reason": "no lower_limb in the skeleton map"}
    assert lumbar["cascade"]["runs"]["hip"] == {"status": "skipped", "reason": "no hip in the skeleton map"}
    assert set(lumbar["task_maps"]) == {"skeleton"}
    assert not (tmp_path / "out" / "a_lumbar" / "hip.nii.gz").exists()
    merged = _read(tmp_path / "out" / "a_lumbar.nii.gz")
    assert set(np.unique(merged).tolist()) <= {0, 2}
    lower = json.loads((tmp_path / "out" / "b_lower_body.json").read_text())
    assert lower["cascade"]["skipped"] == [] and lower["cascade"]["runs"]["lower_limb"]["status"] == "ran"


def test_output_keeps_a_non_ras_grid_and_matches_the_ras_run(whole_body_models: Path, tmp_path: Path) -> None:
    ct = lower_body_phantom(413).ct
    for codes in ("RAS", "PIR"):
        (tmp_path / codes).mkdir()
        sitk.WriteImage(reorient(ct, codes), str(tmp_path / codes / "case.nii.gz"))
        result = api.predict(task=TASKS, input=tmp_path / codes, output=tmp_path / f"out_{codes}",
                             models_dir=whole_body_models, device="cpu")
        assert result.ok
    pir_in = sitk.ReadImage(str(tmp_path / "PIR" / "case.nii.gz"))
    pir_out = sitk.ReadImage(str(tmp_path / "out_PIR" / "case.nii.gz"))
    _assert_same_grid(pir_out, pir_in)
    ras_out = sitk.ReadImage(str(tmp_path / "out_RAS" / "case.nii.gz"))
    back = sitk.GetArrayFromImage(reorient(pir_out, "RAS"))
    same = float((back == sitk.GetArrayFromImage(ras_out)).mean())
    assert same >= 0.999, f"only {same:.4f} of the voxels agree between the PIR and the RAS run"


def test_all_with_missing_models_names_them_in_one_line(whole_body_models: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(lower_body_phantom(414).ct, str(tmp_path / "in" / "case.nii.gz"))
    result = runner.invoke(app, ["predict", "--task", "all", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                 "--models-dir", str(whole_body_models), "--device", "cpu", "--quiet"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "no model for task(s) vertebrae (dataset 108), ribs (dataset 998), upper_limb (dataset 113), " \
           "organs (dataset 999)" in " ".join(result.output.split())
    for present in ("skeleton (", "hip (", "lower_limb ("):
        assert present not in errors[0]
    assert not (tmp_path / "out" / "case.nii.gz").exists()


def test_continue_counts_a_case_complete_only_for_the_same_task_set(whole_body_models: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sitk.WriteImage(lower_body_phantom(415).ct, str(tmp_path / "in" / "case.nii.gz"))
    common = {"input": tmp_path / "in", "output": tmp_path / "out", "models_dir": whole_body_models, "device": "cpu"}
    assert api.predict(task="skeleton,hip", **common).count("done") == 1
    again = api.predict(task=["hip", "skeleton"], resume=True, **common)
    assert [r.status for r in again.results] == ["skipped"]
    more = api.predict(task="skeleton,hip,lower_limb", resume=True, **common)
    assert [r.status for r in more.results] == ["done"]
    assert json.loads((tmp_path / "out" / "case.json").read_text())["task"] == TASKS
    single = api.predict(task="hip", resume=True, **common)
    assert [r.status for r in single.results] == ["done"]
    assert json.loads((tmp_path / "out" / "case.json").read_text())["task"] == "hip"
