"""Downsampled history per node and per GPU for the hub's memory: 1-minute and 15-minute
buckets of the mean and maximum of GPU utilization, memory, temperature and power, and of the
host's CPU, memory and network. Pure: no I/O, the clock is injected.

A new sample adds its values to the current 1-minute bucket of its node (by the hub's wall clock
when it arrived). Only the parts its patch changed are read (the event's ``host`` and ``gpus``):
the registry keeps the very dict of a GPU whose values did not change, so such a repeat costs
nothing on the event loop; it is counted from the node's sample count and added in one step
later (:meth:`Series.settle`, on the store's thread for a taken minute).
:meth:`HistoryAggregator.take` hands the store what was added since the last take, and
:func:`minute_rows` makes the rows of it (on the store's thread). The store adds each batch to
the rows it holds (sums, counts and maxima), so a bucket written in several batches, or by a hub
restarted in its middle, comes out exact and nothing is counted twice; a 15-minute bucket is
made in the file from the 1-minute buckets in it once its quarter is complete.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

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


Aggregate: TypeAlias = "array[float]"  # per metric: sum, count, max (NaN max: no value yet)
Batch = dict[SeriesKey, Aggregate]
_NAN = float("nan")


class Series:
    """One series' 1-minute bucket: the aggregate of the values added, and the source added
    last, which every later sample of the node repeats until the source changes (counted
    lazily from the node's sample count, so an unchanged GPU costs nothing per sample)."""

    __slots__ = ("_add", "added_at", "aggregate", "last", "metrics")

    def __init__(self, metrics: tuple[str, ...]) -> None:
        self.metrics = metrics
        self._add = _ADDERS[metrics]
        # doubles in one block: a list would hold a float object per value, scattered in memory
        self.aggregate: Aggregate = array("d", [0.0, 0.0, _NAN] * len(metrics))
        self.last: Mapping[str, Any] | None = None  # the source added last; None: no longer current
        self.added_at = 0  # the node-minute's sample number when ``last`` was added

    def add(self, source: Mapping[str, Any], sample: int) -> None:
        """Adds ``source`` as sample number ``sample`` of its node-minute (the samples since
        the last source was added repeated it)."""
        if self.last is not None and sample - 1 > self.added_at:
            self.settle(sample - 1)
        self._add(self.aggregate, source)
        self.last = source
        self.added_at = sample

    def stop(self, sample: int) -> None:
        """The source is gone (an error, a GPU removed) as of sample number ``sample``."""
        self.settle(sample - 1)
        self.last = None

    def settle(self, through: int) -> Aggregate:
        """Adds the repeats of the last source up to sample number ``through`` (each value
        times the repeats: its maximum is already in); returns the aggregate."""
        times, last = through - self.added_at, self.last
        if times > 0 and last is not None:
            into = self.aggregate
            j = 0
            for metric in self.metrics:
                value: Any = last.get(metric)
                kind = value.__class__
                if kind is float or kind is int:
                    into[j] += value * times
                    into[j + 1] += times
                j += 3
            self.added_at = through
        return self.aggregate


class NodeMinute:
    """One node's series in one minute (``None``: the host), and how many samples it had."""

    __slots__ = ("complete", "samples", "series")

    def __init__(self) -> None:
        self.series: dict[str | None, Series] = {}
        self.samples = 0
        # every series of the node's current state has been added here: a sample then needs to
        # read only the parts its patch changed
        self.complete = False

    def settle(self) -> dict[str | None, Series]:
        """Adds every pending repeat and detaches the sources (a minute taken for the store)."""
        for one in self.series.values():
            one.settle(self.samples)
            one.last = None
        self.complete = False  # a later sample into it (a clock set back) reads the whole state
        return self.series


Minutes = dict[tuple[str, int], NodeMinute]  # (node, minute start) -> its series


def _adder(metrics: tuple[str, ...]) -> Callable[[Aggregate, Mapping[str, Any]], None]:
    """``add(into, source)``: adds ``source``'s value of each metric (a number; anything else is
    no value) to an aggregate. Unrolled from ``metrics`` (the schema's names) once, at import:
    this runs for the host and each changed GPU of every sample, and a loop over the metrics
    costs 40 % more."""
    lines = ["def add(into, source):", "    get = source.get"]
    for j, metric in enumerate(metrics):
        total, count, top = 3 * j, 3 * j + 1, 3 * j + 2
        lines += [
            f"    value = get({metric!r})",
            "    kind = value.__class__",  # cheaper than isinstance
            "    if kind is float or kind is int:",
            f"        into[{total}] += value",
            f"        into[{count}] += 1",
            f"        if not into[{top}] >= value:",  # NaN: the first value
            f"            into[{top}] = value",
        ]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # the names are the schema's constants, not input
    add: Callable[[Aggregate, Mapping[str, Any]], None] = namespace["add"]
    return add


_ADDERS: dict[tuple[str, ...], Callable[[Aggregate, Mapping[str, Any]], None]] = {
    metrics: _adder(metrics) for metrics in (GPU_METRICS, HOST_METRICS)
}


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
        # the 1-minute buckets since the last take: (node, bucket start) -> its series
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
        minute = self._minutes.get(node_key)
        if minute is None:
            minute = self._minutes[node_key] = NodeMinute()
            # the node's minute before is over: settled now, it stops holding the state it
            # added last (a minute-old snapshot of every node) until the store takes it
            before = self._minutes.get((event.node_id, node_key[1] - MINUTE_S))
            if before is not None:
                before.settle()
        minute.samples += 1
        sample = minute.samples
        series = minute.series
        state = event.state
        full = not minute.complete or event.gpu_set_changed
        if full or event.host:
            host = state.get("host")
            into = series.get(None)
            if host.__class__ is dict:
                if into is None:
                    into = series[None] = Series(HOST_METRICS)
                if into.last is not host:
                    into.add(host, sample)
            elif into is not None and into.last is not None:
                into.stop(sample)
        gpus: Any = state.get("gpus")
        if gpus.__class__ is not dict:
            gpus = {}
        # the GPUs whose dicts may have changed (the others are the very dicts added before)
        changed = gpus if full else event.gpus
        for index in changed:
            gpu = gpus.get(index)
            into = series.get(index)
            if into is not None and into.last is gpu:
                continue  # unchanged: counted as a repeat
            if gpu.__class__ is not dict or gpu.get("error"):
                if into is not None and into.last is not None:
                    into.stop(sample)
                continue
            if into is None:
                into = series[index] = Series(GPU_METRICS)
            into.add(gpu, sample)
        if full:
            for index, into in series.items():  # GPUs gone from the state
                if index is not None and index not in gpus and into.last is not None:
                    into.stop(sample)
            minute.complete = True

    @property
    def pending(self) -> int:
        """Series-minutes waiting for the store."""
        return sum(len(minute.series) for minute in self._minutes.values())

    def take(self) -> Minutes:
        """The 1-minute buckets since the last take: a swap, so the event loop never waits for
        a batch to be built (:func:`minute_rows` builds it on the store's thread). The node-minutes
        taken are left alone from now on (the next sample opens a new one), so their sample
        counts hold still."""
        taken, self._minutes = self._minutes, {}
        return taken

    def put_back(self, taken: Minutes, max_rows: int) -> int:
        """Returns buckets the store could not write; past ``max_rows`` series-minutes the
        oldest minutes are dropped. Returns how many series-minutes."""
        for node_key, more in taken.items():
            more_series = more.settle()
            minute = self._minutes.get(node_key)
            if minute is None:  # settled and detached: the next sample reads the whole state
                minute = self._minutes[node_key] = NodeMinute()
            for index, one in more_series.items():
                have = minute.series.get(index)
                if have is None:
                    minute.series[index] = one
                else:
                    merge(have.aggregate, one.aggregate)
        over = self.pending - max_rows
        dropped = 0
        for node_key in sorted(self._minutes, key=lambda k: k[1]):
            if dropped >= over:
                break
            dropped += len(self._minutes.pop(node_key).series)
        return dropped


def minute_rows(minutes: Minutes) -> Batch:
    """A take's 1-minute buckets, for the store (on its thread). The 15-minute buckets are made
    from these rows in the file once a quarter is complete (:class:`hub.usage.store.QuarterBook`)."""
    return {
        SeriesKey(node_id, MINUTE_S, bucket, index): one.aggregate
        for (node_id, bucket), minute in minutes.items()
        for index, one in minute.settle().items()
    }
