"""Faults against real processes: agents killed or frozen, the hub killed or stopped, NVML failing
or hanging under a running agent, a frozen browser, and the hub's memory under churn."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from node_agent.link import RESTART_SPREAD_S, Backoff, EndKind, LinkEnd, reconnect_delay_s
from tests.fakes import fake_env, gpu, scenario
from tests.procs import Hub, Proc, start_agent, wait_until
from tests.wsclients import close_code, delta, hello, open_agent, open_viewer, recv_text, snapshot


def rss_bytes(proc: Proc) -> int:
    status = Path(f"/proc/{proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """For the fake NVML's live_reload: never let the agent read a half-written file."""
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def page_html(hub: Hub) -> str:
    with urllib.request.urlopen(hub.url + "/", timeout=5) as response:
        return str(response.read().decode())


# --------------------------------------------------------------------------- agent faults
def test_agent_killed_goes_offline(hub: Hub, procs: list[Proc]) -> None:
    agent = start_agent(hub, "doomed", interval_s=0.5)
    procs.append(agent)
    hub.wait_status("doomed", "live")
    agent.kill()
    hub.wait_status("doomed", "offline", timeout_s=10)


def test_agent_frozen_goes_stale_then_offline_and_comes_back(hub: Hub, procs: list[Proc]) -> None:
    """SIGSTOP: no FIN, the connection stays open and silent, as with a cut network."""
    agent = start_agent(hub, "frozen", interval_s=0.5)
    procs.append(agent)
    hub.wait_status("frozen", "live")
    agent.signal(signal.SIGSTOP)
    try:
        hub.wait_status("frozen", "stale", timeout_s=10)
        hub.wait_status("frozen", "offline", timeout_s=15)
    finally:
        agent.signal(signal.SIGCONT)
    hub.wait_status("frozen", "live", timeout_s=10)


# --------------------------------------------------------------------------- hub faults
def stored(hub: Hub) -> set[str]:
    with contextlib.closing(sqlite3.connect(hub.tmp / "hub.sqlite3")) as db:
        return {row[0] for row in db.execute("SELECT node_id FROM nodes")}


def test_hub_killed_and_restarted_remembers_nodes(hub: Hub, procs: list[Proc]) -> None:
    stays = start_agent(hub, "stays", interval_s=0.5)
    leaves = start_agent(hub, "leaves", interval_s=0.5)
    procs.extend([stays, leaves])
    hub.wait_status("stays", "live")
    hub.wait_status("leaves", "live")
    wait_until(lambda: stored(hub) == {"stays", "leaves"}, 10, what="both nodes in the state file")
    assert hub.proc is not None
    hub.proc.kill()  # SIGKILL: no shutdown code runs
    killed_at = time.time()
    leaves.kill()

    hub.start()
    procs.append(hub.proc)
    hub.wait_status("stays", "live", timeout_s=30)
    gone = hub.nodes()["leaves"]
    assert gone["status"] == "offline"
    assert gone["last_seen_epoch_s"] is not None and gone["last_seen_epoch_s"] <= killed_at
    assert gone["static"]["host"]["hostname"], "static facts are remembered too"
    html = page_html(hub)
    assert 'id="node-leaves"' in html
    assert re.search(r'id="node-leaves"[^>]*data-status="offline"', html)


def agent_log_delays(agent: Proc) -> list[float]:
    return [
        float(x) for x in re.findall(r"hub is restarting \(1012\); reconnecting in ([\d.]+) s", agent.log())
    ]


