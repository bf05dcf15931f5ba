"""OpenVINO as the network's CPU backend, against torch float32 (what ``--precision auto`` runs on
a CPU without native bfloat16).

    python benchmarks/openvino_lever.py speed --work /tmp/openvino [--size 128 | --patch] [--repeats 3]
    python benchmarks/openvino_lever.py memory --work /tmp/openvino [--size 128 | --patch]
    python benchmarks/openvino_lever.py extras --work /tmp/openvino [--size 64]

Needs ``pip install openvino`` (not a dependency of autoorgan). The network is nnU-Net's default
3d_fullres architecture (the plans nnU-Net makes for a body CT at 1.5 mm, RANDOM weights;
``bench_models.py``), the input one ``size``³ tile (``--patch``: the model's own patch) of
standard-normal noise.

``speed``: the torch network is converted with ``openvino.convert_model(network,
example_input=tile, input=tile shape)`` (a static shape: nnU-Net's tiles are always the patch)
and compiled for the CPU with ``INFERENCE_NUM_THREADS`` = the torch threads and
``PERFORMANCE_HINT=LATENCY``, once per ``INFERENCE_PRECISION_HINT`` (``default``: none set). For
each compiled model the script records what the plugin made of the hint: the compiled model's
``INFERENCE_PRECISION_HINT`` and the runtime precisions of its convolutions (the
``runtimePrecision`` of the runtime graph's nodes). Settings timed: torch float32 as autoorgan's
sliding window runs it (eager network, ``torch.inference_mode``), and the OpenVINO models of
``--time-hints`` (one infer request, the input shared, the output copied into a torch tensor).
Each is timed (median seconds of ``repeats`` calls after ``warmup`` untimed ones, all of them
under the settings of autoorgan's CPU sliding window, freed memory reused:
:func:`autoorgan.engine.cpu_runtime.network_settings`) in the order given and again in the
reverse order in the same process: a backend counts only if it wins in both. Each time is given
as wall seconds and as the process's CPU seconds divided by the threads (on a shared machine
roughly what the call takes with the cores to itself), with the load average before and after.
Agreement with torch float32: the largest logit difference and the share of voxels whose argmax
differs (random weights: a bound on numerics, not on labels); and, to tell float32 rounding from
a real difference, the same against the torch network run in float64 (computed last; tiles up
to 64³ only). The decision rule: adopt only with a speed-up of at least 1.3x in both orders and
argmax agreement of at least 99.99%.

``memory``: peak resident memory (``ru_maxrss``) of a fresh process per backend that loads the
model, (converts and compiles it,) and runs two calls; the peak after each stage is reported.
``openvino-ir``: the OpenVINO IR the ``openvino`` process saved, read instead of converting (how
a backend that caches its conversion would run).

``extras``: a model converted without a fixed input shape (dynamic dimensions) against the
static one, on the tile and on a tile 32 voxels larger along each axis; the model cache
(``CACHE_DIR``): compile time with an empty cache and from it, and the cache's size; the OpenVINO
IR saved to disk (``openvino.save_model``, weights kept in float32) and read back instead of
converting again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import make_bench_model
from precision_benchmark import describe_machine

#: The reference setting: torch float32 as autoorgan's CPU sliding window runs it.
TORCH = "torch float32"
#: The precision hints whose effect is recorded (``default``: the plugin's own choice).
HINTS = ("default", "f32", "bf16", "f16")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _peak_gib() -> float:
    """Peak resident memory of this process so far (GiB; Linux reports ``ru_maxrss`` in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def _network(work: Path, threads: int) -> tuple[Any, list[int]]:
    """The benchmark model's network in eval mode and its patch size, torch on ``threads``."""
    import torch

    from autoorgan import engine

    torch.set_num_threads(threads)
    bench = make_bench_model(work / "models")
    segmenter = engine.Segmenter(bench.model_folder, 0, torch.device("cpu"))
    return segmenter._predictor.network.eval(), list(segmenter.patch_size)


def _tile(shape: list[int]) -> Any:
    import torch

    return torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))


def convert(network: Any, tile: Any, *, static: bool = True) -> tuple[Any, float]:
    """The OpenVINO model of ``network`` traced on ``tile`` (its shape fixed unless not
    ``static``), and the seconds the conversion took."""
    import openvino as ov

    start = time.perf_counter()
    kwargs = {"input": [list(tile.shape)]} if static else {}
    model = ov.convert_model(network, example_input=tile, **kwargs)
    return model, round(time.perf_counter() - start, 1)


