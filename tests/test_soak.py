"""Soak: 200 agents at 1 s for several minutes with viewers attached (not in the default run).

Run it with ``pytest -m soak -s``; ``SERS_SOAK_S`` sets the duration (default 240 s). A real
hub process serves 197 agents simulated in one asyncio loop (speaking the real protocol through
``node_agent.protocol``, each with 4 GPUs changing every second), 3 real agent processes (fake
NVML, 4 GPUs), 3 raw WebSocket viewers and one headless Chromium page. It asserts no false
stale/offline transitions, no connection closed by the hub, viewers fed all along and the hub's
memory flat after warm-up, and prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from node_agent.protocol import Delta, Hello, encode, make_patch
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.fakes import fake_env, gpu, scenario, write_scenario
from tests.procs import Hub, Proc, free_port, start_agent, wait_until

SOAK_S = float(os.environ.get("SERS_SOAK_S", "240"))
WARMUP_S = 30.0
SIMULATED = 197
REAL = 3
VIEWERS = 3


@dataclass
class Counters:
    deltas_sent: int = 0
    closed_by_hub: list[str] = field(default_factory=list)
    viewer_messages: list[int] = field(default_factory=lambda: [0] * VIEWERS)
    viewer_bytes: list[int] = field(default_factory=lambda: [0] * VIEWERS)
    viewer_errors: list[str] = field(default_factory=list)


def sim_state(rng: random.Random, seq: int) -> dict[str, Any]:
    return {
        "sampled_at": round(time.time(), 3),
        "host": {
            "cpu_percent": round(rng.uniform(0, 100), 1),
            "load_avg_1m": round(rng.uniform(0, 16), 2),
            "mem_total_bytes": 512 << 30,
            "mem_used_bytes": rng.randrange(64 << 30, 256 << 30),
            "uptime_s": 86_400.0 + seq,
        },
        "gpus": {
            str(i): {
                "index": i,
                "name": "NVIDIA A100-SXM4-40GB",
                "util_gpu_percent": float(rng.choice([0, 0, 35, 87, 100])),
                "mem_used_bytes": rng.randrange(0, 40 << 30),
                "mem_total_bytes": 40 << 30,
                "temp_celsius": float(rng.randrange(30, 80)),
                "power_draw_watts": round(rng.uniform(50, 400), 1),
                "processes": [
                    {"pid": 1000 + i, "user": "alice", "command": "python", "gpu_mem_bytes": 1 << 30}
                ]
                if i % 2
                else [],
            }
            for i in range(4)
        },
    }


async def sim_agent(url: str, name: str, stop: asyncio.Event, counters: Counters) -> None:
    rng = random.Random(name)
    hello = Hello(
        node=name,
        agent_version="soak",
        interval_s=1.0,
        host={
            "hostname": name,
            "cpu_model": "Soak CPU",
            "cpu_cores_logical": 64,
            "mem_total_bytes": 512 << 30,
        },
        gpus=[{"index": i, "name": "NVIDIA A100-SXM4-40GB", "mem_total_bytes": 40 << 30} for i in range(4)],
    )
    await asyncio.sleep(rng.uniform(0, 1))  # agents are not in phase
    async with connect(url, max_size=1 << 20, compression=None) as ws:
        await ws.send(encode(hello).decode())
        sent: dict[str, Any] = {}
        seq = 0
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                seq += 1
                state = sim_state(rng, seq)
                await ws.send(encode(Delta(seq, round(time.time(), 3), make_patch(sent, state))).decode())
                sent = state
                counters.deltas_sent += 1
                next_at += 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        except ConnectionClosed as exc:
            counters.closed_by_hub.append(f"{name}: {exc}")


async def raw_viewer(url: str, index: int, stop: asyncio.Event, counters: Counters) -> None:
    try:
        async with connect(url, max_size=None, compression=None) as ws:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    message = await asyncio.wait_for(ws.recv(), 1.0)
                    counters.viewer_messages[index] += 1
                    counters.viewer_bytes[index] += len(message)
    except ConnectionClosed as exc:
        counters.viewer_errors.append(f"viewer {index}: {exc}")


class Simulation(threading.Thread):
    def __init__(self, hub: Hub, counters: Counters) -> None:
        super().__init__(daemon=True)
        self.hub = hub
        self.counters = counters
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            self.error = exc

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        agents = [
            sim_agent(self.hub.ws_url + "/ws/agent", f"sim{i:03d}", self.stop_event, self.counters)
            for i in range(SIMULATED)
        ]
        viewers = [
            raw_viewer(self.hub.ws_url + "/ws/view", i, self.stop_event, self.counters)
            for i in range(VIEWERS)
        ]
        await asyncio.gather(*agents, *viewers)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(30)


def proc_stats(proc: Proc) -> tuple[int, float]:
    """(RSS bytes, CPU seconds used so far)."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 240)
