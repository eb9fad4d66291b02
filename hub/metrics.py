"""``GET /metrics``: every node's latest state in the Prometheus text format.

The hub's :class:`NodeRegistry` is read when Prometheus scrapes, so agent messages cost nothing
extra: there are no metric objects to update per message. On the event loop a scrape only takes
a reference to every node's current snapshot (snapshots are never mutated: merge patches build
new ones); the collector and the text formatting then run in a worker thread, because at 500
nodes x 8 GPUs that is ~90,000 lines and most of a second of CPU. Values the agent reports
as ``null`` (unsupported) are left out rather than exported as a number. Offline nodes keep only
their status, info and last-seen time: their last readings are history, not the present.

Names follow Prometheus conventions: base units (bytes, seconds, watts, hertz, celsius) and
ratios from 0 to 1 instead of percentages.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.samples import Timestamp
from starlette.requests import Request
from starlette.responses import Response

from hub.domain.gpus import GpuFreeRule, gpu_is_free, user_totals
from hub.domain.health import Level, gpu_health
from hub.domain.nodes import NodeStatus
from hub.domain.people import IdleSet, holdings
from hub.registry import NodeRegistry
from hub.state import HubState
from node_agent.protocol import GPU_COLLECTOR_DOWN, GPU_COLLECTOR_UP, Hello, Snapshot

NODE_LABELS = ("node",)
MAX_USER_SERIES = 1000  # users with their own sers_user_* series; the rest are summed
OTHER_USERS = "(other users)"  # no login name has parentheses or spaces
GPU_LABELS = ("node", "gpu", "uuid", "model")
# The classic text format: what generate_latest writes for names like ours, and what every
# Prometheus version reads.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Gauge:
    """One gauge read from a sample field: ``value = sample[field] * scale``."""

    name: str
    help: str
    field: str
    scale: float = 1.0


HOST_GAUGES = (
    Gauge(
        "sers_node_cpu_utilization_ratio", "CPU busy share over the last interval (0-1).", "cpu_percent", 0.01
    ),
    Gauge("sers_node_load1", "1-minute load average.", "load_avg_1m"),
    Gauge("sers_node_load5", "5-minute load average.", "load_avg_5m"),
    Gauge("sers_node_load15", "15-minute load average.", "load_avg_15m"),
    Gauge("sers_node_memory_total_bytes", "Physical memory.", "mem_total_bytes"),
    Gauge("sers_node_memory_used_bytes", "Physical memory in use.", "mem_used_bytes"),
    Gauge("sers_node_memory_available_bytes", "Memory available without swapping.", "mem_available_bytes"),
    Gauge("sers_node_swap_total_bytes", "Swap space.", "swap_total_bytes"),
    Gauge("sers_node_swap_used_bytes", "Swap space in use.", "swap_used_bytes"),
    Gauge(
        "sers_node_disk_read_bytes_per_second", "Disk reads over the last interval.", "disk_read_bytes_per_s"
    ),
    Gauge(
        "sers_node_disk_write_bytes_per_second",
        "Disk writes over the last interval.",
        "disk_write_bytes_per_s",
    ),
    Gauge("sers_node_network_receive_bytes_per_second", "Network receive rate.", "net_rx_bytes_per_s"),
    Gauge("sers_node_network_transmit_bytes_per_second", "Network transmit rate.", "net_tx_bytes_per_s"),
    Gauge("sers_node_uptime_seconds", "Time since the node booted.", "uptime_s"),
    Gauge("sers_node_logged_in_users", "Logged-in user sessions.", "users_count"),
)

GPU_GAUGES = (
    Gauge(
        "sers_gpu_utilization_ratio", "Share of time a kernel ran on the GPU (0-1).", "util_gpu_percent", 0.01
    ),
    Gauge(
        "sers_gpu_memory_utilization_ratio",
        "Share of time GPU memory was read or written (0-1).",
        "util_mem_percent",
        0.01,
    ),
    Gauge("sers_gpu_memory_used_bytes", "GPU memory in use.", "mem_used_bytes"),
    Gauge("sers_gpu_memory_total_bytes", "GPU memory.", "mem_total_bytes"),
    Gauge("sers_gpu_temperature_celsius", "GPU core temperature.", "temp_celsius"),
    Gauge("sers_gpu_fan_speed_ratio", "Fan speed as a share of its maximum (0-1).", "fan_percent", 0.01),
    Gauge("sers_gpu_power_watts", "Power draw.", "power_draw_watts"),
    Gauge("sers_gpu_power_limit_watts", "Enforced power limit.", "power_limit_watts"),
    Gauge("sers_gpu_sm_clock_hertz", "SM clock.", "clock_sm_mhz", 1e6),
    Gauge("sers_gpu_memory_clock_hertz", "Memory clock.", "clock_mem_mhz", 1e6),
    Gauge("sers_gpu_performance_state", "Performance state (0 fastest, 15 slowest).", "pstate"),
    Gauge("sers_gpu_encoder_utilization_ratio", "Video encoder utilization (0-1).", "enc_util_percent", 0.01),
    Gauge("sers_gpu_decoder_utilization_ratio", "Video decoder utilization (0-1).", "dec_util_percent", 0.01),
    Gauge(
        "sers_gpu_ecc_volatile_uncorrected_errors",
        "Uncorrected ECC errors since the driver loaded.",
        "ecc_volatile_uncorrected",
    ),
    Gauge(
        "sers_gpu_ecc_volatile_corrected_errors",
        "Corrected ECC errors since the driver loaded.",
        "ecc_volatile_corrected",
    ),
    Gauge(
        "sers_gpu_ecc_aggregate_uncorrected_errors",
        "Uncorrected ECC errors over the GPU's life.",
        "ecc_aggregate_uncorrected",
    ),
    Gauge(
        "sers_gpu_ecc_aggregate_corrected_errors",
        "Corrected ECC errors over the GPU's life.",
        "ecc_aggregate_corrected",
    ),
    Gauge(
        "sers_gpu_retired_pages_single_bit",
        "Memory pages retired for single-bit ECC errors.",
        "retired_pages_single_bit",
    ),
    Gauge(
        "sers_gpu_retired_pages_double_bit",
        "Memory pages retired for double-bit ECC errors.",
        "retired_pages_double_bit",
    ),
    Gauge(
        "sers_gpu_remapped_rows_corrected",
        "Memory rows remapped for corrected errors.",
        "remapped_rows_corrected",
    ),
    Gauge(
        "sers_gpu_remapped_rows_uncorrected",
        "Memory rows remapped for uncorrected errors.",
        "remapped_rows_uncorrected",
    ),
    Gauge("sers_gpu_pcie_link_generation", "Current PCIe link generation.", "pcie_link_gen"),
    Gauge("sers_gpu_pcie_link_width_lanes", "Current PCIe link width.", "pcie_link_width_lanes"),
    Gauge("sers_gpu_pcie_rx_bytes_per_second", "PCIe receive throughput.", "pcie_rx_bytes_per_s"),
    Gauge("sers_gpu_pcie_tx_bytes_per_second", "PCIe transmit throughput.", "pcie_tx_bytes_per_s"),
    Gauge("sers_gpu_pcie_replays", "PCIe replay counter.", "pcie_replay_count"),
    Gauge("sers_gpu_xid_errors", "Xid errors since the agent started.", "xid_count"),
    Gauge("sers_gpu_xid_last_code", "The last Xid error's code.", "xid_last_code"),
    Gauge(
        "sers_gpu_xid_last_timestamp_seconds", "When the last Xid error came (Unix time).", "xid_last_epoch_s"
    ),
)

# Health flags (1 or 0) read from boolean sample fields.
GPU_FLAGS = (
    Gauge("sers_gpu_remap_pending", "1 when remapped memory rows wait for a GPU reset.", "remap_pending"),
    Gauge("sers_gpu_remap_failed", "1 when a row remap failed: the GPU needs replacing.", "remap_failed"),
    Gauge(
        "sers_gpu_retired_pages_pending",
        "1 when retired pages wait for a GPU reset.",
        "retired_pages_pending",
    ),
)
HEALTH_LEVELS = {Level.OK: 0.0, Level.WARNING: 1.0, Level.FAULT: 2.0}


class UniqueGauge(GaugeMetricFamily):
    """A gauge family that keeps the first sample of each label set. A node's state can repeat
    one (two disks with the same mount, from an agent told ``--mount / --mount /`` or a hostile
    one), and an exposition holding a series twice is invalid: Prometheus refuses the scrape."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self._label_sets: set[tuple[str, ...]] = set()
        super().__init__(name, documentation, labels=labels)

    def add_metric(
        self, labels: Sequence[str], value: float, timestamp: Timestamp | float | None = None
    ) -> None:
        key = tuple(labels)
        if key not in self._label_sets:
            self._label_sets.add(key)
            super().add_metric(labels, value, timestamp)


