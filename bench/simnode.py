"""A simulated GPU server: a realistic hello and snapshots whose values change plausibly.

Each node has a 64-core host and 8 H100s. A "busy" GPU runs one training process: its
utilization moves by at least one percent every sample (so its row visibly changes), its power
and temperature follow, its memory grows now and then. An idle GPU never changes, so its row is
never sent again. The host changes every sample (CPU, network, disk, uptime).

With ``mig`` the node is an 8 x A100 80GB server in MIG mode instead: each GPU split into two
3g.40gb slices; a busy GPU's process runs in its first slice (NVML lists it on the GPU too), the
second slice stays free. Slices report no utilization of their own, as on most drivers.

For thousands of agents in one load-generating process, :class:`Family` precomputes a loop of
merge patches from one ``SimNode`` (with the protocol's ``make_patch``) and :class:`SimAgent`
replays it under its own name, so an agent's send costs an ``encode`` and a WebSocket frame,
like the real agent's, instead of a simulation step.

The host's 5- and 15-minute load averages carry a *mark*: the sample's wall-clock time in
milliseconds (modulo 10^8, about 27 hours), written as two ``%.2f`` numbers. The hub shows them
verbatim in the host fragment, so a viewer can read back when the sample was taken without the
product carrying anything for the benchmark.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

from node_agent.protocol import Delta, Hello, Snapshot, encode, make_patch

GIB = 1024**3
MARK_MODULO_MS = 100_000_000
CORES = 64
GPUS = 8
MIG_PROFILES = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
USERS = ("alice", "bob", "chen", "dmitri", "eva", "farid", "grace", "hiro")
COMMANDS = ("python", "torchrun", "python3", "jupyter-kernel", "deepspeed")

# "load 0.73 12.34 56.78" inside the host fragment; the last two numbers are the mark.
LOAD_TEXT_RE = re.compile(rb"load [0-9.\xe2\x80\x93]+ ([0-9]+)\.([0-9]{2}) ([0-9]+)\.([0-9]{2})<")


def mark_of(epoch_s: float) -> int:
    return int(epoch_s * 1000) % MARK_MODULO_MS


def mark_loads(mark_ms: int) -> tuple[float, float]:
    """The (5 min, 15 min) load averages that spell ``mark_ms``: each 0.00 .. 99.99."""
    return (mark_ms // 10_000) / 100, (mark_ms % 10_000) / 100


def mark_from_fragment(html: bytes, start: int = 0) -> int | None:
    """The mark in the first host fragment's load text at or after ``start``."""
    found = LOAD_TEXT_RE.search(html, start)
    if found is None:
        return None
    hi = int(found[1]) * 100 + int(found[2])
    lo = int(found[3]) * 100 + int(found[4])
    return hi * 10_000 + lo


def mark_age_ms(mark_ms: int, now_epoch_s: float) -> int:
    """Milliseconds from ``mark_ms`` to now (modulo arithmetic: the mark wraps every ~27 h)."""
    return (mark_of(now_epoch_s) - mark_ms) % MARK_MODULO_MS


