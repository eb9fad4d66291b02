"""View models: a node's raw wire state turned into what the page shows (text, percents, levels).

All formatting and units live here, so templates only place values. Card fragments are pushed
every second, so their views hold short, ready-made strings; the detail page's views are
generic (every reported field, formatted by the unit in its name).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from hub.registry import Node, NodeStatus
from node_agent.protocol import (
    GPU_COLLECTOR_DOWN,
    GpuDriver,
    GpuSample,
    GpuStatic,
    HostSample,
    HostStatic,
)

MAX_USERS_SHOWN = 2  # on a card; the detail page lists every process
_VENDOR_PREFIXES = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")


# --------------------------------------------------------------------------- formatting
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


_KI, _MI, _GI, _TI = 1024.0, 1024.0**2, 1024.0**3, 1024.0**4


def _short_parts(value: float) -> tuple[str, str]:
    """(number, unit) with at most three significant digits; binary units."""
    size = abs(value)
    if size < 1000:
        return f"{value:.0f}", "B"
    if size < 1000 * _KI:
        scaled, unit = value / _KI, "K"
    elif size < 1000 * _MI:
        scaled, unit = value / _MI, "M"
    elif size < 1000 * _GI:
        scaled, unit = value / _GI, "G"
    else:
        scaled, unit = value / _TI, "T"
    return (f"{scaled:.1f}" if -9.95 < scaled < 9.95 else f"{scaled:.0f}"), unit


# totals (a GPU's or a host's memory) take a handful of values: format each once
_total_parts = functools.lru_cache(maxsize=1024)(_short_parts)


def fmt_short_bytes(value: float | None) -> str:
    """Binary units in at most four characters: ``4.5G``, ``45G``, ``812M``, ``1.2T``."""
    if value is None:
        return "–"
    number, unit = _short_parts(value)
    return number + unit


def fmt_used_of(used: float | None, total: float | None) -> str:
    """``45/80G`` (one unit when both share it), ``812M/80G``; a dash stands for unknown."""
    if used is None or total is None:
        return fmt_short_bytes(used) if total is None else f"–/{fmt_short_bytes(total)}"
    used_number, used_unit = _short_parts(used)
    total_number, total_unit = _total_parts(total)
    if used_unit == total_unit:
        return f"{used_number}/{total_number}{total_unit}"
    return f"{used_number}{used_unit}/{total_number}{total_unit}"


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


def fmt_ago(seconds: float) -> str:
    """``12 s``, ``4 min``, ``2 h 05 min``: how app.js counts on, so the first paint matches."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def fmt_epoch(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


def level(percent: float | None, warn: float = 70.0, crit: float = 90.0) -> str:
    """CSS classes to append: ``""`` (fine), ``" w"`` (warn), ``" c"`` (critical) or ``" na"``
    (unknown)."""
    if percent is None:
        return " na"
    return " c" if percent >= crit else " w" if percent >= warn else ""


def ratio_percent(used: float | None, total: float | None) -> float | None:
    if used is None or not total:
        return None
    ratio = 100.0 * used / total
    return 0.0 if ratio < 0 else 100.0 if ratio > 100 else ratio


@functools.lru_cache(maxsize=256)
def short_gpu_name(name: str | None) -> str:
    """The model without the vendor: ``NVIDIA A100-SXM4-80GB`` → ``A100-SXM4-80GB``."""
    if not name:
        return "GPU"
    for prefix in _VENDOR_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


@functools.lru_cache(maxsize=256)
def tiny_gpu_name(name: str | None) -> str:
    """What fits a GPU row (five characters): ``H100``, ``A100``, ``L40S``, ``4090`` (RTX 4090),
    ``A6000``."""
    words = short_gpu_name(name).replace("-", " ").split()
    if not words:
        return "GPU"
    if words[0].upper() in ("RTX", "GTX") and len(words) > 1:
        return words[1][:5]
    return words[0][:5]


# --------------------------------------------------------------------------- card parts
# Meter, HostView and GpuView are built for every changed part every second: NamedTuples,
# immutable like the other views and three times cheaper to build than frozen dataclasses.
class Meter(NamedTuple):
    """A bar with its text on it: ``p`` is the fill (0 to 100, CSS class ``p<N>``) and ``cls`` the
    level classes to append. ``text`` is placed unescaped (:mod:`frontend.fragments`): numbers and
    fixed words only, never an agent's string."""

    text: str
    p: int
    cls: str