def _number(value: Any) -> float | None:
    """A finite number from a sample field, or ``None`` (unsupported, unknown, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One node as a scrape sees it; ``state`` and ``hello`` are shared, never-mutated objects."""

    node_id: str
    display_name: str
    group: str | None
    status: NodeStatus
    hello: Hello | None
    state: Snapshot
    last_seen_epoch_s: float | None
    sample_age_s: float | None
    reporting: bool = True  # live with fresh samples (Node.reporting): only then is a GPU free


@dataclass(frozen=True, slots=True)
class FanoutLoad:
    """Whether the fan-out keeps up (:class:`hub.fanout.Fanout`), as a scrape sees it."""

    tick_lag_s: float = 0.0
    shedding: bool = False


def read_nodes(registry: NodeRegistry) -> list[NodeReading]:
    """Every node's current state, by reference (cheap: call it on the event loop)."""
    return [
        NodeReading(
            node_id=node.node_id,
            display_name=node.display_name,
            group=node.group,
            status=node.status,
            hello=node.hello,
            state=node.state,
            last_seen_epoch_s=node.last_seen_wall or None,
            sample_age_s=registry.sample_age_s(node) if node.state else None,
            reporting=node.reporting,
        )
        for node in registry.ordered()
    ]


class HubCollector:
    """Turns node readings into metric families (a ``prometheus_client`` collector)."""

    def __init__(
        self,
        nodes: Sequence[NodeReading],
        gpu_free: GpuFreeRule,
        viewers: int,
        idle: IdleSet | None = None,
        fanout: FanoutLoad | None = None,
    ) -> None:
        self._nodes = nodes
        self._gpu_free = gpu_free
        self._viewers = viewers
        self._idle = idle or {}
        self._fanout = fanout or FanoutLoad()

    def collect(self) -> Iterator[Metric]:
        nodes = self._nodes
        yield from self._hub_families(nodes)
        yield from self._node_families(nodes)
        reporting = [n for n in nodes if n.status is not NodeStatus.OFFLINE]
        yield from self._host_families(reporting)
        yield from self._gpu_families(reporting)
        yield from self._user_families(reporting)

    def _user_families(self, nodes: Sequence[NodeReading]) -> Iterator[Metric]:
        """Per user, across the lab: GPUs (and MIG slices) held, idle-held, GPU memory. At most
        :data:`MAX_USER_SERIES` users get their own series (those holding the most GPUs); the
        rest are summed under :data:`OTHER_USERS`, so a hostile or huge lab cannot grow the
        label set without end."""
        held = UniqueGauge(
            "sers_user_gpus_held", "GPUs and MIG slices the user's processes hold.", labels=["user"]
        )
        idle = UniqueGauge(
            "sers_user_gpus_idle_held",
            "GPUs and MIG slices the user holds idle (at or under the idle_holders limit for min_idle_s).",
            labels=["user"],
        )
        mem = UniqueGauge(
            "sers_user_gpu_memory_used_bytes", "GPU memory the user's processes use.", labels=["user"]
        )
        people = sorted(
            holdings(((n.node_id, n.state) for n in nodes), self._idle).values(),
            key=lambda h: (-len(h.gpus), h.user),
        )
        rest = people[MAX_USER_SERIES:]
        rows = [(h.user, len(h.gpus), len(h.idle), h.mem_bytes) for h in people[:MAX_USER_SERIES]]
        if rest:
            rows.append(
                (
                    OTHER_USERS,
                    sum(len(h.gpus) for h in rest),
                    sum(len(h.idle) for h in rest),
                    sum(h.mem_bytes for h in rest),
                )
            )
        for user, gpus, idle_gpus, mem_bytes in rows:
            held.add_metric([user], float(gpus))
            idle.add_metric([user], float(idle_gpus))
            mem.add_metric([user], float(mem_bytes))
        yield from (held, idle, mem)

    def _hub_families(self, nodes: Sequence[NodeReading]) -> Iterator[Metric]:
        by_status = UniqueGauge("sers_hub_nodes", "Nodes known to the hub, by status.", labels=["status"])
        for status in NodeStatus:
            by_status.add_metric([status.value], sum(1 for n in nodes if n.status is status))
        yield by_status
        yield GaugeMetricFamily("sers_hub_viewers", "Dashboard viewers connected.", value=self._viewers)
        yield GaugeMetricFamily(
            "sers_hub_fanout_tick_lag_seconds",
            "How late the fan-out's ticks come, on average (the event loop's backlog).",
            value=self._fanout.tick_lag_s,
        )
        yield GaugeMetricFamily(
            "sers_hub_shedding",
            "1 while the hub cannot keep up with its agents and updates each card at most every few seconds.",
            value=float(self._fanout.shedding),
        )

    def _node_families(self, nodes: Sequence[NodeReading]) -> Iterator[Metric]:
        up = UniqueGauge(
            "sers_node_up", "1 while the node's agent reports on time, else 0.", labels=NODE_LABELS
        )
        status = UniqueGauge(
            "sers_node_status",
            "1 for the node's current status (live, stale, offline).",
            labels=["node", "status"],
        )
        info = UniqueGauge(
            "sers_node_info",
            "Static facts about the node, as labels; always 1.",
            labels=[
                "node",
                "display_name",
                "group",
                "hostname",
                "os",
                "kernel",
                "cpu_model",
                "agent_version",
                "driver_version",
                "cuda_version",
            ],
        )
        last_seen = UniqueGauge(
            "sers_node_last_seen_timestamp_seconds",
            "When the hub last heard from the node (Unix time).",
            labels=NODE_LABELS,
        )
        cores = UniqueGauge("sers_node_cpu_cores", "Logical CPU cores.", labels=NODE_LABELS)
        sample_age = UniqueGauge(
            "sers_node_sample_age_seconds", "Time since the node's last new sample.", labels=NODE_LABELS
        )
        # absent for a node without NVIDIA GPUs (nothing to collect) and for agents too old to say
        collector_up = GaugeMetricFamily(
            "sers_gpu_collector_up",
            "1 while the node's GPU collector (NVML) works, 0 when it is down (driver not loaded, "
            "NVML failing) on a node with NVIDIA GPUs.",
            labels=NODE_LABELS,
        )
        for node in nodes:
            key = [node.node_id]
            up.add_metric(key, 1.0 if node.status is NodeStatus.LIVE else 0.0)
            for value in NodeStatus:
                status.add_metric([node.node_id, value.value], 1.0 if node.status is value else 0.0)
            hello = node.hello
            host: Mapping[str, Any] = hello.host if hello else {}
            driver: Mapping[str, Any] = hello.gpu_driver if hello else {}
            info.add_metric(
                [
                    node.node_id,
                    node.display_name,
                    node.group or "",
                    _text(host.get("hostname")),
                    _text(host.get("os_name")),
                    _text(host.get("kernel")),
                    _text(host.get("cpu_model")),
                    hello.agent_version if hello else "",
                    _text(driver.get("driver_version")),
                    _text(driver.get("cuda_driver_version")),
                ],
                1.0,
            )
            if node.last_seen_epoch_s is not None:
                last_seen.add_metric(key, node.last_seen_epoch_s)
            logical = _number(host.get("cpu_cores_logical"))
            if logical is not None:
                cores.add_metric(key, logical)
            if node.status is not NodeStatus.OFFLINE and node.sample_age_s is not None:
                sample_age.add_metric(key, max(0.0, node.sample_age_s))
            collector = driver.get("collector_state")
            if node.status is not NodeStatus.OFFLINE and collector in (GPU_COLLECTOR_UP, GPU_COLLECTOR_DOWN):
                collector_up.add_metric(key, 1.0 if collector == GPU_COLLECTOR_UP else 0.0)
        yield from (up, status, info, last_seen, cores, sample_age, collector_up)

    def _host_families(self, nodes: Sequence[NodeReading]) -> Iterator[Metric]:
        families = [UniqueGauge(g.name, g.help, labels=NODE_LABELS) for g in HOST_GAUGES]
        fs_size = UniqueGauge(
            "sers_node_filesystem_size_bytes", "Size of a reported filesystem.", labels=["node", "mount"]
        )
        fs_used = UniqueGauge(
            "sers_node_filesystem_used_bytes",
            "Space used on a reported filesystem.",
            labels=["node", "mount"],
        )
        for node in nodes:
            host = node.state.get("host")
            if not isinstance(host, dict):
                continue
            for gauge, family in zip(HOST_GAUGES, families, strict=True):
                value = _number(host.get(gauge.field))
                if value is not None:
                    family.add_metric([node.node_id], value * gauge.scale)
            for disk in host.get("disks") or []:
                mount = _text(disk.get("mount")) if isinstance(disk, dict) else ""
                if not mount:
                    continue
                size, used = _number(disk.get("total_bytes")), _number(disk.get("used_bytes"))
                if size is not None:
                    fs_size.add_metric([node.node_id, mount], size)
                if used is not None:
                    fs_used.add_metric([node.node_id, mount], used)
        yield from families
        yield fs_size
        yield fs_used

    def _gpu_families(self, nodes: Sequence[NodeReading]) -> Iterator[Metric]:
        families = [UniqueGauge(g.name, g.help, labels=GPU_LABELS) for g in GPU_GAUGES]
        flags = [UniqueGauge(g.name, g.help, labels=GPU_LABELS) for g in GPU_FLAGS]
        health = UniqueGauge(
            "sers_gpu_health",
            "The GPU's health: 0 ok, 1 warning, 2 fault (see the README).",
            labels=GPU_LABELS,
        )
        throttle = UniqueGauge(
            "sers_gpu_clocks_event_reason",
            "1 for each reason NVML gives for the GPU's clocks (hw_thermal, sw_power_cap...).",
            labels=[*GPU_LABELS, "reason"],
        )
        link_labels = [*GPU_LABELS, "link"]
        nvlink_up = UniqueGauge("sers_gpu_nvlink_up", "1 when the NVLink link is active.", labels=link_labels)
        nvlink_errors = UniqueGauge(
            "sers_gpu_nvlink_errors",
            "NVLink error counters, per link and kind.",
            labels=[*link_labels, "kind"],
        )
        mig_labels = [*GPU_LABELS, "mig_uuid", "profile"]
        mig_used = UniqueGauge("sers_mig_memory_used_bytes", "MIG slice memory in use.", labels=mig_labels)
        mig_total = UniqueGauge("sers_mig_memory_total_bytes", "MIG slice memory.", labels=mig_labels)
        mig_procs = UniqueGauge("sers_mig_processes", "Processes on the MIG slice.", labels=mig_labels)
        mig_util = UniqueGauge(
            "sers_mig_utilization_ratio",
            "MIG slice utilization (0-1), where NVML gives it.",
            labels=mig_labels,
        )
        now_s = time.time()
        gpu_up = UniqueGauge(
            "sers_gpu_up",
            "1 when the GPU answers NVML, 0 when it failed (lost, Xid, error).",
            labels=GPU_LABELS,
        )
        free = UniqueGauge(
            "sers_gpu_free",
            "1 when the GPU is free by the hub's rule (no processes, idle).",
            labels=GPU_LABELS,
        )
        processes = UniqueGauge("sers_gpu_processes", "Processes using the GPU.", labels=GPU_LABELS)
        user_labels = [*GPU_LABELS, "user"]
        user_mem = UniqueGauge(
            "sers_gpu_user_memory_used_bytes",
            "GPU memory used by one user's processes on the GPU.",
            labels=user_labels,
        )
        user_procs = UniqueGauge(
            "sers_gpu_user_processes", "One user's processes on the GPU.", labels=user_labels
        )
        rule = self._gpu_free
        for node in nodes:
            gpus = node.state.get("gpus")
            if not isinstance(gpus, dict):
                continue
            hello_gpus = node.hello.gpus if node.hello else []
            static = {str(g["index"]): g for g in hello_gpus if g.get("index") is not None}
            for index, gpu in gpus.items():
                if not isinstance(gpu, dict):
                    continue
                facts = static.get(index, {})
                labels = [
                    node.node_id,
                    index,
                    _text(gpu.get("uuid")) or _text(facts.get("uuid")),
                    _text(gpu.get("name")) or _text(facts.get("name")),
                ]
                failed = bool(gpu.get("error"))
                gpu_up.add_metric(labels, 0.0 if failed else 1.0)
                if failed:
                    continue
                is_free = gpu_is_free(gpu, rule, node.reporting)
                free.add_metric(labels, 1.0 if is_free else 0.0)
                for gauge, family in zip(GPU_GAUGES, families, strict=True):
                    value = _number(gpu.get(gauge.field))
                    if value is not None:
                        family.add_metric(labels, value * gauge.scale)
                for gauge, family in zip(GPU_FLAGS, flags, strict=True):
                    flag = gpu.get(gauge.field)
                    if isinstance(flag, bool):
                        family.add_metric(labels, 1.0 if flag else 0.0)
                health.add_metric(labels, HEALTH_LEVELS[gpu_health(gpu, facts, now_s).level])
                for reason in gpu.get("throttle_reasons") or ():
                    throttle.add_metric([*labels, _text(reason)], 1.0)
                _add_nvlinks(gpu, labels, nvlink_up, nvlink_errors)
                _add_mig_slices(gpu, labels, (mig_used, mig_total, mig_procs, mig_util))
                procs = [p for p in gpu.get("processes") or [] if isinstance(p, dict)]
                processes.add_metric(labels, float(len(procs)))
                for user, (count, mem_bytes) in user_totals(procs).items():
                    user_procs.add_metric([*labels, user], float(count))
                    if mem_bytes is not None:
                        user_mem.add_metric([*labels, user], mem_bytes)
        yield from families
        yield from (gpu_up, free, processes, user_mem, user_procs)
        yield from (
            *flags,
            health,
            throttle,
            nvlink_up,
            nvlink_errors,
            mig_used,
            mig_total,
            mig_procs,
            mig_util,
        )


