"""The network on the CPU against the hardware's limit, float32 and bfloat16; and bfloat16 labels
against float32 labels of trained models.

    python benchmarks/precision_benchmark.py machine
    python benchmarks/precision_benchmark.py speed --work /tmp/precision [--size 128 | --patch] [--repeats 2]
        [--levers] [--order forward|reverse|both]
    python benchmarks/precision_benchmark.py agreement --work /tmp/precision [--write-check]
    python benchmarks/precision_benchmark.py simulate --work /tmp/precision [--reuse] [--policies all]
        [--real-policies autocast,first_stage+head] [--bench-models /tmp/precision/models [--default-check 32]]

``machine``: the CPU (model, clock, flags), its bfloat16 support as ``--precision auto`` sees it
(:func:`autoorgan.engine.precision.cpu_bf16_support`) and its peak FLOP/s in float32 and bfloat16,
computed as ``threads × clock × FLOP per cycle and core`` (:func:`flop_per_cycle`: the widest
FMA the flags list, two FMA units per core assumed; AVX512-BF16's ``VDPBF16PS`` does twice
AVX-512's float32 work per instruction; an AMX tile multiply 1024 bfloat16 FLOP per cycle).

``speed``: nnU-Net's default 3d_fullres architecture (the plans nnU-Net makes for a body CT at
1.5 mm, RANDOM weights; ``bench_models.py``) on one ``size``³ tile (``--patch``: the model's
own patch). Its FLOPs per tile are counted by ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and transposed convolutions, 2 FLOP per multiply-add; norms and activations are
not counted). Each setting is timed (median seconds per tile of ``repeats`` calls after one
untimed call) in the order given and, with ``--order both``, again in the reverse order in the
same process: a lever counts only if it wins in both. Settings: float32, bfloat16 autocast, and
with ``--levers`` bfloat16 with the channels-last 3D layout and bfloat16 under ``torch.compile``
(compile time reported apart). Achieved GFLOP/s = FLOPs per tile / seconds per tile; the ratio
is achieved / peak. The largest logit difference and the share of voxels whose argmax differs
from float32 are reported per setting (random weights: a bound on numerics, not on labels). Each
time is given as wall seconds and as the process's CPU seconds divided by its threads: on a
shared machine the second is roughly what the call takes with the cores to itself.

``agreement``: the fixture models of the tests (``tests/data/models``: the hip fixture model and
the skeleton, hip and lower_limb models of the multi-task tests), each run by ``autoorgan
predict`` with ``--precision fp32`` and ``--precision bf16`` on phantoms none of them was trained
on and on the real ``example_ct`` (``$AUTOORGAN_TEST_DATA``, default ``../shared/data/real``).
Dice of bfloat16 against float32 per structure and case; a model agrees with min >= 0.99 and
median >= 0.999. ``--write-check`` stores the result beside each model
(:func:`autoorgan.engine.precision.write_precision_check`), which ``--precision auto`` reads: a
model that fails stays in float32. On a CPU without native bfloat16 the bfloat16 runs are
emulated, slower: the same arithmetic but for a transposed convolution's bias, added after the
product is rounded (``simulate`` measures both; the labels hardly move).

``simulate``: bfloat16 autocast simulated at float32 speed
(:func:`autoorgan.engine.agreement.simulated_bf16`: each convolution's inputs, weights and bias
rounded to bfloat16, the convolution run in float32, its output rounded to bfloat16, and so every
norm's and activation's output), checked against real autocast, and mixed policies that keep parts
of the U-Net in float32 (:data:`POLICIES`; the engine runs :data:`ENGINE_POLICY`). On the same
fixture models and cases as ``agreement``: float32 labels, real autocast labels for the policies
in ``--real-policies`` (plain ``autocast`` is run with the engine's float32 blocks switched off),
simulated labels for every policy (plain autocast also with a transposed convolution's bias added
as oneDNN adds it, ``fused``); Dice per structure and case and the voxels whose label changed,
against float32 and between simulation and real autocast. Per model, the simulation against real
autocast on two random tiles of the network alone (``network_check``), and the share of a tile's
FLOPs each policy keeps in float32 (torch's flop counter on the meta device), also for nnU-Net's
default architecture with ``--bench-models`` (``--default-check``: the network check on it too,
random weights). ``--reuse`` takes label maps already under ``--work/out`` (nothing is rerun).

Every result names the CPU, its flags and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

#: CPU flags quoted with every figure.
QUOTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_vnni", "avx_vnni")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def flop_per_cycle(flags: set[str]) -> dict[str, Any]:
    """FLOP per cycle and core of the widest float32 FMA and of native bfloat16, from the flags.

    Two FMA units per core are assumed (Intel server cores since Skylake-SP Gold 6xxx, AMD
    Zen 2-4; some Xeon Silver/Bronze have one). float32: AVX-512 16 lanes, AVX2 8 lanes, × 2
    FLOP per FMA × 2 units. bfloat16: ``amx_bf16`` 1024 (one 16×32 by 32×16 tile product,
    16·16·32·2 FLOP, every 16 cycles); ``avx512_bf16`` 128 (``VDPBF16PS``: 16 lanes × 2 products
    × 2 FLOP × 2 units); neither: no native bfloat16 (emulated: converted to float32, at most the
    float32 peak).
    """
    units = 2
    if "avx512f" in flags:
        fp32, how = 16 * 2 * units, "AVX-512 FMA: 16 lanes x 2 FLOP x 2 units"
    elif "fma" in flags and "avx2" in flags:
        fp32, how = 8 * 2 * units, "AVX2 FMA: 8 lanes x 2 FLOP x 2 units"
    else:
        fp32, how = 4 * 2, "SSE: 4 lanes x (mul + add)"
    if "amx_bf16" in flags:
        bf16, bf16_how = 1024, "AMX-BF16: 16x16x32 x 2 FLOP per 16 cycles"
    elif "avx512_bf16" in flags:
        bf16, bf16_how = 16 * 2 * 2 * units, "AVX512-BF16 VDPBF16PS: 16 lanes x 2 products x 2 FLOP x 2 units"
    else:
        bf16, bf16_how = None, "no native bfloat16 (emulated: at most the float32 peak)"
    return {"fp32": fp32, "fp32_how": how, "bf16": bf16, "bf16_how": bf16_how, "fma_units_assumed": units}


def describe_machine(threads: int | None = None, mhz: float | None = None) -> dict[str, Any]:
    """The CPU, its clock, the flags that matter, bfloat16 support and the peak FLOP/s of ``threads``
    (at ``mhz`` where given: a virtual machine may report its base clock only)."""
    import torch

    from autoorgan.engine.precision import cpu_bf16_support, cpu_flags

    text = _cpuinfo()
    flags = cpu_flags(text)
    threads = threads or torch.get_num_threads()
    mhz_text = _field(text, "cpu MHz")
    reported = float(mhz_text) if mhz_text else None
    clock = "/proc/cpuinfo 'cpu MHz', the clock the kernel reports; boost may run higher"
    if mhz is None:
        mhz = reported
    else:
        clock = f"given with --mhz (the kernel reports {reported} MHz)"
    per_cycle = flop_per_cycle(flags)
    support = cpu_bf16_support()
    peak = {}
    if mhz:
        peak["fp32_gflops"] = round(threads * mhz / 1000 * per_cycle["fp32"], 1)
        peak["bf16_gflops"] = round(threads * mhz / 1000 * per_cycle["bf16"], 1) if per_cycle["bf16"] else None
        peak["how"] = f"{threads} thread(s) x {mhz:.0f} MHz ({clock}) x FLOP per cycle and core"
    return {
        "cpu": _field(text, "model name") or platform.processor() or platform.machine(),
        "cores_visible": os.cpu_count(), "threads_used": threads, "cpu_mhz": mhz, "cpu_mhz_reported": reported,
        "flags": sorted(f for f in QUOTED_FLAGS if f in flags),
        "flags_missing": sorted(f for f in QUOTED_FLAGS if f not in flags),
        "bf16_support": {"onednn": support.onednn, "flags": list(support.flags), "native": support.native},
        "flop_per_cycle_and_core": per_cycle, "peak": peak,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }


# -- speed ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _precision(kind: str) -> Iterator[None]:
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind != "float32"):
        yield


def _time(run: Any, x: Any, kind: str, repeats: int, warm: bool) -> tuple[list[float], list[float], Any]:
    """Wall seconds and CPU seconds (all threads of the process) of ``repeats`` calls, and the
    last output. On a shared machine the CPU seconds divided by the threads are what the call
    would take with the cores to itself (roughly: caches are shared too)."""
    if not warm:
        with _precision(kind):
            run(x)
    times, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        with _precision(kind):
            out = run(x).float()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, cpu, out


def speed(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from bench_models import make_bench_model
    from torch.utils.flop_counter import FlopCounterMode

    from autoorgan import engine

    machine = describe_machine(mhz=args.mhz)
    bench = make_bench_model(args.work / "models")
    segmenter = engine.Segmenter(bench.model_folder, 0, torch.device("cpu"))
    network = segmenter._predictor.network.eval()
    shape = list(segmenter.patch_size) if args.patch else [args.size] * 3
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        network(x)
    flops = counter.get_total_flops()
    settings = ["float32", "bfloat16"] + (["bfloat16, channels-last 3D", "bfloat16, torch.compile"] if args.levers else [])
    orders = {"forward": settings, "reverse": settings[::-1]}
    chosen = ["forward", "reverse"] if args.order == "both" else [args.order]
    compiled: dict[str, Any] = {}
    warm: set[str] = set()
    times: dict[str, dict[str, float]] = {}
    cpu_times: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    outputs: dict[str, Any] = {}
    for order in chosen:
        for name in orders[order]:
            layout = torch.channels_last_3d if "channels-last" in name else torch.contiguous_format
            network.to(memory_format=layout)
            tile = x.contiguous(memory_format=layout)
            run: Any = network
            if "compile" in name:
                if "run" not in compiled:
                    start = time.perf_counter()
                    compiled["run"] = torch.compile(network)
                    with _precision("bfloat16"):
                        compiled["run"](tile)
                    compiled["seconds"] = round(time.perf_counter() - start, 1)
                    warm.add(name)
                run = compiled["run"]
            kind = "float32" if name == "float32" else "bfloat16"
            seconds, cpu, out = _time(run, tile, kind, args.repeats, name in warm)
            warm.add(name)
            times.setdefault(name, {})[order] = round(statistics.median(seconds), 2)
            cpu_times.setdefault(name, {})[order] = round(statistics.median(cpu) / threads, 2)
            outputs[name] = out
            print(f"{order:8s} {name:32s} {statistics.median(seconds):7.2f} s per tile, "
                  f"{statistics.median(cpu) / threads:7.2f} CPU s per thread, load {os.getloadavg()[0]:.1f}", flush=True)
    network.to(memory_format=torch.contiguous_format)
    reference = outputs["float32"]
    results = {}
    peak = machine["peak"]
    for name, by_order in times.items():
        gflops = flops / min(by_order.values()) / 1e9
        cpu_gflops = flops / min(cpu_times[name].values()) / 1e9
        kind_peak = peak.get("fp32_gflops") if name == "float32" else (peak.get("bf16_gflops") or None)
        results[name] = {
            "seconds_per_tile": by_order, "cpu_seconds_per_thread": cpu_times[name],
            "gflops_per_s": round(gflops, 1), "gflops_per_cpu_s_per_thread": round(cpu_gflops, 1),
            "of_peak": round(gflops / kind_peak, 3) if kind_peak else None,
            "of_peak_by_cpu_time": round(cpu_gflops / kind_peak, 3) if kind_peak else None,
            "speed_vs_float32": {o: round(times["float32"][o] / t, 2) for o, t in by_order.items() if o in times["float32"]},
            "speed_vs_float32_by_cpu_time": {o: round(cpu_times["float32"][o] / t, 2)
                                             for o, t in cpu_times[name].items() if o in cpu_times["float32"]},
            "max_abs_logit_difference": round(float((outputs[name] - reference).abs().max()), 4),
            "argmax_differs_from_float32": round(float((outputs[name].argmax(1) != reference.argmax(1)).float().mean()), 6),
        }
    if compiled:
        results["bfloat16, torch.compile"]["compile_seconds"] = compiled["seconds"]
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"benchmark": "precision speed", "measured": date.today().isoformat(), "machine": machine,
            "model": "nnU-Net's default 3d_fullres architecture (bench_models.py), RANDOM weights",
            "features_per_stage": segmenter._predictor.configuration_manager.network_arch_init_kwargs.get(
                "features_per_stage"),
            "tile": "x".join(map(str, shape)), "flops_per_tile": flops,
            "tflop_per_tile": round(flops / 1e12, 3), "repeats": args.repeats, "results": results}


# -- agreement ------------------------------------------------------------------------------------------


def _real_ct() -> Path:
    data = Path(os.environ.get("AUTOORGAN_TEST_DATA", ROOT.parent / "shared" / "data" / "real"))
    return data / "totalsegmentator" / "example_ct.nii.gz"


def _inputs(work: Path, real_for: set[str]) -> dict[str, Path]:
    """Folders of cases per kind of phantom: phantoms none of the fixture models was trained on,
    and (for the kinds in ``real_for``) the real example CT."""
    import SimpleITK as sitk

    from fixture_model import pelvis_phantom
    from multitask_fixtures import lower_body_phantom

    folders = {name: work / f"in_{name}{'_real' if name in real_for else ''}" for name in ("pelvis", "lower_body")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for seed in (201, 202, 203):  # written once: another run may be reading them
        if not (path := folders["pelvis"] / f"pelvis_{seed}.nii.gz").exists():
            sitk.WriteImage(pelvis_phantom(seed).ct, str(path))
    for seed in (301, 302):
        if not (path := folders["lower_body"] / f"lower_body_{seed}.nii.gz").exists():
            sitk.WriteImage(lower_body_phantom(seed).ct, str(path))
    real = _real_ct()
    if real.is_file():
        for name in real_for:
            link = folders[name] / "example_ct.nii.gz"
            if not link.exists():
                link.symlink_to(real.resolve())
    else:
        print(f"note: {real} missing: phantoms only", file=sys.stderr)
    return folders


def _model_groups(args: argparse.Namespace) -> tuple[dict[str, Any], list[str], set[str], dict[str, Path]]:
    """The fixture model groups (name → models folder, archives, tasks, kind of input), the groups
    chosen by ``--groups``, the kinds of input that add ``example_ct`` (``--real``) and the input
    CTs."""
    from fixture_model import FIXTURE_ARCHIVES

    groups = {
        "fixture": (args.work / "fixture_models", FIXTURE_ARCHIVES["trained_models"], ["hip"], "pelvis"),
        "whole_body": (args.work / "whole_body_models", FIXTURE_ARCHIVES["whole_body_models"],
                       ["skeleton", "hip", "lower_limb"], "lower_body"),
    }
    chosen = [g for g in args.groups.split(",") if g]
    real_for = {groups[g][3] for g in args.real.split(",") if g}
    return groups, chosen, real_for, _inputs(args.work, real_for)


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk

    from autoorgan import api
    from autoorgan.engine.precision import Agreement, dice_scores, write_precision_check
    from autoorgan.models.store import require_model
    from autoorgan.registry.tasks import load_registry
    from fixture_model import install_fixture_archives

    machine = describe_machine()
    registry = load_registry()
    groups, chosen, real_for, inputs = _model_groups(args)
    results: dict[str, Any] = {}
    for group in chosen:
        models, archives, tasks, cases = groups[group]
        if not models.is_dir():
            install_fixture_archives(archives, models)
        for task in tasks:
            maps: dict[str, dict[str, np.ndarray]] = {}
            seconds = {}
            for kind in ("fp32", "bf16"):
                out = args.work / "out" / f"{group}{'_real' if cases in real_for else ''}" / task / kind
                start = time.perf_counter()
                result = api.predict(task=task, input=inputs[cases], output=out, models_dir=models, device="cpu",
                                     postprocess=False, precision=kind)
                seconds[kind] = round(time.perf_counter() - start, 1)
                if not result.ok:
                    raise SystemExit(f"{group}/{task} {kind}: {[r.error for r in result.failed]}")
                maps[kind] = {path.name.removesuffix(".nii.gz"): sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                              for path in sorted(out.glob("*.nii.gz"))}
            labels = registry[task].labels
            dice: dict[str, dict[int, float]] = {}
            for case, reference in maps["fp32"].items():
                dice[case] = dice_scores(reference, maps["bf16"][case], sorted(labels))
            measured = Agreement(dice)
            entry = {**measured.summary(), "seconds": seconds,
                     "lowest": sorted(((round(s, 5), c, labels[v]) for c, d in dice.items() for v, s in d.items()))[:3],
                     "per_case_min": {c: round(min(d.values()), 5) if d else None for c, d in dice.items()}}
            if args.write_check:
                folder = require_model(registry[task], models).folder
                entry["check_written"] = str(write_precision_check(folder, measured, fold=registry[task].fold,
                                                                   note="precision_benchmark.py agreement"))
            results[f"{group}/{task}"] = entry
            print(f"{group}/{task}: min {entry['min_dice']:.5f}, median {entry['median_dice']:.5f}, "
                  f"agrees: {entry['agrees']}, seconds {seconds}", flush=True)
    return {"benchmark": "precision agreement", "measured": date.today().isoformat(), "machine": machine,
            "method": "autoorgan predict --precision fp32 and --precision bf16 (emulated where the CPU lacks it), "
                      "no repair; Dice of bf16 against fp32 per structure present in either map, per case",
            "results": results}


# -- simulate -------------------------------------------------------------------------------------------

#: Mixed policies for nnU-Net's U-Net (``PlainConvUNet``): the parts kept in float32
#: (:func:`policy_modules`), everything else under bfloat16 autocast.
POLICIES: dict[str, tuple[str, ...]] = {
    "autocast": (),
    "head": ("head",),
    "first_block": ("first_block",),
    "first_block+head": ("first_block", "head"),
    "last_block+head": ("last_block", "head"),
    "first_stage+head": ("first_stage", "head"),
    "first_block+last_block+head": ("first_block", "last_block", "head"),
    "first_stage+last_block+head": ("first_stage", "last_block", "head"),
    "last_stage+head": ("last_stage", "head"),
}
#: The policy the engine's bfloat16 call runs (:func:`autoorgan.engine.precision.float32_blocks`).
ENGINE_POLICY = "first_stage+head"


def policy_modules(network: Any, policy: str) -> list[str]:
    """Submodule names of ``network`` (nnU-Net's U-Net) that ``policy`` keeps in float32: ``head`` the
    segmentation layers (1×1×1 convolutions to the logits), ``first_block`` the first convolution
    block (conv, norm, activation: the one that reads the image), ``last_block`` the last
    convolution block of the last decoder stage, ``last_stage`` that whole stage, ``first_stage``
    the first encoder stage."""
    last = len(network.decoder.stages) - 1
    last_block = len(network.decoder.stages[last].convs) - 1
    names = {"head": "decoder.seg_layers", "first_block": "encoder.stages.0.0.convs.0",
             "last_block": f"decoder.stages.{last}.convs.{last_block}",
             "last_stage": f"decoder.stages.{last}", "first_stage": "encoder.stages.0"}
    return [names[part] for part in POLICIES[policy]]


def flop_shares(network: Any, patch: list[int]) -> dict[str, Any]:
    """FLOPs of one ``patch`` tile (``torch.utils.flop_counter``: convolutions and transposed
    convolutions, 2 FLOP per multiply-add), and the share of them each policy keeps in float32.
    Counted on the meta device: nothing is computed."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(network).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 1, *patch, device="meta"))
    counts = counter.get_flop_counts()
    root = type(network).__name__
    total = sum(counts.get("Global", {}).values())

    def flops(name: str) -> int:
        """The FLOPs of submodule ``name``: the counter keeps modules that were called (a
        ``ModuleList`` is not: its called members are summed)."""
        full = f"{root}.{name}"
        called = [k for k in counts if k == full or k.startswith(full + ".")]
        outermost = [k for k in called if not any(k.startswith(other + ".") for other in called)]
        return sum(sum(counts[k].values()) for k in outermost)

    shares = {}
    for policy in POLICIES:
        kept = sum(flops(name) for name in policy_modules(network, policy))
        shares[policy] = round(kept / total, 6) if total else None
    return {"patch": patch, "flops_per_tile": total, "float32_share": shares}


def network_check(network: Any, patch: list[int], policies: list[str], seed: int = 0) -> dict[str, Any]:
    """The network alone on two random tiles of ``patch`` (normal noise × 2): for each policy the
    simulation against real autocast (the policy's parts run by
    :func:`autoorgan.engine.precision.blocks_in_float32`, as the engine runs its own), both against
    float32: mean absolute logit differences and the share of voxels whose argmax differs."""
    import torch

    from autoorgan.engine.agreement import simulated_bf16
    from autoorgan.engine.precision import blocks_in_float32

    network = network.eval()
    x = torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(seed)) * 2
    out: dict[str, Any] = {}
    with torch.inference_mode():
        reference = network(x)
        for policy in policies:
            kept = policy_modules(network, policy)
            with torch.autocast("cpu", dtype=torch.bfloat16), blocks_in_float32(network, kept):
                real = network(x).float()
            with simulated_bf16(network, kept):
                simulated = network(x)
            out[policy] = {
                "mean_abs_logit_difference": {"simulated_vs_real": round(float((simulated - real).abs().mean()), 5),
                                              "real_vs_fp32": round(float((real - reference).abs().mean()), 5),
                                              "simulated_vs_fp32": round(float((simulated - reference).abs().mean()), 5)},
                "argmax_differs": {
                    "simulated_vs_real": round(float((simulated.argmax(1) != real.argmax(1)).float().mean()), 6),
                    "real_vs_fp32": round(float((real.argmax(1) != reference.argmax(1)).float().mean()), 6),
                    "simulated_vs_fp32": round(float((simulated.argmax(1) != reference.argmax(1)).float().mean()), 6)}}
    return {"tiles": f"2 x {'x'.join(map(str, patch))}, normal noise x 2, seed {seed}", "policies": out}


