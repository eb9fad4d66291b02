"""The rules of usage accounting and of the hub's memory, in one place: who is charged for a
GPU and how much, how long one sample counts for, and how long the hub keeps what it counted.

- **Held**: a GPU (or one MIG slice of it) with at least one process is held by the users of its
  processes. A GPU shared by several users is split by their share of the memory its listed
  processes hold; when none of them reports memory, equally per process. A MIG slice weighs its
  share of the GPU's memory (``1 / slices`` where sizes are unknown), so the slices of one GPU
  add up to at most one GPU; a GPU in MIG mode is charged through its slices only (NVML lists
  the slices' processes on the GPU too).
- **Busy**: held while the utilization is above :class:`~hub.domain.gpus.IdleRule`'s
  ``max_util_percent``; an unknown utilization is not busy (a MIG slice without its own
  utilization takes its GPU's).
- **Idle-held**: held while the GPU or slice is idle-held (the :class:`IdleHeldChanged` events).
- **Memory byte-seconds**: the bytes each process holds, times the seconds, not split.
- **How long a sample counts**: a new sample covers the time since the node's previous sample,
  as the hub received them (NVML's utilization is a mean over the past interval), but never
  more than the time after which the node is called late (:meth:`Liveness.late_after_s`); the
  rest of a longer gap is not counted, and the gap goes to the event log (``sample_gap``). The
  first sample of a node covers one sampling interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.domain.gpus import UNKNOWN_USER


def _bytes(value: Any) -> float | None:
    """A process's or a slice's memory in bytes, when it is a usable number."""
    if value.__class__ is int or (value.__class__ is float and value - value == 0):
        return float(value) if value >= 0 else None
    return None


def process_user(process: Mapping[str, Any]) -> str:
    user: Any = process.get("user")
    return user if user.__class__ is str and user else UNKNOWN_USER  # (class: cheaper than isinstance)


def process_job(process: Mapping[str, Any]) -> str:
    """What the process runs in, as the usage tables key it: ``slurm:<id>``, ``pod:<ns>/<name>``,
    ``container:<name or id>``, or ``""`` where the agent knows none."""
    # runs for every held GPU of every sample: classes compared rather than isinstance (an int's
    # class is never bool's)
    get = process.get
    job_id: Any = get("slurm_job_id")
    if job_id.__class__ is int:
        return f"slurm:{job_id}"
    pod: Any = get("pod_name")
    if pod.__class__ is str and pod:
        namespace: Any = get("pod_namespace")
        return f"pod:{namespace}/{pod}" if namespace.__class__ is str and namespace else f"pod:{pod}"
    name: Any = get("container_name") or get("container_id")
    if name.__class__ is str and name:
        return f"container:{name[:64]}"
    return ""


def sole_holder(process: Mapping[str, Any]) -> tuple[str, str, float]:
    """(user, job, bytes held) of a GPU's or slice's only process, which holds all of it (the
    case of most held GPUs, which usage accounting counts without building :func:`shares`)."""
    return process_user(process), process_job(process), _bytes(process.get("gpu_mem_bytes")) or 0.0


def shares(processes: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """Per (user, job) on one GPU or slice: (share of it, bytes held). Shares add up to 1 for a
    held GPU; ``{}`` for one with no processes. See the module's docstring for the rule."""
    if len(processes) == 1:  # most GPUs: one process, the whole GPU
        user, job, held_bytes = sole_holder(processes[0])
        return {(user, job): (1.0, held_bytes)}
    held: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = {}
    for process in processes:
        key = (process_user(process), process_job(process))
        counts[key] = counts.get(key, 0) + 1
        mem = _bytes(process.get("gpu_mem_bytes"))
        held[key] = held.get(key, 0.0) + (mem or 0.0)
    total = sum(held.values())
    if total > 0:
        return {key: (mem / total, mem) for key, mem in held.items()}
    procs = sum(counts.values())
    return {key: (count / procs, held[key]) for key, count in counts.items()}


def slice_weights(gpu: Mapping[str, Any], slices: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each MIG slice's part of its GPU: its memory over the GPU's, or ``1 / len(slices)`` when a
    size is unknown; never more than 1 in all."""
    total = _bytes(gpu.get("mem_total_bytes"))
    sizes = [_bytes(s.get("mem_total_bytes")) for s in slices]
    if total and all(sizes):
        weights = [size / total for size in sizes if size is not None]
        whole = sum(weights)
        return [w / whole for w in weights] if whole > 1 else weights
    return [1.0 / len(slices)] * len(slices)


def covered_s(since_previous_s: float | None, interval_s: float, late_after_s: float) -> tuple[float, float]:
    """(seconds a new sample counts for, seconds of a gap left uncounted). ``since_previous_s``
    is ``None`` for a node's first sample (it covers one interval)."""
    if since_previous_s is None:
        return min(interval_s, late_after_s), 0.0
    since = max(0.0, since_previous_s)
    if since <= late_after_s:
        return since, 0.0
    return late_after_s, since - late_after_s


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """How often the hub writes what it counted, and how long it keeps it (``[memory]``)."""

    flush_every_s: float = 60.0  # at most 60: a hub killed with kill -9 loses at most this
    history_1m_keep_h: float = 48.0
    history_15m_keep_d: float = 90.0
    usage_hourly_keep_d: float = 90.0
    usage_daily_keep_d: float = 731.0  # two years: this month against the same month last year
    events_keep_d: float = 90.0
    pending_max_rows: float = 200_000.0  # rows held in memory while the file cannot be written
    # past this, the oldest days of 15-minute history go first, then of hourly usage (0: no
    # limit but retention); 500 nodes of 8 GPUs take about 5.5 GiB at full retention
    max_file_mib: float = 10_240.0

    def problems(self) -> list[str]:
        """What is wrong with these limits, in words naming the key (empty when all is fine)."""
        found = []
        if not 1.0 <= self.flush_every_s <= 60.0:
            found.append(f"flush_every_s: must be 1..60, got {self.flush_every_s:g}")
        for name in (
            "history_1m_keep_h",
            "history_15m_keep_d",
            "usage_hourly_keep_d",
            "usage_daily_keep_d",
            "events_keep_d",
        ):
            if not getattr(self, name) > 0:
                found.append(f"{name}: must be positive")
        if self.history_1m_keep_h < 1.0:
            found.append(
                f"history_1m_keep_h: must be at least 1 (the 15-minute history is made from it), "
                f"got {self.history_1m_keep_h:g}"
            )
        if self.max_file_mib < 0:
            found.append(f"max_file_mib: must be 0 (no limit) or more, got {self.max_file_mib:g}")
        if self.pending_max_rows < 1000:
            found.append(f"pending_max_rows: must be at least 1000, got {self.pending_max_rows:g}")
        return found