def test_soak_200_agents_with_viewers(tmp_path: Path, procs: list[Proc]) -> None:
    from playwright.sync_api import sync_playwright

    hub = Hub(port=free_port(), tmp=tmp_path).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    nvml = write_scenario(tmp_path / "nvml.json", scenario([gpu(i, "H100") for i in range(4)]))
    for i in range(REAL):
        procs.append(start_agent(hub, f"real{i}", interval_s=1.0, env=fake_env(nvml)))
    counters = Counters()
    simulation = Simulation(hub, counters)
    simulation.start()
    names = {f"sim{i:03d}" for i in range(SIMULATED)} | {f"real{i}" for i in range(REAL)}

    def all_live() -> bool:
        nodes = hub.nodes()
        return set(nodes) >= names and all(nodes[n]["status"] == "live" for n in names)

    wait_until(all_live, 60, every_s=0.5, what="all 200 nodes live")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(hub.url + "/")
            page.wait_for_selector("html[data-conn=live]", timeout=30_000)

            started = time.monotonic()
            samples: list[tuple[float, int, float]] = []  # (elapsed s, RSS, CPU s)
            not_live: list[str] = []
            while (elapsed := time.monotonic() - started) < SOAK_S:
                assert simulation.is_alive(), f"the simulation stopped: {simulation.error!r}"
                nodes = hub.nodes()
                not_live += [
                    f"{elapsed:.0f}s {n}={nodes[n]['status']}" for n in names if nodes[n]["status"] != "live"
                ]
                rss, cpu_s = proc_stats(hub.proc)
                samples.append((elapsed, rss, cpu_s))
                time.sleep(5)
            cards = page.locator("article[data-node]").count()
            browser_live = page.evaluate("document.documentElement.dataset.conn")
            browser_offline = page.locator("article[data-node][data-status=offline]").count()
        finally:
            browser.close()
    simulation.stop()

    transitions = [x for x in hub.proc.log().splitlines() if re.search(r"node \S+ is now (stale|offline)", x)]
    warm = [s for s in samples if s[0] >= WARMUP_S]
    rss_first, rss_last = warm[0][1], warm[-1][1]
    rss_max = max(s[1] for s in warm)
    cpu_percent = 100 * (warm[-1][2] - warm[0][2]) / (warm[-1][0] - warm[0][0])
    print(
        f"\nsoak: {SIMULATED + REAL} agents at 1 s for {SOAK_S:.0f} s, {VIEWERS} raw viewers + 1 Chromium\n"
        f"  deltas sent by simulated agents: {counters.deltas_sent}\n"
        f"  false stale/offline: {len(not_live)} polled, {len(transitions)} logged; closed by hub: "
        f"{len(counters.closed_by_hub)}\n"
        f"  hub RSS after {WARMUP_S:.0f} s warm-up: {rss_first / 2**20:.1f} MiB -> {rss_last / 2**20:.1f} MiB "
        f"(max {rss_max / 2**20:.1f} MiB)\n"
        f"  hub CPU: {cpu_percent:.1f}% of one core on average\n"
        f"  raw viewers: {counters.viewer_messages} messages, "
        f"{[round(b / SOAK_S / 1024, 1) for b in counters.viewer_bytes]} KiB/s each\n"
        f"  Chromium: {cards} cards, connection {browser_live}, {browser_offline} shown offline"
    )
    assert not not_live, not_live[:20]
    assert not transitions, transitions[:20]
    assert not counters.closed_by_hub, counters.closed_by_hub[:5]
    assert not counters.viewer_errors, counters.viewer_errors
    assert all(n >= SOAK_S for n in counters.viewer_messages), "viewers were fed all along (>= 1/s)"
    assert cards == SIMULATED + REAL and browser_live == "live" and browser_offline == 0
    assert rss_last - rss_first < max(16 << 20, rss_first // 10), "hub memory grows"
