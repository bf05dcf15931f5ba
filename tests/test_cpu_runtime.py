"""The CPU network's process setting: freed memory kept for reuse (glibc), restored afterwards.

What "restored" means is checked on malloc's behaviour in fresh processes (:data:`PROBE`), not on
autoorgan's own flags: which blocks glibc serves with ``mmap``, whether it hands freed heap back,
and whether its dynamic mmap threshold still serves a block from the heap once one of that size
was freed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest
import torch

from autoorgan.engine import cpu_runtime

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


needs_glibc = pytest.mark.skipif(not cpu_runtime.heap_reuse_supported(),
                                 reason="needs glibc's malloc (Linux), not tuned through the environment")


def skip_without_faults(faults: list[int]) -> None:
    if min(faults) < 1000:
        pytest.skip(f"a network call faulted only {min(faults)} pages in by default (huge pages?): nothing to save")


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- malloc's state after the block, observed in fresh processes --------------------------------

#: Runs a scenario (argv[1]) in a fresh process, then prints how malloc behaves, as JSON:
#: ``mmap``: whether blocks above 32 MiB come from ``mmap`` (M_MMAP_MAX);
#: ``first``: whether a first block of 1, 8, 24 MiB, the ceiling less a page and the ceiling
#: comes from ``mmap`` (the mmap threshold);
#: ``again``: whether a block comes from ``mmap`` again right after one of its size was freed
#: (glibc's dynamic rule: it does not);
#: ``kept``: whether freed heap at the top stays with the process: 2 x 16 MiB (below twice the
#: dynamic threshold: kept), 4 x 24 MiB (above: handed back).
#: Each observation starts from a trimmed heap, so that the top of the heap cannot serve it.
PROBE = r"""
import ctypes, json, sys
from autoorgan.engine import cpu_runtime

libc = ctypes.CDLL(None)

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
libc.malloc_trim.argtypes = [ctypes.c_size_t]
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MIB = 1 << 20
CEILING = cpu_runtime.dynamic_threshold_ceiling()

def allocate(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    assert block, size
    return block, libc.mallinfo2().hblks > before

def from_mmap(size):
    libc.malloc_trim(0)
    block, mapped = allocate(size)
    libc.free(block)
    return mapped

def again_from_mmap(size):
    libc.malloc_trim(0)
    libc.free(allocate(size)[0])
    return from_mmap(size)

def heap_kept(sizes):
    libc.malloc_trim(0)
    base = libc.mallinfo2().arena
    blocks = [allocate(size)[0] for size in sizes]
    for block in reversed(blocks):
        libc.free(block)
    return libc.mallinfo2().arena - base >= sum(sizes) // 2

def work():
    blocks = [libc.malloc(size) for size in (64 * MIB, 64 * MIB, 3 * MIB, 100 * MIB, 20 * MIB)]
    for block in blocks:
        libc.free(block)

def observe():
    return {"mmap": [from_mmap(size) for size in (CEILING + 4096, 40 * MIB, 100 * MIB)],
            "first": [from_mmap(size) for size in (1 * MIB, 8 * MIB, 24 * MIB, CEILING - 4096, CEILING)],
            "again": [again_from_mmap(size) for size in (1 * MIB, 8 * MIB, 24 * MIB, CEILING - 4096)],
            "kept": [heap_kept([16 * MIB] * 2), heap_kept([24 * MIB] * 4)]}

scenario = sys.argv[1]
took_effect = None
if scenario == "untouched":
    pass
elif scenario == "rule at its ceiling":  # glibc's dynamic rule after freeing a block of the ceiling's size
    libc.free(libc.malloc(CEILING - 4096))
elif scenario == "inside":
    with cpu_runtime.freed_memory_reused() as took_effect:
        work()
        print(json.dumps({"took_effect": took_effect, **observe()}))
    sys.exit()
elif scenario == "mallopt defaults put back":  # what the block did before issue 17
    libc.mallopt(M_MMAP_MAX, 0); libc.mallopt(M_TRIM_THRESHOLD, -1); work()
    libc.mallopt(M_MMAP_MAX, 65536); libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024); libc.malloc_trim(0)
else:
    if scenario == "block at the ceiling":
        libc.free(libc.malloc(CEILING - 4096))
    with cpu_runtime.freed_memory_reused() as took_effect:
        work()
    if scenario == "block, M_MMAP_MAX left at 0":
        libc.mallopt(M_MMAP_MAX, 0)
    if scenario == "block, trimming left off":
        libc.mallopt(M_TRIM_THRESHOLD, -1)