def test_hub_sigterm_closes_with_1012_and_agents_come_back_spread_out(hub: Hub, procs: list[Proc]) -> None:
    agents = [start_agent(hub, f"term{i}", interval_s=0.5) for i in range(3)]
    procs.extend(agents)
    for i in range(3):
        hub.wait_status(f"term{i}", "live")
    viewer = open_viewer(hub)
    recv_text(viewer)
    assert hub.proc is not None

    started = time.monotonic()
    hub.proc.signal(signal.SIGTERM)
    try:
        hub.proc.popen.wait(timeout=8)  # "within a few seconds"
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the hub did not exit within 8 s of SIGTERM:\n{hub.proc.log()}") from None
    stopped_s = time.monotonic() - started
    assert close_code(viewer)[0] == 1012
    assert "Application shutdown complete" in hub.proc.log()

    for agent in agents:
        wait_until(lambda agent=agent: agent_log_delays(agent), 10, what="the agent to log the 1012")
    delays = [agent_log_delays(a)[0] for a in agents]
    assert len(set(delays)) > 1, f"agents wait different random delays after 1012: {delays}"
    assert max(delays) <= RESTART_SPREAD_S

    hub.start()
    procs.append(hub.proc)
    for i in range(3):
        hub.wait_status(f"term{i}", "live", timeout_s=30)
    print(f"hub stopped {stopped_s:.2f} s after SIGTERM; agents' delays after 1012: {delays}")


def test_reconnects_after_a_restart_are_spread_over_seconds() -> None:
    """200 agents, each with its own random source, all told 1012 at the same instant."""
    delays = [
        reconnect_delay_s(
            LinkEnd(EndKind.RESTARTING, "hub is restarting (1012)"), 0, Backoff(), random.Random(seed)
        )
        for seed in range(200)
    ]
    assert min(delays) >= 0.5 and max(delays) <= RESTART_SPREAD_S
    assert max(delays) - min(delays) > 0.8 * (RESTART_SPREAD_S - 0.5)
    busiest_second = max(sum(1 for d in delays if start <= d < start + 1) for start in range(6))
    assert busiest_second < 0.35 * len(delays), "not all in the same second"
    refused = [
        reconnect_delay_s(
            LinkEnd(EndKind.REFUSED, "refused by the hub (HTTP 403): ..."), 0, Backoff(), random.Random(s)
        )
        for s in range(50)
    ]
    assert min(refused) >= 15, "a refused token waits long"


