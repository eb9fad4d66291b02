"""View models: formatting, GPU states and users, status texts, the summary, sparkline paths and
the detail page's every-field listing. Pure: nodes come from a real registry on a fake clock."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import fields
from typing import Any

import pytest

from frontend.viewmodels import (
    MAX_USERS_SHOWN,
    GpuTally,
    detail_view,
    field_label,
    field_text,
    fmt_age,
    fmt_ago,
    fmt_bytes,
    fmt_celsius,
    fmt_count,
    fmt_duration,
    fmt_epoch,
    fmt_load,
    fmt_mhz,
    fmt_percent,
    fmt_pstate,
    fmt_rate,
    fmt_used_of,
    fmt_watts,
    gpu_tally,
    gpu_users,
    gpu_view,
    head_view,
    host_view,
    meter,
    node_tally,
    process_holder,
    short_gpu_name,
    spark_path,
    spark_view,
    summary_view,
    tiny_gpu_name,
)
from hub.clock import ManualClock
from hub.domain.gpus import GpuFreeRule, GpuState, gpu_is_free
from hub.domain.health import Level
from hub.registry import Naming, Node, NodeRegistry, NodeStatus
from node_agent.protocol import (
    DiskUsage,
    GpuDriver,
    GpuProcess,
    GpuSample,
    GpuStatic,
    Hello,
    HostSample,
    HostStatic,
)

GIB = 1024**3
NAN = float("nan")

RULE = GpuFreeRule(max_util_percent=10, max_mem_percent=5)


def gpu(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "NVIDIA H100 80GB HBM3",
        "util_gpu_percent": 0.0,
        "mem_used_bytes": GIB // 2,
        "mem_total_bytes": 80 * GIB,
        "temp_celsius": 34.0,
        "power_draw_watts": 69.4,
        "power_limit_watts": 700.0,
        "processes": [],
    }
    base.update(overrides)
    return base


def make_node(
    state: dict[str, Any] | None = None,
    *,
    name: str = "n1",
    hello_gpus: list[dict[str, Any]] | None = None,
    naming: Naming | None = None,
) -> tuple[NodeRegistry, ManualClock, Node]:
    clock = ManualClock()
    registry = NodeRegistry(clock, names={name: naming} if naming else None)
    hello = Hello(
        node=name,
        agent_version="9.9",
        interval_s=1.0,
        host={"hostname": "n1.lab", "os_name": "Debian 12", "cpu_model": "EPYC", "cpu_cores_logical": 64},
        gpus=hello_gpus or [],
    )
    registry.hello(hello)
    node = registry.nodes[name]
    node.state = state or {}
    return registry, clock, node


# --------------------------------------------------------------------------- formatting
@pytest.mark.parametrize(
    ("value", "short"),
    [
        (None, "–"),
        (0, "0B"),
        (999, "999B"),
        (1000, "1.0K"),
        (4.5 * GIB, "4.5G"),
        (9.96 * GIB, "10G"),
        (45 * GIB, "45G"),
        (812 * 1024**2, "812M"),
        (1.2 * 1024**4, "1.2T"),
    ],
)
def test_bytes_fit_four_characters(value: float | None, short: str) -> None:
    assert fmt_bytes(value) == short
    assert len(short) <= 4


def test_used_of_shares_the_unit_when_it_can() -> None:
    assert fmt_used_of(45 * GIB, 80 * GIB) == "45/80G"
    assert fmt_used_of(512 * 1024**2, 80 * GIB) == "512M/80G"
    assert fmt_used_of(None, 80 * GIB) == "–/80G"
    assert fmt_used_of(None, None) == "–"


def test_long_formats() -> None:
    assert fmt_bytes(None) == "–"
    assert [fmt_duration(s) for s in (5, 125, 3 * 3600 + 5 * 60, 12 * 86400 + 4 * 3600)] == [
        "5s",
        "2m",
        "3h 05m",
        "12d 4h",
    ]
    assert [fmt_ago(s) for s in (-1, 12.7, 240, 7500)] == ["0 s", "12 s", "4 min", "2 h 05 min"]


def test_gpu_names_short_and_tiny() -> None:
    assert short_gpu_name("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert short_gpu_name(None) == "GPU"
    assert tiny_gpu_name("NVIDIA H100 80GB HBM3") == "H100"
    assert tiny_gpu_name("NVIDIA GeForce RTX 4090") == "4090"
    assert tiny_gpu_name("Tesla T4") == "T4"
    assert tiny_gpu_name("NVIDIA RTX A6000") == "A6000"
    assert tiny_gpu_name("") == "GPU"
    assert len(tiny_gpu_name("x" * 300)) == 5


def test_meter_levels_and_clamping() -> None:
    assert meter(45.4) == ("45%", 45, "")
    assert meter(75.0).cls == " w" and meter(95.0).cls == " c"
    assert meter(None) == ("–", 0, " na")
    assert meter(130.0).p == 100 and meter(-5.0).p == 0


# --------------------------------------------------------------------------- GPU rows
def test_free_busy_error_and_not_live() -> None:
    assert gpu_view("n1", "0", gpu(), RULE).state == "f"
    assert gpu_view("n1", "0", gpu(util_gpu_percent=50.0), RULE).state == "b"
    assert gpu_view("n1", "0", gpu(mem_used_bytes=40 * GIB), RULE).state == "b", "memory held = busy"
    with_proc = gpu(processes=[{"pid": 7, "user": "ann", "gpu_mem_bytes": GIB}])
    assert gpu_view("n1", "0", with_proc, RULE).state == "b", "a process = busy, however idle"
    lost = gpu(error="GPU is lost")
    assert gpu_view("n1", "0", lost, RULE).state == "e"
    assert gpu_view("n1", "0", lost, RULE, node_live=False).state == "e", "a fault stays a fault"
    assert gpu_view("n1", "0", gpu(), RULE, node_live=False).state == "o", "never 'free' when not live"
    assert gpu_is_free(gpu(util_gpu_percent=None, mem_used_bytes=None), RULE), "unknown is not busy"


def test_gpu_row_texts() -> None:
    view = gpu_view(
        "n1",
        "3",
        gpu(util_gpu_percent=97.4, mem_used_bytes=45 * GIB, temp_celsius=84.6, power_draw_watts=612.5),
        RULE,
    )
    assert view.gpu_index == "3" and view.name == "H100"
    assert view.util == ("97%", 97, ""), "GPU meters carry no warning level: busy is good"
    assert view.mem.text == "45/80G" and view.mem.p == 56
    assert (view.temp_text, view.temp_cls) == ("85°", "w")
    assert view.power_text == "612/700W"
    bare = gpu_view("n1", "0", {"name": "T4"}, RULE)
    assert (bare.util.text, bare.mem.text, bare.temp_text, bare.power_text) == ("–", "–", "–", "–")


def test_users_ranked_by_gpu_memory_with_more_count() -> None:
    procs = [
        {"pid": 1, "user": "bob", "gpu_mem_bytes": 2 * GIB},
        {"pid": 2, "user": "ann", "gpu_mem_bytes": 10 * GIB},
        {"pid": 3, "user": "bob", "gpu_mem_bytes": 9 * GIB},  # bob: 11 GiB in two processes
        {"pid": 4, "user": None, "gpu_mem_bytes": 1 * GIB},  # unknown user: shown by pid
        {"pid": 5, "user": "cy", "gpu_mem_bytes": None},
    ]
    view = gpu_view("n1", "0", gpu(processes=procs), RULE)
    assert view.users == ("bob 11G", "ann 10G")
    assert MAX_USERS_SHOWN == 2 and view.more_users == 2


def test_users_named_with_their_one_job_or_container() -> None:
    procs = [
        {"pid": 1, "user": "ann", "gpu_mem_bytes": 10 * GIB, "slurm_job_id": 81234, "slurm_step": "0"},
        {"pid": 2, "user": "ann", "gpu_mem_bytes": GIB, "slurm_job_id": 81234, "slurm_step": "batch"},
        {"pid": 3, "user": "bob", "gpu_mem_bytes": 5 * GIB, "container_id": "c" * 64},
        {"pid": 4, "user": "cy", "gpu_mem_bytes": 4 * GIB, "container_name": "cy-a"},
        {"pid": 5, "user": "cy", "gpu_mem_bytes": 4 * GIB, "container_name": "cy-b"},  # two: neither named
        {"pid": 6, "user": "dee", "gpu_mem_bytes": 3 * GIB, "pod_namespace": "ml", "pod_name": "bert-0"},
    ]
    ranked = dict(gpu_users(procs))
    assert ranked == {
        "ann (job 81234)": 11 * GIB,
        "cy": 8 * GIB,
        f"bob ({'c' * 12})": 5 * GIB,
        "dee (pod bert-0)": 3 * GIB,
    }
    assert process_holder(procs[0]) == "job 81234 step 0"
    assert process_holder(procs[2]) == f"container {'c' * 12}"
    assert process_holder(procs[5]) == "pod ml/bert-0"
    assert process_holder({"pod_uid": "6a3c8e0e-1f2d-4c5b-9a8e-7d6c5b4a3f21"}) == "pod 6a3c8e0e"
    assert process_holder({"pid": 7, "user": "eve"}) is None


def test_unseen_memory_is_a_holder_on_the_card() -> None:
    view = gpu_view("n1", "0", gpu(processes=[], mem_used_bytes=13 * GIB, unseen_mem_bytes=12 * GIB), RULE)
    assert view.users == ("unseen process 12G",) and view.state == "b"
    procs = [{"pid": 1, "user": "ann", "gpu_mem_bytes": 20 * GIB}]
    view = gpu_view("n1", "0", gpu(processes=procs, unseen_mem_bytes=12 * GIB), RULE)
    assert view.users == ("ann 20G", "unseen process 12G")
    assert gpu_view("n1", "0", gpu(processes=procs, unseen_mem_bytes=0), RULE).users == ("ann 20G",)
    # under the free thresholds (2 of 80 GiB, no process listed) the row says free, nothing else
    small = gpu_view("n1", "0", gpu(processes=[], mem_used_bytes=2 * GIB, unseen_mem_bytes=2 * GIB), RULE)
    assert small.state == "f" and small.users == ()


@pytest.mark.parametrize(
    ("started", "now", "text"),
    [
        (None, 10.0, "–"),
        (100.0, None, "–"),
        (0.0, 12.0, "12 s"),
        (0.0, 7500.0, "2 h 05 min"),
        (0.0, 273_600.0, "3 d 4 h"),
    ],
)
def test_process_age(started: float | None, now: float | None, text: str) -> None:
    assert fmt_age(started, now) == text


# --------------------------------------------------------------------------- host part and head
def test_host_view_picks_the_fullest_disk_and_formats_rates() -> None:
    _, _, node = make_node(
        {
            "host": {
                "cpu_percent": 42.4,
                "mem_used_bytes": 100 * GIB,
                "mem_total_bytes": 512 * GIB,
                "disks": [
                    {"mount": "/", "used_bytes": 10, "total_bytes": 100},
                    {"mount": "/data", "used_bytes": 95, "total_bytes": 100},
                ],
                "net_rx_bytes_per_s": 1.5 * 1024**2,
                "net_tx_bytes_per_s": 300 * 1024,
                "load_avg_1m": 1.5,
                "load_avg_5m": 12.34,
                "load_avg_15m": None,
                "uptime_s": 90000,
            }
        }
    )
    view = host_view(node)
    assert view.cpu == ("CPU 42%", 42, "")
    assert view.mem.text == "MEM 100/512G"
    assert view.disk == ("DSK 95%", 95, " c")
    assert view.net_text == "↓1.5M/s ↑300K/s"
    assert view.load_text == "1.50 12.34 –"
    assert view.uptime_text == "1d 1h"
    assert view.late_text is None
    assert host_view(node, sample_late_s=7.4).late_text == "⚠ no new sample for 7 s"


def test_host_view_of_an_empty_node() -> None:
    _, _, node = make_node({})
    view = host_view(node)
    assert (view.cpu.text, view.mem.text, view.disk.text) == ("CPU –", "MEM –", "DSK –")


def test_head_status_texts_and_naming() -> None:
    _, clock, node = make_node({"gpus": {"0": gpu()}}, naming=Naming("GPU One", "vision"))
    head = head_view(node)
    assert (head.display_name, head.group, head.status, head.status_text) == (
        "GPU One",
        "vision",
        "live",
        "live",
    )
    assert head.gpus_total == 1
    assert "n1.lab" in head.detail and "64 cores" in head.detail
    assert head.last_seen_epoch_s == round(clock.wall_s, 1)
    node.status = NodeStatus.STALE
    assert head_view(node, 4.2).status_text == "late by 4 s"
    node.status = NodeStatus.OFFLINE
    assert head_view(node, 185).status_text == "last seen 3 min ago"
    assert head_view(node).sort_key < head_view(make_node(name="a0")[2]).sort_key, "grouped nodes first"


# --------------------------------------------------------------------------- summary
def test_summary_counts_free_gpus_of_live_nodes_only() -> None:
    clock = ManualClock()
    registry = NodeRegistry(clock)
    states = {
        "a": (NodeStatus.LIVE, {"0": gpu(), "1": gpu(util_gpu_percent=90.0), "2": gpu(error="lost")}),
        "b": (NodeStatus.STALE, {"0": gpu(name="NVIDIA A100-SXM4-40GB")}),
        "c": (NodeStatus.OFFLINE, {"0": gpu(), "1": gpu()}),
    }
    for name, (status, gpus) in states.items():
        registry.hello(Hello(node=name, agent_version="t", interval_s=1.0))
        registry.nodes[name].state = {"gpus": gpus}
        registry.nodes[name].status = status
    view = summary_view(
        (
            node.status,
            node_tally(
                gpu_tally(g, gpu_view(n, i, g, RULE, node.status is NodeStatus.LIVE).state)
                for i, g in gpus.items()
            ),
        )
        for n, node in registry.nodes.items()
        for gpus in [node.state["gpus"]]
    )
    assert (view.live, view.stale, view.offline) == (1, 1, 1)
    assert (view.gpus_free, view.gpus_total, view.gpus_error) == (1, 4, 1), "offline GPUs are not counted"
    assert [(m.model, m.free, m.total) for m in view.models] == [
        ("H100 80GB HBM3", 1, 3),
        ("A100-SXM4-40GB", 0, 1),
    ]
    assert view.gpu_mem_total_text == "320G"


# --------------------------------------------------------------------------- sparklines
def test_spark_path_whole_pixels_gaps_and_lone_points() -> None:
    assert spark_path([0.0, 100.0, 50.0], step=2, height=16) == "M0,15 2,1 4,8"
    assert spark_path([10.0, NAN, 20.0, 30.0]) == "M0,14h2M4,12 6,11", "a gap breaks the line"
    assert spark_path([NAN, NAN]) == ""
    assert spark_path([250.0, -3.0]) == "M0,1 2,15", "clamped to the chart"


def test_spark_view_is_right_aligned_and_fixed_width() -> None:
    view = spark_view("s", [50.0, 50.0], [], points=30)
    assert view.width == 58 and view.height == 16
    assert view.main == "M56,8 58,8", "the newest point sits at the right edge"
    assert view.second == ""
    assert spark_view("s", [float(i % 2 * 50) for i in range(90)], [], points=30).main.count(" ") == 29, (
        "30 points"
    )


# --------------------------------------------------------------------------- detail page
def test_field_labels_and_texts_follow_units_in_names() -> None:
    assert field_label("mem_used_bytes") == "mem used"
    assert field_label("net_rx_bytes_per_s") == "network receive"
    assert field_text("mem_used_bytes", 1536 * 1024**2) == "1.5G"
    assert field_text("net_rx_bytes_per_s", 2048) == "2.0K/s"
    assert field_text("temp_celsius", 71.6) == "72°"
    assert field_text("power_draw_watts", 250) == "250W"
    assert field_text("util_gpu_percent", 97.4) == "97%"
    assert field_text("load_avg_5m", 12.345) == "12.35"
    assert field_text("clock_sm_mhz", 1980) == "1980 MHz"
    assert field_text("boot_time_epoch_s", 0) == "1970-01-01 00:00:00 UTC"
    assert field_text("uptime_s", 3700) == "1h 01m"
    assert field_text("pstate", 2) == "P2"
    assert field_text("throttle_reasons", ["power cap", "thermal"]) == "power cap, thermal"
    assert field_text("throttle_reasons", []) == "none"
    assert field_text("fan_percent", None) == "–"


def test_detail_view_has_no_gpu_for_facts_without_an_index() -> None:
    """The hello's GPU facts may leave ``index`` null: they name no GPU, not a "GPU None"
    (whose panel id, ``gpu-None``, no GPU index can have)."""
    _, _, node = make_node(
        {"sampled_at": 1.0, "gpus": {"0": gpu(index=0)}},
        hello_gpus=[{"index": None, "name": "Mystery", "uuid": "GPU-x"}, {"index": 0, "uuid": "GPU-0"}],
    )
    view = detail_view(node, {}, 5.0, 0.0, RULE)
    assert [g.index for g in view.gpus] == ["0"]
    assert {f.label: f.text for f in view.gpus[0].facts}["UUID"] == "GPU-0"


def test_detail_view_lists_every_reported_field() -> None:
    static_gpu = {
        "index": 0,
        "name": "NVIDIA H100",
        "uuid": "GPU-1",
        "pci_bus_id": "0000:18:00.0",
        "mig_mode": None,
    }
    sample = gpu(
        index=0,
        util_mem_percent=3.0,
        fan_percent=None,
        clock_sm_mhz=1980,
        throttle_reasons=["thermal"],
        processes=[
            {"pid": 11, "user": "ann", "command": "python", "gpu_mem_bytes": GIB, "cpu_percent": 99.5},
            {"pid": 12, "user": None, "command": None, "gpu_mem_bytes": 3 * GIB},
        ],
    )
    _, _, node = make_node(
        {
            "sampled_at": 1.0,
            "host": {"cpu_percent": 5.0, "cpu_percent_per_core": [1.0, 99.0]},
            "gpus": {"0": sample},
        },
        hello_gpus=[static_gpu],
    )
    view = detail_view(node, {"cpu": [1.0, 2.0], "u0": [50.0]}, 5.0, 0.0, RULE)
    assert [f.label for f in view.host_static] == [field_label(f.name) for f in fields(HostStatic)]
    sample_labels = {f.label for f in view.host_sample}
    assert all(
        field_label(f.name) in sample_labels
        for f in fields(HostSample)
        if f.name not in ("cpu_percent_per_core", "disks")
    )
    assert [m.p for m in view.cores] == [1, 99]
    [g] = view.gpus
    facts = {f.label: f.text for f in g.facts}
    wanted = {field_label(f.name) for f in fields(GpuSample)} - {"index", "name", "processes", "error"}
    assert wanted <= facts.keys(), "every per-sample GPU field is listed"
    assert facts["PCI bus id"] == "0000:18:00.0" and facts["throttle reasons"] == "thermal"
    assert list(facts).count("PCI bus id") == 1
    assert [(p.pid, p.user, p.command, p.gpu_mem_text) for p in g.processes] == [
        ("12", "unknown", "unknown", "3.0G"),
        ("11", "ann", "python", "1.0G"),
    ]
    assert g.state == "b" and g.history.main.startswith("M")
    assert view.host_history.main.count(",") == 2
    assert view.history_text == "−10 s", "two buckets of 5 s"


def test_flat_stretches_keep_only_their_ends() -> None:
    assert spark_path([0.0] * 30) == "M0,15 58,15"
    assert spark_path([0.0, 0.0, 0.0, 50.0, 50.0]) == "M0,15 4,15 6,8 8,8"


def test_a_row_is_free_exactly_when_gpu_is_free_says_so() -> None:
    """The summary counts rows in state "f"; they must agree with the free rule."""
    cases = [
        gpu(),
        gpu(util_gpu_percent=10.0),
        gpu(util_gpu_percent=10.5),
        gpu(mem_used_bytes=5 * GIB),
        gpu(processes=[{"pid": 1, "user": "a", "gpu_mem_bytes": 1}]),
        gpu(error="lost"),
        gpu(util_gpu_percent=None, mem_used_bytes=None),
    ]
    for g in cases:
        assert (gpu_view("n", "0", g, RULE).state == "f") == gpu_is_free(g, RULE), g


# --------------------------------------------------------------------------- any value renders
# Numbers the protocol refuses too: a view must never be the part that fails.
EXTREMES: tuple[object, ...] = (
    0,
    -0.0,
    1,
    -1,
    0.5,
    5e-324,
    10**18,
    -(10**18),
    1e18,
    -1e18,
    1.7e308,
    -1.7e308,
    10**400,
    -(10**400),
    math.inf,
    -math.inf,
    NAN,
    True,
    "12",
    None,
)
FORMATTERS = (
    fmt_bytes,
    fmt_rate,
    fmt_percent,
    fmt_celsius,
    fmt_watts,
    fmt_mhz,
    fmt_load,
    fmt_pstate,
    fmt_count,
    fmt_duration,
    fmt_epoch,
)
WIRE_TYPES = (HostStatic, GpuDriver, GpuStatic, DiskUsage, HostSample, GpuProcess, GpuSample)


@pytest.mark.parametrize("formatter", FORMATTERS, ids=lambda f: f.__name__)
def test_every_formatter_takes_any_value(formatter: Any) -> None:
    for value in EXTREMES:
        text = formatter(value)
        assert isinstance(text, str) and text, (value, text)
        if _is_finite_number(value):
            assert text != "–", (value, "a finite number is shown")
        else:
            assert text == "–", (value, text)


def test_zero_has_no_sign() -> None:
    assert (fmt_rate(-0.0), fmt_percent(-0.0), fmt_celsius(-0.0)) == ("0B/s", "0%", "0°")


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, float) or abs(value) < 1e308)
        and math.isfinite(value)
    )


def test_every_field_of_every_wire_type_formats_any_value() -> None:
    for cls in WIRE_TYPES:
        for f in fields(cls):
            for value in EXTREMES:
                assert isinstance(field_text(f.name, value), str), (cls.__name__, f.name, value)
                assert isinstance(field_text(f.name, [value, value]), str), (cls.__name__, f.name, value)


@pytest.mark.parametrize("value", [v for v in EXTREMES if not isinstance(v, str)], ids=repr)
def test_cards_and_node_page_build_whatever_the_numbers(value: object) -> None:
    """Every numeric field of the host, its disks, a GPU and its process set to one value."""

    def numbers(cls: type) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(cls):
            if "float" in str(f.type) or "int" in str(f.type):
                out[f.name] = [value, value] if "list" in str(f.type) else value
        return out

    host = numbers(HostSample) | {"disks": [{"mount": "/", **numbers(DiskUsage)}]}
    gpu_state = numbers(GpuSample) | {"name": "H100", "processes": [{"user": "ann", **numbers(GpuProcess)}]}
    registry, _, node = make_node(
        {"sampled_at": value, "host": host, "gpus": {"0": gpu_state}},
        hello_gpus=[{"name": "H100", **numbers(GpuStatic), "index": 0}],
    )
    assert node.hello is not None
    registry.nodes["n1"].hello = dataclasses.replace(
        node.hello, host={"hostname": "h", **numbers(HostStatic)}
    )
    view = host_view(node)
    assert view.cpu.text.startswith("CPU ") and 0 <= view.mem.p <= 100
    row = gpu_view("n1", "0", gpu_state, RULE)
    assert 0 <= row.util.p <= 100 and 0 <= row.mem.p <= 100
    detail = detail_view(node, {"cpu": [1.0]}, 15, 0.0, RULE)
    assert len(detail.gpus) == 1 and all(f.text for f in detail.host_sample)
    assert head_view(node).detail
    summary_view([(NodeStatus.LIVE, node_tally([gpu_tally(gpu_state, row.state)]))])


# --------------------------------------------------------------------------- one format per quantity
def joined(first: str, second: str) -> str:
    """Two texts of one quantity as the card joins them: the unit once when both share it."""
    if second == "–":
        return first
    unit = second.lstrip("-0123456789.")
    if unit and first.endswith(unit) and first[: -len(unit)][-1:].isdigit():
        return f"{first[: -len(unit)]}/{second}"
    return f"{first}/{second}"


@pytest.mark.parametrize(
    "scale",
    [0.0, 0.37, 1.0, 7.3, 1000.0],
    ids=lambda s: f"x{s}",
)
def test_the_card_and_the_node_page_show_the_same_text_for_the_same_values(scale: float) -> None:
    """The card's texts are the node page's texts (two of one quantity joined)."""
    host = {
        "cpu_percent": min(42.4 * scale, 100.0),
        "mem_total_bytes": 512 * GIB,
        "mem_used_bytes": round(100 * GIB * scale) % (512 * GIB),
        "net_rx_bytes_per_s": 1.5 * 1024**2 * scale,
        "net_tx_bytes_per_s": 300 * 1024 * scale,
        "load_avg_1m": 1.5 * scale,
        "load_avg_5m": 12.345 * scale,
        "load_avg_15m": 0.004 * scale,
        "uptime_s": 90061 * scale,
    }
    sample = gpu(
        util_gpu_percent=min(97.4 * scale, 100.0),
        mem_used_bytes=round(45.3 * GIB * scale) % (80 * GIB),
        temp_celsius=84.6 * scale,
        power_draw_watts=612.5 * scale,
        processes=[{"pid": 7, "user": "ann", "gpu_mem_bytes": round(45.3 * GIB * scale) % (80 * GIB)}],
    )
    _, _, node = make_node({"sampled_at": 1.0, "host": host, "gpus": {"0": sample}})
    card, row = host_view(node), gpu_view("n1", "0", sample, RULE)
    detail = detail_view(node, {}, 15, 0.0, RULE)
    page = {f.label: f.text for f in detail.host_sample}
    facts = {f.label: f.text for f in detail.gpus[0].facts}

    assert card.cpu.text == f"CPU {page['CPU']}"
    assert card.mem.text == f"MEM {joined(page['mem used'], page['mem total'])}"
    assert card.net_text == f"↓{page['network receive']} ↑{page['network transmit']}"
    assert card.load_text == " ".join(page[f"load average {m} min"] for m in (1, 5, 15))
    assert card.uptime_text == page["uptime"]
    assert row.util.text == facts["GPU utilization"]
    assert row.mem.text == joined(facts["mem used"], facts["mem total"])
    assert row.temp_text == facts["temp"]
    assert row.power_text == joined(facts["power draw"], facts["power limit"])
    [process] = detail.gpus[0].processes
    if process.gpu_mem_text != "0B":
        assert row.users == (f"ann {process.gpu_mem_text}",)


def test_summary_adds_each_nodes_tally_of_models_slices_memory_and_groups() -> None:
    """A node's GPU tallies are summed once (node_tally); the bar adds the sums per node."""
    h100, a100 = "H100 80GB HBM3", "A100-SXM4-40GB"
    node_a = node_tally(
        [
            GpuTally(h100, GpuState.FREE, 1 * GIB, 80 * GIB),
            GpuTally(h100, GpuState.BUSY, 70 * GIB, 80 * GIB, Level.WARNING, idle_held=1),
            GpuTally(a100, GpuState.FAULT, 0, 40 * GIB, Level.FAULT),
            GpuTally(a100, GpuState.BUSY, 9 * GIB, 40 * GIB, slices=(("3g.20gb", True), ("3g.20gb", False))),
        ]
    )
    assert node_a.gpus == 4 and node_a.models == ((h100, 1, 2), (a100, 0, 2))
    assert node_a.slices == (("3g.20gb", 1, 2),)
    node_b = node_tally([GpuTally(a100, GpuState.FREE, 0, 40 * GIB, slices=(("1g.5gb", True),))])
    gone = node_tally([GpuTally(h100, GpuState.FREE, 0, 80 * GIB)] * 3)
    view = summary_view(
        [
            (NodeStatus.LIVE, node_a, "nlp"),
            (NodeStatus.STALE, node_b, None),
            (NodeStatus.OFFLINE, gone, "nlp"),
            (NodeStatus.LIVE, node_tally(()), "cv"),
        ]
    )
    assert (view.live, view.stale, view.offline) == (2, 1, 1)
    assert (view.gpus_free, view.gpus_total, view.gpus_error, view.gpus_offline) == (2, 5, 1, 3)
    assert [(m.model, m.free, m.total) for m in view.models] == [(a100, 1, 3), (h100, 1, 2)]
    assert [(m.model, m.free, m.total) for m in view.slices] == [("1g.5gb", 1, 1), ("3g.20gb", 1, 2)]
    assert (view.gpus_warning, view.gpus_health_fault, view.gpus_idle_held) == (1, 1, 1)
    assert (view.gpu_mem_used_text, view.gpu_mem_total_text) == ("80G", "280G")
    assert json.loads(view.free_json) == {"": {a100: 1}, "nlp": {h100: 1}}