class SimNode:
    """One simulated node. ``next_delta`` returns the encoded frame the real agent would send."""

    def __init__(
        self, name: str, seed: int, busy_fraction: float = 0.6, interval_s: float = 1.0, mig: bool = False
    ) -> None:
        self.name = name
        self.mig = mig
        self.model = "NVIDIA A100-SXM4-80GB" if mig else "NVIDIA H100 80GB HBM3"
        self.interval_s = interval_s
        self._seed = seed
        self._rng = random.Random(seed)
        rng = self._rng
        self.busy = [rng.random() < busy_fraction for _ in range(GPUS)]
        self._cpu = rng.uniform(5, 60)
        self._mem_used = rng.uniform(40, 300) * GIB
        self._load1 = rng.uniform(1, 30)
        self._uptime_s = rng.uniform(3600, 90 * 86400)
        self._util = [rng.uniform(30, 95) if b else 0.0 for b in self.busy]
        self._gpu_mem = [rng.uniform(10, 70) * GIB if b else 0.0 for b in self.busy]
        self._temp = [rng.uniform(50, 75) if b else 31.0 + i for i, b in enumerate(self.busy)]
        self._procs = [
            {
                "pid": rng.randint(1000, 4_000_000),
                "user": rng.choice(USERS),
                "command": rng.choice(COMMANDS),
            }
            for _ in range(GPUS)
        ]
        self._sent: Snapshot = {}
        self._seq = 0

    @property
    def busy_gpus(self) -> int:
        return sum(self.busy)

    def _uuid(self, i: int) -> str:
        return f"GPU-{self._seed % 16**8:08x}-1111-2222-3333-{i:012x}"

    def hello(self) -> Hello:
        return Hello(
            node=self.name,
            agent_version="0.1.0",
            interval_s=self.interval_s,
            host={
                "hostname": self.name,
                "os_name": "Ubuntu 22.04.4 LTS",
                "kernel": "5.15.0-105-generic",
                "cpu_model": "AMD EPYC 7763 64-Core Processor",
                "cpu_cores_logical": CORES,
                "cpu_cores_physical": CORES,
                "mem_total_bytes": 512 * GIB,
                "boot_time_epoch_s": 1_700_000_000.0,
            },
            gpu_driver={
                "driver_version": "550.54.15",
                "cuda_driver_version": "12.4",
                "nvml_version": "12.550.54.15",
                "error": None,
            },
            gpus=[
                {
                    "index": i,
                    "uuid": self._uuid(i),
                    "name": self.model,
                    "mem_total_bytes": 80 * GIB,
                    "power_limit_watts": 400.0 if self.mig else 700.0,
                    "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
                    "mig_mode": "enabled" if self.mig else "disabled",
                    "mig_profiles": MIG_PROFILES if self.mig else None,
                }
                for i in range(GPUS)
            ],
        )

    def hello_frame(self) -> str:
        self._sent = {}
        return encode(self.hello()).decode()

    def snapshot(self, now_epoch_s: float, mark: bool = True) -> Snapshot:
        """The next sample at ``now_epoch_s``; with ``mark`` the load averages carry its time."""
        rng = self._rng
        self._cpu = min(100.0, max(0.5, self._cpu + rng.uniform(-8, 8)))
        self._mem_used = min(500 * GIB, max(8 * GIB, self._mem_used + rng.uniform(-2, 2) * GIB))
        self._load1 = max(0.0, self._load1 + rng.uniform(-1, 1))
        self._uptime_s += self.interval_s
        load5, load15 = mark_loads(mark_of(now_epoch_s)) if mark else (self._load1, self._load1)
        per_core = [round(min(100.0, max(0.0, self._cpu + rng.uniform(-20, 20))), 1) for _ in range(CORES)]
        host = {
            "cpu_percent": round(self._cpu, 1),
            "cpu_percent_per_core": per_core,
            "load_avg_1m": round(self._load1, 2),
            "load_avg_5m": load5,
            "load_avg_15m": load15,
            "mem_total_bytes": 512 * GIB,
            "mem_used_bytes": int(self._mem_used),
            "mem_available_bytes": int(512 * GIB - self._mem_used),
            "swap_total_bytes": 8 * GIB,
            "swap_used_bytes": 0,
            "disks": [
                {"mount": "/", "total_bytes": 1_920_000_000_000, "used_bytes": 812_000_000_000},
                {"mount": "/data", "total_bytes": 15_360_000_000_000, "used_bytes": 9_100_000_000_000},
            ],
            "disk_read_bytes_per_s": round(rng.uniform(0, 400e6), 1),
            "disk_write_bytes_per_s": round(rng.uniform(0, 200e6), 1),
            "net_rx_bytes_per_s": round(rng.uniform(1e3, 1.2e9), 1),
            "net_tx_bytes_per_s": round(rng.uniform(1e3, 1.2e9), 1),
            "uptime_s": int(self._uptime_s),
            "users_count": 3,
        }
        gpus = {str(i): self._gpu(i) for i in range(GPUS)}
        return {"sampled_at": round(now_epoch_s, 3), "host": host, "gpus": gpus}

    def _gpu(self, i: int) -> dict[str, Any]:
        rng = self._rng
        if self.busy[i]:
            step = rng.choice((-1, 1)) * rng.randint(1, 12)
            util = self._util[i] + step
            if not 5 <= util <= 100:
                util = self._util[i] - step
            self._util[i] = float(round(util))  # whole percents: each sample is a visible change
            if rng.random() < 0.1:
                self._gpu_mem[i] = min(79 * GIB, self._gpu_mem[i] + rng.uniform(0, 4) * GIB)
            self._temp[i] = min(88.0, max(45.0, self._temp[i] + rng.uniform(-1.5, 1.5)))
            proc = self._procs[i]
            processes = [
                {
                    **proc,
                    "gpu_mem_bytes": int(self._gpu_mem[i]),
                    "cpu_percent": round(rng.uniform(95, 105), 1),
                    "host_mem_bytes": 24 * GIB,
                }
            ]
            power = round(90 + 6 * self._util[i] + rng.uniform(-5, 5), 1)
        else:
            processes = []
            power = 69.0
        gpu = {
            "index": i,
            "uuid": self._uuid(i),
            "name": self.model,
            "util_gpu_percent": self._util[i],
            "util_mem_percent": round(self._util[i] * 0.4),
            "mem_used_bytes": int(self._gpu_mem[i]) + 530 * 1024**2,
            "mem_total_bytes": 80 * GIB,
            "temp_celsius": round(self._temp[i]),
            "fan_percent": None,
            "power_draw_watts": power,
            "power_limit_watts": 700.0,
            "clock_sm_mhz": 1980 if self.busy[i] else 345,
            "clock_mem_mhz": 2619,
            "pstate": 0,
            "enc_util_percent": 0.0,
            "dec_util_percent": 0.0,
            "throttle_reasons": [],
            "ecc_volatile_uncorrected": 0,
            "processes": processes,
            "error": None,
        }
        if self.mig:
            gpu["mig_slices"] = [self._slice(i, 0, 1, processes), self._slice(i, 1, 2, [])]
        return gpu

    def _slice(self, i: int, k: int, gpu_instance: int, processes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "uuid": f"MIG-{self._seed % 16**8:08x}-{i:04x}-{k:04x}-0000-000000000000",
            "profile": "3g.40gb",
            "gpu_instance_id": gpu_instance,
            "compute_instance_id": 0,
            "mem_used_bytes": sum(p["gpu_mem_bytes"] for p in processes) + 13 * 1024**2,
            "mem_total_bytes": 40 * GIB,
            "util_gpu_percent": None,
            "processes": processes,
        }

    def next_delta(self, now_epoch_s: float, *, quiet: bool = False, mark: bool = True) -> str:
        """The next frame: a delta against what was sent.

        A ``quiet`` delta carries only a new ``sampled_at`` (a sample in which nothing visible
        changed): the hub takes it as a fresh sample and has nothing to push.
        """
        self._seq += 1
        if quiet:
            patch: Snapshot = {"sampled_at": round(now_epoch_s, 3)}
            self._sent = {**self._sent, **patch}
        else:
            snapshot = self.snapshot(now_epoch_s, mark)
            patch = make_patch(self._sent, snapshot)
            self._sent = snapshot
        return encode(Delta(seq=self._seq, ts=round(now_epoch_s, 3), patch=patch)).decode()


