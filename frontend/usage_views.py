"""View models for the memory's pages: ``/usage`` (the table and its daily bar chart),
``/events``, the node page's stored charts and the header's line about the store.

Pure: the hub passes plain rows (anything with the named attributes); nothing here reads the
store. Numbers become text here, so templates only place values.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from frontend.viewmodels import SparkView, fmt_bytes, spark_view

CHART_WIDTH = 720
CHART_HEIGHT = 120
MAX_BARS = 92
MAX_KEY_CHARS = 80


class UsageRowLike(Protocol):
    key: str
    gpu_seconds: float
    busy_gpu_seconds: float
    idle_held_gpu_seconds: float
    gpu_mem_byte_seconds: float


class EventLike(Protocol):
    at_s: float
    node_id: str
    kind: str
    gpu: str | None
    summary: str


class PointLike(Protocol):
    bucket_start_s: int
    mean: float | None
    max: float | None


def hours_text(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 100:
        return f"{hours:,.0f}"
    if hours >= 1:
        return f"{hours:.1f}"
    return f"{hours:.2f}"


def _short(text: str, limit: int = MAX_KEY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class UsageLine:
    key: str  # shown text ("(none)" for an empty group or job)
    link: str  # this key's detail: /usage?... ; "" where there is none
    held: str
    busy: str
    idle_held: str
    mem_gib_hours: str
    held_share_percent: int  # of the largest row: the width of the row's bar


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    title: str  # "2026-12-01: 12.5 GPU-hours"


@dataclass(frozen=True, slots=True)
class UsageView:
    title: str
    by: str
    lines: list[UsageLine]
    total_held: str
    bars: list[Bar]
    chart_width: int
    chart_height: int
    chart_max: str  # GPU-hours at the top of the chart
    first_day: str
    last_day: str
    csv_query: str
    note: str  # how the range was read (whole hours or whole days)


def usage_view(
    rows: Sequence[UsageRowLike],
    daily: Mapping[float, Mapping[str, float]],
    by: str,
    range_text: str,
    query: Mapping[str, str],
    table: str,
    user: str | None,
) -> UsageView:
    """The ``/usage`` page: ``query`` is the page's own (the CSV link and the user links keep its
    range)."""
    top = max((row.gpu_seconds for row in rows), default=0.0)
    lines = []
    keep = {k: v for k, v in query.items() if k in ("range", "from", "to")}
    for row in rows:
        link = ""
        if by == "user" and user is None:
            link = "usage?" + urlencode({**keep, "user": row.key, "by": "node"})
        lines.append(
            UsageLine(
                key=_short(row.key) or "(none)",
                link=link,
                held=hours_text(row.gpu_seconds),
                busy=hours_text(row.busy_gpu_seconds),
                idle_held=hours_text(row.idle_held_gpu_seconds),
                mem_gib_hours=f"{row.gpu_mem_byte_seconds / 3600 / 1024**3:,.1f}",
                held_share_percent=round(100 * row.gpu_seconds / top) if top > 0 else 0,
            )
        )
    days = sorted(daily)[-MAX_BARS:]
    totals = [sum(daily[day].values()) for day in days]
    peak = max(totals, default=0.0)
    bars = []
    if days:
        slot = CHART_WIDTH // max(len(days), 7)
        for i, (day, total) in enumerate(zip(days, totals, strict=True)):
            height = round((CHART_HEIGHT - 2) * total / peak) if peak > 0 else 0
            bars.append(
                Bar(
                    x=i * slot + 1,
                    y=CHART_HEIGHT - height,
                    width=max(slot - 2, 1),
                    height=height,
                    title=f"{_day(day)}: {hours_text(total)} GPU-hours",
                )
            )
    csv_query = urlencode({**keep, "by": by, "format": "csv", **({"user": user} if user else {})})
    who = f" of {_short(user)}" if user else ""
    return UsageView(
        title=f"GPU-hours{who} by {by}, {range_text}",
        by=by,
        lines=lines,
        total_held=hours_text(sum(row.gpu_seconds for row in rows)),
        bars=bars,
        chart_width=CHART_WIDTH,
        chart_height=CHART_HEIGHT,
        chart_max=hours_text(peak),
        first_day=_day(days[0]) if days else "",
        last_day=_day(days[-1]) if days else "",
        csv_query=csv_query,
        note="whole hours" if table == "usage_hourly" else "whole days (older than the hourly table)",
    )


def _day(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s).strftime("%a %Y-%m-%d")


def when_text(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class EventLine:
    when: str
    node_id: str
    kind: str
    gpu: str
    summary: str


def event_lines(events: Sequence[EventLike]) -> list[EventLine]:
    return [
        EventLine(when_text(e.at_s), e.node_id, e.kind, _short(e.gpu or "", 60), e.summary) for e in events
    ]


# --------------------------------------------------------------------------- stored charts
def _percents(
    points: Sequence[PointLike], total: float | None, start_s: float, step_s: int, count: int
) -> list[float]:
    """Means per ``step_s`` slot from ``start_s`` (NaN where nothing was stored), as percents
    of ``total`` (values already in percent when ``total`` is None)."""
    sums = [0.0] * count
    ns = [0] * count
    for point in points:
        if point.mean is None:
            continue
        slot = int((point.bucket_start_s - start_s) // step_s)
        if 0 <= slot < count:
            value = point.mean if total is None else (100.0 * point.mean / total if total > 0 else math.nan)
            sums[slot] += value
            ns[slot] += 1
    return [s / n if n else math.nan for s, n in zip(sums, ns, strict=True)]


@dataclass(frozen=True, slots=True)
class StoredChart:
    label: str  # "Host, last 24 hours"
    legend: str
    spark: SparkView


def stored_charts(
    node_id: str,
    span_label: str,
    series: Mapping[str, Mapping[str, Sequence[PointLike]]],
    host_mem_total: float | None,
    gpu_mem_totals: Mapping[str, float | None],
    start_s: float,
    step_s: int,
    count: int,
) -> list[StoredChart]:
    """One chart for the host (CPU solid, memory dashed) and one per GPU (utilization solid,
    memory dashed), ``count`` points of ``step_s`` from ``start_s``."""
    charts = []
    key = span_label.split()[-1]
    host = series.get("host", {})
    if host:
        charts.append(
            StoredChart(
                f"Host, {span_label}",
                "CPU (solid) · memory in use (dashed)",
                spark_view(
                    f"stored-{key}-host-{node_id}",
                    _percents(host.get("cpu_percent", ()), None, start_s, step_s, count),
                    _percents(host.get("mem_used_bytes", ()), host_mem_total, start_s, step_s, count),
                    title=f"host, {span_label}",
                    points=count,
                    step=2,
                    height=60,
                ),
            )
        )
    for name in sorted((n for n in series if n.startswith("gpu")), key=lambda n: (len(n), n)):
        gpu = series[name]
        index = name[3:]
        charts.append(
            StoredChart(
                f"GPU {index}, {span_label}",
                "utilization (solid) · memory in use (dashed)",
                spark_view(
                    f"stored-{key}-{name}-{node_id}",
                    _percents(gpu.get("util_gpu_percent", ()), None, start_s, step_s, count),
                    _percents(
                        gpu.get("mem_used_bytes", ()), gpu_mem_totals.get(index), start_s, step_s, count
                    ),
                    title=f"GPU {index}, {span_label}",
                    points=count,
                    step=2,
                    height=60,
                ),
            )
        )
    return charts


# --------------------------------------------------------------------------- header line
def memory_text(size_bytes: int | None, oldest_s: float | None, newest_s: float | None) -> str:
    """ "memory 12.3M · 14 d since 2026-11-23" (or "· 3 h since 06:00", "· 20 min since 09:40")
    for the page header: what the file holds and how far back it remembers."""
    if size_bytes is None:
        return ""
    span = ""
    if oldest_s is not None and newest_s is not None:
        seconds = max(0.0, newest_s - oldest_s)
        oldest = dt.datetime.fromtimestamp(oldest_s)
        if seconds >= 86400:
            span = f" · {seconds / 86400:.0f} d since {oldest.strftime('%Y-%m-%d')}"
        else:
            length = f"{seconds / 3600:.0f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
            span = f" · {length} since {oldest.strftime('%H:%M')}"
    return f"memory {fmt_bytes(size_bytes)}{span}"
