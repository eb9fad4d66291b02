"""Every numeric wire field at the edges of its declared bounds, against a real hub.

The cases come from the protocol's dataclasses and their bounds (``field_bounds``), so a field
added later is covered without touching this file. For each field, a value at each end of its
bounds, zero and a negative one where the bounds allow them: an agent reports it and the wall
page, the pushed fragments, the node page, ``/api/v1/nodes`` and ``/metrics`` all take it (the
node page shows it as its formatter says, ``/metrics`` stays parseable and carries it). A value
just outside the bounds closes that agent's connection with 1007 and a log line naming the field.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import math
import time
import typing
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection

from frontend.viewmodels import field_text
from hub.metrics import GPU_GAUGES, HOST_GAUGES
from node_agent.protocol import (
    EPOCH_S,
    INTERVAL_S,
    NUMBER,
    PROTOCOL_VERSION,
    Bounds,
    DiskUsage,
    GpuProcess,
    GpuSample,
    GpuStatic,
    HostSample,
    HostStatic,
    field_bounds,
)
from tests.procs import Hub, free_port, wait_until
from tests.wsclients import close_code, open_agent, open_viewer

GIB = 1024**3
# Where each wire dataclass travels: its message and its path from there.
PLACES: dict[type, tuple[str, tuple[str | int, ...]]] = {
    HostStatic: ("hello", ("host",)),
    GpuStatic: ("hello", ("gpus", 0)),
    HostSample: ("delta", ("host",)),
    DiskUsage: ("delta", ("host", "disks", 0)),
    GpuSample: ("delta", ("gpus", "0")),
    GpuProcess: ("delta", ("gpus", "0", "processes", 0)),
}
# The message fields outside those dataclasses, with their bounds.
TOP_LEVEL: dict[str, tuple[str, Bounds, type]] = {
    "interval_s": ("hello", INTERVAL_S, float),
    "sampled_at": ("delta", EPOCH_S, float),
    "ts": ("delta", NUMBER, float),
    "seq": ("delta", NUMBER, int),
}
# Facts the node page shows once, from the sample, when the hello has them too.
SHOWN_FROM_THE_SAMPLE = {("GpuStatic", "mem_total_bytes"), ("GpuStatic", "power_limit_watts")}


def hello_host() -> dict[str, Any]:
    return {
        "hostname": "h",
        "os_name": "Debian 12",
        "kernel": "6.1",
        "cpu_model": "EPYC",
        "cpu_cores_logical": 64,
        "cpu_cores_physical": 32,
        "mem_total_bytes": 512 * GIB,
        "boot_time_epoch_s": 1.7e9,
    }


def hello_gpu() -> dict[str, Any]:
    return {
        "index": 0,
        "uuid": "GPU-1",
        "name": "NVIDIA H100",
        "mem_total_bytes": 80 * GIB,
        "power_limit_watts": 700.0,
    }


def sample(now: float) -> dict[str, Any]:
    return {
        "sampled_at": now,
        "host": {
            "cpu_percent": 42.5,
            "cpu_percent_per_core": [40.0, 45.0],
            "load_avg_1m": 1.5,
            "load_avg_5m": 1.25,
            "load_avg_15m": 1.0,
            "mem_total_bytes": 512 * GIB,
            "mem_used_bytes": 100 * GIB,
            "mem_available_bytes": 412 * GIB,
            "swap_total_bytes": 8 * GIB,
            "swap_used_bytes": GIB,
            "disks": [{"mount": "/", "total_bytes": 1000 * GIB, "used_bytes": 500 * GIB}],
            "disk_read_bytes_per_s": 1e6,
            "disk_write_bytes_per_s": 2e6,
            "net_rx_bytes_per_s": 3e6,
            "net_tx_bytes_per_s": 4e6,
            "uptime_s": 90000.0,
            "users_count": 3,
        },
        "gpus": {
            "0": {
                "index": 0,
                "uuid": "GPU-1",
                "name": "NVIDIA H100",
                "util_gpu_percent": 50.0,
                "util_mem_percent": 20.0,
                "mem_used_bytes": 40 * GIB,
                "mem_total_bytes": 80 * GIB,
                "temp_celsius": 60.0,
                "fan_percent": 30.0,
                "power_draw_watts": 300.0,
                "power_limit_watts": 700.0,
                "clock_sm_mhz": 1980,
                "clock_mem_mhz": 2619,
                "pstate": 0,
                "enc_util_percent": 0.0,
                "dec_util_percent": 0.0,
                "throttle_reasons": [],
                "ecc_volatile_uncorrected": 0,
                "processes": [
                    {
                        "pid": 4242,
                        "user": "ann",
                        "command": "python",
                        "gpu_mem_bytes": 40 * GIB,
                        "cpu_percent": 99.0,
                        "host_mem_bytes": GIB,
                        "started_epoch_s": now - 3600,
                        "container_id": "a" * 64,
                        "container_runtime": "docker",
                        "container_name": "ann-train",
                        "pod_uid": None,
                        "pod_namespace": None,
                        "pod_name": None,
                        "slurm_job_id": 81234,
                        "slurm_step": "0",
                        "slurm_job_name": "train",
                        "slurm_job_user": "ann",
                    }
                ],
                "unseen_mem_bytes": 0,
            }
        },
    }


def numeric_kind(cls: type, name: str) -> tuple[type, bool] | None:
    """(int or float, whether a list of them) for a numeric field; None for the others."""
    hint = typing.get_type_hints(cls)[name]
    (inner,) = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        return (item, True) if item in (int, float) else None
    return (inner, False) if inner in (int, float) else None


def inside(bounds: Bounds, kind: type) -> list[float]:
    low, high = (math.ceil(bounds.low), math.floor(bounds.high)) if kind is int else bounds
    values = [low, high]
    if low < 0 < high:
        values += [0, -1 if kind is int else low / 2]
    elif low == 0:
        values.append(high // 2 if kind is int else high / 2)
    return [kind(v) for v in values]


def outside(bounds: Bounds, kind: type) -> list[float]:
    if kind is int:
        return [math.ceil(bounds.low) - 1, math.floor(bounds.high) + 1]
    return [math.nextafter(bounds.low, -math.inf), math.nextafter(bounds.high, math.inf)]


@dataclass(frozen=True)
class Case:
    owner: str  # the dataclass's name, or "message"
    field: str
    value: float
    message: str  # "hello" or "delta": which one carries the value
    path: tuple[str | int, ...]  # where in that message (the field's object)
    as_list: bool
    node: str = ""

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.field}={self.value!r}"

    def wire_value(self) -> Any:
        return [self.value, self.value] if self.as_list else self.value


def cases(values: Any) -> list[Case]:
    found = []
    for cls, (message, path) in PLACES.items():
        for f in dataclasses.fields(cls):
            kind = numeric_kind(cls, f.name)
            if kind is not None:
                for value in values(field_bounds(cls, f.name), kind[0]):
                    found.append(Case(cls.__name__, f.name, value, message, path, kind[1]))
    for name, (message, bounds, kind) in TOP_LEVEL.items():
        for value in values(bounds, kind):
            found.append(Case("message", name, value, message, (), False))
    return [
        dataclasses.replace(c, node=f"{'in' if values is inside else 'out'}-{i}") for i, c in enumerate(found)
    ]


INSIDE = cases(inside)
OUTSIDE = cases(outside)


def frames(case: Case) -> list[bytes]:
    """The hello, a full snapshot, then a patch with the value (what an agent sends)."""
    now = round(time.time(), 3)
    hello: dict[str, Any] = {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "node": case.node,
        "agent_version": "bounds-test",
        "interval_s": 3600.0,  # nodes stay live for the whole module
        "host": hello_host(),
        "gpu_driver": {"driver_version": "550"},
        "gpus": [hello_gpu()],
    }
    first = {"type": "delta", "seq": 1, "ts": now, "patch": sample(now)}
    second: dict[str, Any] = {"type": "delta", "seq": 2, "ts": now, "patch": {"sampled_at": now + 1}}
    if case.field == "sampled_at":
        second["patch"]["sampled_at"] = case.value
    elif case.owner == "message":
        (hello if case.message == "hello" else second)[case.field] = case.value
    elif case.message == "hello":
        target: Any = hello
        for key in case.path:
            target = target[key]
        target[case.field] = case.wire_value()
    else:
        full = sample(now + 1)
        target = full
        for key in case.path:
            target = target[key]
        target[case.field] = case.wire_value()
        # the patch holds the value's branch, down to the first list: a patch replaces lists whole
        keys = list(itertools.takewhile(lambda k: isinstance(k, str), case.path))
        branch: Any = full
        patch = second["patch"]
        for key in keys[:-1]:
            branch = branch[key]
            patch = patch.setdefault(key, {})
        last = keys[-1]
        patch[last] = branch[last] if len(keys) < len(case.path) else {case.field: case.wire_value()}
    return [orjson.dumps(m) for m in (hello, first, second)]


def api_value(case: Case, node: dict[str, Any]) -> Any:
    """Where ``/api/v1/nodes`` keeps the case's value; ``KeyError`` until it arrived."""
    if case.owner == "message":
        return node["interval_s"] if case.field == "interval_s" else node["state"][case.field]
    found: Any = node["static"] if case.message == "hello" else node["state"]
    for key in case.path:
        found = found[key]
    return found[case.field]