# --------------------------------------------------------------------------- NVML faults
@pytest.fixture
def nvml_scenario(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "nvml.json"
    write_atomically(path, scenario([gpu(0), gpu(1)], live_reload=True))
    yield path
    # a hung fake call polls this file: let go of it whatever the test did
    with contextlib.suppress(OSError):
        write_atomically(path, scenario([gpu(0), gpu(1)], live_reload=True))


def gpu_state(hub: Hub, node: str, index: str) -> dict[str, Any]:
    return dict((hub.nodes()[node]["state"].get("gpus") or {}).get(index) or {})


def sampled_at(hub: Hub, node: str) -> float:
    return float(hub.nodes()[node]["state"].get("sampled_at") or 0)


def test_nvml_failing_mid_run(hub: Hub, procs: list[Proc], nvml_scenario: Path) -> None:
    agent = start_agent(hub, "nvml-fails", interval_s=0.5, env=fake_env(nvml_scenario))
    procs.append(agent)
    hub.wait_status("nvml-fails", "live")
    wait_until(
        lambda: gpu_state(hub, "nvml-fails", "1").get("util_gpu_percent") is not None, 10, what="GPU 1"
    )

    write_atomically(nvml_scenario, scenario([gpu(0), gpu(1, errors={"*": "GpuIsLost"})], live_reload=True))
    wait_until(lambda: gpu_state(hub, "nvml-fails", "1").get("error"), 10, what="GPU 1 to show its error")
    assert not gpu_state(hub, "nvml-fails", "0").get("error")
    before = sampled_at(hub, "nvml-fails")
    wait_until(lambda: sampled_at(hub, "nvml-fails") > before, 10, what="samples to keep coming")
    assert "GPU is lost" in page_html(hub)

    broken = {"*": "Unknown"}
    write_atomically(
        nvml_scenario, scenario([gpu(0, errors=broken), gpu(1, errors=broken)], live_reload=True)
    )
    wait_until(lambda: gpu_state(hub, "nvml-fails", "0").get("error"), 10, what="GPU 0 to fail too")
    before = sampled_at(hub, "nvml-fails")
    wait_until(lambda: sampled_at(hub, "nvml-fails") > before, 10, what="host samples to keep coming")
    assert hub.status("nvml-fails") == "live"


def test_gpus_show_once_the_driver_loads_after_the_agent_started(
    hub: Hub, procs: list[Proc], nvml_scenario: Path
) -> None:
    """An agent container started at boot before the NVIDIA driver loaded."""
    write_atomically(
        nvml_scenario, scenario([gpu(0), gpu(1)], init_error="DriverNotLoaded", live_reload=True)
    )
    env = {**fake_env(nvml_scenario), "SERS_NVML_RETRY_S": "0.5"}  # not a minute
    agent = start_agent(hub, "late-driver", interval_s=0.5, env=env)
    procs.append(agent)
    hub.wait_status("late-driver", "live")
    static = hub.nodes()["late-driver"]["static"]
    assert static["gpus"] == [] and "driver not loaded" in static["gpu_driver"]["error"]

    write_atomically(nvml_scenario, scenario([gpu(0), gpu(1)], live_reload=True))
    wait_until(
        lambda: len(hub.nodes()["late-driver"]["static"]["gpus"]) == 2, 10, what="the GPUs in a new hello"
    )
    node = hub.nodes()["late-driver"]
    assert node["static"]["gpu_driver"]["driver_version"] == "550.54.15"
    assert not node["static"]["gpu_driver"].get("error")
    wait_until(
        lambda: gpu_state(hub, "late-driver", "1").get("util_gpu_percent") is not None, 10, what="GPU 1"
    )
    assert hub.status("late-driver") == "live"
    assert "GPU monitoring enabled after a retry: 2 GPU(s)" in agent.log()


def test_hung_collector_shows_sample_late_while_heartbeats_flow(
    hub: Hub, procs: list[Proc], nvml_scenario: Path
) -> None:
    agent = start_agent(hub, "hangs", interval_s=0.5, env=fake_env(nvml_scenario))
    procs.append(agent)
    hub.wait_status("hangs", "live")
    wait_until(lambda: sampled_at(hub, "hangs") > 0, 10, what="a first sample")

    hang = {"hang": ["nvmlDeviceGetUtilizationRates"]}
    write_atomically(nvml_scenario, scenario([gpu(0, **hang), gpu(1)], live_reload=True))
    wait_until(lambda: hub.nodes()["hangs"]["sample_late"], 15, what="sample_late in /api/v1/nodes")
    stuck_at = sampled_at(hub, "hangs")
    seen = hub.nodes()["hangs"]["last_seen_epoch_s"]
    wait_until(lambda: hub.nodes()["hangs"]["last_seen_epoch_s"] > seen, 10, what="heartbeats to keep coming")
    node = hub.nodes()["hangs"]
    assert node["status"] == "live", "heartbeats keep the node live"
    assert sampled_at(hub, "hangs") == stuck_at, "no new sample while the collector hangs"
    wait_until(lambda: 'class="late"' in page_html(hub), 10, what="the card to say the sample is late")

    write_atomically(nvml_scenario, scenario([gpu(0), gpu(1)], live_reload=True))
    wait_until(lambda: not hub.nodes()["hangs"]["sample_late"], 15, what="sample_late to clear")
    assert sampled_at(hub, "hangs") > stuck_at

    # hung again, the agent still stops on SIGTERM (the stuck call is on a daemon thread)
    write_atomically(nvml_scenario, scenario([gpu(0, **hang), gpu(1)], live_reload=True))
    wait_until(lambda: hub.nodes()["hangs"]["sample_late"], 15, what="sample_late again")
    agent.signal(signal.SIGTERM)
    try:
        agent.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a hung collector kept the agent from exiting:\n{agent.log()}") from None
    hub.wait_status("hangs", "offline", timeout_s=10)


# --------------------------------------------------------------------------- slow browsers
def frozen_viewer(hub: Hub) -> Any:
    """A viewer that never reads, with a small receive buffer, so the hub's sends back up fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    return open_viewer(hub, sock=sock)


class BusyAgent(threading.Thread):
    """A raw agent sending big changing deltas (8 GPUs with processes) 10 times a second."""

    def __init__(self, hub: Hub, node: str) -> None:
        super().__init__(daemon=True)
        self.ws = open_agent(hub)
        self.node = node
        self.stop = threading.Event()
        self.marker = 0.0

    def run(self) -> None:
        self.ws.send(hello(self.node, interval_s=0.1))
        seq = 0
        with contextlib.suppress(ConnectionClosed):
            while not self.stop.is_set():
                seq += 1
                patch = snapshot(cpu_percent=float(seq % 100))
                patch["gpus"] = {
                    str(i): {
                        "index": i,
                        "name": "NVIDIA H100 80GB HBM3",
                        "util_gpu_percent": float((seq + i) % 100),
                        "mem_used_bytes": (seq * 7919 + i) % (80 << 30),
                        "mem_total_bytes": 80 << 30,
                        "processes": [
                            {
                                "pid": 1000 + k,
                                "user": f"user{k}",
                                "command": f"train_{seq}_{k}.py",
                                "gpu_mem_bytes": k << 30,
                            }
                            for k in range(6)
                        ],
                    }
                    for i in range(8)
                }
                self.ws.send(delta(seq, patch))
                self.marker = float(seq % 100)
                time.sleep(0.1)
        self.ws.close()


def test_frozen_viewer_never_delays_others_and_is_dropped(tmp_path: Path, procs: list[Proc]) -> None:
    from tests.procs import free_port

    send_timeout_s = 3.0
    hub = Hub(port=free_port(), tmp=tmp_path, env={"SERS_VIEWER_SEND_TIMEOUT_S": str(send_timeout_s)}).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    busy = [BusyAgent(hub, f"busy{i}") for i in range(3)]
    for agent in busy:
        agent.start()
    try:
        for agent in busy:
            hub.wait_status(agent.node, "live")
        rss_before = rss_bytes(hub.proc)
        frozen = frozen_viewer(hub)
        healthy = open_viewer(hub)
        recv_text(healthy)
        assert hub.get("/healthz")["viewers"] == 2

        # the healthy viewer keeps getting every change while the frozen one backs up
        gaps: list[float] = []
        last = time.monotonic()
        deadline = time.monotonic() + 60
        while hub.get("/healthz")["viewers"] == 2:
            assert time.monotonic() < deadline, "the frozen viewer was never dropped"
            recv_text(healthy, timeout_s=5)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        dropped_after_s = 60 - (deadline - time.monotonic())
        assert "dropping a viewer: a send took over" in hub.proc.log()
        for _ in range(20):  # and goes on getting them after the drop
            recv_text(healthy, timeout_s=5)
        rss_after = rss_bytes(hub.proc)
        assert rss_after - rss_before < 64 << 20, (rss_before, rss_after)
        healthy.close()
        with contextlib.suppress(Exception):
            frozen.close_socket()
        print(
            f"frozen viewer dropped after {dropped_after_s:.1f} s (send timeout {send_timeout_s} s); "
            f"healthy viewer's longest gap {max(gaps):.2f} s over {len(gaps)} messages; "
            f"hub RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
        )
    finally:
        for agent in busy:
            agent.stop.set()


def test_hub_memory_stays_bounded_under_churn(hub: Hub, procs: list[Proc]) -> None:
    """Hundreds of agents and viewers coming and going, many of them hostile."""
    assert hub.proc is not None

    names = 40  # each name reconnects at most 13 times, within the hub's 20 hellos a minute

    def churn(rounds: int) -> None:
        for i in range(rounds):
            ws = open_agent(hub)
            ws.send(hello(f"churn{i % names}"))
            ws.send(delta(1, snapshot(float(i % 100))))
            if i % 3 == 0:
                ws.send("{garbage")
                close_code(ws)
            else:
                ws.close()
            viewer = open_viewer(hub)
            recv_text(viewer)
            viewer.close()

    churn(100)  # warm up: caches, allocator pools
    wait_until(lambda: hub.get("/healthz")["viewers"] == 0, 10, what="viewers to be gone")
    before = rss_bytes(hub.proc)
    churn(400)
    wait_until(lambda: hub.get("/healthz")["viewers"] == 0, 10, what="viewers to be gone")
    after = rss_bytes(hub.proc)
    assert set(hub.nodes()) == {f"churn{i}" for i in range(names)}
    assert after - before < 16 << 20, f"hub RSS grew from {before >> 20} to {after >> 20} MiB"
    print(f"hub RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB over 400 agent+viewer connections")
