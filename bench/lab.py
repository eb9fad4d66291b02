"""A simulated lab of GPU servers speaking the real agent protocol, for ``make demo`` and
``docs/make_screenshot.py``.

Five groups (H100, A100, L40S, RTX 4090 and L4 servers, 36 in all), their GPUs busy or free,
jobs of several users coming and going; a history of samples sent first so sparklines show at
once. In the demo one GPU is lost, one node's sampler hangs (heartbeats only: "sample late") and
one node goes offline a few seconds in. Unlike :mod:`bench.simnode` (thousands of agents for the
benchmarks, changing on every sample), each node here is a full simulation meant to look right.

    python -m bench.lab --url ws://127.0.0.1:8000/ws/agent [--nodes 36]

The hub must allow the history's burst: ``SERS_AGENT_MAX_MESSAGES_PER_S=50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from node_agent.protocol import Delta, Hello, encode, make_patch

GIB = 1024**3
MODELS = {
    "H100": ("NVIDIA H100 80GB HBM3", 80 * GIB, 700.0),
    "A100": ("NVIDIA A100-SXM4-80GB", 80 * GIB, 400.0),
    "L40S": ("NVIDIA L40S", 48 * GIB, 350.0),
    "4090": ("NVIDIA GeForce RTX 4090", 24 * GIB, 450.0),
    "L4": ("NVIDIA L4", 24 * GIB, 72.0),
}
# (group, model, GPUs per node, node names): display names come from the hub's config, as in a
# real lab. The screenshot takes the first 24 nodes.
GROUPS = (
    ("vision", "H100", 8, ("atlas", "boreas", "castor", "deneb", "electra", "fornax")),
    ("nlp", "A100", 8, ("gauss", "hilbert", "ito", "jacobi", "kepler", "laplace", "markov")),
    ("shared", "L40S", 8, ("nash", "ohm", "pascal", "quine", "riemann")),
    ("students", "4090", 8, ("sagan", "tesla", "ulam", "volta", "weyl", "yukawa")),
    (
        "workshop",
        "L4",
        4,
        (
            "bohr",
            "curie",
            "dirac",
            "euler",
            "fermi",
            "galois",
            "hopper",
            "jordan",
            "klein",
            "lorentz",
            "mach",
            "noether",
        ),
    ),
)
LAB_SIZE = sum(len(names) for *_, names in GROUPS)
USERS = ("alice", "bchen", "carlos", "dmitri", "eva.k", "farid", "grace", "hiro", "ines", "jonas")
COMMANDS = ("python", "torchrun", "python3", "deepspeed", "jupyter-kernel", "vllm")
BACKFILL_STEP_S = 5.0
# the demo's troubled nodes (the first 24, the screenshot's, keep only the lost GPU)
SAMPLER_STUCK = "lorentz"
GOES_OFFLINE = "noether"
TROUBLE_AFTER_LIVE_S = 3.0  # both run normally for a few seconds first


class LabNode:
    """A simulated GPU server whose values wander plausibly (jobs start, run and finish)."""

    def __init__(self, name: str, model: str, seed: int, gpus: int = 8) -> None:
        self.name = name
        self.sampler_stuck = False  # heartbeats only, no new samples (a hung collector)
        self.rng = random.Random(seed)
        self.model = model
        self.gpu_name, self.gpu_mem_total, self.power_limit = MODELS[model]
        self.gpus = gpus
        rng = self.rng
        self.cores = rng.choice((64, 96, 128))
        self.mem_total = rng.choice((512, 1024)) * GIB
        self.boot = time.time() - rng.uniform(2 * 86400, 90 * 86400)
        self.lost_gpu: int | None = None
        # per GPU: a job (user, command, pid, memory share, utilization level) or None
        self.jobs: list[dict[str, Any] | None] = [
            self._new_job() if rng.random() < 0.7 else None for _ in range(gpus)
        ]
        self.phase = [rng.uniform(0, 6.28) for _ in range(gpus)]
        self.sent: dict[str, Any] = {}
        self.seq = 0

    def _new_job(self) -> dict[str, Any]:
        rng = self.rng
        users = [rng.choice(USERS)]
        if rng.random() < 0.12:
            users += rng.sample(USERS, rng.randint(1, 3))
        return {
            "users": users,
            "command": rng.choice(COMMANDS),
            "pid": rng.randint(2000, 400_000),
            "mem": rng.uniform(0.25, 0.95),
            "util": rng.uniform(45, 99),
        }

    def hello(self) -> Hello:
        return Hello(
            node=self.name,
            agent_version="0.1.0",
            interval_s=1.0,
            host={
                "hostname": f"{self.name}.lab.example.org",
                "os_name": "Ubuntu 22.04.4 LTS",
                "kernel": "5.15.0-105-generic",
                "cpu_model": "AMD EPYC 7763 64-Core Processor",
                "cpu_cores_logical": self.cores,
                "cpu_cores_physical": self.cores // 2,
                "mem_total_bytes": self.mem_total,
                "boot_time_epoch_s": self.boot,
            },
            gpu_driver={
                "driver_version": "550.54.15",
                "cuda_driver_version": "12.4",
                "nvml_version": "12.550.54.15",
            },
            gpus=[
                {
                    "index": i,
                    "uuid": f"GPU-{abs(hash((self.name, i))) % 16**8:08x}-0000-0000-0000-{i:012x}",
                    "name": self.gpu_name,
                    "mem_total_bytes": self.gpu_mem_total,
                    "power_limit_watts": self.power_limit,
                    "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
                }
                for i in range(self.gpus)
            ],
        )

    def snapshot(self, at: float) -> dict[str, Any]:
        rng = self.rng
        busy = sum(job is not None for job in self.jobs)
        cpu = min(100.0, 4 + busy * 7.5 + rng.uniform(-3, 3))
        gpus: dict[str, Any] = {}
        for i in range(self.gpus):
            if i == self.lost_gpu:
                gpus[str(i)] = {"index": i, "name": self.gpu_name, "error": "GPU is lost (Xid 79)"}
                continue
            job = self.jobs[i]
            if rng.random() < 0.002:  # jobs come and go
                job = self.jobs[i] = None if job else self._new_job()
            if job:
                wave = math.sin(at / 47 + self.phase[i])
                util = max(5.0, min(100.0, job["util"] + 10 * wave + rng.uniform(-4, 4)))
                mem = job["mem"] * self.gpu_mem_total
                processes = [
                    {
                        "pid": job["pid"] + k,
                        "user": user,
                        "command": job["command"],
                        "gpu_mem_bytes": int(mem / len(job["users"])),
                        "cpu_percent": round(rng.uniform(90, 110), 1),
                        "host_mem_bytes": int(rng.uniform(8, 40) * GIB),
                    }
                    for k, user in enumerate(job["users"])
                ]
                temp = 48 + util * 0.36 + rng.uniform(-1, 1)
                power = self.power_limit * (0.25 + 0.7 * util / 100)
            else:
                util, mem, processes, temp, power = 0.0, 0.5 * GIB, [], 33 + i % 3, self.power_limit * 0.1
            gpus[str(i)] = {
                "index": i,
                "name": self.gpu_name,
                "util_gpu_percent": round(util),
                "util_mem_percent": round(util * 0.4),
                "mem_used_bytes": int(mem),
                "mem_total_bytes": self.gpu_mem_total,
                "temp_celsius": round(temp),
                "power_draw_watts": round(power, 1),
                "power_limit_watts": self.power_limit,
                "clock_sm_mhz": 1980 if job else 210,
                "clock_mem_mhz": 2619,
                "pstate": 0 if job else 8,
                "processes": processes,
            }
        load = self.cores * cpu / 100
        host = {
            "cpu_percent": round(cpu, 1),
            "load_avg_1m": round(load + rng.uniform(-1, 1), 2),
            "load_avg_5m": round(load, 2),
            "load_avg_15m": round(load * 0.95, 2),
            "mem_total_bytes": self.mem_total,
            "mem_used_bytes": int(self.mem_total * min(0.95, 0.1 + busy * 0.08)),
            "swap_total_bytes": 8 * GIB,
            "swap_used_bytes": 0,
            "disks": [
                {
                    "mount": "/",
                    "total_bytes": 1_920_000_000_000,
                    "used_bytes": int(1_920_000_000_000 * (0.3 + (hash(self.name) % 60) / 100)),
                }
            ],
            "net_rx_bytes_per_s": round(busy * rng.uniform(2e6, 9e7)),
            "net_tx_bytes_per_s": round(busy * rng.uniform(1e6, 3e7)),
            "disk_read_bytes_per_s": round(rng.uniform(0, 2e8)),
            "disk_write_bytes_per_s": round(rng.uniform(0, 5e7)),
            "uptime_s": round(at - self.boot),
            "users_count": 2,
        }
        return {"sampled_at": round(at, 3), "host": host, "gpus": gpus}

    def delta(self, at: float) -> str:
        if self.sampler_stuck:
            self.seq += 1
            return encode(Delta(seq=self.seq, ts=round(at, 3), patch={})).decode()
        snapshot = self.snapshot(at)
        patch = make_patch(self.sent, snapshot)
        self.sent = snapshot
        self.seq += 1
        return encode(Delta(seq=self.seq, ts=round(at, 3), patch=patch)).decode()


async def run_node(
    node: LabNode,
    url: str,
    backfill_s: float,
    live: asyncio.Event,
    stop: asyncio.Event,
    backfill_pace_s: float = 0.13,
) -> None:
    """Connects as ``node``, sends ``backfill_s`` of backdated samples (one per
    ``backfill_pace_s``, under the hub's rate limit), sets ``live``, then samples once a second
    until ``stop``, and says goodbye (a clean close: the hub shows the node offline at once)."""
    async with connect(url, compression=None) as ws:
        await ws.send(encode(node.hello()).decode())
        drain = asyncio.create_task(_drain(ws))
        at = time.time() - backfill_s
        while at < time.time() - 1:
            await ws.send(node.delta(at))
            at += BACKFILL_STEP_S
            await asyncio.sleep(backfill_pace_s)
        live.set()
        while not stop.is_set():
            await ws.send(node.delta(time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        drain.cancel()


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


def lab(count: int) -> tuple[list[LabNode], str]:
    """The first ``count`` nodes and the hub's TOML naming and grouping them."""
    nodes: list[LabNode] = []
    toml = []
    seed = 7
    for group, model, gpus, names in GROUPS:
        for name in names:
            nodes.append(LabNode(name, model, seed, gpus))
            toml.append(f'[names."{name}"]\ndisplay_name = "{name}"\ngroup = "{group}"\n')
            seed += 1
    nodes = nodes[:count]
    nodes[3].lost_gpu = 5
    return nodes, "\n".join(toml)


async def _after_live(live: asyncio.Event, action: Callable[[], None]) -> None:
    await live.wait()
    await asyncio.sleep(TROUBLE_AFTER_LIVE_S)
    action()


def _hang(node: LabNode) -> None:
    node.sampler_stuck = True


async def run_lab(url: str, count: int, backfill_s: float) -> int:
    """Runs the demo's lab until SIGINT or SIGTERM (0), or until a node's connection fails (1)."""
    nodes, _ = lab(count)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    leaving = asyncio.Event()
    runs: list[asyncio.Task[None]] = []  # each node's connection
    troubles: list[asyncio.Task[None]] = []  # the timed hang and goodbye
    for node in nodes:
        live = asyncio.Event()
        until = leaving if node.name == GOES_OFFLINE else stop
        runs.append(asyncio.create_task(run_node(node, url, backfill_s, live, until, 0.05)))
        if node.name == GOES_OFFLINE:
            troubles.append(asyncio.create_task(_after_live(live, leaving.set)))
        if node.name == SAMPLER_STUCK:
            troubles.append(asyncio.create_task(_after_live(live, functools.partial(_hang, node))))
    stopping = asyncio.create_task(stop.wait())
    staying = [run for run, node in zip(runs, nodes, strict=True) if node.name != GOES_OFFLINE]
    await asyncio.wait([stopping, *staying], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    leaving.set()
    for task in troubles:
        task.cancel()
    await asyncio.gather(*troubles, return_exceptions=True)
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures and not stopping.done():
        print(f"bench.lab: a node's connection failed: {failures[0]!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lab", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the hub's agent endpoint, ws://host:port/ws/agent")
    parser.add_argument("--nodes", type=int, default=LAB_SIZE, help=f"how many nodes, 1 to {LAB_SIZE}")
    parser.add_argument("--backfill-s", type=float, default=600.0, help="seconds of history sent first")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= LAB_SIZE:
        parser.error(f"--nodes: 1 to {LAB_SIZE}")
    return asyncio.run(run_lab(args.url, args.nodes, args.backfill_s))


if __name__ == "__main__":
    sys.exit(main())
