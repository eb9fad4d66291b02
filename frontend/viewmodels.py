"""View models: a node's raw wire state turned into what the page shows (text, percents, levels).

All formatting and units live here, so templates only place values. Card fragments are pushed
every second, so their views hold short, ready-made strings; the detail page's views are
generic (every reported field, formatted by the unit in its name).
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from hub.domain.gpus import GpuFreeRule, GpuState, ratio_percent, user_totals
from hub.domain.health import HEALTHY, Health, Level, gpu_health, xid_words
from hub.domain.nodes import Node, NodeStatus
from node_agent.protocol import (
    GPU_COLLECTOR_DOWN,
    GpuDriver,
    GpuSample,
    GpuStatic,
    HostSample,
    HostStatic,
)

MAX_USERS_SHOWN = 2  # on a card; the detail page lists every process
# The states as module globals: a member lookup on an Enum class costs ~100 ns on Python 3.11,
# and the GPU row and the summary bar test them per GPU.
_FREE, _BUSY, _FAULT, _NOT_CURRENT = GpuState.FREE, GpuState.BUSY, GpuState.FAULT, GpuState.NOT_CURRENT
UNSEEN_HOLDER = "unseen process"  # in a card's user list: GPU memory that no listed process holds
_VENDOR_PREFIXES = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")


# --------------------------------------------------------------------------- formatting
# One formatter per quantity, used by the cards and the detail page alike, so a value reads
# the same everywhere. Each takes any value a field can hold and never raises: ``None`` (not
# supported, unknown) is a dash, and so is anything that is no finite number (the protocol
# refuses those, but a page must never fail on one).
DASH = "–"
_FLOAT_MAX = 1.7976931348623157e308


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or ``None``: null, NaN, infinite, too big for a float, a
    bool or a string."""
    if isinstance(value, float):
        return value + 0.0 if value - value == 0.0 else None  # NaN and infinities give NaN; -0.0 is 0
    if isinstance(value, int) and value.__class__ is not bool:
        return float(value) if -_FLOAT_MAX <= value <= _FLOAT_MAX else None
    return None


_INT_AS_FLOAT = 2**63  # an int below this divides as a float without overflow
_KI, _MI, _GI, _TI, _PI, _EI = (1024.0**power for power in range(1, 7))


def _bytes_parts(value: float) -> tuple[str, str]:
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
    elif size < 1000 * _TI:
        scaled, unit = value / _TI, "T"
    elif size < 1000 * _PI:
        scaled, unit = value / _PI, "P"
    else:
        scaled, unit = value / _EI, "E"
    return (f"{scaled:.1f}" if -9.95 < scaled < 9.95 else f"{scaled:.0f}"), unit


def fmt_bytes(value: object) -> str:
    """Binary units in at most four characters: ``4.5G``, ``45G``, ``812M``, ``1.2T``."""
    if value.__class__ is int and 0 <= value < _INT_AS_FLOAT:  # the usual wire bytes and rates
        digits, unit = _bytes_parts(value)
        return digits + unit
    if value.__class__ is float and value - value == 0.0:
        digits, unit = _bytes_parts(value + 0.0)
        return digits + unit
    number = _finite(value)
    if number is None:
        return DASH
    digits, unit = _bytes_parts(number)
    return digits + unit


def _bytes_parts_or_none(value: object) -> tuple[str, str] | None:
    number = _finite(value)
    return None if number is None else _bytes_parts(number)


# totals (a GPU's or a host's memory) take a handful of values: format each once
_total_parts = functools.lru_cache(maxsize=1024)(_bytes_parts_or_none)


def fmt_used_of(used: object, total: object) -> str:
    """Bytes in use of a total: the two :func:`fmt_bytes` texts, the unit once when they share
    it (``45/80G``, ``812M/80G``; a dash for unknown); built from their parts (one per GPU row per sample)."""
    total_parts = _total_parts(total) if total.__class__ is int else _bytes_parts_or_none(total)
    if total_parts is None:
        return fmt_bytes(used)
    # the usual used bytes, a wire int, go straight to their parts
    used_parts = (
        _bytes_parts(used)
        if used.__class__ is int and 0 <= used < _INT_AS_FLOAT
        else _bytes_parts_or_none(used)
    )
    if used_parts is None:
        return f"{DASH}/{total_parts[0]}{total_parts[1]}"
    if used_parts[1] == total_parts[1]:
        return f"{used_parts[0]}/{total_parts[0]}{total_parts[1]}"
    return f"{used_parts[0]}{used_parts[1]}/{total_parts[0]}{total_parts[1]}"