class Family:
    """A loop of ``length`` samples of one simulated node, as merge patches.

    ``first`` is the full first snapshot (what follows a hello); ``steps[k]`` turns sample ``k``
    into sample ``k + 1`` (the last one back into sample 0). Every busy GPU's utilization
    differs between consecutive samples, across the wrap too, so each step changes its row.
    """

    def __init__(
        self, seed: int, busy_fraction: float, interval_s: float, length: int = 30, mig: bool = False
    ) -> None:
        sim = SimNode(f"family{seed}", seed, busy_fraction, interval_s, mig)
        self.interval_s = interval_s
        self.busy_gpus = sim.busy_gpus
        self.hello = sim.hello()
        samples = [sim.snapshot(1_700_000_000.0 + k * interval_s, mark=False) for k in range(length)]
        last, first, before = samples[-1]["gpus"], samples[0]["gpus"], samples[-2]["gpus"]
        for i, busy in enumerate(sim.busy):
            index = str(i)
            if busy and last[index]["util_gpu_percent"] == first[index]["util_gpu_percent"]:
                taken = {first[index]["util_gpu_percent"], before[index]["util_gpu_percent"]}
                util = next(
                    u for u in (last[index]["util_gpu_percent"] + d for d in (1, -1, 2, -2)) if u not in taken
                )
                last[index] = {**last[index], "util_gpu_percent": util}
        self.first = make_patch({}, samples[0])
        self.steps = [make_patch(samples[k], samples[(k + 1) % length]) for k in range(length)]


class SimAgent:
    """One simulated agent replaying its family's loop under its own name."""

    def __init__(self, name: str, family: Family, start: int = 0) -> None:
        self.name = name
        self.family = family
        self._position = start % len(family.steps)
        self._seq = 0
        self._after_hello = True

    @property
    def busy_gpus(self) -> int:
        return self.family.busy_gpus

    def hello_frame(self) -> str:
        hello = self.family.hello
        self._after_hello = True
        return encode(
            dataclasses.replace(hello, node=self.name, host={**hello.host, "hostname": self.name})
        ).decode()

    def next_frame(self, now_epoch_s: float, *, quiet: bool = False) -> str:
        """The next delta; ``quiet``: only a new ``sampled_at`` (nothing visible changes)."""
        self._seq += 1
        sampled_at = round(now_epoch_s, 3)
        if quiet and not self._after_hello:
            patch: Snapshot = {"sampled_at": sampled_at}
        else:
            if self._after_hello:
                base, self._after_hello = self.family.first, False
                self._position = 0
            else:
                base = self.family.steps[self._position]
                self._position = (self._position + 1) % len(self.family.steps)
            load5, load15 = mark_loads(mark_of(now_epoch_s))
            host = {**base.get("host", {}), "load_avg_5m": load5, "load_avg_15m": load15}
            patch = {**base, "sampled_at": sampled_at, "host": host}
        return encode(Delta(seq=self._seq, ts=sampled_at, patch=patch)).decode()
