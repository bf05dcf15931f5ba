"""The process setting under which the network runs faster on the CPU, its numbers unchanged:
freed memory kept for reuse.

Each network call allocates its activations afresh, layer by layer. glibc's ``malloc`` serves
every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so the kernel maps and zeroes the same memory again on every tile: about 2.1 million
page faults per tile of nnU-Net's default 1.5 mm architecture. While the sliding window runs on
the CPU (:func:`network_settings`), ``malloc`` is told to take large blocks from its heap and to
keep freed memory there for the next tile (``mallopt``: ``M_MMAP_MAX`` 0, trimming off).
Measured with ``benchmarks/network_levers.py --reuse-memory`` on 2 cores: 5.7-5.8 s per tile of
the default architecture instead of 7.0-8.1 s, about 190,000 page faults instead of 1.3-2.2
million; docs/performance.md quotes the figures.

Afterwards all of it is put back, and the freed memory is returned to the system
(``malloc_trim``). glibc adjusts its mmap threshold by itself (a freed mmapped block of up to
32 MiB raises the threshold to its size, and the trim threshold to twice that), and any
``mallopt`` of these parameters switches that rule off for the rest of the process; glibc has no
call that switches it on again. So the block ends with malloc in the one state in which the rule
has nothing left to do: the threshold at the rule's ceiling (:func:`dynamic_threshold_ceiling`)
and the trim threshold at twice that, as the rule itself sets them when a block of that size is
freed. From there, every later ``malloc`` and ``free`` behaves exactly as under the rule
(``tests/test_cpu_runtime.py`` compares the two in fresh processes); the one difference from
before the block is that the threshold may stand higher than it did: at the ceiling, where the
rule itself takes it as soon as a block just under 32 MiB is freed.

Where the C library is not glibc, or where the user tuned these parameters through the
environment (``MALLOC_MMAP_MAX_``, ``GLIBC_TUNABLES=glibc.malloc.mmap_max=...`` and the like),
nothing changes: their values are unknown to a process and could not be put back.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

# mallopt(3) parameters and glibc's defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = -1  # "Setting M_TRIM_THRESHOLD to -1 disables trimming completely" (mallopt(3))

#: The environment settings (mallopt(3), "ENVIRONMENT"; glibc's tunables) of the parameters the
#: block changes, and of the others whose setting also switches the dynamic threshold off.
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
MALLOC_TUNABLES = ("glibc.malloc.mmap_max", "glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold",
                   "glibc.malloc.top_pad")

_lock = threading.Lock()
_depth = 0
_applied = False


@functools.cache
def _glibc() -> Any | None:
    """The running process's glibc (``mallopt``, ``malloc_trim``), or ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        log.debug("the C library is not glibc: freed memory is not kept for reuse")
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def malloc_tuned_by(environ: Mapping[str, str]) -> list[str]:
    """The settings of ``environ`` that tune malloc's thresholds (empty: glibc's defaults and its
    dynamic threshold are in effect)."""
    tuned = [name for name in MALLOC_ENVIRONMENT if name in environ]
    for item in environ.get("GLIBC_TUNABLES", "").replace(":", " ").split():
        if item.split("=", 1)[0] in MALLOC_TUNABLES:
            tuned.append(item)
    return tuned


def dynamic_threshold_ceiling() -> int:
    """The highest mmap threshold glibc's dynamic rule sets, in bytes.

    The rule raises the threshold to the size of a freed mmapped chunk whose size field is at
    most ``DEFAULT_MMAP_THRESHOLD_MAX`` (32 MiB on 64-bit systems, 512 KiB on 32-bit ones).
    The field holds the size, a whole number of pages, plus the ``IS_MMAPPED`` flag, so the
    largest such chunk is one page smaller.
    """
    most = 32 * 1024 * 1024 if ctypes.sizeof(ctypes.c_long) == 8 else 512 * 1024
    return most - os.sysconf("SC_PAGE_SIZE")


def heap_reuse_supported() -> bool:
    """Whether :func:`freed_memory_reused` can change anything here: glibc on Linux, its malloc
    not tuned through the environment."""
    return _glibc() is not None and not malloc_tuned_by(os.environ)


def reusing_freed_memory() -> bool:
    """Whether freed memory is being kept for reuse now (inside a :func:`freed_memory_reused`
    block that took effect)."""
    return _applied


def _keep_freed_memory(libc: Any) -> None:
    """Large blocks from the heap, and nothing handed back to the system while the block runs."""
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)


def _put_malloc_back(libc: Any) -> None:
    """glibc's mmap limit, and its thresholds where its dynamic rule keeps them (see the module
    docstring); then the freed memory back to the system."""
    ceiling = dynamic_threshold_ceiling()
    settings = ((_M_MMAP_MAX, _DEFAULT_MMAP_MAX), (_M_MMAP_THRESHOLD, ceiling), (_M_TRIM_THRESHOLD, 2 * ceiling))
    refused = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if refused:  # not expected with glibc: the values are its own
        log.warning("malloc refused parameter(s) %s when its settings were put back", refused)
    libc.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_reused() -> Iterator[bool]:
    """Keep memory that is freed inside the block for the block's next allocations.

    Yields whether the setting took effect (glibc whose malloc the environment does not tune).
    Nested and concurrent uses share one setting, put back when the last one ends (see the
    module docstring for what "back" means); the freed memory is then handed back to the
    system, so the process's resident memory after the block is what it would have been.
    Inside the block the peak grows by the fragmentation of the heap (measured: about 1 GiB
    for one tile of nnU-Net's default architecture, nothing for the tiny one).
    """
    global _depth, _applied
    libc = _glibc()
    with _lock:
        _depth += 1
        if _depth == 1 and libc is not None:
            tuned = malloc_tuned_by(os.environ)
            if tuned:
                log.debug("malloc is tuned through the environment (%s): left as it is", ", ".join(tuned))
            else:
                _keep_freed_memory(libc)
                _applied = True
        active = _applied
    try:
        yield active
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _applied:
                _put_malloc_back(libc)
                _applied = False


@contextlib.contextmanager
def network_settings(device: Any) -> Iterator[None]:
    """The settings a sliding window on ``device`` runs under: on the CPU, freed memory reused;
    on other devices none."""
    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    with freed_memory_reused():
        yield