# a GPU's memory in use changes now and then, not every sample (a host's, every sample, is not
# cached): each (used, total) of wire ints is formatted once
_gpu_ints_used_of = functools.lru_cache(maxsize=4096)(fmt_used_of)


def _gpu_used_of(used: object, total: object) -> str:
    """:func:`fmt_used_of` for a GPU row."""
    if used.__class__ is int and total.__class__ is int:
        return _gpu_ints_used_of(used, total)
    return fmt_used_of(used, total)


def fmt_rate(bytes_per_s: object) -> str:
    """``1.5M/s``."""
    text = fmt_bytes(bytes_per_s)
    return text if text == DASH else text + "/s"


def fmt_percent(value: object) -> str:
    """``42%``."""
    if value.__class__ is float and value - value == 0.0:  # the usual finite float, as _finite has it
        return f"{value + 0.0:.0f}%"
    number = _finite(value)
    return DASH if number is None else f"{number:.0f}%"


def fmt_celsius(value: object) -> str:
    """``71°``."""
    number = _finite(value)
    return DASH if number is None else f"{number:.0f}°"


def fmt_watts(value: object) -> str:
    """``612W``."""
    number = _finite(value)
    return DASH if number is None else f"{number:.0f}W"


def fmt_power_of(draw: object, limit: object) -> str:
    """Power draw of a limit: the two :func:`fmt_watts` texts, the unit once (``612/700W``, a
    dash for an unknown draw); built directly (one per GPU row per sample)."""
    if draw.__class__ is float and limit.__class__ is float and draw - draw == limit - limit == 0.0:
        return f"{draw + 0.0:.0f}/{limit + 0.0:.0f}W"  # the usual two finite floats; + 0.0: no "-0"
    limit_w = _finite(limit)
    if limit_w is None:
        return fmt_watts(draw)
    draw_w = _finite(draw)
    return f"{DASH if draw_w is None else f'{draw_w:.0f}'}/{limit_w:.0f}W"


def fmt_mhz(value: object) -> str:
    """``1980 MHz``."""
    number = _finite(value)
    return DASH if number is None else f"{number:.0f} MHz"


def fmt_load(value: object) -> str:
    """A load average: ``12.34``."""
    if value.__class__ is float and value - value == 0.0:  # the usual finite float, as _finite has it
        return f"{value + 0.0:.2f}"
    number = _finite(value)
    return DASH if number is None else f"{number:.2f}"


def fmt_pstate(value: object) -> str:
    """``P2``."""
    number = _finite(value)
    return DASH if number is None else f"P{number:.0f}"


def fmt_count(value: object) -> str:
    """Cores, users, errors, indexes: ``64``, ``1.5e+20``."""
    if value.__class__ is int and -(2**63) <= value < 2**64:
        return str(value)
    number = _finite(value)
    return DASH if number is None else f"{number:g}"


def fmt_duration(seconds: object) -> str:
    """``45s``, ``12m``, ``3h 05m``, ``12d 4h``."""
    number = _finite(seconds)
    if number is None:
        return DASH
    s = int(max(number, 0))
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


CLOCK_OFF_SHOWN_S = 30.0  # an agent clock further off than this is named on the node page


def fmt_clock_offset(ahead_s: float) -> str:
    """The agent's clock against the hub's: ``in step``, ``2 h 00 min ahead``, ``3 min behind``."""
    if abs(ahead_s) <= CLOCK_OFF_SHOWN_S:
        return "in step with the hub"
    return f"{fmt_ago(abs(ahead_s))} {'ahead of' if ahead_s > 0 else 'behind'} the hub"


def fmt_epoch(epoch_s: object) -> str:
    """``2026-12-07 06:01:07 UTC``; a time the calendar cannot show is given in seconds."""
    number = _finite(epoch_s)
    if number is None:
        return DASH
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(number))
    except (OverflowError, OSError, ValueError):  # beyond the C library's years
        return f"{number:.0f} s after 1970"