def meter(percent: float | None, text: str | None = None) -> Meter:
    if percent is None:
        return Meter("–" if text is None else text, 0, " na")
    p = 0 if percent < 0 else 100 if percent > 100 else round(percent)
    cls = " c" if percent >= 90 else " w" if percent >= 70 else ""
    return Meter(f"{percent:.0f}%" if text is None else text, p, cls)


def plain_meter(percent: float | None, text: str | None = None) -> Meter:
    """A meter without warning levels: for GPUs, where 100% utilization is the point."""
    if text is None and percent.__class__ is float and percent.is_integer():
        return _whole_percent_meter(percent)  # NVML reports whole percents: each made once
    return _plain_meter(percent, text)


def _plain_meter(percent: float | None, text: str | None = None) -> Meter:
    if percent is None:
        return Meter("–" if text is None else text, 0, " na")
    p = 0 if percent < 0 else 100 if percent > 100 else round(percent)
    return Meter(f"{percent:.0f}%" if text is None else text, p, "")


_whole_percent_meter = functools.lru_cache(maxsize=512)(_plain_meter)


class HostView(NamedTuple):
    """The ``*_text`` fields here and in :class:`GpuView` are placed unescaped: numbers and fixed
    words only; agent strings (ids, names, users, errors) are escaped by the fragments."""

    node_id: str
    cpu: Meter
    mem: Meter
    disk: Meter
    net_text: str
    load_text: str
    uptime_text: str
    late_text: str | None  # set when heartbeats come but samples don't


def host_view(node: Node, sample_late_s: float | None = None) -> HostView:
    """The host part. Hot: the hub builds one per sample per node."""
    get = (node.state.get("host") or {}).get
    mem_total = get("mem_total_bytes")
    mem_used = get("mem_used_bytes")
    fullest_pct: float | None = None
    for disk in get("disks") or ():
        pct = ratio_percent(disk.get("used_bytes"), disk.get("total_bytes"))
        if pct is not None and (fullest_pct is None or pct > fullest_pct):
            fullest_pct = pct
    cpu = get("cpu_percent")
    load_1m, load_5m, load_15m = get("load_avg_1m"), get("load_avg_5m"), get("load_avg_15m")
    return HostView(
        node_id=node.node_id,
        cpu=meter(cpu, "CPU –" if cpu is None else f"CPU {cpu:.0f}%"),
        mem=meter(ratio_percent(mem_used, mem_total), f"MEM {fmt_used_of(mem_used, mem_total)}"),
        disk=meter(fullest_pct, "DSK –" if fullest_pct is None else f"DSK {fullest_pct:.0f}%"),
        net_text=(
            f"↓{fmt_short_bytes(get('net_rx_bytes_per_s'))}/s ↑{fmt_short_bytes(get('net_tx_bytes_per_s'))}/s"
        ),
        load_text=(
            f"{'–' if load_1m is None else f'{load_1m:.2f}'} {'–' if load_5m is None else f'{load_5m:.2f}'}"
            f" {'–' if load_15m is None else f'{load_15m:.2f}'}"
        ),
        uptime_text=fmt_duration(get("uptime_s")),
        late_text=None if sample_late_s is None else f"⚠ no new sample for {round(sample_late_s)} s",
    )


class GpuView(NamedTuple):
    node_id: str
    gpu_index: str  # not `index`: a NamedTuple has an index() method
    name: str  # tiny: what fits the row
    state: str  # "f" free, "b" busy, "e" error, "o" its node is not live
    error: str | None
    util: Meter
    mem: Meter
    temp_text: str
    temp_cls: str
    power_text: str
    users: tuple[str, ...]  # "alice 12G", most GPU memory first
    more_users: int


