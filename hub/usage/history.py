"""Downsampled history per node and per GPU for the hub's memory: 1-minute and 15-minute
buckets of the mean and maximum of GPU utilization, memory, temperature and power, and of the
host's CPU, memory and network. Pure: no I/O, the clock is injected.

A new sample adds its values to the current 1-minute bucket of its node (by the hub's wall clock
when it arrived). :meth:`HistoryAggregator.take` hands the store what was added since the last
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
Minutes = dict[tuple[str, int], dict[str | None, Aggregate]]  # (node, minute start) -> series -> aggregate
_NAN = float("nan")


def _empty(metrics: int) -> Aggregate:
    return [0.0, 0.0, _NAN] * metrics


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
                into = series[None] = _empty(len(HOST_METRICS))
            _add_values(into, host, HOST_METRICS)
        gpus = state.get("gpus")
        if gpus.__class__ is dict:
            for index, gpu in gpus.items():
                if gpu.__class__ is not dict or gpu.get("error"):
                    continue
                into = series.get(index)
                if into is None:
                    into = series[index] = _empty(len(GPU_METRICS))
                _add_values(into, gpu, GPU_METRICS)

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
            for index, aggregate in more.items():
                have = series.get(index)
                if have is None:
                    series[index] = aggregate
                else:
                    merge(have, aggregate)
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
        for index, aggregate in series.items():
            batch[SeriesKey(node_id, MINUTE_S, bucket, index)] = aggregate
            key = SeriesKey(node_id, QUARTER_S, quarter, index)
            have = batch.get(key)
            if have is None:
                batch[key] = list(aggregate)
            else:
                merge(have, aggregate)
    return batch