print(json.dumps({"took_effect": took_effect, **observe()}))
"""


def has_mallinfo2() -> bool:
    import ctypes

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")


needs_mallinfo2 = pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc 2.33 or later (mallinfo2)")


def observe_malloc(scenario: str, **environ: str) -> dict:
    """How malloc behaves in a fresh process after ``scenario`` (see :data:`PROBE`)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", PROBE, scenario], capture_output=True, text=True,
                          env={**env, **environ}, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def dynamic_rule() -> dict:
    """glibc's own behaviour with its dynamic threshold on, at the threshold's ceiling."""
    return observe_malloc("rule at its ceiling")


@needs_mallinfo2
def test_the_probe_sees_the_dynamic_rule() -> None:
    fresh = observe_malloc("untouched")
    assert fresh["first"][:3] == [True, True, True], "a fresh process serves a first 1 MiB block from mmap"
    assert fresh["again"] == [False] * 4, "glibc's dynamic threshold did not follow freed blocks"
    assert fresh["mmap"] == [True] * 3


@needs_mallinfo2
def test_inside_the_block_large_blocks_come_from_the_heap_and_stay() -> None:
    inside = observe_malloc("inside")
    assert inside["took_effect"] is True
    assert inside["mmap"] == [False] * 3
    assert inside["kept"] == [True, True]


@needs_mallinfo2
@pytest.mark.parametrize("scenario", ["block", "block at the ceiling"])
def test_after_the_block_mmap_serves_large_blocks_again(scenario: str, dynamic_rule: dict) -> None:
    after = observe_malloc(scenario)
    assert after["took_effect"] is True
    assert after["mmap"] == dynamic_rule["mmap"] == [True] * 3
    assert observe_malloc("block, M_MMAP_MAX left at 0")["mmap"] == [False] * 3  # the probe can tell


@needs_mallinfo2
@pytest.mark.parametrize("scenario", ["block", "block at the ceiling"])
def test_after_the_block_freed_heap_is_trimmed_as_glibc_would(scenario: str, dynamic_rule: dict) -> None:
    after = observe_malloc(scenario)
    assert after["kept"] == dynamic_rule["kept"] == [True, False]
    assert observe_malloc("block, trimming left off")["kept"] == [True, True]  # the probe can tell
    assert observe_malloc("mallopt defaults put back")["kept"] == [False, False]


@needs_mallinfo2
@pytest.mark.parametrize("scenario", ["block", "block at the ceiling"])
def test_after_the_block_malloc_behaves_as_under_the_dynamic_threshold(scenario: str, dynamic_rule: dict) -> None:
    after = observe_malloc(scenario)
    assert after["again"] == dynamic_rule["again"] == [False] * 4
    assert after["first"] == dynamic_rule["first"] == [False, False, False, False, True]
    assert {k: v for k, v in after.items() if k != "took_effect"} == {k: v for k, v in dynamic_rule.items()
                                                                        if k != "took_effect"}
    # Before issue 17 the dynamic threshold stayed off at its starting value: the probe can tell.
    old = observe_malloc("mallopt defaults put back")
    assert old["again"] == [True] * 4 and old["first"] == [True] * 5


@needs_mallinfo2
@pytest.mark.parametrize("tunable", ["GLIBC_TUNABLES=glibc.malloc.mmap_max=0", "MALLOC_MMAP_MAX_=0"])
def test_malloc_tuned_through_the_environment_is_left_alone(tunable: str) -> None:
    name, value = tunable.split("=", 1)
    after = observe_malloc("block", **{name: value})
    assert after["took_effect"] is False
    assert after["mmap"] == [False] * 3, "the user's M_MMAP_MAX was overwritten"


def test_which_environment_settings_tune_malloc() -> None:
    assert cpu_runtime.malloc_tuned_by({}) == []
    assert cpu_runtime.malloc_tuned_by({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=1",
                                        "MALLOC_ARENA_MAX": "2"}) == []
    assert cpu_runtime.malloc_tuned_by({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"}) \
        == ["glibc.malloc.trim_threshold=0"]
    assert cpu_runtime.malloc_tuned_by({"MALLOC_TOP_PAD_": "0"}) == ["MALLOC_TOP_PAD_"]


def test_the_ceiling_is_glibcs_largest_dynamic_threshold() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    expected = (32 * MIB if sys.maxsize > 2**32 else 512 * 1024) - page
    assert cpu_runtime.dynamic_threshold_ceiling() == expected