def gpu_is_free(gpu: Mapping[str, Any], max_util_percent: float, max_mem_percent: float) -> bool:
    """No error, no processes, and utilization and memory in use at most the thresholds."""
    if gpu.get("error"):
        return False
    mem_pct = ratio_percent(gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes"))
    return _idle(
        gpu.get("processes"), gpu.get("util_gpu_percent"), mem_pct, max_util_percent, max_mem_percent
    )


def _idle(
    processes: object,
    util: float | None,
    mem_pct: float | None,
    max_util_percent: float,
    max_mem_percent: float,
) -> bool:
    """The free rule's test, on values a caller has already read (a GPU row reads them anyway)."""
    return (
        not processes
        and (util is None or util <= max_util_percent)
        and (mem_pct is None or mem_pct <= max_mem_percent)
    )


def gpu_users(processes: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(user, GPU memory in bytes) per user, most memory first; unknown users by pid."""
    per_user: dict[str, int] = {}
    for proc in processes:
        user = proc.get("user") or (f"pid {proc.get('pid')}" if proc.get("pid") is not None else "unknown")
        per_user[user] = per_user.get(user, 0) + (proc.get("gpu_mem_bytes") or 0)
    if len(per_user) == 1:
        return list(per_user.items())
    return sorted(per_user.items(), key=lambda item: (-item[1], item[0]))


def gpu_view(
    node_id: str,
    index: str,
    gpu: Mapping[str, Any],
    max_util_percent: float,
    max_mem_percent: float,
    node_live: bool = True,
) -> GpuView:
    """One GPU row. Hot: the hub builds one per changed GPU per sample."""
    get = gpu.get
    error = get("error")
    util = get("util_gpu_percent")
    mem_used, mem_total = get("mem_used_bytes"), get("mem_total_bytes")
    mem_pct = ratio_percent(mem_used, mem_total)
    processes = get("processes")
    if error:
        state = "e"
    elif not node_live:
        state = "o"
    elif _idle(processes, util, mem_pct, max_util_percent, max_mem_percent):
        state = "f"  # the rule of gpu_is_free
    else:
        state = "b"
    ranked = gpu_users(processes) if processes else []
    power = get("power_draw_watts")
    limit = get("power_limit_watts")
    temp = get("temp_celsius")
    # positional: a NamedTuple built by keyword costs a third more, and this runs per GPU row
    return GpuView(
        node_id,
        index,
        tiny_gpu_name(get("name")),
        state,
        error,
        plain_meter(util),
        plain_meter(mem_pct, fmt_used_of(mem_used, mem_total)),
        *_temp_texts(temp),  # temp_text, temp_cls
        ("–" if power is None else f"{power:.0f}") + ("W" if limit is None else f"/{limit:.0f}W"),
        tuple(f"{user} {fmt_short_bytes(mem)}" if mem else user for user, mem in ranked[:MAX_USERS_SHOWN]),
        len(ranked) - MAX_USERS_SHOWN if len(ranked) > MAX_USERS_SHOWN else 0,  # more_users
    )


@functools.lru_cache(maxsize=512)
def _temp_texts(temp: float | None) -> tuple[str, str]:
    """(text, level class) of a GPU temperature; temperatures repeat, so each is made once."""
    if temp is None:
        return "–", ""
    return f"{temp:.0f}°", "" if temp < 80 else "c" if temp >= 88 else "w"


@dataclass(frozen=True, slots=True)
class HeadView:
    node_id: str
    display_name: str
    group: str | None
    status: str
    status_text: str
    last_seen_epoch_s: float
    detail: str  # host name, OS, CPU, cores, memory: the name's tooltip
    gpus_total: int
    sort_key: str
    gpu_collector_down: str | None = None  # why, when the node's GPUs can't be read (its badge)


def gpu_collector_down(node: Node) -> str | None:
    """Why ``node``'s GPU collector is down (its agent finds NVIDIA GPUs, or NVML, but NVML
    fails: "NVIDIA driver not loaded"), or ``None``: it works, the node has no NVIDIA GPU, or
    the node is offline (what its agent last said is history)."""
    if node.hello is None or node.status is NodeStatus.OFFLINE:
        return None
    driver = node.hello.gpu_driver
    if driver.get("collector_state") != GPU_COLLECTOR_DOWN:
        return None
    return str(driver.get("error") or "no reason given")


def head_view(node: Node, silent_s: float = 0.0) -> HeadView:
    static: Mapping[str, Any] = node.hello.host if node.hello else {}
    gpus = node.state.get("gpus") or {}
    seen = node.last_seen_wall > 0
    if node.status is NodeStatus.LIVE:
        status_text = "live"
    elif node.status is NodeStatus.STALE:
        status_text = f"late by {fmt_ago(silent_s)}"
    else:
        status_text = f"last seen {fmt_ago(silent_s)} ago" if seen else "offline"
    cores = static.get("cpu_cores_logical")
    detail = " · ".join(
        str(x)
        for x in (
            static.get("hostname"),
            static.get("os_name"),
            static.get("cpu_model"),
            f"{cores} cores" if cores else None,
            fmt_bytes(static["mem_total_bytes"]) if static.get("mem_total_bytes") else None,
        )
        if x
    )
    return HeadView(
        node_id=node.node_id,
        display_name=node.display_name,
        group=node.group,
        status=node.status.value,
        status_text=status_text,
        last_seen_epoch_s=round(node.last_seen_wall, 1),
        detail=detail,
        gpus_total=len(gpus),
        sort_key=f"{node.group is None:d}{(node.group or '').lower()}\x1f{node.display_name.lower()}\x1f{node.node_id}",
        gpu_collector_down=gpu_collector_down(node),
    )


# --------------------------------------------------------------------------- sparklines
SPARK_STEP = 2  # card sparklines: 30 points, 58 x 16 px, drawn 1:1 (no scaling)
SPARK_HEIGHT = 16


def spark_path(points: Sequence[float], step: int = SPARK_STEP, height: int = SPARK_HEIGHT) -> str:
    """SVG path data for percents (0 to 100), ``step`` px apart, in whole pixels; NaN breaks
    the line, a lone point between gaps is drawn as a short dash, and the middle points of a
    flat stretch are left out (an idle GPU's line is two points)."""
    bottom = height - 1
    scale = (height - 2) / 100
    ys = [
        None if v != v else bottom - round((0.0 if v < 0 else 100.0 if v > 100 else v) * scale)
        for v in points
    ]
    parts: list[str] = []
    last = len(ys) - 1
    for i, y in enumerate(ys):
        if y is None:
            continue
        before = ys[i - 1] if i > 0 else None
        after = ys[i + 1] if i < last else None
        if before is None:
            parts.append(f"M{i * step},{y}" if after is not None else f"M{i * step},{y}h{step}")
        elif before != y or after != y:  # the ends of a flat stretch are enough
            parts.append(f" {i * step},{y}")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class SparkView:
    """One small chart of percents: a solid line (``main``) and a dashed one (``second``)."""

    element_id: str
    width: int
    height: int
    main: str
    second: str
    title: str  # "" on cards: every byte of a pushed fragment counts


def spark_view(
    element_id: str,
    main: Sequence[float],
    second: Sequence[float],
    title: str = "",
    points: int = 30,
    step: int = SPARK_STEP,
    height: int = SPARK_HEIGHT,
) -> SparkView:
    """Right-aligned: the newest point is at the right edge, whatever the history's length."""
    main, second = _pad(main, points), _pad(second, points)
    return SparkView(
        element_id,
        (points - 1) * step,
        height,
        spark_path(main, step, height),
        spark_path(second, step, height),
        title,
    )


def _pad(values: Sequence[float], points: int) -> list[float]:
    values = list(values[-points:])
    return [float("nan")] * (points - len(values)) + values


# --------------------------------------------------------------------------- summary bar
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
    gpu_mem_total_text: str
    gpu_mem_p: int
    gpu_collectors_down: int = 0  # nodes not offline whose GPUs can't be read


class GpuTally(NamedTuple):
    """What one GPU adds to the summary bar. The hub keeps one per GPU row and refreshes it
    whenever it renders the row, so the summary never walks every GPU's raw state."""

    model: str
    state: str  # as in GpuView: "f" free, "b" busy, "e" error, "o" its node is not live
    mem_used_bytes: int
    mem_total_bytes: int


def gpu_tally(gpu: Mapping[str, Any], state: str) -> GpuTally:
    get = gpu.get  # positional below: one per rendered GPU row
    return GpuTally(
        short_gpu_name(get("name")), state, get("mem_used_bytes") or 0, get("mem_total_bytes") or 0
    )


def summary_view(
    nodes: Iterable[tuple[NodeStatus, Iterable[GpuTally]]], gpu_collectors_down: int = 0
) -> SummaryView:
    """Counts over (node status, its GPUs' tallies): GPUs of offline nodes are left out; a GPU
    is free only on a live node (its row says so: state "f"). ``gpu_collectors_down`` is
    passed through (the nodes :func:`gpu_collector_down` names)."""
    status_counts: Counter[str] = Counter()
    free_by_model: Counter[str] = Counter()
    total_by_model: Counter[str] = Counter()
    errors = 0
    mem_used = 0
    mem_total = 0
    for status, tallies in nodes:
        status_counts[status.value] += 1
        if status is NodeStatus.OFFLINE:
            continue
        for tally in tallies:
            total_by_model[tally.model] += 1
            mem_used += tally.mem_used_bytes
            mem_total += tally.mem_total_bytes
            if tally.state == "e":
                errors += 1
            elif tally.state == "f":
                free_by_model[tally.model] += 1
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
        gpu_mem_used_text=fmt_short_bytes(mem_used),
        gpu_mem_total_text=fmt_short_bytes(mem_total),
        gpu_mem_p=round(ratio_percent(mem_used, mem_total) or 0),
        gpu_collectors_down=gpu_collectors_down,
    )


# --------------------------------------------------------------------------- detail page
@dataclass(frozen=True, slots=True)
class FieldView:
    label: str
    text: str


_LABELS = {
    "util_gpu_percent": "GPU utilization",
    "util_mem_percent": "memory controller utilization",
    "enc_util_percent": "encoder utilization",
    "dec_util_percent": "decoder utilization",
    "ecc_volatile_uncorrected": "ECC errors (volatile, uncorrected)",
    "pstate": "performance state",
    "mig_mode": "MIG mode",
    "pci_bus_id": "PCI bus id",
    "uuid": "UUID",
    "cuda_driver_version": "CUDA driver version",
    "nvml_version": "NVML version",
    "collector_state": "GPU collector",
    "cpu_percent": "CPU",
    "load_avg_1m": "load average 1 min",
    "load_avg_5m": "load average 5 min",
    "load_avg_15m": "load average 15 min",
    "net_rx_bytes_per_s": "network receive",
    "net_tx_bytes_per_s": "network transmit",
    "users_count": "users logged in",
}
_GPU_SAMPLE_FIELDS = tuple(f.name for f in fields(GpuSample))
_UNIT_SUFFIXES = (
    "_bytes_per_s",
    "_bytes",
    "_percent",
    "_celsius",
    "_watts",
    "_mhz",
    "_epoch_s",
    "_s",
)


def field_label(name: str) -> str:
    """``mem_used_bytes`` → ``mem used``: the field's name without its unit."""
    if name in _LABELS:
        return _LABELS[name]
    for suffix in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ")


def field_text(name: str, value: Any) -> str:
    """A value formatted by the unit in its field's name (``null``, not supported, is a dash)."""
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "none"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name.endswith("_bytes_per_s"):
        return fmt_rate(value)
    if name.endswith("_bytes"):
        return fmt_bytes(value)
    if name.endswith("_percent"):
        return f"{value:.1f}%"
    if name.endswith("_celsius"):
        return f"{value:.0f} °C"
    if name.endswith("_watts"):
        return f"{value:.1f} W"
    if name.endswith("_mhz"):
        return f"{value:.0f} MHz"
    if name.endswith("_epoch_s"):
        return fmt_epoch(value)
    if name.endswith("_s"):
        return fmt_duration(value)
    if name == "pstate":
        return f"P{value}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_views(data: Mapping[str, Any], wire_type: type, skip: Iterable[str] = ()) -> tuple[FieldView, ...]:
    """Every field of ``wire_type`` (the protocol's dataclasses), in declaration order; the
    hub's decoder keeps no other keys."""
    skipped = set(skip)
    return tuple(
        FieldView(field_label(f.name), field_text(f.name, data.get(f.name)))
        for f in fields(wire_type)
        if f.name not in skipped
    )


@dataclass(frozen=True, slots=True)
class ProcessView:
    pid: str
    user: str
    command: str
    gpu_mem_text: str
    cpu_text: str
    host_mem_text: str


@dataclass(frozen=True, slots=True)
class GpuDetailView:
    index: str
    name: str
    state: str
    error: str | None
    facts: tuple[FieldView, ...]
    processes: tuple[ProcessView, ...]
    history: SparkView


@dataclass(frozen=True, slots=True)
class DiskView:
    mount: str
    used_text: str
    total_text: str
    meter: Meter


@dataclass(frozen=True, slots=True)
class DetailView:
    head: HeadView
    host_id: str
    agent: tuple[FieldView, ...]
    host_static: tuple[FieldView, ...]
    host_sample: tuple[FieldView, ...]
    cores: tuple[Meter, ...]
    disks: tuple[DiskView, ...]
    driver: tuple[FieldView, ...]
    gpus: tuple[GpuDetailView, ...]
    host_history: SparkView
    history_minutes: int


HistoryPoints = Mapping[str, Sequence[float]]
"""Series key (``cpu``, ``mem``, ``u<i>``, ``m<i>``) → the points to chart, oldest first."""


def detail_view(
    node: Node,
    history: HistoryPoints,
    history_minutes: int,
    silent_s: float,
    max_util_percent: float,
    max_mem_percent: float,
) -> DetailView:
    hello = node.hello
    host: Mapping[str, Any] = node.state.get("host") or {}
    points = max((len(v) for v in history.values()), default=0) or 1
    chart: dict[str, int] = {"points": points, "step": max(1, 720 // points), "height": 48}
    live = node.reporting
    statics = {str(g.get("index")): g for g in (hello.gpus if hello else [])}
    gpus = node.state.get("gpus") or {}
    gpu_views = []
    for index in sorted(gpus.keys() | statics.keys(), key=lambda i: (len(i), i)):
        sample = gpus.get(index) or {}
        static = statics.get(index) or {}
        merged = {**static, **{k: v for k, v in sample.items() if v is not None}}
        state = gpu_view(node.node_id, index, merged, max_util_percent, max_mem_percent, live).state
        processes = sorted(sample.get("processes") or [], key=lambda p: -(p.get("gpu_mem_bytes") or 0))
        gpu_views.append(
            GpuDetailView(
                index=index,
                name=str(merged.get("name") or "GPU"),
                state=state,
                error=sample.get("error"),
                facts=field_views(merged, GpuSample, skip=("index", "name", "processes", "error"))
                + field_views(static, GpuStatic, skip=_GPU_SAMPLE_FIELDS),
                processes=tuple(
                    ProcessView(
                        pid="?" if p.get("pid") is None else str(p["pid"]),
                        user=p.get("user") or "unknown",
                        command=p.get("command") or "unknown",
                        gpu_mem_text=fmt_bytes(p.get("gpu_mem_bytes")),
                        cpu_text=field_text("cpu_percent", p.get("cpu_percent")),
                        host_mem_text=fmt_bytes(p.get("host_mem_bytes")),
                    )
                    for p in processes
                ),
                history=spark_view(
                    f"hist-gpu-{index}",
                    history.get(f"u{index}", ()),
                    history.get(f"m{index}", ()),
                    f"GPU {index}: utilization (solid) and memory in use (dashed)",
                    **chart,
                ),
            )
        )
    disks = tuple(
        DiskView(
            mount=str(d.get("mount") or "?"),
            used_text=fmt_bytes(d.get("used_bytes")),
            total_text=fmt_bytes(d.get("total_bytes")),
            meter=meter(ratio_percent(d.get("used_bytes"), d.get("total_bytes"))),
        )
        for d in host.get("disks") or []
    )
    agent = (
        FieldView("node id", node.node_id),
        FieldView("status", node.status.value),
        FieldView("last seen", fmt_epoch(node.last_seen_wall) if node.last_seen_wall else "never"),
        FieldView("last sample", fmt_epoch(node.state.get("sampled_at"))),
        FieldView("address", node.address or "–"),
        FieldView("agent version", hello.agent_version if hello else "–"),
        FieldView("protocol", str(hello.protocol) if hello else "–"),
        FieldView("sampling interval", f"{node.interval_s:g} s"),
    )
    return DetailView(
        head=head_view(node, silent_s),
        host_id=node.node_id,
        agent=agent,
        host_static=field_views(hello.host if hello else {}, HostStatic),
        host_sample=field_views(host, HostSample, skip=("cpu_percent_per_core", "disks")),
        cores=tuple(meter(p) for p in host.get("cpu_percent_per_core") or []),
        disks=disks,
        driver=field_views(hello.gpu_driver if hello else {}, GpuDriver),
        gpus=tuple(gpu_views),
        host_history=spark_view(
            "hist-host",
            history.get("cpu", ()),
            history.get("mem", ()),
            "CPU (solid) and memory in use (dashed)",
            **chart,
        ),
        history_minutes=history_minutes,
    )
