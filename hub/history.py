"""A short in-memory history per node, for sparklines: bucket means in fixed-size rings.

Each node has a few series (``cpu``, ``mem``, and ``u<i>``/``m<i>`` for GPU ``i``'s utilization
and memory in use, all percents). A sample adds its values to the current bucket (``bucket_s``
of the hub's monotonic clock, when the sample arrived: an agent's own clock can be hours ahead
or behind, which would stop its history or lump it into one bucket until the clock caught up,
and the hub's wall clock can jump); when a sample lands in a later bucket, the current one is closed
into each series' ring as its mean, and skipped buckets become gaps (NaN). Recording a sample
costs a few float additions; a ring holds ``capacity`` bytes per series (half-percent steps;
a 10-minute card costs 2,000 nodes x 18 series x 180 buckets = 6.5 MB as bytes).

Cards show the last ``CARD_POINTS`` groups of ``CARD_GROUP`` buckets (10 minutes by default),
so a card's sparklines change only when a group closes. Group edges are shifted per node (by a
hash of its id), so the sparkline pushes of many nodes spread out instead of arriving together.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from node_agent.protocol import MAX_GPUS

BUCKET_S = 5.0
CARD_GROUP = 4  # buckets per card point: 20 s
CARD_POINTS = 30  # card points: 10 minutes
NAN = float("nan")
_GAP = 255  # a ring byte that holds no value (percents are stored x2: 0..200)
MAX_SERIES = 2 + 2 * MAX_GPUS
"""Series one node keeps: ``cpu``, ``mem`` and two per GPU of a state at its limit. GPU indexes
run to 999, so an agent that reports other GPUs sample after sample would otherwise add rows
without end; past this many, a new series takes the row of the oldest one the sample lacks."""


def _stored(value: float) -> int:
    """A percent as one byte: half-percent steps (0..200), :data:`_GAP` for NaN."""
    return _GAP if value != value else int(min(max(value, 0.0), 100.0) * 2 + 0.5)


def _read(raw: bytes | bytearray) -> list[float]:
    return [NAN if v == _GAP else v / 2 for v in raw]


def _mean(values: Iterable[float]) -> float:
    total = 0.0
    count = 0
    for value in values:
        if value == value:  # not NaN
            total += value
            count += 1
    return total / count if count else NAN


class NodeHistory:
    """One node's series. ``record`` returns whether the card's sparklines changed.

    Every series of a node closes its buckets at the same moments, so they share one ring
    position: the node keeps one ``bytearray`` with a row of ``capacity`` bytes per series (a
    node with 8 GPUs: 18 rows, 3.2 KB at 15 minutes) and one open-bucket sum and count per row.
    A series that appears later starts as a row of gaps, so it lines up with the others.
    """

    __slots__ = (
        "_bucket",
        "_bucket_s",
        "_capacity",
        "_counts",
        "_head",
        "_offset_s",
        "_rows",
        "_size",
        "_slots",
        "_sums",
        "samples",
    )

    def __init__(self, node_id: str, capacity: int, bucket_s: float = BUCKET_S) -> None:
        self._capacity = capacity
        self._bucket_s = bucket_s
        # shifts bucket edges per node so card groups of many nodes close at different times
        self._offset_s = (zlib.crc32(node_id.encode()) % 1000) / 1000 * bucket_s * CARD_GROUP
        self._bucket = -1  # index of the open bucket; -1 before the first sample
        self._slots: dict[str, int] = {}  # series -> row
        self._rows = bytearray()  # row r is [r * capacity, (r + 1) * capacity)
        self._head = 0  # where the next closed bucket goes, in every row
        self._size = 0  # closed buckets held (at most capacity)
        self._sums: list[float] = []  # the open bucket, per row
        self._counts: list[int] = []
        self.samples = 0  # the node's sample count when it was last recorded (kept by the scene)

    def record(self, at_s: float, values: Mapping[str, float | None]) -> bool:
        """Adds one sample that arrived at ``at_s`` (seconds of a clock that never goes back).
        ``None`` values are gaps."""
        bucket = math.floor((at_s + self._offset_s) / self._bucket_s)
        group_changed = False
        if bucket > self._bucket:
            if self._bucket >= 0:
                self._close(bucket - self._bucket - 1)
                group_changed = bucket // CARD_GROUP != self._bucket // CARD_GROUP
            self._bucket = bucket
        slots, sums, counts = self._slots, self._sums, self._counts
        for key, value in values.items():
            if value is None:
                continue
            slot = slots.get(key)
            if slot is None:
                slot = self._add_series(key, values)
            sums[slot] += value
            counts[slot] += 1
        return group_changed

    def _add_series(self, key: str, values: Mapping[str, float | None]) -> int:
        slots = self._slots
        if len(slots) < MAX_SERIES:
            slot = slots[key] = len(slots)
            self._rows += bytes([_GAP]) * self._capacity
            self._sums.append(0.0)
            self._counts.append(0)
            return slot
        # a sample holds at most MAX_SERIES series, ``key`` among them: some row is not its
        # (the oldest such series is the first in the dict, which keeps insertion order)
        gone = next(old for old in slots if old not in values)
        slot = slots[key] = slots.pop(gone)
        start = slot * self._capacity
        self._rows[start : start + self._capacity] = bytes([_GAP]) * self._capacity
        self._sums[slot] = 0.0
        self._counts[slot] = 0
        return slot

    def _close(self, skipped: int) -> None:
        """Closes the open bucket into every row, then ``skipped`` empty buckets as gaps."""
        rows, capacity = self._rows, self._capacity
        head = self._head
        for slot, (total, count) in enumerate(zip(self._sums, self._counts, strict=True)):
            rows[slot * capacity + head] = _stored(total / count) if count else _GAP
        self._advance()
        for _ in range(min(skipped, capacity)):
            for slot in range(len(self._slots)):
                rows[slot * capacity + self._head] = _GAP
            self._advance()
        self._sums = [0.0] * len(self._sums)
        self._counts = [0] * len(self._counts)

    def _advance(self) -> None:
        self._head = (self._head + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)

    def _last(self, key: str, count: int) -> list[float] | None:
        """The newest ``count`` closed values of a series, oldest first; None if unknown."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        count = min(count, self._size)
        capacity = self._capacity
        base = slot * capacity
        start = (self._head - count) % capacity
        if start + count <= capacity:
            return _read(self._rows[base + start : base + start + count])
        return _read(self._rows[base + start : base + capacity] + self._rows[base : base + self._head])

    @property
    def series(self) -> list[str]:
        return list(self._slots)

    def card_points(self, key: str) -> list[float]:
        """The card's view of a series: ``CARD_POINTS`` means of ``CARD_GROUP`` closed
        buckets each, oldest first, NaN where there is no data. Empty for an unknown series."""
        # the closed buckets of the open bucket's group belong to no whole group yet
        partial = self._bucket % CARD_GROUP
        values = self._last(key, CARD_POINTS * CARD_GROUP + partial)
        if values is None:
            return []
        values = values[: len(values) - partial] if partial else values
        lead = len(values) % CARD_GROUP
        values = [NAN] * ((CARD_GROUP - lead) % CARD_GROUP) + values
        return [_mean(values[i : i + CARD_GROUP]) for i in range(0, len(values), CARD_GROUP)]

    def points(self, key: str) -> list[float]:
        """Every closed bucket held for a series, oldest first (the detail view)."""
        return self._last(key, self._capacity) or []

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
        get = gpu.get
        if not get("error"):
            util_key, mem_key = _gpu_series(index)
            values[util_key] = get("util_gpu_percent")
            values[mem_key] = _percent(get("mem_used_bytes"), get("mem_total_bytes"))
    return values


@functools.lru_cache(maxsize=256)
def _gpu_series(index: str) -> tuple[str, str]:
    """A GPU's two series names (made once, not every sample)."""
    return "u" + index, "m" + index


def _percent(used: float | None, total: float | None) -> float | None:
    return None if used is None or not total else 100.0 * used / total