def compile_for_cpu(core: Any, model: Any, threads: int, hint: str) -> tuple[Any, float]:
    """``model`` compiled for the CPU on ``threads`` for latency, with the precision ``hint``
    (``default``: none given), and the seconds the compilation took."""
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if hint != "default":
        config["INFERENCE_PRECISION_HINT"] = hint
    start = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    return compiled, round(time.perf_counter() - start, 2)


def runtime_precisions(compiled: Any) -> dict[str, Any]:
    """What the CPU plugin made of the hints: the compiled model's properties and the runtime
    precisions of its convolution nodes (by layer type)."""
    by_type: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        by_type.setdefault(kind, set()).add(precision)
    result: dict[str, Any] = {}
    for name in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS",
                 "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING"):
        with contextlib.suppress(Exception):
            result[name] = str(compiled.get_property(name))
    result["runtime_precision"] = {k: sorted(v) for k, v in sorted(by_type.items())
                                   if k in ("Convolution", "Deconvolution", "MVN", "Input", "Output")}
    return result


def openvino_runner(compiled: Any) -> Callable[[Any], Any]:
    """One call of ``compiled`` on a torch tile: the input shared, the output copied to torch."""
    import torch

    request = compiled.create_infer_request()

    def run(x: Any) -> Any:
        request.infer({0: x.numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def torch_runner(network: Any) -> Callable[[Any], Any]:
    """One call of the eager torch network as autoorgan's CPU sliding window makes it (the
    window's settings are entered around all calls: :func:`time_calls`)."""
    import torch

    def run(x: Any) -> Any:
        with torch.inference_mode():
            return network(x).float()

    return run


#: Largest tile the float64 reference runs on: torch's CPU convolutions in float64 unfold their
#: input (im2col; 31.7 GB for one layer of a 160x128x112 tile).
FLOAT64_MAX_VOXELS = 64**3


def float64_reference(network: Any, tile: Any) -> Any:
    """The torch network's logits on ``tile`` in float64: what float32 rounding is measured
    against; ``None`` for tiles above :data:`FLOAT64_MAX_VOXELS`. Run after everything else
    (the network is cast to float64 and back)."""
    import torch

    if tile[0, 0].numel() > FLOAT64_MAX_VOXELS:
        return None
    with torch.inference_mode():
        network.double()
        try:
            return network(tile.double())
        finally:
            network.float()


def time_calls(run: Callable[[Any], Any], x: Any, warmup: int, repeats: int) -> dict[str, Any]:
    """Wall and CPU seconds (all threads of the process) of ``repeats`` calls after ``warmup``
    untimed ones, all under the settings autoorgan's CPU sliding window runs under (freed
    memory reused: :func:`autoorgan.engine.cpu_runtime.network_settings`), the load average
    around them, and the last output."""
    import torch

    from autoorgan.engine.cpu_runtime import network_settings

    load_before = _load()
    wall, cpu, out = [], [], None
    with network_settings(torch.device("cpu")):
        for _ in range(warmup):
            run(x)
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = run(x)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu, "out": out, "load": [load_before, _load()]}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    import openvino as ov
    import torch

    machine = describe_machine(threads=args.threads)
    network, patch = _network(args.work, args.threads)
    shape = patch if args.patch else [args.size] * 3
    tile = _tile(shape)
    model, convert_s = convert(network, tile)
    core = ov.Core()
    plugin = {name: str(core.get_property("CPU", name))
              for name in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES", "INFERENCE_PRECISION_HINT")}
    compiled_models: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[Any], Any]] = {TORCH: torch_runner(network)}
    for hint in HINTS:
        compiled, compile_s = compile_for_cpu(core, model, args.threads, hint)
        compiled_models[hint] = {"compile_s": compile_s, **runtime_precisions(compiled)}
        if hint in args.time_hints.split(","):
            runners[f"openvino, hint {hint}"] = openvino_runner(compiled)
        print(f"hint {hint:8s} compiled in {compile_s} s: {compiled_models[hint]}", flush=True)
    settings = list(runners)
    orders = {"forward": settings, "reverse": settings[::-1]}
    chosen = ["forward", "reverse"] if args.order == "both" else [args.order]
    timings: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Any] = {}
    for order in chosen:
        for name in orders[order]:
            measured = time_calls(runners[name], tile, args.warmup, args.repeats)
            outputs.setdefault(name, measured["out"])
            wall, cpu = statistics.median(measured["wall"]), statistics.median(measured["cpu"]) / args.threads
            timings.setdefault(name, {})[order] = {
                "s_per_tile": round(wall, 2), "cpu_s_per_thread": round(cpu, 2),
                "all_s": [round(s, 2) for s in measured["wall"]], "load_average": measured["load"]}
            print(f"{order:8s} {name:24s} {wall:7.2f} s per tile, {cpu:7.2f} CPU s per thread, "
                  f"load {measured['load']}", flush=True)
    peak_timed = _peak_gib()
    reference = outputs[TORCH]
    exact = float64_reference(network, tile) if args.float64 else None
    if args.float64 and exact is None:
        print(f"float64 reference left out: tiles above {FLOAT64_MAX_VOXELS} voxels", flush=True)
    results: dict[str, Any] = {}
    for name, by_order in timings.items():
        out = outputs[name]
        entry: dict[str, Any] = {**by_order}
        if name != TORCH:
            entry["speedup_over_torch"] = {
                order: {"wall": round(timings[TORCH][order]["s_per_tile"] / t["s_per_tile"], 2),
                        "cpu": round(timings[TORCH][order]["cpu_s_per_thread"] / t["cpu_s_per_thread"], 2)}
                for order, t in by_order.items()}
            entry["max_abs_logit_difference"] = float((out - reference).abs().max())
            entry["argmax_differs"] = float((out.argmax(1) != reference.argmax(1)).double().mean())
            wins = all(s["wall"] >= 1.3 for s in entry["speedup_over_torch"].values())
            entry["adopt"] = bool(wins and len(by_order) == 2 and entry["argmax_differs"] <= 1e-4)
        if exact is not None:
            entry["against_float64"] = {"max_abs_logit_difference": float((out.double() - exact).abs().max()),
                                        "argmax_differs": float((out.argmax(1) != exact.argmax(1)).double().mean())}
        results[name] = entry
    return {"benchmark": "openvino_lever", "command": " ".join(sys.argv),
            "model": "nnU-Net's default 3d_fullres architecture, RANDOM weights", "tile": "x".join(map(str, shape)),
            "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
            "versions": {"openvino": ov.__version__, "torch": torch.__version__},
            "machine": machine, "plugin": plugin, "convert_s": convert_s, "compiled": compiled_models,
            "results": results, "peak_rss_gib_timed_part": peak_timed}


