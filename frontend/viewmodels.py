"""View models: a node's raw wire state turned into what a card shows (text, percents, levels).

All formatting and units live here, so templates only place values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.registry import Node, NodeStatus

MAX_USERS_SHOWN = 3


def fmt_bytes(value: float | None) -> str:
    """Binary units, three significant digits: ``1.5 GiB``, ``812 MiB``."""
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{size:.0f} B"
            return f"{size:.1f} {unit}" if abs(size) < 100 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fmt_rate(bytes_per_s: float | None) -> str:
    return "–" if bytes_per_s is None else fmt_bytes(bytes_per_s) + "/s"


def fmt_duration(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h 05m``, ``12d 4h``."""
    if seconds is None:
        return "–"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def level(percent: float | None, warn: float = 70.0, crit: float = 90.0) -> str:
    if percent is None:
        return "na"
    return "crit" if percent >= crit else "warn" if percent >= warn else "ok"


def ratio_percent(used: float | None, total: float | None) -> float | None:
    if used is None or not total:
        return None
    return max(0.0, min(100.0, 100.0 * used / total))


def short_gpu_name(name: str | None) -> str:
    """``NVIDIA A100-SXM4-80GB`` → ``A100-SXM4-80GB``."""
    if not name:
        return "GPU"
    for prefix in ("NVIDIA ", "GeForce ", "Tesla "):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


@dataclass(frozen=True, slots=True)
class Meter:
    text: str
    percent: float | None
    level: str

    @property
    def width(self) -> str:
        return "0" if self.percent is None else f"{self.percent:.0f}"


def meter(percent: float | None, text: str | None = None) -> Meter:
    return Meter(text if text is not None else fmt_percent(percent), percent, level(percent))


@dataclass(frozen=True, slots=True)
class HostView:
    node_id: str
    cpu: Meter
    mem: Meter
    disk: Meter
    load_text: str
    net_text: str
    disk_io_text: str
    swap_text: str
    cores_text: str
    sample_late_s: float | None  # set when heartbeats come but samples don't


def host_view(node: Node, sample_late_s: float | None = None) -> HostView:
    host: Mapping[str, Any] = node.state.get("host") or {}
    static: Mapping[str, Any] = node.hello.host if node.hello else {}
    mem_pct = ratio_percent(host.get("mem_used_bytes"), host.get("mem_total_bytes"))
    disks = host.get("disks") or []
    root = disks[0] if disks else {}
    disk_pct = ratio_percent(root.get("used_bytes"), root.get("total_bytes"))
    per_core = host.get("cpu_percent_per_core") or []
    return HostView(
        node_id=node.node_id,
        cpu=meter(host.get("cpu_percent")),
        mem=meter(
            mem_pct,
            f"{fmt_bytes(host.get('mem_used_bytes'))} / {fmt_bytes(host.get('mem_total_bytes'))}",
        ),
        disk=meter(
            disk_pct,
            f"{root.get('mount') or '/'} {fmt_percent(disk_pct)} of {fmt_bytes(root.get('total_bytes'))}",
        ),
        load_text=" ".join(
            "–" if host.get(k) is None else f"{host[k]:.2f}"
            for k in ("load_avg_1m", "load_avg_5m", "load_avg_15m")
        ),
        net_text=f"↓{fmt_rate(host.get('net_rx_bytes_per_s'))} ↑{fmt_rate(host.get('net_tx_bytes_per_s'))}",
        disk_io_text=f"r {fmt_rate(host.get('disk_read_bytes_per_s'))} w {fmt_rate(host.get('disk_write_bytes_per_s'))}",
        swap_text=f"{fmt_bytes(host.get('swap_used_bytes'))} / {fmt_bytes(host.get('swap_total_bytes'))}",
        cores_text=f"{static.get('cpu_cores_logical') or len(per_core) or '?'} cores",
        sample_late_s=sample_late_s,
    )


@dataclass(frozen=True, slots=True)
class GpuUser:
    user: str
    mem_text: str
    command: str


@dataclass(frozen=True, slots=True)
class GpuView:
    node_id: str
    index: str
    name: str
    state: str  # "free", "busy" or "error"
    error: str | None
    util: Meter
    mem: Meter
    temp_text: str
    power_text: str
    users: tuple[GpuUser, ...]
    more_users: int


