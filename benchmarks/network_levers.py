"""The network stage alone on CPU: float32 against bfloat16 autocast, torch thread counts,
several tiles per network call, the channels-last memory layout, a frozen TorchScript graph and
flushing denormal floats.

    python benchmarks/network_levers.py --work /tmp/compare [--model default|tiny] [--size 64] [--repeats 3]
    python benchmarks/network_levers.py --work /tmp/compare --model default --patch --repeats 1

Times forward passes of the benchmark model's network (RANDOM weights, bench_models.py) on
``size``³ tiles (``--patch``: the model's own patch) for each setting — median seconds *per
tile* over ``repeats`` — and the share of voxels whose argmax differs from float32 one tile at a
time. These are the levers "half precision on CPU", "thread settings", "tiles per call" and
"memory layout" (``--channels-last``: network and tiles in ``torch.channels_last_3d``), "graph
optimisation" (``--jit``: ``torch.jit.freeze`` and ``optimize_for_inference``, which hand the
convolutions to oneDNN with fused activations), "denormals" (``--flush-denormal``) and "freed
memory reused" (``--reuse-memory``: :func:`autoorgan.engine.cpu_runtime.freed_memory_reused`, glibc's
heap keeps the activations' memory from call to call instead of unmapping it); the
result decides whether autoorgan uses them (see docs/performance.md and
``engine.tile_batch_size``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import make_bench_model


def time_calls(run: Any, x: Any, dtype: str, batch: int, warmup: int, repeats: int) -> tuple[list[float], Any]:
    """Seconds per tile of ``repeats`` calls of ``run`` on ``x`` after ``warmup`` untimed ones,
    and the last output."""
    import torch

    for _ in range(warmup):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = run(x).float()
        times.append((time.perf_counter() - start) / batch)
    return times, out


def main() -> None:
    import torch

    from autoorgan import engine
    from autoorgan.engine import cpu_runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", choices=("default", "tiny"), default="default")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch", action="store_true", help="tiles of the model's own patch size")
    parser.add_argument("--batches", default="1,2,4", help="tiles per call to time (float32, all threads)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per setting first")
    parser.add_argument("--no-bf16", action="store_true", help="leave out bfloat16 (slow on CPUs without it)")
    parser.add_argument("--channels-last", action="store_true", help="also time the channels-last 3D layout")
    parser.add_argument("--jit", action="store_true", help="also time a frozen, inference-optimised TorchScript graph")
    parser.add_argument("--flush-denormal", action="store_true", help="also time with denormal floats flushed to zero")
    parser.add_argument("--reuse-memory", action="store_true",
                        help="also time with freed memory kept for reuse (alone and with denormals flushed)")
    parser.add_argument("--reverse", action="store_true", help="time the settings in reverse order (order effects)")
    args = parser.parse_args()
    bench = make_bench_model(args.work / "models", tiny=args.model == "tiny")
    segmenter = engine.Segmenter(bench.model_folder, 0, torch.device("cpu"))
    network = segmenter._predictor.network.eval()
    shape = list(segmenter.patch_size) if args.patch else [args.size] * 3
    threads_available = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    most = max([int(b) for b in args.batches.split(",")] + [segmenter._predictor.tile_batch])
    tiles = torch.randn(most, 1, *shape, generator=generator)
    results, outputs = {}, {}
    settings = [("float32", 1, 1, ""), ("float32", threads_available, 1, "")]
    settings += [] if args.no_bf16 else [("bfloat16", threads_available, 1, "")]
    settings += [("float32", threads_available, int(b), "") for b in args.batches.split(",") if int(b) > 1]
    settings += [("float32", threads_available, 1, "channels-last")] if args.channels_last else []
    settings += [("float32", threads_available, 1, "frozen TorchScript")] if args.jit else []
    settings += [("float32", threads_available, 1, "denormals flushed")] if args.flush_denormal else []
    if args.jit and args.flush_denormal:
        settings += [("float32", threads_available, 1, "frozen TorchScript, denormals flushed")]
    if args.reuse_memory:  # with autoorgan's tiles per call
        auto_batch = segmenter._predictor.tile_batch
        settings += [("float32", threads_available, auto_batch, "freed memory reused")]
        settings += [("float32", threads_available, auto_batch, "freed memory reused, denormals flushed")]
    settings = settings[::-1] if args.reverse else settings
    for dtype, threads, batch, variant in settings:
        torch.set_num_threads(threads)
        layout = torch.channels_last_3d if variant == "channels-last" else torch.contiguous_format
        network.to(memory_format=layout)
        x = tiles[:batch].contiguous(memory_format=layout)
        torch.set_flush_denormal("denormals flushed" in variant)
        run = network
        if "frozen TorchScript" in variant:
            with torch.inference_mode():
                run = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(network, x)))
        reuse = cpu_runtime.freed_memory_reused() if "freed memory reused" in variant else contextlib.nullcontext()
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with reuse:
            times, out = time_calls(run, x, dtype, batch, args.warmup, args.repeats)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
        torch.set_flush_denormal(False)
        name = f"{dtype}, {threads} thread(s), {batch} tile(s) per call" + (f", {variant}" if variant else "")
        results[name] = {"median_s_per_tile": round(statistics.median(times), 3),
                         "page_faults_per_call": round(faults / (args.warmup + args.repeats))}
        outputs[name] = out[:1]
    # Against float32, all threads, one tile per call, eager network.
    reference = outputs[f"float32, {threads_available} thread(s), 1 tile(s) per call"]
    for name, out in outputs.items():
        results[name]["argmax_differs_from_float32"] = round(float((out.argmax(1) != reference.argmax(1)).float().mean()), 5)
        results[name]["max_abs_logit_difference"] = float((out - reference).abs().max())
    report = {"model": f"{args.model} architecture, RANDOM weights", "tile": "x".join(map(str, shape)),
              "repeats": args.repeats, "results": results,
              "autoorgan_tile_batch": segmenter._predictor.tile_batch}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
