"""What the freed-memory block leaves behind: a training-like loop run after it, in the same process.

    python benchmarks/malloc_after_block.py [--repeats 3] [--iterations 30]

The CPU sliding window runs inside :func:`autoorgan.engine.cpu_runtime.freed_memory_reused`, which
changes glibc's malloc settings and puts them back afterwards. A process often goes on with
other work (the test suite trains models after predicting; a notebook predicts, then trains), so
what "back" means shows in that work's speed. Each run is a fresh process that either does
nothing first (``none``) or runs one network call inside the block first (``after``), then times
forward, backward and an optimiser step of a small 3D U-Net-like network on 48³ tiles with 2
threads. Runs of the two modes alternate; medians are printed.

To compare another version of autoorgan, run this file with ``PYTHONPATH=<its src>``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time


def _probe(mode: str, iterations: int) -> float:
    """One measurement, in this process (called in a fresh child process by :func:`main`)."""
    import torch

    from autoorgan.engine import cpu_runtime

    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.InstanceNorm3d(16), torch.nn.LeakyReLU(),
        torch.nn.Conv3d(16, 32, 3, padding=1, stride=2), torch.nn.InstanceNorm3d(32), torch.nn.LeakyReLU(),
        torch.nn.ConvTranspose3d(32, 16, 2, stride=2), torch.nn.Conv3d(16, 3, 1),
    )
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01)
    if mode == "after":
        with cpu_runtime.freed_memory_reused(), torch.no_grad():
            net(torch.randn(2, 1, 64, 64, 64))
    x, y = torch.randn(2, 1, 48, 48, 48), torch.randint(0, 3, (2, 48, 48, 48))

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--probe", choices=("none", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(f"{_probe(args.probe, args.iterations):.4f}")
        return
    times: dict[str, list[float]] = {"none": [], "after": []}
    for _ in range(args.repeats):
        for mode in times:
            out = subprocess.run([sys.executable, __file__, "--probe", mode, "--iterations", str(args.iterations)],
                                 check=True, capture_output=True, text=True).stdout
            times[mode].append(float(out.strip().splitlines()[-1]))
    print(f"CPU: {platform.processor() or platform.machine()}; {args.iterations} training steps, 2 threads")
    for mode, values in times.items():
        print(f"{mode:>5}: median {statistics.median(values):.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
