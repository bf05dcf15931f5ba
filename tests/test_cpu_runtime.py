"""The CPU network's process setting: freed memory kept for reuse (glibc), restored afterwards."""

from __future__ import annotations

import os
import resource

import pytest
import torch

from autoorgan import cpu_runtime

MIB = 1024 * 1024


def small_network() -> torch.nn.Module:
    """Conv / instance norm / leaky ReLU like nnU-Net's, with 56 MiB activations on a 96³ tile."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.InstanceNorm3d(16, affine=True),
              torch.nn.LeakyReLU(inplace=True), torch.nn.Conv3d(16, 16, 3, padding=1),
              torch.nn.InstanceNorm3d(16, affine=True), torch.nn.LeakyReLU(inplace=True), torch.nn.Conv3d(16, 4, 1)]
    return torch.nn.Sequential(*layers).eval()


def faults_per_call(network: torch.nn.Module, calls: int = 5) -> list[int]:
    """Page faults of each of ``calls`` forward passes of ``network`` on one 96³ tile."""
    tile = torch.randn(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(0))
    faults = []
    with torch.inference_mode():
        for _ in range(calls):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            network(tile)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


needs_glibc = pytest.mark.skipif(not cpu_runtime.heap_reuse_supported(), reason="needs glibc's malloc (Linux)")


def skip_without_faults(faults: list[int]) -> None:
    if min(faults) < 1000:
        pytest.skip(f"a network call faulted only {min(faults)} pages in by default (huge pages?): nothing to save")


@needs_glibc
def test_a_network_reuses_freed_memory_inside_and_hands_it_back_after() -> None:
    network = small_network()
    outside = faults_per_call(network)
    skip_without_faults(outside)
    with cpu_runtime.freed_memory_reused() as active:
        assert active
        inside = faults_per_call(network)
        resident_inside = resident_bytes()
    # After the first call the activations find their memory already there.
    assert sum(inside[1:]) < sorted(outside)[2], f"page faults per call: {inside} inside, {outside} outside"
    assert resident_bytes() < resident_inside - 50 * MIB, "the freed memory was not handed back afterwards"
    assert min(faults_per_call(network, 3)) > 1000, "the defaults were not restored"


@needs_glibc
def test_nested_uses_share_one_setting() -> None:
    network = small_network()
    outside = faults_per_call(network, 3)
    skip_without_faults(outside)
    with cpu_runtime.freed_memory_reused():
        with cpu_runtime.freed_memory_reused():
            faults_per_call(network, 1)
        inside = faults_per_call(network, 4)
        assert sum(inside[1:]) < min(outside), f"the inner block's end restored the defaults: {inside}"
    assert min(faults_per_call(network, 3)) > 1000


def test_only_the_cpu_gets_the_setting() -> None:
    with cpu_runtime.network_settings(torch.device("cuda")):
        assert not cpu_runtime.reusing_freed_memory()
    with cpu_runtime.network_settings(torch.device("cpu")):
        assert cpu_runtime.reusing_freed_memory() == cpu_runtime.heap_reuse_supported()
    assert not cpu_runtime.reusing_freed_memory()
