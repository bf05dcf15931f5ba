"""``--precision auto|fp32|bf16``: the choice per machine (the detection replaced at its boundary,
and the real one on this machine), the model's check that keeps it in float32, float32 as nnU-Net's
own sliding window, and bfloat16 labels against float32 ones on the real fixture model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoorgan import api, engine
from autoorgan.demo import DEMO_SPACING
from autoorgan.demo.phantom import make_phantom
from autoorgan.engine import precision
from autoorgan.engine.agreement import measure_agreement, simulated_bf16
from autoorgan.engine.precision import BF16_CALL, Agreement, Bf16Support, resolve_precision
from autoorgan.errors import InputError
from autoorgan.models.store import require_model
from autoorgan.options import Precision, PredictOptions
from autoorgan.registry.tasks import load_registry
from fixture_model import FIXTURE_STRUCTURES, FIXTURE_TASK, pelvis_phantom

CPU = torch.device("cpu")
NATIVE = Bf16Support(onednn=True, flags=("avx512_bf16", "amx_bf16"))
MISSING = Bf16Support(onednn=False, flags=())


def _machine(monkeypatch: pytest.MonkeyPatch, support: Bf16Support) -> None:
    """This process's CPU, as the precision choice sees it."""
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: support)


def _failing_check(folder: Path) -> None:
    precision.write_precision_check(folder, Agreement({"case": {1: 0.95, 2: 0.999}}), fold=0)


# -- the choice -----------------------------------------------------------------------------------


def test_cpu_flags_come_from_the_first_processor_of_cpuinfo() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert precision.cpu_flags(text) == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    assert precision.cpu_flags("Features\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert precision.cpu_flags("") == set()


@pytest.mark.parametrize(("support", "expected"), [
    (NATIVE, "bf16"),
    (MISSING, "fp32"),
    (Bf16Support(onednn=True, flags=()), "fp32"),  # oneDNN's bf16 without the hardware: emulated
    (Bf16Support(onednn=False, flags=("amx_bf16",)), "fp32"),  # a torch whose oneDNN cannot use it
], ids=["native", "missing", "onednn-only", "flags-only"])
def test_auto_runs_bf16_only_where_the_cpu_has_it_natively(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          support: Bf16Support, expected: str) -> None:
    _machine(monkeypatch, support)
    choice = resolve_precision("auto", CPU, tmp_path)
    assert choice.precision == expected and choice.reason.startswith("auto: ")
    assert ("no native bfloat16" in choice.reason) == (expected == "fp32")


def test_a_model_whose_check_failed_stays_in_fp32_under_auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _machine(monkeypatch, NATIVE)
    _failing_check(tmp_path)
    check = json.loads((tmp_path / precision.CHECK_FILE).read_text(encoding="utf-8"))["bf16"]
    assert check["agrees"] is False and check["min_dice"] == 0.95 and check["fold"] == "0"
    choice = resolve_precision("auto", CPU, tmp_path)
    assert choice.precision == "fp32" and "check" in choice.reason and "min Dice 0.9500" in choice.reason
    # An explicit request is obeyed; a passing check lets auto use bf16.
    assert resolve_precision("bf16", CPU, tmp_path).precision == "bf16"
    precision.write_precision_check(tmp_path, Agreement({"case": {1: 0.995, 2: 1.0, 3: 1.0}}), fold=0)
    assert resolve_precision("auto", CPU, tmp_path).reason.endswith("the model's bfloat16 check passed")
    # A check written by hand, or one that cannot be read, counts as failed.
    (tmp_path / precision.CHECK_FILE).write_text('{"bf16": {"agrees": false}}', encoding="utf-8")
    assert resolve_precision("auto", CPU, tmp_path).precision == "fp32"
    (tmp_path / precision.CHECK_FILE).write_text("{not json", encoding="utf-8")
    assert resolve_precision("auto", CPU, tmp_path).precision == "fp32"


def test_explicit_choices_and_other_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, MISSING)
    assert resolve_precision("fp32", CPU) == precision.PrecisionChoice("fp32", "requested")
    emulated = resolve_precision("bf16", CPU)
    assert emulated.precision == "bf16" and emulated.emulated and "emulated" in emulated.reason
    _machine(monkeypatch, NATIVE)
    assert not resolve_precision("bf16", CPU).emulated
    for asked in ("auto", "fp32", "bf16"):  # CUDA keeps nnU-Net's autocast
        assert resolve_precision(asked, torch.device("cuda")).precision == "fp16"
        assert resolve_precision(asked, torch.device("mps")).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_the_option_is_parsed_and_checked() -> None:
    assert PredictOptions().precision is Precision.AUTO
    assert PredictOptions(precision="BF16").precision is Precision.BF16
    assert PredictOptions(precision="fp32").speed().precision == "fp32"
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16, got 'half'"):
        PredictOptions(precision="half")


