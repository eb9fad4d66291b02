"""Takes snapshots of this node: host and GPUs together, in the wire shape.

The collectors block (/proc reads, NVML talks to the driver), so :class:`SampleSource` runs them
on a thread of its own and keeps only the latest snapshot, with its merge patch against the
snapshot before it, made on that thread too: there the new snapshot is still in the CPU's caches
(at 1 Hz the event loop would find it cold), and the loop's thread is left only the sending.

If a collector hangs, the snapshot simply stops getting newer; the link keeps sending heartbeats
meanwhile, and the hub shows the sample as late. The thread is a daemon thread: a call stuck in
the driver must not keep the agent from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Protocol

from node_agent import __version__
from node_agent.host import HostCollector
from node_agent.protocol import (
    GpuDriver,
    GpuStatic,
    Hello,
    HostStatic,
    Snapshot,
    make_patch,
    nulls_for_out_of_bounds,
    snapshot_within_bounds,
    to_wire,
)

log = logging.getLogger("sers.agent")


class GpuSource(Protocol):
    def driver(self) -> GpuDriver: ...
    def static(self) -> list[GpuStatic]: ...
    @property
    def static_generation(self) -> int: ...
    def sample_wire(self) -> dict[str, dict[str, Any]]: ...
    def close(self) -> None: ...
    @property
    def fields_checked_when_read(self) -> frozenset[str]:
        """GPU sample fields that :meth:`sample_wire` has already held to the protocol's bounds."""


class Sampler:
    """Owns the collectors; every call blocks and belongs on a worker thread."""

    def __init__(self, host: HostCollector, gpus: GpuSource) -> None:
        self._host = host
        self._gpus = gpus
        self._out_of_bounds: set[str] = set()  # fields already warned about

    @property
    def static_generation(self) -> int:
        """Changes when :meth:`hello` would say something new (NVML came up after a retry)."""
        return self._gpus.static_generation

    def hello(self, node: str, interval_s: float) -> Hello:
        nulled: list[str] = []
        host = nulls_for_out_of_bounds(to_wire(self._host.static()), HostStatic, "host", nulled)
        gpus = [
            nulls_for_out_of_bounds(gpu, GpuStatic, f"gpus[{i}]", nulled)
            for i, gpu in enumerate(to_wire(self._gpus.static()))
        ]
        self._warn_out_of_bounds(nulled)
        return Hello(
            node=node,
            agent_version=__version__,
            interval_s=interval_s,
            host=host,
            gpu_driver=to_wire(self._gpus.driver()),
            gpus=gpus,
        )

    def snapshot(self) -> Snapshot:
        """A snapshot of the node, every reading held to the protocol's bounds."""
        return self.next_sample(None)[0]

    def next_sample(self, previous: Snapshot | None) -> tuple[Snapshot, dict[str, Any] | None]:
        """The next snapshot, held to the protocol's bounds, and its merge patch against
        ``previous`` (a snapshot this method returned; ``None``: no patch).

        Only the patch is held to the bounds: ``previous`` was, and what the patch leaves out
        is as it was there. So a sample checks the few readings that changed, not every field
        of every GPU and process (the check was a fifth of a sample's CPU). A reading out of
        bounds, rare, sends the whole snapshot through the check and diffs it again."""
        fields_checked = self._gpus.fields_checked_when_read
        raw = {
            "sampled_at": round(time.time(), 3),
            "host": self._host.sample_wire(),
            "gpus": self._gpus.sample_wire(),
        }
        if previous is not None:
            patch = make_patch(previous, raw)
            if not snapshot_within_bounds(patch, fields_checked)[1]:
                return raw, patch
        snapshot, nulled = snapshot_within_bounds(raw, fields_checked)
        self._warn_out_of_bounds(nulled)
        return snapshot, None if previous is None else make_patch(previous, snapshot)

    def _warn_out_of_bounds(self, nulled: list[str]) -> None:
        """Once per field: a reading the hub would refuse is sent as unknown (null)."""
        for path in nulled:
            if path not in self._out_of_bounds:
                self._out_of_bounds.add(path)
                log.warning("%s: a reading outside the protocol's bounds; sent as unknown", path)

    def close(self, timeout_s: float = 2.0) -> None:
        """Shuts the GPU collector down, unless a hung call holds it: then gives up after
        ``timeout_s`` so that the agent still exits."""
        closer = threading.Thread(target=self._gpus.close, name="sers-gpu-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            log.warning("the GPU collector is stuck in a call; exiting without shutting NVML down")


class SampleSource:
    """Samples every ``interval_s`` on its own thread; ``latest`` is the newest snapshot and
    ``version`` counts them; :meth:`patch_since` gives the merge patch that brings a receiver up
    to ``latest``.

    The thread keeps the clock itself: it sleeps until the next tick, samples, and hands the
    snapshot to the event loop with one ``call_soon_threadsafe``. So a sample wakes the loop once
    and the thread once, where a job sent to a worker and its result sent back cost more wake-ups
    (at 1 Hz the agent spends much of its CPU waking up). A hung collector stops only this thread.
    """

    def __init__(self, sampler: Sampler, interval_s: float) -> None:
        self._sampler = sampler
        self._interval_s = interval_s
        self._stopped = False
        self._waiters: set[asyncio.Future[None]] = set()
        self.latest: Snapshot | None = None
        self.version = 0
        # latest's patch against the snapshot before it (the thread's ``previous``)
        self._patch_base: Snapshot | None = None
        self._patch: dict[str, Any] = {}

    async def run(self) -> None:
        """Samples until cancelled (or :meth:`close`)."""
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._sample_every_tick, args=(loop,), name="sers-sampler", daemon=True
        )
        thread.start()
        try:
            await loop.create_future()  # never done: the thread works, this task holds its life
        finally:
            self._stopped = True

    async def wait_newer(self, version: int, timeout_s: float) -> None:
        """Returns once ``version`` is no longer the newest, or after ``timeout_s``."""
        if self.version != version:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout_s, _wake, waiter)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    def patch_since(self, sent: Snapshot) -> dict[str, Any]:
        """The merge patch from ``sent`` to :attr:`latest`. When ``sent`` is the snapshot just
        before ``latest`` (a receiver that took every sample), it was made on the sampling
        thread already; otherwise (the first delta of a connection, a sample skipped) here."""
        if sent is self._patch_base:
            return self._patch
        return make_patch(sent, self.latest)

    def close(self) -> None:
        """Stops the thread at its next tick."""
        self._stopped = True

    def _sample_every_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        next_at = time.monotonic()
        previous: Snapshot | None = None
        while not self._stopped:
            try:
                snapshot, patch = self._sampler.next_sample(previous)
            except Exception:
                log.exception("sampling failed; keeping the previous snapshot")
            else:
                try:
                    loop.call_soon_threadsafe(self._publish, snapshot, previous, patch)
                except RuntimeError:  # the loop is closed: the agent is exiting
                    return
                previous = snapshot
            next_at += self._interval_s
            now = time.monotonic()
            if next_at < now:  # a slow sample: skip the missed ticks instead of bursting
                next_at = now + self._interval_s
            time.sleep(next_at - now)  # plain sleep: the cheapest wake-up (an Event costs more)

    def _publish(self, snapshot: Snapshot, previous: Snapshot | None, patch: dict[str, Any] | None) -> None:
        """On the event loop: the thread's new snapshot becomes the latest, with its ``patch``
        against ``previous`` (``None``: no previous snapshot)."""
        self.latest = snapshot
        self._patch_base, self._patch = (previous, patch) if patch is not None else (None, {})
        self.version += 1
        for waiter in self._waiters:
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