_NVLINK_KINDS = {
    "nvlink_replay_count": "replay",
    "nvlink_recovery_count": "recovery",
    "nvlink_crc_flit_count": "crc_flit",
    "nvlink_crc_data_count": "crc_data",
}


def _add_nvlinks(
    gpu: Mapping[str, Any], labels: list[str], up: GaugeMetricFamily, errors: GaugeMetricFamily
) -> None:
    active = gpu.get("nvlink_active")
    if isinstance(active, list):
        for link, state in enumerate(active):
            up.add_metric([*labels, str(link)], 1.0 if state is True else 0.0)
    for field, kind in _NVLINK_KINDS.items():
        counts = gpu.get(field)
        for link, count in enumerate(counts if isinstance(counts, list) else ()):
            value = _number(count)
            if value is not None:
                errors.add_metric([*labels, str(link), kind], value)


def _add_mig_slices(
    gpu: Mapping[str, Any], labels: list[str], families: tuple[GaugeMetricFamily, ...]
) -> None:
    used, total, procs, util = families
    for mig in gpu.get("mig_slices") or ():
        if not isinstance(mig, dict) or not mig.get("uuid"):
            continue
        mig_labels = [*labels, _text(mig.get("uuid")), _text(mig.get("profile"))]
        for family, value in (
            (used, _number(mig.get("mem_used_bytes"))),
            (total, _number(mig.get("mem_total_bytes"))),
            (util, None if (u := _number(mig.get("util_gpu_percent"))) is None else u * 0.01),
        ):
            if value is not None:
                family.add_metric(mig_labels, value)
        procs.add_metric(mig_labels, float(len(mig.get("processes") or ())))