@contextlib.contextmanager
def _real_policy(policy: str) -> Iterator[None]:
    """``--precision bf16`` runs real autocast with ``policy``'s parts in float32 (this process only;
    :data:`ENGINE_POLICY` is what the engine runs anyway)."""
    from autoorgan.engine import precision

    original = precision.float32_blocks
    precision.float32_blocks = lambda network: policy_modules(network, policy)
    try:
        yield
    finally:
        precision.float32_blocks = original


@contextlib.contextmanager
def _simulating(policy: str, transposed_bias: str) -> Iterator[None]:
    """``--precision bf16`` runs the simulation of ``policy`` instead of autocast (this process only)."""
    from autoorgan.engine.agreement import simulated_bf16
    from autoorgan.engine.predictor import BatchedTilePredictor

    original = BatchedTilePredictor._network_bf16

    def network_bf16(self: Any, x: Any) -> Any:
        with simulated_bf16(self.network, policy_modules(self.network, policy), transposed_bias):
            return self.network(x).float()

    BatchedTilePredictor._network_bf16 = network_bf16  # type: ignore[method-assign]
    try:
        yield
    finally:
        BatchedTilePredictor._network_bf16 = original  # type: ignore[method-assign]


def _read_maps(folder: Path) -> dict[str, Any]:
    import SimpleITK as sitk

    return {path.name.removesuffix(".nii.gz"): sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            for path in sorted(folder.glob("*.nii.gz"))}


