"""A short in-memory history per node, for sparklines: bucket means in fixed-size rings.

Each node has a few series (``cpu``, ``mem``, and ``u<i>``/``m<i>`` for GPU ``i``'s utilization
and memory in use, all percents). A sample adds its values to the current bucket (``bucket_s``
of the sample's own clock); when a sample lands in a later bucket, the current one is closed
into each series' ring as its mean, and skipped buckets become gaps (NaN). Recording a sample
costs a few float additions; the rings hold ``capacity`` bytes per series (half-percent steps).

Cards show the last ``CARD_POINTS`` groups of ``CARD_GROUP`` buckets (10 minutes by default),
so a card's sparklines change only when a group closes. Group edges are shifted per node (by a
hash of its id), so the sparkline pushes of many nodes spread out instead of arriving together.
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BUCKET_S = 5.0
CARD_GROUP = 4  # buckets per card point: 20 s
CARD_POINTS = 30  # card points: 10 minutes
NAN = float("nan")
_GAP = 255  # a ring byte that holds no value (percents are stored x2: 0..200)


class Ring:
    """The newest ``capacity`` percents, in half-percent steps of one byte each (a 10-minute
    card costs 2,000 nodes x 18 series x 180 buckets = 6.5 MB as bytes, 26 MB as float32);
    older values are overwritten and gaps read back as NaN."""

    __slots__ = ("_head", "_size", "_values")

    def __init__(self, capacity: int) -> None:
        self._values = array("B", [_GAP]) * capacity
        self._head = 0  # where the next value goes
        self._size = 0

    def append(self, value: float) -> None:
        stored = _GAP if value != value else int(min(max(value, 0.0), 100.0) * 2 + 0.5)
        self._values[self._head] = stored
        self._head = (self._head + 1) % len(self._values)
        self._size = min(self._size + 1, len(self._values))

    def fill(self, value: float, count: int) -> None:
        for _ in range(min(count, len(self._values))):
            self.append(value)

    def last(self, count: int) -> list[float]:
        """The newest ``count`` values, oldest first (fewer when fewer were appended)."""
        count = min(count, self._size)
        capacity = len(self._values)
        start = (self._head - count) % capacity
        if start + count <= capacity:
            raw = self._values[start : start + count]
        else:
            raw = self._values[start:] + self._values[: self._head]
        return [NAN if v == _GAP else v / 2 for v in raw]

    def __len__(self) -> int:
        return self._size


def _mean(values: Iterable[float]) -> float:
    total = 0.0
    count = 0
    for value in values:
        if value == value:  # not NaN
            total += value
            count += 1
    return total / count if count else NAN


@dataclass(slots=True)
class _Open:
    """The bucket being filled: per series, a sum and a count."""

    sums: dict[str, float]
    counts: dict[str, int]


class NodeHistory:
    """One node's series. ``record`` returns whether the card's sparklines changed."""

    def __init__(self, node_id: str, capacity: int, bucket_s: float = BUCKET_S) -> None:
        self._capacity = capacity
        self._bucket_s = bucket_s
        # shifts bucket edges per node so card groups of many nodes close at different times
        self._offset_s = (zlib.crc32(node_id.encode()) % 1000) / 1000 * bucket_s * CARD_GROUP
        self._bucket = -1  # index of the open bucket; -1 before the first sample
        self._open = _Open({}, {})
        self.series: dict[str, Ring] = {}
        self.last_sample_at: float | None = None

    def record(self, at_s: float, values: Mapping[str, float | None]) -> bool:
        """Adds one sample taken at ``at_s`` (epoch seconds). ``None`` values are gaps."""
        self.last_sample_at = at_s
        bucket = math.floor((at_s + self._offset_s) / self._bucket_s)
        group_changed = False
        if bucket > self._bucket:
            if self._bucket >= 0:
                self._close(bucket - self._bucket - 1)
                group_changed = bucket // CARD_GROUP != self._bucket // CARD_GROUP
            self._bucket = bucket
        sums, counts = self._open.sums, self._open.counts
        for key, value in values.items():
            if value is None:
                continue
            if key in sums:
                sums[key] += value
                counts[key] += 1
            else:
                sums[key] = value
                counts[key] = 1
        return group_changed

    def _close(self, skipped: int) -> None:
        sums, counts = self._open.sums, self._open.counts
        new_keys = [key for key in sums if key not in self.series]
        if new_keys:
            filled = max((len(ring) for ring in self.series.values()), default=0)
            for key in new_keys:
                # a new series lines up with the others: its past is a gap
                ring = self.series[key] = Ring(self._capacity)
                ring.fill(NAN, filled)
        for key, ring in self.series.items():
            count = counts.get(key, 0)
            ring.append(sums[key] / count if count else NAN)
            if skipped:
                ring.fill(NAN, skipped)
        self._open = _Open({}, {})

    def card_points(self, key: str) -> list[float]:
        """The card's view of a series: ``CARD_POINTS`` means of ``CARD_GROUP`` closed
        buckets each, oldest first, NaN where there is no data. Empty for an unknown series."""
        ring = self.series.get(key)
        if ring is None:
            return []
        # the closed buckets of the open bucket's group belong to no whole group yet
        partial = self._bucket % CARD_GROUP
        values = ring.last(CARD_POINTS * CARD_GROUP + partial)
        values = values[: len(values) - partial] if partial else values
        lead = len(values) % CARD_GROUP
        values = [NAN] * ((CARD_GROUP - lead) % CARD_GROUP) + values
        return [_mean(values[i : i + CARD_GROUP]) for i in range(0, len(values), CARD_GROUP)]

    def points(self, key: str) -> list[float]:
        """Every closed bucket held for a series, oldest first (the detail view)."""
        ring = self.series.get(key)
        return [] if ring is None else ring.last(self._capacity)

    @property
    def bucket_s(self) -> float:
        return self._bucket_s


class History:
    """Every node's :class:`NodeHistory`, holding ``window_s`` seconds each."""

    def __init__(self, window_s: float, bucket_s: float = BUCKET_S) -> None:
        self._bucket_s = bucket_s
        self._capacity = max(CARD_POINTS * CARD_GROUP, math.ceil(window_s / bucket_s))
        self.nodes: dict[str, NodeHistory] = {}

    def node(self, node_id: str) -> NodeHistory:
        history = self.nodes.get(node_id)
        if history is None:
            history = self.nodes[node_id] = NodeHistory(node_id, self._capacity, self._bucket_s)
        return history

    def forget(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    @property
    def window_s(self) -> float:
        return self._capacity * self._bucket_s


def sample_values(state: Mapping[str, Any]) -> dict[str, float | None]:
    """The values a snapshot contributes to the history: CPU %, memory % and per GPU the
    utilization % and memory-in-use %. Hot: called once per sample per node."""
    host = state.get("host") or {}
    values: dict[str, float | None] = {
        "cpu": host.get("cpu_percent"),
        "mem": _percent(host.get("mem_used_bytes"), host.get("mem_total_bytes")),
    }
    for index, gpu in (state.get("gpus") or {}).items():
        if not gpu.get("error"):
            values["u" + index] = gpu.get("util_gpu_percent")
            values["m" + index] = _percent(gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes"))
    return values


def _percent(used: float | None, total: float | None) -> float | None:
    return None if used is None or not total else 100.0 * used / total