KEPT = [c for c in INSIDE if c.field not in ("seq", "ts")]  # the hub keeps neither


def arrived(hub: Hub) -> bool:
    nodes = hub.nodes()
    try:
        return all(api_value(c, nodes[c.node]) == c.wire_value() for c in KEPT) and all(
            nodes[c.node]["state"].get("sampled_at") for c in INSIDE if c not in KEPT
        )
    except KeyError:
        return False


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp: Path = tmp_path_factory.mktemp("bounds")
    running = Hub(port=free_port(), tmp=tmp).start()
    assert running.proc is not None
    try:
        yield running
    finally:
        running.proc.kill()


@pytest.fixture(scope="module")
def pushed(hub: Hub) -> Iterator[str]:
    """Every value inside the bounds, each reported by an agent of its own while a viewer
    watches; gives what the viewer was sent."""
    viewer = open_viewer(hub)
    agents: list[ClientConnection] = []
    try:
        for case in INSIDE:
            agents.append(open_agent(hub))
            for frame in frames(case):
                agents[-1].send(frame.decode())
        wait_until(lambda: arrived(hub), 30, what="every value to arrive")
        received: list[str] = []
        wanted = {f'id="node-{c.node}' for c in INSIDE}

        def seen_all() -> bool:
            try:
                message = viewer.recv(timeout=0.2)
            except TimeoutError:
                message = ""
            received.append(message.decode() if isinstance(message, bytes) else message)
            text = "".join(received)
            return all(w in text for w in wanted)

        wait_until(seen_all, 30, every_s=0, what="the viewer to get every node")
        yield "".join(received)
    finally:
        for ws in [viewer, *agents]:
            ws.close()


