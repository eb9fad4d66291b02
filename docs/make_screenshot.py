"""Makes ``docs/wall.png``: the wall display at 1920x1080 with 24 nodes of 8 GPUs.

Starts a real ``sers-hub`` on a free port, connects 24 simulated agents speaking the real
protocol over WebSocket (``/ws/agent``; a lab of H100, A100, L40S and RTX 4090 nodes in four
groups, some GPUs free, one lost GPU, one node gone offline), backfills ten minutes of samples
so the sparklines have a history, and photographs the page in headless Chromium.

    python docs/make_screenshot.py [--out docs/wall.png] [--theme dark|light] [--nodes 24]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node_agent.protocol import Delta, Hello, encode, make_patch  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

GIB = 1024**3
MODELS = {
    "H100": ("NVIDIA H100 80GB HBM3", 80 * GIB, 700.0),
    "A100": ("NVIDIA A100-SXM4-80GB", 80 * GIB, 400.0),
    "L40S": ("NVIDIA L40S", 48 * GIB, 350.0),
    "4090": ("NVIDIA GeForce RTX 4090", 24 * GIB, 450.0),
}
# (group, model, node names) — display names come from the hub's config, as in a real lab
GROUPS = (
    ("vision", "H100", ("atlas", "boreas", "castor", "deneb", "electra", "fornax")),
    ("nlp", "A100", ("gauss", "hilbert", "ito", "jacobi", "kepler", "laplace", "markov")),
    ("shared", "L40S", ("nash", "ohm", "pascal", "quine", "riemann")),
    ("students", "4090", ("sagan", "tesla", "ulam", "volta", "weyl", "yukawa")),
)
USERS = ("alice", "bchen", "carlos", "dmitri", "eva.k", "farid", "grace", "hiro", "ines", "jonas")
COMMANDS = ("python", "torchrun", "python3", "deepspeed", "jupyter-kernel", "vllm")
BACKFILL_S = 630.0
BACKFILL_STEP_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LabNode:
    """A simulated GPU server whose values wander plausibly (jobs start, run and finish)."""

    def __init__(self, name: str, model: str, seed: int, gpus: int = 8) -> None:
        self.name = name
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
        snapshot = self.snapshot(at)
        patch = make_patch(self.sent, snapshot)
        self.sent = snapshot
        self.seq += 1
        return encode(Delta(seq=self.seq, ts=round(at, 3), patch=patch)).decode()


async def run_node(
    node: LabNode, url: str, backfill_s: float, live: asyncio.Event, stop: asyncio.Event
) -> None:
    async with connect(url, compression=None) as ws:
        await ws.send(encode(node.hello()).decode())
        drain = asyncio.create_task(_drain(ws))
        at = time.time() - backfill_s
        while at < time.time() - 1:  # history first: backdated samples, paced under the rate limit
            await ws.send(node.delta(at))
            at += BACKFILL_STEP_S
            await asyncio.sleep(0.13)
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
    """The nodes and the hub's TOML naming them."""
    nodes: list[LabNode] = []
    toml = []
    seed = 7
    for group, model, names in GROUPS:
        for name in names:
            nodes.append(LabNode(name, model, seed))
            toml.append(f'[names."{name}"]\ndisplay_name = "{name}"\ngroup = "{group}"\n')
            seed += 1
    nodes = nodes[:count]
    nodes[3].lost_gpu = 5
    return nodes, "\n".join(toml)


async def shoot(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    port = free_port()
    nodes, toml = lab(args.nodes)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hub.toml"
        config.write_text(toml)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERS_")}
        env["PYTHONPATH"] = str(REPO)
        env["SERS_STATE_DB"] = "none"
        env["SERS_AGENT_MAX_MESSAGES_PER_S"] = "50"
        hub = subprocess.Popen(  # noqa: ASYNC220 - once, before anything else runs
            [
                sys.executable,
                "-m",
                "hub",
                "--port",
                str(port),
                "--config",
                str(config),
                "--log-level",
                "WARNING",
            ],
            env=env,
            cwd=REPO,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(base + "/healthz", timeout=1).read()  # noqa: ASYNC210
                    break
                await asyncio.sleep(0.1)
            stop = asyncio.Event()
            lives = [asyncio.Event() for _ in nodes]
            gone = nodes[-1]  # one node that went away a while ago
            tasks = [
                asyncio.create_task(
                    run_node(node, base.replace("http", "ws") + "/ws/agent", BACKFILL_S, live, stop)
                )
                for node, live in zip(nodes[:-1], lives, strict=False)
            ]
            gone_stop = asyncio.Event()
            gone_task = asyncio.create_task(
                run_node(gone, base.replace("http", "ws") + "/ws/agent", 60.0, lives[-1], gone_stop)
            )
            await asyncio.gather(*(live.wait() for live in lives))
            await asyncio.sleep(2)
            gone_stop.set()
            await gone_task
            await asyncio.sleep(args.settle_s)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                width, height = (int(x) for x in args.size.split("x"))
                page = await browser.new_page(viewport={"width": width, "height": height})
                query = f"?theme={args.theme}" if args.theme != "dark" else ""
                await page.goto(base + "/" + query)
                await page.wait_for_function(f"document.querySelectorAll('article.n').length >= {len(nodes)}")
                await page.wait_for_timeout(2500)
                overflow = await page.evaluate("document.documentElement.scrollHeight - innerHeight")
                print(f"page overflow below the fold: {overflow} px (0 means it fits)")
                await page.screenshot(path=args.out)
                if args.detail_out:
                    await page.click("article[data-node='atlas'] header")
                    await page.wait_for_selector("#detail")
                    await page.screenshot(path=args.detail_out, full_page=True)
                await browser.close()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            hub.terminate()
            hub.wait(10)
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "wall.png"))
    parser.add_argument("--theme", choices=("dark", "light"), default="dark")
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--size", default="1920x1080", help="viewport, WIDTHxHEIGHT")
    parser.add_argument("--detail-out", help="also photograph a node's detail page here")
    parser.add_argument("--settle-s", type=float, default=3.0, help="seconds of live updates before the shot")
    args = parser.parse_args(argv)
    asyncio.run(shoot(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