def _memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """One backend in this (fresh) process: the peak resident memory after each stage."""
    network, patch = _network(args.work, args.threads)
    tile = _tile(patch if args.patch else [args.size] * 3)
    stages: dict[str, Any] = {"model loaded": _peak_gib()}
    ir = args.work / "openvino_ir" / "x".join(map(str, tile.shape[2:])) / "network.xml"
    model: Any = None
    if args.only == "torch":
        run = torch_runner(network)
    else:
        import openvino as ov

        if args.only == "openvino":
            model, _ = convert(network, tile)
            stages["converted"] = _peak_gib()
        else:  # the IR the "openvino" run saved: no conversion in this process
            model = ov.Core().read_model(str(ir))
            stages["IR read"] = _peak_gib()
        compiled, _ = compile_for_cpu(ov.Core(), model, args.threads, "default")
        stages["compiled"] = _peak_gib()
        run = openvino_runner(compiled)
    from autoorgan.engine.cpu_runtime import network_settings

    start = time.perf_counter()
    with network_settings("cpu"):
        for _ in range(2):
            run(tile)
    stages["two calls"] = _peak_gib()
    if args.only == "openvino":
        import openvino as ov

        ir.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(ir), compress_to_fp16=False)
    return {"backend": args.only, "peak_rss_gib": stages, "two_calls_s": round(time.perf_counter() - start, 1),
            "load_average": _load()}


def memory(args: argparse.Namespace) -> dict[str, Any]:
    if args.only:
        return _memory_child(args)
    runs = []
    out = args.work / "memory_child.json"
    for backend in ("torch", "openvino", "openvino-ir"):
        command = [sys.executable, __file__, "memory", "--work", str(args.work), "--threads", str(args.threads),
                   "--only", backend, "--json", str(out),
                   *(["--patch"] if args.patch else ["--size", str(args.size)])]
        subprocess.run(command, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.read_text(encoding="utf-8")))
        print(runs[-1], flush=True)
    return {"benchmark": "openvino_lever memory", "command": " ".join(sys.argv), "runs": runs}