def test_agreement_needs_both_the_minimum_and_the_median() -> None:
    assert Agreement({"a": {1: 0.99, 2: 1.0, 3: 1.0}}).agrees
    assert not Agreement({"a": {1: 0.989, 2: 1.0, 3: 1.0}}).agrees  # the minimum
    assert not Agreement({"a": {1: 0.995, 2: 0.998, 3: 1.0}}).agrees  # the median
    assert not Agreement({"a": {}}).agrees  # nothing compared: nothing shown
    assert precision.dice_scores(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), [1, 2, 3]) == {
        1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}


def test_the_real_detection_on_this_machine() -> None:
    """oneDNN's check and the CPU flags, read here independently; ``auto`` follows them (on the
    test machine, an AMD EPYC with AVX2 and no AVX-512 or AMX: float32)."""
    support = precision.cpu_bf16_support()
    assert support.onednn == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    try:
        listed = precision.cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8"))
    except OSError:
        listed = set()
    assert set(support.flags) == listed & set(precision.BF16_FLAGS)
    choice = resolve_precision("auto", CPU)
    assert choice.precision == ("bf16" if support.onednn and support.flags else "fp32"), choice.reason
    if not listed & set(precision.BF16_FLAGS):
        assert choice.precision == "fp32" and "no native bfloat16" in choice.reason


# -- the real fixture model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(trained_models: Path) -> Path:
    return require_model(load_registry()[FIXTURE_TASK], trained_models).folder


def _phantom(seed: int, margin: float | None = None) -> tuple[str, np.ndarray, tuple[float, float, float]]:
    if margin is None:
        image = pelvis_phantom(seed).ct
    else:  # a wider crop than the training phantoms': several tiles
        image = make_phantom(seed, spacing=DEMO_SPACING).crop_to(list(FIXTURE_STRUCTURES), margin).ct
    spacing = image.GetSpacing()
    return f"phantom_{seed}", sitk.GetArrayFromImage(image).astype(np.float32), (spacing[2], spacing[1], spacing[0])


@pytest.mark.e2e
def test_fp32_is_nnunets_own_sliding_window(model_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--precision fp32`` (and ``auto`` without native bfloat16) runs nnU-Net's own predictor: the
    same logits, bit for bit, as a plain ``nnUNetPredictor`` holding the same network."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    _machine(monkeypatch, MISSING)
    _, array, spacing = _phantom(43)
    for asked in ("fp32", "auto"):
        segmenter = engine.Segmenter(model_folder, 0, CPU, precision=asked, tile_batch=1)
        assert segmenter.precision == "fp32" and not segmenter._predictor.cpu_bf16
    ours = segmenter._predictor
    plain = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                            perform_everything_on_device=False, device=CPU, verbose=False, allow_tqdm=False)
    plain.manual_initialization(ours.network, ours.plans_manager, ours.configuration_manager,
                                ours.list_of_parameters, ours.dataset_json, ours.trainer_name,
                                (0,))  # mirroring on: the mirrored sum is compared too
    ours.allowed_mirroring_axes = (0,)
    preprocessor = ours.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case_npy(array[None], None, {"spacing": list(spacing)}, ours.plans_manager,
                                           ours.configuration_manager, ours.dataset_json)
    tensor = torch.from_numpy(data)
    assert torch.equal(ours.predict_logits_from_preprocessed_data(tensor),
                       plain.predict_logits_from_preprocessed_data(tensor))


