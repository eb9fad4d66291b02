"""A GPU server whose NVIDIA driver failed to load must not look like a CPU-only node: a real hub
and real agents over the fake NVML and fake sysfs trees. The card says so in words, the top bar
counts it, and ``/metrics`` has ``sers_gpu_collector_up`` for an alert; when the driver loads,
all three clear. The hub's side is also checked on its own (offline nodes, older agents)."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from frontend.render import Renderer
from frontend.viewmodels import head_view
from hub.clock import ManualClock
from hub.metrics import exposition, read_nodes
from hub.registry import NodeRegistry
from hub.scene import Scene, ViewFilter
from hub.settings import GpuFreeRule
from node_agent.protocol import Hello
from tests import fakes
from tests.procs import Hub, Proc, start_agent, wait_until

BADGE = "⚠ GPU collector down: NVIDIA driver not loaded"


def get_text(hub: Hub, path: str) -> str:
    with urllib.request.urlopen(hub.url + path, timeout=5) as response:
        return str(response.read().decode())


def card(page: str, node: str) -> str:
    found = re.search(rf'<article id="node-{node}".*?</article>', page, re.S)
    assert found, f"no card for {node}"
    return found.group(0)


def summary(page: str) -> str:
    found = re.search(r'<div id="summary".*?</div>', page, re.S)
    assert found, "no summary bar"
    return found.group(0)


def collector_up(hub: Hub) -> dict[str, float]:
    """``sers_gpu_collector_up`` by node, as a scrape sees it."""
    return {
        sample.labels["node"]: sample.value
        for family in text_string_to_metric_families(get_text(hub, "/metrics"))
        for sample in family.samples
        if sample.name == "sers_gpu_collector_up"
    }


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def start(hub: Hub, name: str, scenario: dict[str, Any], sysfs: Path) -> Proc:
    path = hub.tmp / f"{name}-nvml.json"
    write_atomically(path, scenario)
    env = {**fakes.fake_env(path, base={}), "SERS_NVML_RETRY_S": "0.5"}  # not a minute
    return start_agent(hub, name, "--sysfs-root", str(sysfs), interval_s=0.5, env=env)


def test_driver_not_loaded_is_shown_counted_and_exported_until_it_loads(
    hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    gpus = [fakes.gpu(0), fakes.gpu(1)]
    broken = fakes.scenario(gpus, init_error="DriverNotLoaded", live_reload=True)
    procs.append(start(hub, "broken", broken, fakes.gpu_server_sysfs(tmp_path / "sys-gpu", 2)))
    procs.append(start(hub, "cpuonly", fakes.no_library(), fakes.cpu_only_sysfs(tmp_path / "sys-cpu")))
    procs.append(start(hub, "healthy", fakes.scenario([fakes.gpu(0)]), tmp_path / "no-sysfs"))
    for node in ("broken", "cpuonly", "healthy"):
        hub.wait_status(node, "live")

    drivers = {n["id"]: n["static"]["gpu_driver"] for n in hub.get("/api/v1/nodes")["nodes"]}
    assert {n: d["collector_state"] for n, d in drivers.items()} == {
        "broken": "down",
        "cpuonly": "absent",
        "healthy": "up",
    }
    page = get_text(hub, "/")
    assert BADGE in card(page, "broken")
    assert "GPU collector down" not in card(page, "cpuonly") + card(page, "healthy")
    assert "⚠ 1 GPU collector down" in summary(page)
    assert collector_up(hub) == {"broken": 0.0, "healthy": 1.0}, "a CPU-only node has no such series"

    write_atomically(hub.tmp / "broken-nvml.json", fakes.scenario(gpus, live_reload=True))  # it loads
    wait_until(lambda: collector_up(hub).get("broken") == 1.0, 15, what="the gauge to come back up")
    page = get_text(hub, "/")
    assert "GPU collector down" not in page
    assert card(page, "broken").count('class="g ') == 2, "its GPU rows now"


# --------------------------------------------------------------------------- the hub alone
def hello(node: str, **gpu_driver: Any) -> Hello:
    return Hello(node=node, agent_version="1", interval_s=1.0, gpu_driver=gpu_driver)


def test_offline_nodes_older_agents_and_cpu_only_nodes_raise_nothing() -> None:
    """What an offline node's agent last said is history; an agent older than the field says
    nothing about its collector (neither up nor down); a CPU-only node has none."""
    clock = ManualClock()
    registry = NodeRegistry(clock=clock)
    registry.hello(hello("down", error="NVIDIA driver not loaded", collector_state="down"))
    registry.hello(hello("gone", error="NVIDIA driver not loaded", collector_state="down"))
    registry.hello(hello("older", error="NVIDIA driver not loaded"))
    registry.hello(hello("cpuonly", error="NVML library not found", collector_state="absent"))
    registry.disconnect("gone", registry.nodes["gone"].connection)

    views = {node_id: head_view(node) for node_id, node in registry.nodes.items()}
    assert {n: v.gpu_collector_down for n, v in views.items()} == {
        "down": "NVIDIA driver not loaded",
        "gone": None,
        "older": None,
        "cpuonly": None,
    }
    gpu_wall = ViewFilter(gpu_only=True)  # ?gpus=1: a GPU server whose driver failed stays on it
    assert [n for n, node in registry.nodes.items() if gpu_wall.matches(node)] == ["down", "gone"]
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    assert scene.summary_view(ViewFilter()).gpu_collectors_down == 1
    text = exposition(read_nodes(registry), GpuFreeRule(), viewers=0).decode()
    assert re.findall(r"^sers_gpu_collector_up\{(.*)\} (.*)$", text, re.M) == [('node="down"', "0.0")]
