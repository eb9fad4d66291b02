"""Downsampled history per node and per GPU for the hub's memory: 1-minute and 15-minute
buckets of the mean and maximum of GPU utilization, memory, temperature and power, and of the
host's CPU, memory and network. Pure: no I/O, the clock is injected.

A new sample adds its values to the current 1-minute bucket of its node (by the hub's wall clock
when it arrived). A GPU whose values did not change keeps its very dict in the merged state (the
registry shares unchanged branches), so such a repeat is only counted on the event loop and
added in one step later (:meth:`Series.settle`, on the store's thread for a taken minute). :meth:`HistoryAggregator.take` hands the store what was added since the last
take, and :func:`tiers` makes both tiers of it (on the store's thread): a 15-minute bucket is
the sum of the 1-minute buckets in it. The store adds
each batch to the rows it holds (sums, counts and maxima), so a bucket written in several
batches, or by a hub restarted in its middle, comes out exact and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from hub.domain.events import EventBus, NodeRemoved, SampleApplied
from hub.domain.nodes import Clock
from hub.usage.schema import GPU_METRICS, HOST_METRICS

MINUTE_S = 60
QUARTER_S = 900
TIERS_S = (MINUTE_S, QUARTER_S)


class SeriesKey(NamedTuple):
    node_id: str
    tier_s: int
    bucket_start_s: int
    gpu_index: str | None  # None: the host


Aggregate = list[float]  # per metric: sum, count, max (NaN max: no value yet)
Batch = dict[SeriesKey, Aggregate]
_NAN = float("nan")


class Series:
    """One series' 1-minute bucket: the aggregate of the values added, and how many more
    samples repeated the last source (the same dict) without being added yet."""

    __slots__ = ("aggregate", "last", "metrics", "repeats")

    def __init__(self, metrics: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.aggregate: Aggregate = [0.0, 0.0, _NAN] * len(metrics)
        self.last: Mapping[str, Any] | None = None  # the source added last
        self.repeats = 0

    def add(self, source: Mapping[str, Any]) -> None:
        if self.repeats:
            self.settle()
        _add_values(self.aggregate, source, self.metrics)
        self.last = source

    def settle(self) -> Aggregate:
        """Adds the repeats of the last source (each value times the repeats: its maximum is
        already in); returns the aggregate."""
        times, last = self.repeats, self.last
        if times and last is not None:
            into = self.aggregate
            j = 0
            for metric in self.metrics:
                value: Any = last.get(metric)
                kind = value.__class__
                if kind is float or kind is int:
                    into[j] += value * times
                    into[j + 1] += times
                j += 3
        self.repeats = 0
        return self.aggregate


Minutes = dict[tuple[str, int], dict[str | None, Series]]  # (node, minute start) -> series (None: host)


def _add_values(into: Aggregate, source: Mapping[str, Any], metrics: tuple[str, ...]) -> None:
    """Adds ``source``'s value of each metric (a number; anything else is no value). Hot: runs
    for the host and each GPU of every sample."""
    j = 0
    for metric in metrics:
        value: Any = source.get(metric)  # checked by class below: cheaper than isinstance
        kind = value.__class__
        if kind is float or kind is int:
            into[j] += value
            into[j + 1] += 1
            if not into[j + 2] >= value:  # NaN: the first value
                into[j + 2] = value
        j += 3


def merge(into: Aggregate, more: Aggregate) -> None:
    for j in range(0, len(into), 3):
        into[j] += more[j]
        into[j + 1] += more[j + 1]
        top = more[j + 2]
        if top == top and not into[j + 2] >= top:
            into[j + 2] = top


class HistoryAggregator:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # the 1-minute buckets since the last take: (node, bucket start) -> series -> aggregate
        # (series None: the host); nested so a sample builds no key per series
        self._minutes: Minutes = {}

    def subscribe(self, events: EventBus) -> None:
        events.subscribe(SampleApplied, self.sample)
        events.subscribe(NodeRemoved, self.removed)

    def removed(self, event: NodeRemoved) -> None:
        self._minutes = {k: v for k, v in self._minutes.items() if k[0] != event.node_id}

    def sample(self, event: SampleApplied) -> None:
        if not event.new_sample:
            return
        now = self._clock.wall()
        node_key = (event.node_id, int(now - now % MINUTE_S))
        series = self._minutes.get(node_key)
        if series is None:
            series = self._minutes[node_key] = {}
        state = event.state
        host = state.get("host")
        if host.__class__ is dict:
            into = series.get(None)
            if into is None:
                into = series[None] = Series(HOST_METRICS)
            if into.last is host:
                into.repeats += 1
            else:
                into.add(host)
        gpus = state.get("gpus")
        if gpus.__class__ is dict:
            for index, gpu in gpus.items():
                into = series.get(index)
                if into is not None and into.last is gpu:  # unchanged since the last sample
                    into.repeats += 1
                    continue
                if gpu.__class__ is not dict or gpu.get("error"):
                    continue
                if into is None:
                    into = series[index] = Series(GPU_METRICS)
                into.add(gpu)

    @property
    def pending(self) -> int:
        """Series-minutes waiting for the store."""
        return sum(len(series) for series in self._minutes.values())

    def take(self) -> Minutes:
        """The 1-minute buckets since the last take: a swap, so the event loop never waits for
        a batch to be built (:func:`tiers` builds it on the store's thread)."""
        taken, self._minutes = self._minutes, {}
        return taken

    def put_back(self, taken: Minutes, max_rows: int) -> int:
        """Returns buckets the store could not write; past ``max_rows`` series-minutes the
        oldest minutes are dropped. Returns how many series-minutes."""
        for node_key, more in taken.items():
            series = self._minutes.get(node_key)
            if series is None:
                self._minutes[node_key] = more
                continue
            for index, more_series in more.items():
                have = series.get(index)
                if have is None:
                    series[index] = more_series
                else:
                    merge(have.settle(), more_series.settle())
        over = self.pending - max_rows
        dropped = 0
        for node_key in sorted(self._minutes, key=lambda k: k[1]):
            if dropped >= over:
                break
            dropped += len(self._minutes.pop(node_key))
        return dropped


def tiers(minutes: Minutes) -> Batch:
    """A take's 1-minute buckets and the 15-minute buckets they add up to, for the store."""
    batch: Batch = {}
    for (node_id, bucket), series in minutes.items():
        quarter = bucket - bucket % QUARTER_S
        for index, one in series.items():
            aggregate = one.settle()
            batch[SeriesKey(node_id, MINUTE_S, bucket, index)] = aggregate
            key = SeriesKey(node_id, QUARTER_S, quarter, index)
            have = batch.get(key)
            if have is None:
                batch[key] = list(aggregate)
            else:
                merge(have, aggregate)
    return batch
