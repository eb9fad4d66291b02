"""Takes snapshots of this node: host and GPUs together, in the wire shape.

The collectors block (psutil reads /proc, NVML talks to the driver), so :class:`SampleSource`
runs them on one worker thread and keeps only the latest snapshot. If a collector hangs, the
snapshot simply stops getting newer; the link keeps sending heartbeats meanwhile, and the hub
shows the sample as late. The worker is a daemon thread: a call stuck in the driver must not keep
the agent from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, Protocol, TypeVar

from node_agent import __version__
from node_agent.host import HostCollector
from node_agent.protocol import GpuDriver, GpuSample, GpuStatic, Hello, Snapshot, to_wire

log = logging.getLogger("sers.agent")
T = TypeVar("T")


class GpuSource(Protocol):
    def driver(self) -> GpuDriver: ...
    def static(self) -> list[GpuStatic]: ...
    def sample(self) -> dict[str, GpuSample]: ...
    def close(self) -> None: ...


class Sampler:
    """Owns the collectors; every call blocks and belongs on a worker thread."""

    def __init__(self, host: HostCollector, gpus: GpuSource) -> None:
        self._host = host
        self._gpus = gpus

    def hello(self, node: str, interval_s: float) -> Hello:
        return Hello(
            node=node,
            agent_version=__version__,
            interval_s=interval_s,
            host=to_wire(self._host.static()),
            gpu_driver=to_wire(self._gpus.driver()),
            gpus=to_wire(self._gpus.static()),
        )

    def snapshot(self) -> Snapshot:
        sampled_at = round(time.time(), 3)
        return {
            "sampled_at": sampled_at,
            "host": to_wire(self._host.sample()),
            "gpus": to_wire(self._gpus.sample()),
        }

    def close(self, timeout_s: float = 2.0) -> None:
        """Shuts the GPU collector down, unless a hung call holds it: then gives up after
        ``timeout_s`` so that the agent still exits."""
        closer = threading.Thread(target=self._gpus.close, name="sers-gpu-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            log.warning("the GPU collector is stuck in a call; exiting without shutting NVML down")


class DaemonWorker(Generic[T]):
    """Runs blocking calls one at a time on a daemon thread (unlike ``ThreadPoolExecutor``,
    whose threads the interpreter waits for at exit, even when one is stuck for good)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], T], Future[T]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def close(self) -> None:
        self._jobs.put(None)


class SampleSource:
    """Samples every ``interval_s`` on a worker thread; ``latest`` is the newest snapshot."""

    def __init__(self, sampler: Sampler, interval_s: float) -> None:
        self._sampler = sampler
        self._interval_s = interval_s
        self._worker: DaemonWorker[Snapshot] = DaemonWorker("sers-sampler")
        self.latest: Snapshot | None = None
        self.version = 0
        self.changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                snapshot = await asyncio.wrap_future(self._worker.submit(self._sampler.snapshot))
            except Exception:
                log.exception("sampling failed; keeping the previous snapshot")
            else:
                self.latest = snapshot
                self.version += 1
                self.changed.set()
            next_at += self._interval_s
            now = loop.time()
            if next_at < now:  # a slow sample: skip the missed ticks instead of bursting
                next_at = now + self._interval_s
            await asyncio.sleep(next_at - now)

    def close(self) -> None:
        self._worker.close()