def assert_no_errors_logged(hub: Hub) -> None:
    assert hub.proc is not None
    log = hub.proc.log()
    assert "Traceback" not in log and "failed" not in log, log[-3000:]


def test_the_cases_cover_every_numeric_field_of_every_wire_type() -> None:
    numeric = {
        (cls.__name__, f.name) for cls in PLACES for f in dataclasses.fields(cls) if numeric_kind(cls, f.name)
    }
    top = {("message", name) for name in TOP_LEVEL}
    assert {(c.owner, c.field) for c in INSIDE} == {(c.owner, c.field) for c in OUTSIDE} == numeric | top
    assert (
        len(numeric) > 40
        and ("GpuProcess", "pid") in numeric
        and ("HostSample", "cpu_percent_per_core") in numeric
    )


def test_api_returns_every_value_as_sent(hub: Hub, pushed: str) -> None:
    nodes = hub.nodes()
    wrong = [c.name for c in KEPT if api_value(c, nodes[c.node]) != c.wire_value()]
    assert not wrong, wrong


# What the node page shows for a value, where that is not field_text's. Left out: facts the page
# shows once from the sample (the hello's GPU memory and power limit), the hello's GPU index
# (the section's heading), the sample's index (its key) and what the hub does not keep.
PAGE_TEXT = {
    "sampled_at": lambda v: field_text("boot_time_epoch_s", v),
    "interval_s": lambda v: f"{v:g} s",
}
# Where the page shows a value in markup of its own: the HTML around it.
PAGE_HTML = {
    "cpu_percent_per_core": lambda v: f"<b>0</b>{html.escape(field_text('cpu_percent', v))}</u>",
}
NOT_ON_PAGE = SHOWN_FROM_THE_SAMPLE | {
    ("GpuStatic", "index"),
    ("GpuSample", "index"),
    ("message", "ts"),
    ("message", "seq"),
}


