"""How the hub process uses memory: glibc malloc and CPython's garbage collector.

The hub builds a payload of a few hundred KiB per tick (the changed fragments, shared by every
viewer), and the WebSocket layer copies it once per viewer into a frame. Two glibc behaviours
decide what that costs:

- Blocks above the mmap threshold get fresh pages from the kernel on every allocation (a page
  fault per 4 KiB, then ``munmap``): serializing a 220 KiB frame took 119 µs that way against
  6 µs from the heap, and at 2,000 nodes x 50 viewers those faults were about 15 % of the hub's
  CPU. So the threshold is fixed high (:data:`MMAP_THRESHOLD_BYTES`): payloads come from the heap.
- Freed heap blocks in the middle of the heap stay in the process (fragmentation): with a slow
  browser attached, whose joined payloads vary in size, RSS crept up by megabytes a minute. So
  :func:`release_free_memory_forever` hands free heap pages back to the kernel every few seconds
  (``malloc_trim``; a few milliseconds).

Off glibc (musl, macOS) both do nothing. An explicit ``MALLOC_MMAP_THRESHOLD_`` in the
environment is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("sers.hub")

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's own ceiling for its dynamic threshold
TRIM_INTERVAL_S = 5.0
_M_MMAP_THRESHOLD = -3  # malloc.h

# Every agent message replaces a few small state dicts, so CPython's default generation-0
# threshold (700 allocations) runs a collection every few messages and a full one every few
# seconds (25-60 ms pauses at 1,500 nodes, BENCHMARKS.md). The hub's data has no reference
# cycles to speak of (reference counting frees it), so collect far less often, and freeze the
# objects of startup (modules, templates) out of every collection. Whenever it runs, a
# generation-0 collection traverses the nodes' current states (young: every message replaces
# them; ~115,000 containers at 2,000 nodes), ~100 ms with the GIL held. The hub alone frees
# about what it allocates, but its memory grows by ~47,000 tracked objects at each minute's
# start (the history's buckets, freed by the flush): at 50,000 that ran a collection every few
# seconds with every feature on (p99 170-361 ms); at 200,000, about one a minute (p99 125 ms).
# What does leave reference cycles is a closed connection (uvicorn's and asyncio's objects of
# it): ~50 KiB each, which at 200,000 would wait for a collection while connections churn, so
# every COLLECT_AFTER_CLOSES closed connections collect (connection_closed).
GC_THRESHOLDS = (200_000, 20, 100)
COLLECT_AFTER_CLOSES = 32
_closed = 0  # connections closed since the last such collection (the event loop's thread only)


def connection_closed() -> None:
    """Counts a closed agent or viewer connection; every :data:`COLLECT_AFTER_CLOSES` collects
    the young generations, where its cycles are (a lab that reconnects whole pays ~60 of these
    ~100 ms collections at 2,000 nodes; a steady one, none)."""
    global _closed
    _closed += 1
    if _closed >= COLLECT_AFTER_CLOSES:
        _closed = 0
        gc.collect(1)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc() -> None:
    """Fixes glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` (see the module's doc)."""
    libc = _libc()
    if libc is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


_pause_lock = threading.Lock()
_pauses = 0  # blocks in collector_paused now, on any thread
_resume = False  # whether the collector was on when the first of them began


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the block runs, on any thread (blocks may nest and
    overlap). For bulk work whose objects reference counting frees at its end, such as a write
    of the state file: its allocations would otherwise start a collection, and a collection in
    this process traverses every young live object of the hub, the nodes' current states (every
    agent message replaces them: ~115,000 containers at 2,000 nodes), holding the GIL for
    about 100 ms. A minute's memory flush started two or three such pauses on the event loop.
    The hub's own steady work allocates about as much as it frees and starts none."""
    global _pauses, _resume
    with _pause_lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()


def release_free_memory() -> float:
    """Returns free heap pages to the kernel; the seconds it took (0 off glibc)."""
    libc = _libc()
    if libc is None:
        return 0.0
    started = time.perf_counter()
    libc.malloc_trim(0)
    return time.perf_counter() - started


async def release_free_memory_forever(interval_s: float = TRIM_INTERVAL_S) -> None:
    if _libc() is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        took_s = release_free_memory()
        if took_s > 0.05:
            log.debug("malloc_trim took %.0f ms", took_s * 1000)
