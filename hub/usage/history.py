"""Downsampled history per node and per GPU for the hub's memory: 1-minute and 15-minute
buckets of the mean and maximum of GPU utilization, memory, temperature and power, and of the
host's CPU, memory and network. Pure: no I/O, the clock is injected.

A new sample adds its values to the current 1-minute bucket of its node (by the hub's wall clock
when it arrived). :meth:`HistoryAggregator.take` hands the store what was added since the last
take, in both tiers: a 15-minute bucket is the sum of the 1-minute buckets in it. The store adds
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


def _empty(metrics: int) -> Aggregate:
    return [0.0, 0.0, _NAN] * metrics


def _add_values(into: Aggregate, values: tuple[Any, ...]) -> None:
    for i, value in enumerate(values):
        if value.__class__ is int or value.__class__ is float:
            j = 3 * i
            into[j] += value
            into[j + 1] += 1
            top = into[j + 2]
            if not top >= value:  # NaN: the first value
                into[j + 2] = value


def merge(into: Aggregate, more: Aggregate) -> None:
    for j in range(0, len(into), 3):
        into[j] += more[j]
        into[j + 1] += more[j + 1]
        top = more[j + 2]
        if top == top and not into[j + 2] >= top:
            into[j + 2] = top


def add_batch(into: Batch, more: Mapping[SeriesKey, Aggregate]) -> None:
    for key, aggregate in more.items():
        have = into.get(key)
        if have is None:
            into[key] = list(aggregate)
        else:
            merge(have, aggregate)


class HistoryAggregator:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.pending: Batch = {}  # 1-minute buckets since the last take

    def subscribe(self, events: EventBus) -> None:
        events.subscribe(SampleApplied, self.sample)
        events.subscribe(NodeRemoved, self.removed)

    def removed(self, event: NodeRemoved) -> None:
        self.pending = {k: v for k, v in self.pending.items() if k.node_id != event.node_id}

    def sample(self, event: SampleApplied) -> None:
        if not event.new_sample:
            return
        now = self._clock.wall()
        bucket = int(now - now % MINUTE_S)
        node_id = event.node_id
        pending = self.pending
        state = event.state
        host = state.get("host")
        if isinstance(host, dict):
            key = SeriesKey(node_id, MINUTE_S, bucket, None)
            into = pending.get(key)
            if into is None:
                into = pending[key] = _empty(len(HOST_METRICS))
            _add_values(into, tuple(host.get(m) for m in HOST_METRICS))
        gpus = state.get("gpus")
        if isinstance(gpus, dict):
            for index, gpu in gpus.items():
                if not isinstance(gpu, dict) or gpu.get("error"):
                    continue
                key = SeriesKey(node_id, MINUTE_S, bucket, index)
                into = pending.get(key)
                if into is None:
                    into = pending[key] = _empty(len(GPU_METRICS))
                _add_values(into, tuple(gpu.get(m) for m in GPU_METRICS))

    def take(self) -> Batch:
        """What was added since the last take, in 1-minute and 15-minute buckets."""
        minutes, self.pending = self.pending, {}
        batch: Batch = dict(minutes)
        for key, aggregate in minutes.items():
            quarter = key._replace(
                tier_s=QUARTER_S, bucket_start_s=key.bucket_start_s - key.bucket_start_s % QUARTER_S
            )
            have = batch.get(quarter)
            if have is None:
                batch[quarter] = list(aggregate)
            else:
                merge(have, aggregate)
        return batch

    def put_back(self, batch: Batch, max_rows: int) -> int:
        """Returns a batch the store could not write (its 1-minute rows; the 15-minute ones are
        made again from them); past ``max_rows``, the oldest are dropped. Returns how many."""
        add_batch(self.pending, {k: v for k, v in batch.items() if k.tier_s == MINUTE_S})
        over = len(self.pending) - max_rows
        if over <= 0:
            return 0
        for key in sorted(self.pending, key=lambda k: k.bucket_start_s)[:over]:
            del self.pending[key]
        return over