def extras(args: argparse.Namespace) -> dict[str, Any]:
    import openvino as ov

    network, patch = _network(args.work, args.threads)
    shape = patch if args.patch else [args.size] * 3
    tile = _tile(shape)
    other = _tile([s + 32 for s in shape])  # still divisible by the network's 2**5 downsampling
    report: dict[str, Any] = {"benchmark": "openvino_lever extras", "command": " ".join(sys.argv),
                              "tile": "x".join(map(str, shape)), "other_tile": "x".join(str(s + 32) for s in shape)}
    core = ov.Core()
    static, report["convert_static_s"] = convert(network, tile)
    dynamic, report["convert_dynamic_s"] = convert(network, tile, static=False)
    report["dynamic_input"] = str(dynamic.inputs[0].get_partial_shape())
    report["dynamic_output"] = str(dynamic.outputs[0].get_partial_shape())
    for name, model in (("static", static), ("dynamic", dynamic)):
        compiled, compile_s = compile_for_cpu(core, model, args.threads, "default")
        run = openvino_runner(compiled)
        timed = time_calls(run, tile, args.warmup, args.repeats)
        entry: dict[str, Any] = {"compile_s": compile_s, "s_per_tile": round(statistics.median(timed["wall"]), 2),
                                 "cpu_s_per_thread": round(statistics.median(timed["cpu"]) / args.threads, 2),
                                 "load_average": timed["load"]}
        try:
            start = time.perf_counter()
            out = run(other)
            entry["other_tile"] = {"s": round(time.perf_counter() - start, 2), "output": list(out.shape)}
        except RuntimeError as error:  # a static model refuses another shape: that is the result
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            entry["other_tile"] = {"error": " ".join(lines[1:3] or lines)[:300]}
        report[name] = entry
        print(name, entry, flush=True)
    cache = args.work / "openvino_cache"
    shutil.rmtree(cache, ignore_errors=True)
    cached: dict[str, Any] = {}
    for attempt in ("empty cache", "from cache"):
        fresh = ov.Core()
        fresh.set_property({"CACHE_DIR": str(cache)})
        _, cached[f"compile_s, {attempt}"] = compile_for_cpu(fresh, static, args.threads, "default")
    cached["cache_mib"] = round(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20, 1)
    cached["files"] = sorted(p.name for p in cache.rglob("*") if p.is_file())
    report["cache"] = cached
    print("cache", cached, flush=True)
    ir = args.work / "openvino_ir" / "network.xml"
    ir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ov.save_model(static, str(ir), compress_to_fp16=False)
    saved_s = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    read = core.read_model(str(ir))
    read_s = round(time.perf_counter() - start, 2)
    compiled, compile_s = compile_for_cpu(core, read, args.threads, "default")
    reference = openvino_runner(compile_for_cpu(core, static, args.threads, "default")[0])(tile)
    same = bool((openvino_runner(compiled)(tile) == reference).all())
    report["ir"] = {"save_s": saved_s, "read_s": read_s, "compile_s": compile_s, "outputs_identical": same,
                    "mib": round(sum(p.stat().st_size for p in ir.parent.iterdir()) / 2**20, 1)}
    print("ir", report["ir"], flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "memory", "extras"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, required=True)
        p.add_argument("--size", type=int, default=64 if name == "extras" else 128)
        p.add_argument("--patch", action="store_true", help="a tile of the model's own patch size")
        p.add_argument("--threads", type=int, default=2, help="torch threads and INFERENCE_NUM_THREADS")
        p.add_argument("--repeats", type=int, default=3 if name != "extras" else 2)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--json", type=Path, help="also write the report here")
    sub.choices["speed"].add_argument("--order", choices=("forward", "reverse", "both"), default="both")
    sub.choices["speed"].add_argument("--time-hints", default="f32,default",
                                      help="the precision hints whose OpenVINO models are timed")
    sub.choices["speed"].add_argument("--no-float64", dest="float64", action="store_false",
                                      help="leave out the float64 reference (compared with every setting)")
    sub.choices["memory"].add_argument("--only", choices=("torch", "openvino", "openvino-ir"),
                                       help=argparse.SUPPRESS)
    args = parser.parse_args()
    report = {"speed": speed, "memory": memory, "extras": extras}[args.command](args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
