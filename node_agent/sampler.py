"""Takes snapshots of this node: host and GPUs together, in the wire shape.

The collectors block (psutil reads /proc, NVML talks to the driver), so :class:`SampleSource`
runs them on one worker thread and keeps only the latest snapshot. If a collector hangs, the
snapshot simply stops getting newer; the link keeps sending heartbeats meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from node_agent import __version__
from node_agent.host import HostCollector
from node_agent.protocol import GpuDriver, GpuSample, GpuStatic, Hello, Snapshot, to_wire

log = logging.getLogger("sers.agent")


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

    def close(self) -> None:
        self._gpus.close()


class SampleSource:
    """Samples every ``interval_s`` on a worker thread; ``latest`` is the newest snapshot."""

    def __init__(self, sampler: Sampler, interval_s: float) -> None:
        self._sampler = sampler
        self._interval_s = interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sers-sampler")
        self.latest: Snapshot | None = None
        self.version = 0
        self.changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                snapshot = await loop.run_in_executor(self._executor, self._sampler.snapshot)
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
        self._executor.shutdown(wait=False, cancel_futures=True)