def exposition(
    nodes: Sequence[NodeReading],
    gpu_free: GpuFreeRule,
    viewers: int,
    idle: IdleSet | None = None,
    fanout: FanoutLoad | None = None,
) -> bytes:
    """The whole ``/metrics`` body: the nodes, plus the hub process's own CPU, memory and files.

    Pure CPU work on immutable inputs (``idle``: a copy of the idle-held set): safe to run in a
    worker thread.
    """
    registry = CollectorRegistry()
    registry.register(HubCollector(nodes, gpu_free, viewers, idle, fanout))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return generate_latest(registry)


def _body(
    nodes: Sequence[NodeReading],
    gpu_free: GpuFreeRule,
    viewers: int,
    idle: IdleSet,
    fanout: FanoutLoad,
    compress: bool,
) -> bytes:
    text = exposition(nodes, gpu_free, viewers, idle, fanout)
    # The text repeats long labels on every line: level 1 shrinks it ~25x in ~2% of the time.
    return gzip.compress(text, compresslevel=1) if compress else text


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (RFC 9110 12.5.3): named, or ``*`` when
    gzip is not named, with a ``q`` above 0 (``gzip;q=0`` refuses it)."""
    weights = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0
        weights[coding.lower()] = weight
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


async def metrics(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    nodes = read_nodes(hub.registry)
    compress = accepts_gzip(request.headers.get("accept-encoding", ""))
    idle = hub.idle_holders.held()  # a copy, taken on the event loop
    fanout = FanoutLoad(hub.fanout.tick_lag_s, hub.fanout.shedding)
    body = await asyncio.to_thread(
        _body, nodes, hub.settings.gpu_free, len(hub.fanout.viewers), idle, fanout, compress
    )
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    if compress:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=TEXT_FORMAT, headers=headers)
