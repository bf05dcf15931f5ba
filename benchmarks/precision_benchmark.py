"""The network on the CPU against the hardware's limit, float32 and bfloat16; and bfloat16 labels
against float32 labels of trained models.

    python benchmarks/precision_benchmark.py machine
    python benchmarks/precision_benchmark.py speed --work /tmp/precision [--size 128 | --patch] [--repeats 2]
        [--levers] [--order forward|reverse|both]
    python benchmarks/precision_benchmark.py agreement --work /tmp/precision [--write-check]

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
emulated: the same numbers, slower.

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
    for seed in (201, 202, 203):
        sitk.WriteImage(pelvis_phantom(seed).ct, str(folders["pelvis"] / f"pelvis_{seed}.nii.gz"))
    for seed in (301, 302):
        sitk.WriteImage(lower_body_phantom(seed).ct, str(folders["lower_body"] / f"lower_body_{seed}.nii.gz"))
    real = _real_ct()
    if real.is_file():
        for name in real_for:
            link = folders[name] / "example_ct.nii.gz"
            if not link.exists():
                link.symlink_to(real.resolve())
    else:
        print(f"note: {real} missing: phantoms only", file=sys.stderr)
    return folders


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk

    from autoorgan import api
    from autoorgan.engine.precision import Agreement, dice_scores, write_precision_check
    from autoorgan.models.store import require_model
    from autoorgan.registry.tasks import load_registry
    from fixture_model import FIXTURE_ARCHIVES, install_fixture_archives

    machine = describe_machine()
    registry = load_registry()
    groups = {  # models folder, tasks, inputs
        "fixture": (args.work / "fixture_models", FIXTURE_ARCHIVES["trained_models"], ["hip"], "pelvis"),
        "whole_body": (args.work / "whole_body_models", FIXTURE_ARCHIVES["whole_body_models"],
                       ["skeleton", "hip", "lower_limb"], "lower_body"),
    }
    chosen = [g for g in args.groups.split(",") if g]
    real_for = {groups[g][3] for g in args.real.split(",") if g}
    inputs = _inputs(args.work, real_for)
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
    args = parser.parse_args()
    if args.command == "machine":
        report = describe_machine(mhz=args.mhz)
    elif args.command == "speed":
        report = speed(args)
    else:
        report = agreement(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
