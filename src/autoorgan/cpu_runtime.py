"""The process setting under which the network runs faster on the CPU, its numbers unchanged:
freed memory kept for reuse.

Each network call allocates its activations afresh, layer by layer. glibc's ``malloc`` serves
every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so the kernel maps and zeroes the same memory again on every tile: about 2.1 million
page faults per tile of nnU-Net's default 1.5 mm architecture. While the sliding window runs on
the CPU (:func:`network_settings`), ``malloc`` is told to take large blocks from its heap and to
keep freed memory there for the next tile; afterwards the defaults come back and the freed
memory is returned to the system (``malloc_trim``). Where the C library is not glibc nothing
changes. Measured with ``benchmarks/network_levers.py --reuse-memory`` on 2 cores: 5.7-5.8 s
per tile of the default architecture instead of 7.0-8.1 s, about 190,000 page faults instead
of 1.3-2.2 million; the README's "Speed and memory" quotes the figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# mallopt(3) parameters and glibc's defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = -1  # "Setting M_TRIM_THRESHOLD to -1 disables trimming completely" (mallopt(3))

_lock = threading.Lock()
_depth = 0


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


def heap_reuse_supported() -> bool:
    """Whether :func:`freed_memory_reused` can change anything here (glibc on Linux)."""
    return _glibc() is not None


def reusing_freed_memory() -> bool:
    """Whether a :func:`freed_memory_reused` block is in effect now."""
    return _depth > 0 and _glibc() is not None


@contextlib.contextmanager
def freed_memory_reused() -> Iterator[bool]:
    """Keep memory that is freed inside the block for the block's next allocations.

    Yields whether the setting took effect (glibc only). Nested and concurrent uses share one
    setting, restored when the last one ends; the freed memory is then handed back to the
    system, so the process's resident memory after the block is what it would have been.
    Inside the block the peak grows by the fragmentation of the heap (measured: about 1 GiB
    for one tile of nnU-Net's default architecture, nothing for the tiny one).
    """
    global _depth
    libc = _glibc()
    with _lock:
        _depth += 1
        if _depth == 1 and libc is not None:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    try:
        yield libc is not None
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and libc is not None:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


@contextlib.contextmanager
def network_settings(device: Any) -> Iterator[None]:
    """The settings a sliding window on ``device`` runs under: on the CPU, freed memory reused;
    on other devices none."""
    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    with freed_memory_reused():
        yield