def gpu_is_free(gpu: Mapping[str, Any], max_util_percent: float, max_mem_percent: float) -> bool:
    if gpu.get("error"):
        return False
    if gpu.get("processes"):
        return False
    util = gpu.get("util_gpu_percent")
    mem_pct = ratio_percent(gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes"))
    return (util is None or util <= max_util_percent) and (mem_pct is None or mem_pct <= max_mem_percent)


def gpu_view(
    node_id: str,
    index: str,
    gpu: Mapping[str, Any],
    max_util_percent: float,
    max_mem_percent: float,
) -> GpuView:
    error = gpu.get("error")
    free = gpu_is_free(gpu, max_util_percent, max_mem_percent)
    mem_pct = ratio_percent(gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes"))
    processes = gpu.get("processes") or []
    per_user: dict[str, int] = {}
    commands: dict[str, str] = {}
    for proc in processes:
        user = proc.get("user") or (f"pid {proc.get('pid')}" if proc.get("pid") is not None else "unknown")
        per_user[user] = per_user.get(user, 0) + (proc.get("gpu_mem_bytes") or 0)
        commands.setdefault(user, proc.get("command") or "?")
    ranked = sorted(per_user.items(), key=lambda item: -item[1])
    power = gpu.get("power_draw_watts")
    limit = gpu.get("power_limit_watts")
    temp = gpu.get("temp_celsius")
    return GpuView(
        node_id=node_id,
        index=index,
        name=short_gpu_name(gpu.get("name")),
        state="error" if error else "free" if free else "busy",
        error=error,
        util=meter(gpu.get("util_gpu_percent")),
        mem=meter(
            mem_pct,
            f"{fmt_bytes(gpu.get('mem_used_bytes'))} / {fmt_bytes(gpu.get('mem_total_bytes'))}",
        ),
        temp_text="–" if temp is None else f"{temp:.0f}°C",
        power_text=("–" if power is None else f"{power:.0f}")
        + ("" if limit is None else f"/{limit:.0f}")
        + " W",
        users=tuple(
            GpuUser(user, fmt_bytes(mem) if mem else "", commands[user])
            for user, mem in ranked[:MAX_USERS_SHOWN]
        ),
        more_users=max(0, len(ranked) - MAX_USERS_SHOWN),
    )


@dataclass(frozen=True, slots=True)
class HeadView:
    node_id: str
    display_name: str
    group: str | None
    status: str
    status_text: str
    last_seen_epoch_s: float
    uptime_text: str
    detail: str  # host name, OS, CPU model: the card's tooltip
    has_gpus: bool
    gpus_free: int
    gpus_total: int
    sort_key: str


def head_view(node: Node, gpus_free: int) -> HeadView:
    static: Mapping[str, Any] = node.hello.host if node.hello else {}
    host: Mapping[str, Any] = node.state.get("host") or {}
    gpus = node.state.get("gpus") or {}
    status_text = {
        NodeStatus.LIVE: "live",
        NodeStatus.STALE: "late",
        NodeStatus.OFFLINE: "offline",
    }[node.status]
    detail = " · ".join(
        str(x) for x in (static.get("hostname"), static.get("os_name"), static.get("cpu_model")) if x
    )
    return HeadView(
        node_id=node.node_id,
        display_name=node.display_name,
        group=node.group,
        status=node.status.value,
        status_text=status_text,
        last_seen_epoch_s=round(node.last_seen_wall, 1),
        uptime_text=fmt_duration(host.get("uptime_s")),
        detail=detail,
        has_gpus=bool(gpus),
        gpus_free=gpus_free,
        gpus_total=len(gpus),
        sort_key=f"{node.group is None:d}{(node.group or '').lower()}\x1f{node.display_name.lower()}\x1f{node.node_id}",
    )


@dataclass(frozen=True, slots=True)
class ModelCount:
    model: str
    free: int
    total: int


@dataclass(frozen=True, slots=True)
class SummaryView:
    live: int
    stale: int
    offline: int
    gpus_free: int
    gpus_total: int
    gpus_error: int
    models: tuple[ModelCount, ...]
    gpu_mem_used_text: str


def summary_view(nodes: Iterable[Node], max_util_percent: float, max_mem_percent: float) -> SummaryView:
    status_counts: Counter[str] = Counter()
    free_by_model: Counter[str] = Counter()
    total_by_model: Counter[str] = Counter()
    errors = 0
    mem_used = 0
    for node in nodes:
        status_counts[node.status.value] += 1
        if node.status is NodeStatus.OFFLINE:
            continue
        for gpu in (node.state.get("gpus") or {}).values():
            model = short_gpu_name(gpu.get("name"))
            total_by_model[model] += 1
            mem_used += gpu.get("mem_used_bytes") or 0
            if gpu.get("error"):
                errors += 1
            elif node.status is NodeStatus.LIVE and gpu_is_free(gpu, max_util_percent, max_mem_percent):
                free_by_model[model] += 1
    return SummaryView(
        live=status_counts["live"],
        stale=status_counts["stale"],
        offline=status_counts["offline"],
        gpus_free=sum(free_by_model.values()),
        gpus_total=sum(total_by_model.values()),
        gpus_error=errors,
        models=tuple(
            ModelCount(model, free_by_model[model], total)
            for model, total in sorted(total_by_model.items(), key=lambda item: (-item[1], item[0]))
        ),
        gpu_mem_used_text=fmt_bytes(mem_used),
    )