def level(percent: float | None, warn: float = 70.0, crit: float = 90.0) -> str:
    """CSS classes to append: ``""`` (fine), ``" w"`` (warn), ``" c"`` (critical) or ``" na"``
    (unknown)."""
    if percent is None:
        return " na"
    return " c" if percent >= crit else " w" if percent >= warn else ""


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
    if percent is None or percent != percent:  # unknown, or NaN (the protocol refuses it)
        return Meter(DASH if text is None else text, 0, " na")
    p = 0 if percent < 0 else 100 if percent > 100 else round(percent)
    cls = " c" if percent >= 90 else " w" if percent >= 70 else ""
    return Meter(fmt_percent(percent) if text is None else text, p, cls)


def plain_meter(percent: float | None, text: str | None = None) -> Meter:
    """A meter without warning levels: for GPUs, where 100% utilization is the point."""
    if text is None and percent.__class__ is float and percent.is_integer():
        return _whole_percent_meter(percent)  # NVML reports whole percents: each made once
    return _plain_meter(percent, text)


def _plain_meter(percent: float | None, text: str | None = None) -> Meter:
    if percent is None or percent != percent:
        return Meter(DASH if text is None else text, 0, " na")
    p = 0 if percent < 0 else 100 if percent > 100 else round(percent)
    return Meter(fmt_percent(percent) if text is None else text, p, "")


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
    cpu = _finite(get("cpu_percent"))
    return HostView(
        node_id=node.node_id,
        cpu=meter(cpu, f"CPU {fmt_percent(cpu)}"),
        mem=meter(ratio_percent(mem_used, mem_total), f"MEM {fmt_used_of(mem_used, mem_total)}"),
        disk=meter(fullest_pct, f"DSK {fmt_percent(fullest_pct)}"),
        net_text=f"↓{fmt_rate(get('net_rx_bytes_per_s'))} ↑{fmt_rate(get('net_tx_bytes_per_s'))}",
        load_text=f"{fmt_load(get('load_avg_1m'))} {fmt_load(get('load_avg_5m'))} {fmt_load(get('load_avg_15m'))}",
        uptime_text=fmt_duration(get("uptime_s")),
        late_text=None if sample_late_s is None else f"⚠ no new sample for {round(sample_late_s)} s",
    )


class GpuView(NamedTuple):
    node_id: str
    gpu_index: str  # not `index`: a NamedTuple has an index() method
    name: str  # tiny: what fits the row
    state: GpuState
    error: str | None
    util: Meter
    mem: Meter
    temp_text: str
    temp_cls: str
    power_text: str
    users: tuple[str, ...]  # "alice 12G", most GPU memory first
    more_users: int
    health: Level = Level.OK  # hub.domain.health: ok, warning, fault
    health_words: str = ""  # the worst finding: "Xid 79: fell off the bus: drain the node"
    # idle-held (hub.domain.idle): since when (epoch s, the earliest of the GPU and its MIG
    # slices), "idle 47 min" as of rendering (app.js counts on), and how many are (GPU, slices)
    idle_since_epoch_s: float | None = None
    idle_text: str = ""
    idle_held: int = 0


def _by_pid(process: Mapping[str, Any]) -> str:
    pid = process.get("pid")
    return "unknown" if pid is None else f"pid {pid}"


def _user_of(process: Mapping[str, Any]) -> str:
    """The name :func:`user_totals` counts a process under (an unknown user by its pid)."""
    user = process.get("user")
    return user if user and user.__class__ is str else _by_pid(process)


def process_holder(proc: Mapping[str, Any], *, short: bool = False) -> str | None:
    """What a GPU process runs in (``None``: bare, or not known): ``job 81234`` (``job 81234
    (train) step 0`` unless ``short``: with its name where scontrol gave it), ``pod
    research/bert``, ``docker alice-llama``, or the first 12 digits of a container id when its
    name isn't known."""
    get = proc.get
    job = get("slurm_job_id")
    if job is not None:
        if short:
            return f"job {job}"
        name, step = get("slurm_job_name"), get("slurm_step")
        return f"job {job}" + (f" ({name})" if name else "") + (f" step {step}" if step else "")
    pod = get("pod_name")
    if pod:
        namespace = get("pod_namespace")
        return f"pod {pod}" if short or not namespace else f"pod {namespace}/{pod}"
    container = get("container_name") or (str(get("container_id") or "")[:12] or None)
    if container is None:
        uid = get("pod_uid")
        return f"pod {str(uid)[:8]}" if uid else None
    return container if short else f"{get('container_runtime') or 'container'} {container}"