@pytest.mark.e2e
def test_bf16_labels_agree_with_fp32_on_the_fixture_model(model_folder: Path) -> None:
    """Unseen phantoms (one of several tiles), bfloat16 against float32: min Dice >= 0.99 and
    median >= 0.999 per structure; the network really ran in bfloat16, but for the first encoder
    stage and the segmentation layer, which ran in float32."""
    images = [_phantom(41), _phantom(42), _phantom(44, margin=30.0)]
    bf16 = engine.Segmenter(model_folder, 0, CPU, precision="bf16")
    network = bf16._predictor.network
    kept = precision.float32_blocks(network)
    assert kept == ["encoder.stages.0", "decoder.seg_layers"]
    ran: dict[str, set[torch.dtype]] = {}
    for name, module in network.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            module.register_forward_hook(lambda _m, _a, out, name=name: ran.setdefault(name, set()).add(out.dtype))
    bf16.predict(*images[0][1:])
    in_fp32 = {name for name in ran if any(name.startswith(k + ".") for k in kept)}
    assert len(in_fp32) == 3 and all(ran[name] == {torch.float32} for name in in_fp32), ran
    assert len(ran) == 18 and all(ran[name] == {torch.bfloat16} for name in ran.keys() - in_fp32), ran
    agreement, maps = measure_agreement(model_folder, 0, images)
    assert len(maps) == 3 and all(len(np.unique(m)) == 4 for m in maps.values())  # all three bones found
    summary = agreement.summary()
    assert agreement.agrees, summary
    assert summary["min_dice"] >= 0.99 and summary["median_dice"] >= 0.999 and summary["scores"] == 9


