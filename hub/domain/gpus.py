"""What a GPU's state is: free, busy, faulted or not current, and the rules that decide it.

Every place that calls a GPU free (the cards, the summary bar, the detail page, ``/metrics``)
uses :func:`gpu_state` or :func:`gpu_is_free` with one :class:`GpuFreeRule`; per-user totals
come from :func:`user_totals`; the idle-held rule (:class:`IdleRule`) is defined here for the
trackers that apply it over time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class GpuState(StrEnum):
    """A GPU row's state. The value is the CSS class the row carries (``g f``, ``g b``...):
    ``frontend/static/style.css`` and ``app.js`` use these letters and no others."""

    FREE = "f"
    BUSY = "b"
    FAULT = "e"  # the agent reports an error for this GPU
    NOT_CURRENT = "o"  # its node is not reporting: the row shows the last known values


@dataclass(frozen=True, slots=True)
class GpuFreeRule:
    """A GPU counts as free with no processes and utilization and memory under these."""

    max_util_percent: float = 10.0
    max_mem_percent: float = 5.0

    def allows(self, processes: object, util_percent: float | None, mem_percent: float | None) -> bool:
        """The free test on values a caller has already read (a GPU row reads them anyway);
        an unknown (``None``) utilization or memory share does not stand in the way."""
        return (
            not processes
            and (util_percent is None or util_percent <= self.max_util_percent)
            and (mem_percent is None or mem_percent <= self.max_mem_percent)
        )

    def allows_sample(self, sample: Mapping[str, Any]) -> bool:
        """:meth:`allows` on a GPU's (or MIG slice's) sample. Hot (the registry judges each
        changed GPU per sample): a GPU held by processes, most busy ones, is not free whatever
        the rest says, so its memory share is not worked out."""
        processes = sample.get("processes")
        if processes:
            return False
        used, total = sample.get("mem_used_bytes"), sample.get("mem_total_bytes")
        return self.allows(processes, sample.get("util_gpu_percent"), ratio_percent(used, total))


@dataclass(frozen=True, slots=True)
class IdleRule:
    """A GPU is idle-held when processes hold it (memory in use) while its utilization stays at
    or below ``max_util_percent`` for at least ``min_idle_s``. :meth:`idle_now` is the test on
    one sample; a tracker keeps, per GPU, since when it has held, and calls :meth:`held_long`."""

    max_util_percent: float = 5.0
    min_idle_s: float = 1800.0

    def idle_now(self, gpu: Mapping[str, Any]) -> bool:
        """This sample alone: held by processes, and utilization known and at most the limit."""
        if gpu.get("error") or not gpu.get("processes"):
            return False
        util = gpu.get("util_gpu_percent")
        return util is not None and util <= self.max_util_percent

    def held_long(self, idle_since_s: float, now_s: float) -> bool:
        """Idle since ``idle_since_s`` (on the same clock as ``now_s``) for long enough."""
        return now_s - idle_since_s >= self.min_idle_s


def ratio_percent(used: Any, total: Any) -> float | None:
    """``used`` as a percentage of ``total``, clamped to 0..100; ``None`` when unknown."""
    if used is None or not total:
        return None
    try:
        ratio = 100.0 * used / total
    except (TypeError, OverflowError):  # not numbers, or an int too big for a float
        return None
    if ratio != ratio:  # NaN: infinities on both sides
        return None
    return 0.0 if ratio < 0 else 100.0 if ratio > 100 else ratio


def gpu_state(gpu: Mapping[str, Any], rule: GpuFreeRule, node_reporting: bool) -> GpuState:
    """A GPU's state: its error first, then whether its node reports (``Node.reporting``), then
    the free rule."""
    if gpu.get("error"):
        return GpuState.FAULT
    if not node_reporting:
        return GpuState.NOT_CURRENT
    return GpuState.FREE if rule.allows_sample(gpu) else GpuState.BUSY


def gpu_is_free(gpu: Mapping[str, Any], rule: GpuFreeRule, node_reporting: bool = True) -> bool:
    return gpu_state(gpu, rule, node_reporting) is GpuState.FREE


UNKNOWN_USER = "unknown"


def _unknown_user(process: Mapping[str, Any]) -> str:
    return UNKNOWN_USER


def user_totals(
    processes: Iterable[Mapping[str, Any]], unknown: Callable[[Mapping[str, Any]], str] = _unknown_user
) -> dict[str, tuple[int, float | None]]:
    """(process count, summed GPU memory in bytes) per user; the memory is ``None`` when none of
    the user's processes reports it. A process without a user is counted under
    ``unknown(process)`` (:data:`UNKNOWN_USER` by default; the cards name it by its pid). Hot:
    the cards call it per busy GPU row, hence plain tuples."""
    totals: dict[str, tuple[int, float | None]] = {}
    for proc in processes:
        get = proc.get
        user = get("user")
        if not user or user.__class__ is not str:
            user = unknown(proc)
        mem = get("gpu_mem_bytes")
        if not (mem.__class__ is int or (mem.__class__ is float and mem - mem == 0)):  # finite numbers
            mem = None
        seen = totals.get(user)
        if seen is None:  # one dict, no second pass: most GPUs have one process
            totals[user] = (1, mem)
        else:
            count, total = seen
            totals[user] = (count + 1, total if mem is None else mem if total is None else total + mem)
    return totals