def _compare(reference: dict[str, Any], other: dict[str, Any], labels: dict[int, str]) -> dict[str, Any]:
    """Dice per structure and case of ``other`` against ``reference`` (the agreement summary), the
    three lowest, and the share of voxels whose label differs."""
    from autoorgan.engine.precision import Agreement, dice_scores

    dice = {case: dice_scores(ref, other[case], sorted(labels)) for case, ref in reference.items()}
    differ = sum(int((ref != other[case]).sum()) for case, ref in reference.items())
    voxels = sum(int(ref.size) for ref in reference.values())
    measured = Agreement(dice)
    return {**measured.summary(), "voxels_differing": differ, "voxels_differing_share": round(differ / voxels, 7),
            "lowest": sorted((round(s, 5), c, labels[v]) for c, d in dice.items() for v, s in d.items())[:3],
            "per_case": {c: {labels[v]: round(s, 5) for v, s in d.items()} for c, d in dice.items()}}


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    """Simulated bfloat16 autocast (:func:`autoorgan.engine.agreement.simulated_bf16`) against real
    autocast, and the agreement of each mixed policy with float32, on the fixture models."""
    import torch

    from autoorgan import api, engine
    from autoorgan.models.store import require_model
    from autoorgan.registry.tasks import load_registry
    from fixture_model import install_fixture_archives

    machine = describe_machine()
    registry = load_registry()
    groups, chosen, real_for, inputs = _model_groups(args)
    policies = list(POLICIES) if args.policies == "all" else args.policies.split(",")
    real_kinds = [k for k in args.real_bf16.split(",") if k]
    real_policies = [p for p in args.real_policies.split(",") if p]
    results: dict[str, Any] = {}
    flops: dict[str, Any] = {}
    for group in chosen:
        models, archives, tasks, cases = groups[group]
        if not models.is_dir():
            install_fixture_archives(archives, models)
        for task in (t for t in tasks if not args.tasks or t in args.tasks.split(",")):
            labels = {int(v): n for v, n in registry[task].labels.items()}
            base = args.work / "out" / f"{group}{'_real' if cases in real_for else ''}" / task
            seconds: dict[str, float] = {}

            def run(kind: str, precision: str, base: Path = base, task: str = task, models: Path = models,
                    cases: str = cases, seconds: dict[str, float] = seconds) -> dict[str, Any]:
                out = base / kind
                if not (args.reuse and any(out.glob("*.nii.gz"))):
                    start = time.perf_counter()
                    result = api.predict(task=task, input=inputs[cases], output=out, models_dir=models,
                                         device="cpu", postprocess=False, precision=precision)
                    seconds[kind] = round(time.perf_counter() - start, 1)
                    if not result.ok:
                        raise SystemExit(f"{task} {kind}: {[r.error for r in result.failed]}")
                return _read_maps(out)

            reference = run("fp32", "fp32")
            entry: dict[str, Any] = {"cases": sorted(reference), "seconds": seconds}
            real = {}
            if group in real_kinds:
                for policy in real_policies:
                    with _real_policy(policy):
                        real[policy] = run(f"real_{policy}", "bf16")
            simulated = {}
            for policy in policies:
                for bias in (["fallback", "fused"] if policy == "autocast" else ["fallback"]):
                    with _simulating(policy, bias):
                        simulated[(policy, bias)] = run(f"sim_{policy}_{bias}", "bf16")
            for policy, maps in real.items():
                entry.setdefault("real_vs_fp32", {})[policy] = _compare(reference, maps, labels)
                if (policy, "fallback") in simulated:
                    entry.setdefault("simulated_vs_real", {})[policy] = _compare(maps, simulated[(policy, "fallback")],
                                                                                 labels)
            entry["policies_vs_fp32"] = {f"{p}{'' if b == 'fallback' else ' (fused bias)'}": _compare(reference, m, labels)
                                         for (p, b), m in simulated.items()}
            folder = require_model(registry[task], models).folder
            network = engine.Segmenter(folder, 0, torch.device("cpu"))._predictor.network
            patch = list(json.loads((folder / "plans.json").read_text(encoding="utf-8"))
                         ["configurations"]["3d_fullres"]["patch_size"])
            entry["flops"] = flop_shares(network, patch)
            if group in real_kinds:
                entry["network_check"] = network_check(network, patch, ["autocast", ENGINE_POLICY])
            results[f"{group}/{task}"] = entry
            summary = {p: (v["min_dice"], v["median_dice"]) for p, v in entry["policies_vs_fp32"].items()}
            print(f"{group}/{task}: {summary}", flush=True)
    if args.bench_models:
        from bench_models import make_bench_model

        bench = make_bench_model(args.bench_models)
        segmenter = engine.Segmenter(bench.model_folder, 0, torch.device("cpu"))
        if args.default_check:  # RANDOM weights: the numerics of the big layers, not labels
            size = [args.default_check] * 3
            flops["default_architecture_network_check"] = {
                "weights": "RANDOM", **network_check(segmenter._predictor.network, size, ["autocast", ENGINE_POLICY])}
        flops["default_architecture"] = {
            **flop_shares(segmenter._predictor.network, list(segmenter.patch_size)),
            "features_per_stage": segmenter._predictor.configuration_manager.network_arch_init_kwargs.get(
                "features_per_stage")}
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"benchmark": "precision simulate", "measured": date.today().isoformat(), "machine": machine,
            "results": results, "flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("machine")
    m.add_argument("--mhz", type=float, help="clock for the peak (default: the one /proc/cpuinfo reports)")
    s = sub.add_parser("speed")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--patch", action="store_true", help="the model's own patch instead of size³")
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--levers", action="store_true", help="also channels-last 3D and torch.compile in bfloat16")
    s.add_argument("--order", choices=("forward", "reverse", "both"), default="both")
    s.add_argument("--mhz", type=float, help="clock for the peak (default: the one /proc/cpuinfo reports)")
    a = sub.add_parser("agreement")
    a.add_argument("--work", type=Path, required=True)
    a.add_argument("--write-check", action="store_true", help="store each model's result beside it")
    a.add_argument("--groups", default="fixture,whole_body", help="model groups: fixture, whole_body")
    a.add_argument("--real", default="fixture,whole_body", help="groups also run on the real example_ct")
    r = sub.add_parser("simulate")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--groups", default="fixture,whole_body", help="model groups: fixture, whole_body")
    r.add_argument("--real", default="fixture,whole_body", help="groups also run on the real example_ct")
    r.add_argument("--real-bf16", default="fixture,whole_body",
                   help="groups also run in real (emulated here) bfloat16 autocast, to check the simulation")
    r.add_argument("--real-policies", default=ENGINE_POLICY,
                   help="policies run in real autocast too (maps in out/.../real_POLICY)")
    r.add_argument("--tasks", default="", help="only these tasks of the groups (default: all)")
    r.add_argument("--policies", default="all", help=f"comma-separated, of: {', '.join(POLICIES)}")
    r.add_argument("--reuse", action="store_true", help="reuse label maps already under --work/out")
    r.add_argument("--bench-models", type=Path, help="also count the FLOP shares of nnU-Net's default "
                   "architecture (bench_models.py; built there once)")
    r.add_argument("--default-check", type=int, default=0, metavar="SIZE",
                   help="with --bench-models: the simulation against real autocast on two SIZE³ tiles of the "
                        "default architecture (random weights; real autocast is slow where emulated)")
    args = parser.parse_args()
    if args.command == "machine":
        report = describe_machine(mhz=args.mhz)
    elif args.command == "speed":
        report = speed(args)
    elif args.command == "simulate":
        report = simulate(args)
    else:
        report = agreement(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
