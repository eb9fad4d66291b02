"""``/metrics`` of a real hub fed by a real agent over the fake NVML: values, labels, the
exposition format (``promtool check metrics``) and a real Prometheus scraping it."""

from __future__ import annotations

import gzip
import json
import os
import pwd
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.clock import ManualClock
from hub.metrics import FanoutLoad, exposition, read_nodes
from hub.registry import NodeRegistry
from hub.settings import GpuFreeRule
from node_agent.protocol import Delta, Hello
from tests import fakes
from tests.fakes import GIB
from tests.procs import Hub, Proc, free_port, spawn, start_agent, wait_until

MY_USER = pwd.getpwuid(os.getuid()).pw_name
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(hub: Hub, accept_gzip: bool = False) -> tuple[str, dict[str, str]]:
    headers = {"Accept-Encoding": "gzip"} if accept_gzip else {}
    request = urllib.request.Request(hub.url + "/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        info = {k.lower(): v for k, v in response.headers.items()}
    if info.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    return raw.decode(), info


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    matches = [v for lbl, v in found.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples in {found.get(name)}"
    return matches[0]


def absent(found: Samples, name: str, **labels: str) -> bool:
    return not [v for lbl, v in found.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())]


def start_fake_gpu_agent(hub: Hub, name: str, scenario: dict[str, Any]) -> Proc:
    path = fakes.write_scenario(hub.tmp / f"{name}-nvml.json", scenario)
    return start_agent(hub, name, interval_s=0.5, env=fakes.fake_env(path, base={}))


def three_gpus(pid: int) -> dict[str, Any]:
    """GPU 0 runs ``pid`` (3 GiB) twice over; GPU 1 is lost; GPU 2 has no temperature sensor."""
    busy = fakes.gpu(
        0,
        "H100",
        util_gpu=97,
        compute_processes=[fakes.process(pid, 3 * GIB)],
        graphics_processes=[fakes.process(fakes.MISSING_PIDS[0], 1 * GIB)],
    )
    return fakes.scenario(
        [
            busy,
            fakes.gpu(1, "A100", errors={"*": "GpuIsLost"}),
            fakes.gpu(2, "T4", temp_celsius=None, util_gpu=0, mem_used_bytes=0),
        ]
    )


def test_metrics_carry_node_gpu_and_user_values(
    hub: Hub, procs: list[Proc], sleeper: subprocess.Popen[bytes]
) -> None:
    procs.append(start_fake_gpu_agent(hub, "m1", three_gpus(sleeper.pid)))
    hub.wait_status("m1", "live")
    wait_until(lambda: "sers_gpu_processes" in scrape(hub)[0], what="GPU metrics on /metrics")
    text, headers = scrape(hub)
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(text)

    assert value(found, "sers_node_up", node="m1") == 1.0
    assert value(found, "sers_node_status", node="m1", status="live") == 1.0
    assert value(found, "sers_node_status", node="m1", status="offline") == 0.0
    assert value(found, "sers_hub_nodes", status="live") == 1.0
    assert value(found, "sers_node_memory_total_bytes", node="m1") > 0
    assert 0.0 <= value(found, "sers_node_cpu_utilization_ratio", node="m1") <= 1.0
    assert value(found, "sers_node_info", node="m1", driver_version="550.54.15", cuda_version="12.4") == 1.0

    gpu0 = {"node": "m1", "gpu": "0", "uuid": fakes.gpu(0)["uuid"], "model": "NVIDIA H100 80GB HBM3"}
    assert value(found, "sers_gpu_utilization_ratio", **gpu0) == pytest.approx(0.97)
    assert value(found, "sers_gpu_memory_used_bytes", **gpu0) == 1 * GIB
    assert value(found, "sers_gpu_memory_total_bytes", **gpu0) == 80 * GIB
    assert value(found, "sers_gpu_temperature_celsius", **gpu0) == 40.0
    assert value(found, "sers_gpu_power_watts", **gpu0) == 100.0
    assert value(found, "sers_gpu_power_limit_watts", **gpu0) == 700.0
    assert value(found, "sers_gpu_sm_clock_hertz", **gpu0) == 1980e6
    assert value(found, "sers_gpu_up", **gpu0) == 1.0
    assert value(found, "sers_gpu_free", **gpu0) == 0.0
    assert value(found, "sers_gpu_processes", **gpu0) == 2.0
    assert value(found, "sers_gpu_user_memory_used_bytes", user=MY_USER, **gpu0) == 3 * GIB
    assert value(found, "sers_gpu_user_processes", user=MY_USER, **gpu0) == 1.0
    assert value(found, "sers_gpu_user_memory_used_bytes", user="unknown", **gpu0) == 1 * GIB

    lost = {"node": "m1", "gpu": "1"}
    assert value(found, "sers_gpu_up", **lost) == 0.0
    assert absent(found, "sers_gpu_temperature_celsius", **lost), "a lost GPU exports no stale readings"
    no_sensor = {"node": "m1", "gpu": "2", "model": "Tesla T4"}
    assert value(found, "sers_gpu_free", **no_sensor) == 1.0
    assert absent(found, "sers_gpu_temperature_celsius", **no_sensor), "unsupported is left out, not 0"
    assert value(found, "sers_gpu_power_watts", **no_sensor) == 102.0
    assert "process_resident_memory_bytes" in found, "the hub's own process metrics are there too"

    zipped, zipped_headers = scrape(hub, accept_gzip=True)
    assert zipped_headers.get("content-encoding") == "gzip"
    assert samples(zipped).keys() == found.keys()


def test_gzip_only_for_clients_that_take_it(hub: Hub) -> None:
    """``Accept-Encoding`` is read as RFC 9110 says: ``gzip;q=0`` refuses gzip, so that client
    gets plain text, and a valid exposition either way."""
    for accept, zipped in (
        ("gzip", True),
        ("GZIP", True),
        ("br, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0, identity", False),
        ("*;q=0", False),
        ("br", False),
        ("identity", False),
    ):
        request = urllib.request.Request(hub.url + "/metrics", headers={"Accept-Encoding": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            encoding = response.headers.get("Content-Encoding")
        assert (encoding == "gzip") is zipped, accept
        text = (gzip.decompress(raw) if zipped else raw).decode()
        assert "sers_hub_viewers" in samples(text), accept


def test_offline_node_keeps_status_and_drops_readings(hub: Hub, procs: list[Proc]) -> None:
    agent = start_fake_gpu_agent(hub, "m2", fakes.scenario([fakes.gpu(0)]))
    procs.append(agent)
    hub.wait_status("m2", "live")
    wait_until(lambda: "sers_gpu_temperature_celsius{" in scrape(hub)[0], what="GPU metrics")
    assert agent.stop() == 0
    hub.wait_status("m2", "offline", timeout_s=5)
    found = samples(scrape(hub)[0])
    assert value(found, "sers_node_up", node="m2") == 0.0
    assert value(found, "sers_node_status", node="m2", status="offline") == 1.0
    assert value(found, "sers_node_last_seen_timestamp_seconds", node="m2") > 1.6e9
    assert absent(found, "sers_gpu_temperature_celsius", node="m2")
    assert absent(found, "sers_node_memory_used_bytes", node="m2")


def test_promtool_accepts_the_exposition(
    hub: Hub, procs: list[Proc], sleeper: subprocess.Popen[bytes]
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
    procs.append(start_fake_gpu_agent(hub, "lint", three_gpus(sleeper.pid)))
    procs.append(start_fake_gpu_agent(hub, "lint2", fakes.mixed_models()))
    wait_until(lambda: scrape(hub)[0].count("sers_gpu_up{") == 7, what="both nodes' GPUs on /metrics")
    text = scrape(hub)[0]
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
    except OSError:
        return []
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_real_prometheus_scrapes_the_hub(hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
    procs.append(start_fake_gpu_agent(hub, "prom", fakes.mixed_models()))
    hub.wait_status("prom", "live")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: sers, static_configs: [{{targets: ['127.0.0.1:{hub.port}']}}]}}\n"
    )
    port = free_port()
    procs.append(
        spawn(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            tmp_path / "prometheus.log",
        )
    )
    up = wait_until(
        lambda: prometheus_query(port, 'up{job="sers"} == 1'),
        timeout_s=60,
        what="Prometheus to scrape the hub",
    )
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{hub.port}"
    hot = wait_until(
        lambda: prometheus_query(port, "sers_gpu_temperature_celsius > 80"), timeout_s=30, what="GPU series"
    )
    assert [(s["metric"]["node"], s["metric"]["gpu"], s["metric"]["model"], s["value"][1]) for s in hot] == [
        ("prom", "3", "NVIDIA GeForce RTX 4090", "88")
    ]


def test_a_gpu_is_free_only_on_a_node_that_reports_now() -> None:
    """A late node's or a hung collector's last sample says nothing about the GPU now (as on the wall)."""
    clock = ManualClock()
    registry = NodeRegistry(clock)
    idle = {
        "name": "T4",
        "util_gpu_percent": 0.0,
        "mem_used_bytes": 0,
        "mem_total_bytes": GIB,
        "processes": [],
    }
    connection = registry.hello(Hello(node="n1", agent_version="t", interval_s=1.0))
    registry.delta("n1", connection, Delta(1, 0.0, {"sampled_at": 1.0, "gpus": {"0": idle}}))

    def free() -> float:
        found = samples(exposition(read_nodes(registry), GpuFreeRule(), viewers=0).decode())
        return value(found, "sers_gpu_free", node="n1", gpu="0")

    assert free() == 1.0
    for _ in range(4):
        clock.advance(1.0)
        registry.delta("n1", connection, Delta(2, 0.0, {}))  # heartbeats, no samples
        registry.sweep()
    assert registry.nodes["n1"].sample_late and free() == 0.0
    clock.advance(3.5)
    registry.sweep()  # silent: stale
    assert free() == 0.0


def test_no_series_appears_twice_whatever_the_node_state_repeats() -> None:
    """A node state with every repetition an agent (``--mount / --mount /``) or a hostile one can
    send: the exposition still holds each (name, labels) pair once, users' processes summed."""
    registry = NodeRegistry(ManualClock())
    twin = {"uuid": "GPU-same", "name": "H100"}
    hello = Hello(
        node="dup", agent_version="t", interval_s=1.0, gpus=[{"index": 0, **twin}, {"index": 0, **twin}]
    )
    connection = registry.hello(hello)
    root = {"mount": "/", "total_bytes": 100, "used_bytes": 10}
    procs = [
        {"pid": 1, "user": "alice", "gpu_mem_bytes": GIB},
        {"pid": 1, "user": "alice", "gpu_mem_bytes": GIB},  # the same process twice
        {"pid": 2, "user": "alice", "gpu_mem_bytes": 2 * GIB},
        {"pid": 3, "user": None, "gpu_mem_bytes": GIB},
        {"pid": 4, "user": "unknown"},
        {"pid": 5, "user": ""},
    ]
    gpu = {
        **twin,
        "util_gpu_percent": 50.0,
        "mem_used_bytes": GIB,
        "mem_total_bytes": 80 * GIB,
        "processes": procs,
    }
    patch = {
        "sampled_at": 1.0,
        "host": {"cpu_percent": 1.0, "disks": [root, root, {**root, "used_bytes": 20}, {"mount": "/"}]},
        "gpus": {"0": gpu, "1": gpu},  # two GPUs with one uuid
    }
    registry.delta("dup", connection, Delta(1, 0.0, patch))
    text = exposition(read_nodes(registry), GpuFreeRule(), viewers=0).decode()

    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series = (sample.name, frozenset(sample.labels.items()))
            assert series not in seen, f"{series} appears twice"
            seen.add(series)
    found = samples(text)
    assert value(found, "sers_node_filesystem_used_bytes", node="dup", mount="/") == 10, "the first one"
    assert value(found, "sers_node_filesystem_size_bytes", node="dup", mount="/") == 100
    for index in ("0", "1"):
        gpu_labels = {"node": "dup", "gpu": index, "uuid": "GPU-same"}
        assert value(found, "sers_gpu_user_processes", user="alice", **gpu_labels) == 3
        assert value(found, "sers_gpu_user_memory_used_bytes", user="alice", **gpu_labels) == 4 * GIB
        assert value(found, "sers_gpu_user_processes", user="unknown", **gpu_labels) == 3
        assert value(found, "sers_gpu_processes", **gpu_labels) == 6


def test_the_fanout_load_is_exported() -> None:
    registry = NodeRegistry(ManualClock())
    quiet = samples(exposition(read_nodes(registry), GpuFreeRule(), viewers=0).decode())
    assert (
        value(quiet, "sers_hub_shedding") == 0.0 and value(quiet, "sers_hub_fanout_tick_lag_seconds") == 0.0
    )
    load = FanoutLoad(tick_lag_s=0.4, shedding=True)
    shed = samples(exposition(read_nodes(registry), GpuFreeRule(), viewers=0, fanout=load).decode())
    assert value(shed, "sers_hub_shedding") == 1.0 and value(shed, "sers_hub_fanout_tick_lag_seconds") == 0.4
