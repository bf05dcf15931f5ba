"""The network stage alone on CPU: float32 against bfloat16 autocast, and torch thread counts.

    python benchmarks/network_levers.py --work /tmp/compare [--model default|tiny] [--size 64] [--repeats 3]

Times one forward pass of the benchmark model's network (RANDOM weights, bench_models.py) on a
``size``³ input for each setting (median of ``repeats``), and the share of voxels whose argmax
differs from float32. These are the levers "half precision on CPU" and "thread settings"; the
result decides whether autoorgan uses them (see the README's "Speed and memory").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import make_bench_model


def main() -> None:
    import torch

    from autoorgan import engine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", choices=("default", "tiny"), default="default")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench = make_bench_model(args.work / "models", tiny=args.model == "tiny")
    network = engine.Segmenter(bench.model_folder, 0, torch.device("cpu"))._predictor.network.eval()
    x = torch.randn(1, 1, args.size, args.size, args.size, generator=torch.Generator().manual_seed(0))
    results, reference = {}, None
    settings = [("float32", 1), ("float32", 2), ("bfloat16", 2)]
    for dtype, threads in settings:
        torch.set_num_threads(threads)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                out = network(x).float()
            times.append(time.perf_counter() - start)
        labels = out.argmax(1)
        reference = labels if reference is None else reference
        results[f"{dtype}, {threads} thread(s)"] = {
            "median_s": round(statistics.median(times), 3),
            "argmax_differs_from_float32": round(float((labels != reference).float().mean()), 5)}
    report = {"model": f"{args.model} architecture, RANDOM weights", "input": f"{args.size}^3",
              "repeats": args.repeats, "results": results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