@pytest.mark.e2e
def test_sidecar_and_run_record_say_which_precision_ran_and_why(trained_models: Path, model_folder: Path,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(pelvis_phantom(45).ct, str(inputs / "c.nii.gz"))
    # A machine with native bfloat16, and a copy of the model whose check failed: auto keeps it in fp32.
    _machine(monkeypatch, NATIVE)
    models = tmp_path / "models"
    shutil.copytree(trained_models, models)
    _failing_check(models / model_folder.relative_to(trained_models))

    def run(out: str, asked: str) -> tuple[dict, dict]:
        result = api.predict(task=FIXTURE_TASK, input=inputs, output=tmp_path / out, models_dir=models,
                             device="cpu", postprocess=False, precision=asked)
        assert [r.status for r in result.results] == ["done"]
        sidecar = json.loads((tmp_path / out / "c.json").read_text(encoding="utf-8"))
        record = json.loads(next((tmp_path / out).glob("autoorgan_run-part*.json")).read_text(encoding="utf-8"))
        return sidecar, record

    sidecar, record = run("auto", "auto")
    assert sidecar["precision"]["precision"] == "fp32" and "check" in sidecar["precision"]["reason"]
    assert record["options"]["precision"] == "auto"
    assert record["options"]["precision_resolved"] == {FIXTURE_TASK: sidecar["precision"]}
    assert sidecar["made_with"]["models"][FIXTURE_TASK]["precision"] == "fp32"
    sidecar, record = run("bf16", "bf16")
    assert sidecar["precision"] == {"precision": "bf16", "reason": sidecar["precision"]["reason"]}
    assert sidecar["precision"]["reason"].startswith("requested")
    assert record["options"]["precision"] == "bf16" and sidecar["made_with"]["prediction"]["precision"] == "bf16"


@pytest.mark.e2e
def test_several_tasks_record_each_models_precision(whole_body_models: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The merged map's sidecar gives each model that ran its precision and reason: on a machine
    with native bfloat16, ``auto`` runs the skeleton model in bfloat16 and keeps the two whose
    check failed in float32."""
    from multitask_fixtures import lower_body_phantom

    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(lower_body_phantom(61).ct, str(inputs / "c.nii.gz"))
    models = tmp_path / "models"
    shutil.copytree(whole_body_models, models)
    registry = load_registry()
    for task in ("hip", "lower_limb"):
        _failing_check(require_model(registry[task], models).folder)
    _machine(monkeypatch, NATIVE)
    result = api.predict(task=["skeleton", "hip", "lower_limb"], input=inputs, output=tmp_path / "out",
                         models_dir=models, device="cpu", postprocess=False)
    assert result.ok
    sidecar = json.loads((tmp_path / "out" / "c.json").read_text(encoding="utf-8"))
    ran = {name for name, run in sidecar["cascade"]["runs"].items() if run["status"] == "ran"}
    assert ran == {"skeleton", "hip", "lower_limb"}
    precisions = {name: sidecar["models"][name]["precision"] for name in ran}
    assert {name: p["precision"] for name, p in precisions.items()} == {"skeleton": "bf16", "hip": "fp32",
                                                                        "lower_limb": "fp32"}
    assert "native bfloat16" in precisions["skeleton"]["reason"] and "check" in precisions["hip"]["reason"]
    # made_with names the bfloat16 call, so --continue redoes cases made by another one.
    assert sidecar["made_with"]["models"]["skeleton"]["precision"] == f"bf16 ({BF16_CALL})"


# -- simulated bfloat16 autocast ----------------------------------------------------------------------


def _small_unet_tail() -> torch.nn.Module:
    """The layer kinds of nnU-Net's U-Net: convolution, instance norm, leaky ReLU, transposed
    convolution, 1×1×1 segmentation layer."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.InstanceNorm3d(8, affine=True),
                               torch.nn.LeakyReLU(0.01, inplace=True), torch.nn.ConvTranspose3d(8, 8, 2, stride=2),
                               torch.nn.Conv3d(8, 3, 1)).eval()


def _is_bf16(t: torch.Tensor) -> bool:
    return torch.equal(t, t.to(torch.bfloat16).float())


def test_simulated_bf16_computes_what_cpu_autocast_computes() -> None:
    """Layer by layer the simulation gives autocast's bfloat16 numbers (up to the float32
    accumulators' order: a last-bit difference in a few elements); the output is bfloat16-valued,
    far from float32's, and the weights are float32 again afterwards."""
    net = _small_unet_tail()
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    with torch.inference_mode():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            real = net(x).float()
        with simulated_bf16(net):
            simulated = net(x)
        assert torch.equal(net(x), reference)
    assert _is_bf16(simulated) and not _is_bf16(reference)
    assert (simulated == real).float().mean() >= 0.99
    assert torch.allclose(simulated, real, rtol=2**-6, atol=1e-3)
    assert (simulated != reference).float().mean() > 0.5


def test_simulated_transposed_bias_follows_the_kernels() -> None:
    """Without native bfloat16 PyTorch rounds a transposed convolution's product, then adds the bias
    and rounds again ("fallback"); oneDNN adds it in the accumulator ("fused")."""
    torch.manual_seed(0)
    up = torch.nn.ConvTranspose3d(16, 8, 2, stride=2).eval()
    x = torch.randn(1, 16, 6, 6, 6)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            real = up(x).float()
        with simulated_bf16(up, transposed_bias="fallback"):
            fallback = up(x)
        with simulated_bf16(up, transposed_bias="fused"):
            fused = up(x)
    assert (fallback == real).float().mean() >= 0.999
    assert (fused != real).float().mean() > 0.05
    with pytest.raises(ValueError, match="transposed_bias"), simulated_bf16(up, transposed_bias="native"):
        pass


def test_simulated_bf16_keeps_named_blocks_in_fp32() -> None:
    net = _small_unet_tail()
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        with simulated_bf16(net, keep_fp32=["4"]):  # the segmentation layer
            head_fp32 = net(x)
        with simulated_bf16(net):
            all_bf16 = net(x)
    assert _is_bf16(all_bf16) and not _is_bf16(head_fp32)
    assert torch.allclose(head_fp32, all_bf16, rtol=2**-6, atol=1e-2)
    with pytest.raises(ValueError, match="no such submodule: decoder"), simulated_bf16(net, keep_fp32=["decoder"]):
        pass


@pytest.mark.e2e
def test_the_simulation_matches_real_autocast_on_the_fixture_model(model_folder: Path) -> None:
    """On tiles of the trained fixture network, plain autocast and the engine's bfloat16 call (its
    float32 blocks kept): the simulation is several times closer to real autocast than either is
    to float32, and as far from float32 as real autocast is."""
    network = engine.Segmenter(model_folder, 0, CPU, precision="fp32")._predictor.network.eval()
    x = torch.randn(2, 1, 16, 24, 32, generator=torch.Generator().manual_seed(0)) * 2
    for kept in ([], precision.float32_blocks(network)):
        with torch.inference_mode():
            reference = network(x)
            with torch.autocast("cpu", dtype=torch.bfloat16), precision.blocks_in_float32(network, kept):
                real = network(x).float()
            with simulated_bf16(network, kept):
                simulated = network(x)
        to_real = float((simulated - real).abs().mean())
        real_to_fp32, simulated_to_fp32 = float((real - reference).abs().mean()), float((simulated - reference).abs().mean())
        assert to_real < 0.5 * real_to_fp32, (kept, to_real, real_to_fp32)
        assert 0.8 < simulated_to_fp32 / real_to_fp32 < 1.25, (kept, simulated_to_fp32, real_to_fp32)
        assert (simulated.argmax(1) != real.argmax(1)).float().mean() <= 0.001
    # The agreement measured by simulation, with the engine's float32 blocks, at float32 speed.
    agreement, maps = measure_agreement(model_folder, 0, [_phantom(41)], simulate=True)
    assert len(np.unique(maps["phantom_41"])) == 4 and agreement.summary()["scores"] == 3
    assert agreement.min_dice >= 0.99, agreement.summary()