def test_node_page_renders_every_value(hub: Hub, pushed: str) -> None:
    missing = []
    for case in INSIDE:
        with urllib.request.urlopen(f"{hub.url}/node/{case.node}", timeout=10) as response:
            assert response.status == 200, case.name
            body = response.read().decode()
        if (case.owner, case.field) in NOT_ON_PAGE:
            continue
        if case.field in PAGE_HTML:
            expected = PAGE_HTML[case.field](case.value)
        else:
            expected = html.escape(
                PAGE_TEXT.get(case.field, lambda v, f=case.field: field_text(f, v))(case.value)
            )
        if expected not in body:
            missing.append(f"{case.name}: {expected!r}")
    assert not missing, missing
    assert_no_errors_logged(hub)


def test_wall_page_and_pushed_fragments_show_every_node(hub: Hub, pushed: str) -> None:
    with urllib.request.urlopen(hub.url + "/", timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()
    for case in INSIDE:
        assert f'id="node-{case.node}"' in body, case.name
        assert f'id="node-{case.node}"' in pushed, case.name
    assert_no_errors_logged(hub)


def test_metrics_stay_parseable_and_carry_every_value(hub: Hub, pushed: str) -> None:
    with urllib.request.urlopen(hub.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {
        (sample.name, sample.labels.get("node")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "gpu" not in sample.labels or sample.labels["gpu"] == "0"
    }
    gauges = {("HostSample", g.field): g for g in HOST_GAUGES} | {
        ("GpuSample", g.field): g for g in GPU_GAUGES
    }
    checked = 0
    for case in INSIDE:
        gauge = gauges.get((case.owner, case.field))
        if gauge is None:
            continue
        got = values.get((gauge.name, case.node))
        assert got is not None and math.isclose(got, case.value * gauge.scale), (case.name, got)
        checked += 1
    assert checked > 20
    assert_no_errors_logged(hub)


@pytest.mark.parametrize("case", OUTSIDE, ids=[c.name for c in OUTSIDE])
def test_a_value_just_outside_its_bounds_closes_with_1007(hub: Hub, case: Case) -> None:
    ws = open_agent(hub)
    sent = frames(case)
    for frame in sent if case.message == "delta" else sent[:1]:
        ws.send(frame.decode())
    code, reason = close_code(ws)
    assert code == 1007, (code, reason)
    assert case.field in reason, reason
    named = case.node if case.message == "delta" else "(before hello)"
    assert hub.proc is not None
    wait_until(
        lambda: any(
            f"agent {named} from 127.0.0.1 with 1007: " in line and case.field in line
            for line in hub.proc.log().splitlines()  # type: ignore[union-attr]
        ),
        5,
        what="a log line naming the field",
    )