def gpu_users(processes: Iterable[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """(user, GPU memory in bytes) per user, most memory first; unknown users by pid. A user
    whose processes all run in one job or container is named with it: ``alice (job 81234)``."""
    processes = processes if isinstance(processes, list) else list(processes)  # read twice
    if len(processes) == 1:  # most busy GPUs: one process, one user (a row per GPU per sample)
        ((user, (_, mem)),) = user_totals(processes, _by_pid).items()
        holder = process_holder(processes[0], short=True)
        return [(f"{user} ({holder})" if holder else user, mem or 0)]
    holders: dict[str, str | None] = {}  # the user's one job or container; None: none, or several
    for proc in processes:
        user, holder = _user_of(proc), process_holder(proc, short=True)
        holders[user] = holder if holders.get(user, holder) == holder else None
    ranked = [(user, mem or 0) for user, (_, mem) in user_totals(processes, _by_pid).items()]
    if len(ranked) > 1:
        ranked.sort(key=lambda item: (-item[1], item[0]))
    return [(f"{user} ({holders[user]})" if holders[user] else user, mem) for user, mem in ranked]


def fmt_age(started_epoch_s: object, now_epoch_s: object) -> str:
    """How long a process has run: ``3 d 4 h``, ``2 h 05 min``, ``12 s``; a dash when unknown."""
    started, now = _finite(started_epoch_s), _finite(now_epoch_s)
    if started is None or now is None:
        return DASH
    s = int(max(now - started, 0))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    return fmt_ago(s)


def gpu_view(
    node_id: str,
    index: str,
    gpu: Mapping[str, Any],
    rule: GpuFreeRule,
    node_live: bool = True,
    health: Health = HEALTHY,
    now_epoch_s: float | None = None,
    idle: tuple[float, int] | None = None,
) -> GpuView:
    """One GPU row. Hot: the hub builds one per changed GPU per sample. ``health`` is the GPU's
    verdict as the registry keeps it (``Node.gpu_health``): judged when its fields change, not
    per row. ``idle``: (idle-held since, how many of the GPU and its slices are), from the
    idle-holder events; ``now_epoch_s`` (default: now) says how long it has been idle."""
    get = gpu.get
    error = get("error")
    util = get("util_gpu_percent")
    mem_used, mem_total = get("mem_used_bytes"), get("mem_total_bytes")
    mem_pct = ratio_percent(mem_used, mem_total)
    processes = get("processes")
    # hub.domain.gpus.gpu_state, on the values this row reads anyway
    if error:
        state = _FAULT
    elif not node_live:
        state = _NOT_CURRENT
    elif rule.allows(processes, util, mem_pct):
        state = _FREE
    else:
        state = _BUSY
    ranked = gpu_users(processes) if processes else []
    unseen = get("unseen_mem_bytes")
    # memory no listed process holds (the agent's rule), named on a GPU the free rule calls busy:
    # under the free thresholds it is the lab's idea of free, and the row says only that
    if unseen and unseen.__class__ is int and state is not _FREE:
        ranked = sorted([*ranked, (UNSEEN_HOLDER, unseen)], key=lambda item: -item[1])
    temp = get("temp_celsius")
    # positional: a NamedTuple built by keyword costs a third more, and this runs per GPU row
    return GpuView(
        node_id,
        index,
        tiny_gpu_name(get("name")),
        state,
        error,
        plain_meter(util),
        plain_meter(mem_pct, _gpu_used_of(mem_used, mem_total)),
        *_temp_texts(temp),  # temp_text, temp_cls
        fmt_power_of(get("power_draw_watts"), get("power_limit_watts")),
        tuple([_user_text(user, mem) for user, mem in ranked[:MAX_USERS_SHOWN]]),
        len(ranked) - MAX_USERS_SHOWN if len(ranked) > MAX_USERS_SHOWN else 0,  # more_users
        health.level,
        health.words,
        *(_NOT_IDLE if idle is None else _idle_texts(idle, now_epoch_s)),
    )


_NOT_IDLE = (None, "", 0)


def _idle_texts(idle: tuple[float, int], now_epoch_s: float | None) -> tuple[float, str, int]:
    since, count = idle
    now = time.time() if now_epoch_s is None else now_epoch_s
    return since, f"idle {fmt_ago(now - since)}", count


@functools.lru_cache(maxsize=4096)
def _user_text(user: str, mem: float) -> str:
    """``alice 12G``: a user and the GPU memory they hold, which changes now and then, not every
    sample (made once per pair)."""
    return f"{user} {fmt_bytes(mem)}" if mem else user


@functools.lru_cache(maxsize=512)
def _temp_texts(temp: float | None) -> tuple[str, str]:
    """(text, level class) of a GPU temperature; temperatures repeat, so each is made once."""
    if temp is None:
        return DASH, ""
    return fmt_celsius(temp), "" if temp < 80 else "c" if temp >= 88 else "w"


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
            f"{fmt_count(cores)} cores" if cores else None,
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
    gpus_offline: int  # on offline nodes, counted in no other field
    models: tuple[ModelCount, ...]
    gpu_mem_used_text: str
    gpu_mem_total_text: str
    gpu_mem_p: int
    gpu_collectors_down: int = 0  # nodes not offline whose GPUs can't be read
    gpus_warning: int = 0  # GPUs whose health is a warning (hub/domain/health.py)
    gpus_health_fault: int = 0  # GPUs whose health is a fault (a lost GPU is gpus_error)
    slices: tuple[ModelCount, ...] = ()  # MIG slices free / total by profile
    gpus_idle_held: int = 0  # GPUs and MIG slices idle-held (hub.domain.idle); never free
    alerts_firing: int = 0  # hub.alerts: how many alerts fire
    alerts: tuple[AlertBadge, ...] = ()  # the worst few, the worst first
    free_json: str = "{}"  # free GPUs per group and model, for the page's own notifications
    # while the hub cannot keep up with its agents (hub.fanout sheds): cards are updated at most
    # this often; 0: as the samples come
    cards_every_s: float = 0.0


class AlertBadge(NamedTuple):
    """A firing alert in the top bar's strip."""

    severity: str  # critical, warning, info (the CSS class)
    text: str


class GpuTally(NamedTuple):
    """What one GPU adds to the summary bar. The hub keeps one per GPU row and refreshes it
    whenever it renders the row, so the summary never walks every GPU's raw state."""

    model: str
    state: GpuState
    mem_used_bytes: int
    mem_total_bytes: int
    health: Level = Level.OK  # as in GpuView
    slices: tuple[tuple[str, bool], ...] = ()  # MIG slices: (profile, free)
    idle_held: int = 0  # as in GpuView: the GPU and its slices that are idle-held


def slice_states(gpu: Mapping[str, Any], rule: GpuFreeRule) -> tuple[tuple[str, bool], ...]:
    """(profile, free by the GPU free rule) of each MIG slice, as :func:`slice_views` judges
    them, without the words: what a card's tally needs, per rendered GPU row."""
    return tuple(
        [(str(mig.get("profile") or "?"), rule.allows_sample(mig)) for mig in gpu.get("mig_slices") or ()]
    )


def gpu_tally(
    gpu: Mapping[str, Any],
    state: GpuState,
    health: Level = Level.OK,
    slices: Iterable[tuple[str, bool]] = (),
    idle_held: int = 0,
) -> GpuTally:
    """``slices``: :func:`slice_states`."""
    get = gpu.get  # positional below: one per rendered GPU row
    return GpuTally(
        short_gpu_name(get("name")),
        state,
        get("mem_used_bytes") or 0,
        get("mem_total_bytes") or 0,
        health,
        _tallied_slices(slices, state) if slices else (),
        idle_held,
    )


def _tallied_slices(slices: Iterable[tuple[str, bool]], state: GpuState) -> tuple[tuple[str, bool], ...]:
    """The slices as the tally keeps them: none free on a GPU whose row is not current."""
    if state is _NOT_CURRENT:
        return tuple([(profile, False) for profile, _ in slices])
    return tuple(slices)  # slice_states' tuple itself, no copy (a MIG row per sample)


class NodeTally(NamedTuple):
    """What one node's GPUs add to the summary bar: its :class:`GpuTally` values summed once
    (:func:`node_tally`), so that the bar, made once a second per filter, adds a few numbers per
    node instead of walking every GPU. The hub keeps one per node until a tally of it changes."""

    gpus: int
    models: tuple[tuple[str, int, int], ...]  # (model, free, total), in the order first seen
    mem_used_bytes: int
    mem_total_bytes: int
    errors: int  # GPUs whose row is an error (lost, unreadable)
    warnings: int  # GPUs whose health is a warning
    health_faults: int  # GPUs whose health is a fault
    idle_held: int  # GPUs and MIG slices idle-held
    slices: tuple[tuple[str, int, int], ...] = ()  # MIG (profile, free, total)


def node_tally(tallies: Iterable[GpuTally]) -> NodeTally:
    """The sums of one node's GPU tallies (a free GPU counts only in a live row's state)."""
    models: dict[str, list[int]] = {}
    slices: dict[str, list[int]] = {}
    gpus = mem_used = mem_total = errors = warnings = health_faults = idle_held = 0
    for tally in tallies:
        gpus += 1
        counts = models.get(tally.model)
        if counts is None:
            counts = models[tally.model] = [0, 0]
        counts[1] += 1
        mem_used += tally.mem_used_bytes
        mem_total += tally.mem_total_bytes
        if tally.state is _FAULT:
            errors += 1
        elif tally.state is _FREE:
            counts[0] += 1
        warnings += tally.health is Level.WARNING
        health_faults += tally.health is Level.FAULT
        idle_held += tally.idle_held
        for profile, free in tally.slices:
            slice_counts = slices.get(profile)
            if slice_counts is None:
                slice_counts = slices[profile] = [0, 0]
            slice_counts[0] += free
            slice_counts[1] += 1
    return NodeTally(
        gpus,
        tuple([(model, free, total) for model, (free, total) in models.items()]),
        mem_used,
        mem_total,
        errors,
        warnings,
        health_faults,
        idle_held,
        tuple([(profile, free, total) for profile, (free, total) in slices.items()]),
    )


def summary_view(
    nodes: Iterable[tuple[NodeStatus, NodeTally] | tuple[NodeStatus, NodeTally, str | None]],
    gpu_collectors_down: int = 0,
    alerts_firing: int = 0,
    alerts: tuple[AlertBadge, ...] = (),
    cards_every_s: float = 0.0,
) -> SummaryView:
    """Counts over (node status, its GPUs' :func:`node_tally`[, its group]): GPUs of offline
    nodes are left out; a GPU is free only on a reporting node (its row's state says so).
    ``gpu_collectors_down`` and the alerts are passed through (the nodes
    :func:`gpu_collector_down` names; the hub's firing alerts). With groups given, ``free_json``
    counts free GPUs per group and model (``""``: no group) for the page's "notify me when N are
    free" (app.js)."""
    status_counts: Counter[NodeStatus] = Counter()
    free_by_model: Counter[str] = Counter()
    total_by_model: Counter[str] = Counter()
    errors = warnings = health_faults = idle_held = 0
    free_slices: Counter[str] = Counter()
    total_slices: Counter[str] = Counter()
    offline_gpus = 0
    mem_used = 0
    mem_total = 0
    free_by_group: Counter[tuple[str, str]] = Counter()
    offline = NodeStatus.OFFLINE
    for status, tally, *group in nodes:
        status_counts[status] += 1
        if status is offline:
            offline_gpus += tally.gpus
            continue
        if not tally.gpus:
            continue
        for model, free, total in tally.models:
            total_by_model[model] += total
            if free:
                free_by_model[model] += free
                if group:
                    free_by_group[(group[0] or "", model)] += free
        mem_used += tally.mem_used_bytes
        mem_total += tally.mem_total_bytes
        errors += tally.errors
        warnings += tally.warnings
        health_faults += tally.health_faults
        idle_held += tally.idle_held
        for profile, free, total in tally.slices:
            total_slices[profile] += total
            free_slices[profile] += free
    return SummaryView(
        live=status_counts[NodeStatus.LIVE],
        stale=status_counts[NodeStatus.STALE],
        offline=status_counts[NodeStatus.OFFLINE],
        gpus_free=sum(free_by_model.values()),
        gpus_total=sum(total_by_model.values()),
        gpus_error=errors,
        gpus_offline=offline_gpus,
        models=tuple(
            ModelCount(model, free_by_model[model], total)
            for model, total in sorted(total_by_model.items(), key=lambda item: (-item[1], item[0]))
        ),
        gpu_mem_used_text=fmt_bytes(mem_used),
        gpu_mem_total_text=fmt_bytes(mem_total),
        gpu_mem_p=round(ratio_percent(mem_used, mem_total) or 0),
        gpu_collectors_down=gpu_collectors_down,
        cards_every_s=cards_every_s,
        gpus_warning=warnings,
        gpus_health_fault=health_faults,
        slices=tuple(
            ModelCount(profile, free_slices[profile], total)
            for profile, total in sorted(total_slices.items())
        ),
        gpus_idle_held=idle_held,
        alerts_firing=alerts_firing,
        alerts=alerts,
        free_json=_free_json(free_by_group),
    )


def _free_json(free_by_group: Counter[tuple[str, str]]) -> str:
    by_group: dict[str, dict[str, int]] = {}
    for (group, model), count in sorted(free_by_group.items()):
        by_group.setdefault(group, {})[model] = count
    return json.dumps(by_group, separators=(",", ":"))


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
    "unseen_mem_bytes": "memory held by unseen processes",
    "pstate": "performance state",
    "mig_mode": "MIG mode",
    "mig_profiles": "MIG profiles offered",
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


_FORMATTERS = (  # by the unit at the end of a field's name; the first that matches
    ("_bytes_per_s", fmt_rate),
    ("_bytes", fmt_bytes),
    ("_percent", fmt_percent),
    ("_celsius", fmt_celsius),
    ("_watts", fmt_watts),
    ("_mhz", fmt_mhz),
    ("_epoch_s", fmt_epoch),
    ("_s", fmt_duration),
)
_FORMATTERS_BY_NAME = {
    "pstate": fmt_pstate,
    "load_avg_1m": fmt_load,
    "load_avg_5m": fmt_load,
    "load_avg_15m": fmt_load,
}


def field_text(name: str, value: Any) -> str:
    """A value formatted by the unit in its field's name (``null``, not supported, is a dash):
    the same formatter as the card's for the same quantity."""
    if value is None:
        return DASH
    if isinstance(value, list):
        return ", ".join(field_text(name, v) for v in value) if value else "none"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    named = _FORMATTERS_BY_NAME.get(name)
    if named is not None:
        return named(value)
    for suffix, formatter in _FORMATTERS:
        if name.endswith(suffix):
            return formatter(value)
    return fmt_count(value)


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
    holder: str  # its job, pod or container (a dash: none known)
    age_text: str  # since it started, by the agent's clock ("3 d 4 h")
    started_text: str  # when it started


GPU_STATE_TEXT = {
    GpuState.FREE: "✓ free",
    GpuState.BUSY: "● busy",
    GpuState.FAULT: "✖ error",
    GpuState.NOT_CURRENT: "○ node not live",
}


@dataclass(frozen=True, slots=True)
class GpuDetailView:
    index: str
    name: str
    state: GpuState
    state_text: str
    error: str | None
    facts: tuple[FieldView, ...]
    processes: tuple[ProcessView, ...]
    history: SparkView
    health: Level = Level.OK
    findings: tuple[str, ...] = ()  # every finding's words, the worst first
    xids: tuple[XidView, ...] = ()  # the Xid events the agent sent, newest first
    xid_count_text: str = ""  # "3 since the agent started" (null: events unsupported)
    slices: tuple[SliceView, ...] = ()  # MIG instances


@dataclass(frozen=True, slots=True)
class XidView:
    when: str
    words: str
    where: str  # the MIG slice's uuid, or "whole GPU"


@dataclass(frozen=True, slots=True)
class SliceView:
    uuid: str
    profile: str
    instance: str  # "GI 1 / CI 0"
    state: GpuState  # free or busy, by the GPU free rule
    mem_text: str
    util_text: str
    processes: tuple[ProcessView, ...]


def _process_views(
    processes: Iterable[Mapping[str, Any]], now_epoch_s: object = None
) -> tuple[ProcessView, ...]:
    """Most GPU memory first; ``now_epoch_s`` (the sample's time, by the agent's clock) gives
    their ages (a dash without it)."""
    ranked = sorted(processes, key=lambda p: -(p.get("gpu_mem_bytes") or 0))
    return tuple(
        ProcessView(
            pid="?" if p.get("pid") is None else str(p["pid"]),
            user=p.get("user") or "unknown",
            command=p.get("command") or "unknown",
            gpu_mem_text=fmt_bytes(p.get("gpu_mem_bytes")),
            cpu_text=fmt_percent(p.get("cpu_percent")),
            host_mem_text=fmt_bytes(p.get("host_mem_bytes")),
            holder=process_holder(p) or DASH,
            age_text=fmt_age(p.get("started_epoch_s"), now_epoch_s),
            started_text=fmt_epoch(p.get("started_epoch_s")),
        )
        for p in ranked
    )


def slice_views(
    gpu: Mapping[str, Any], rule: GpuFreeRule, now_epoch_s: object = None
) -> tuple[SliceView, ...]:
    """A GPU's MIG slices, each free or busy by the GPU free rule (``now_epoch_s``: as
    :func:`_process_views`)."""
    out = []
    for mig in gpu.get("mig_slices") or ():
        used, total = mig.get("mem_used_bytes"), mig.get("mem_total_bytes")
        free = rule.allows_sample(mig)
        out.append(
            SliceView(
                uuid=str(mig.get("uuid") or "?"),
                profile=str(mig.get("profile") or "?"),
                instance=f"GI {_or_dash(mig.get('gpu_instance_id'))} / CI {_or_dash(mig.get('compute_instance_id'))}",
                state=_FREE if free else _BUSY,
                mem_text=fmt_used_of(used, total),
                util_text=fmt_percent(mig.get("util_gpu_percent")),
                processes=_process_views(mig.get("processes") or (), now_epoch_s),
            )
        )
    return tuple(out)


def _or_dash(value: object) -> str:
    return DASH if value is None else str(value)


def xid_views(gpu: Mapping[str, Any]) -> tuple[XidView, ...]:
    return tuple(
        XidView(
            when=fmt_epoch(event.get("epoch_s")),
            words=xid_words(int(event["code"])) if event.get("code") is not None else "Xid ?",
            where=str(
                event.get("mig_uuid")
                or (
                    f"GPU instance {event['gpu_instance_id']}"
                    if event.get("gpu_instance_id") is not None
                    else "whole GPU"
                )
            ),
        )
        for event in reversed(gpu.get("xid_events") or ())
    )


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
    history_text: str  # how far back the charts reach ("2 min" ago), or "no history yet"


HistoryPoints = Mapping[str, Sequence[float]]
"""Series key (``cpu``, ``mem``, ``u<i>``, ``m<i>``) → the points to chart, oldest first."""


def detail_view(
    node: Node,
    history: HistoryPoints,
    bucket_s: float,
    silent_s: float,
    rule: GpuFreeRule,
) -> DetailView:
    hello = node.hello
    host: Mapping[str, Any] = node.state.get("host") or {}
    held = max((len(v) for v in history.values()), default=0)  # buckets of bucket_s each
    points = held or 1
    chart: dict[str, int] = {"points": points, "step": max(1, 720 // points), "height": 48}
    live = node.reporting
    # a GPU's facts without an index (the protocol lets it be null) belong to no GPU row
    statics = {str(g["index"]): g for g in (hello.gpus if hello else []) if g.get("index") is not None}
    gpus = node.state.get("gpus") or {}
    sampled_at = node.state.get("sampled_at")  # processes' ages by the agent's clock
    gpu_views = []
    for index in sorted(gpus.keys() | statics.keys(), key=lambda i: (len(i), i)):
        sample = gpus.get(index) or {}
        static = statics.get(index) or {}
        merged = {**static, **{k: v for k, v in sample.items() if v is not None}}
        state = gpu_view(node.node_id, index, merged, rule, live).state
        health = gpu_health(sample, static, time.time())
        xid_count = sample.get("xid_count")
        gpu_views.append(
            GpuDetailView(
                index=index,
                name=str(merged.get("name") or "GPU"),
                state=state,
                state_text=GPU_STATE_TEXT[state],
                error=sample.get("error"),
                facts=field_views(merged, GpuSample, skip=("index", "name", "processes", "error"))
                + field_views(static, GpuStatic, skip=_GPU_SAMPLE_FIELDS),
                processes=_process_views(sample.get("processes") or (), sampled_at),
                history=spark_view(
                    f"hist-gpu-{index}",
                    history.get(f"u{index}", ()),
                    history.get(f"m{index}", ()),
                    f"GPU {index}: utilization (solid) and memory in use (dashed)",
                    **chart,
                ),
                health=health.level,
                findings=tuple(f.words for f in health.findings),
                xids=xid_views(sample),
                xid_count_text="events not supported"
                if xid_count is None
                else f"{xid_count} since the agent started",
                slices=slice_views(sample, rule, sampled_at),
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
        FieldView("agent clock", fmt_clock_offset(node.clock_ahead_s)),
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
        history_text=f"−{fmt_ago(held * bucket_s)}" if held else "no history yet",
    )
