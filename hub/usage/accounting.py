"""Usage accounting: GPU-seconds held, busy and idle-held, and memory byte-seconds, per hour and
per day for each (user, node, GPU model, group, job), counted from the samples as they arrive.

Pure: no I/O, the clock is injected. :class:`UsageAccounting` subscribes to the registry's
events; what it counted waits in :attr:`UsageAccounting.pending` until the store takes it
(:meth:`take`) and writes it off the event loop. The rules (who is charged, how long a sample
counts) are :mod:`hub.domain.usage`'s.

Each piece of counted time is put in the local hour and the local day it fell in (an interval
that crosses an hour or a midnight is split there), so the daily table is exact in the hub's
time zone, half-hour zones and daylight saving included.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

from hub.domain.events import EventBus, IdleHeldChanged, NodeConnected, NodeRemoved, SampleApplied
from hub.domain.gpus import IdleRule
from hub.domain.nodes import Clock, Liveness, Naming
from hub.domain.usage import covered_s, shares, slice_weights, sole_holder

HOUR_S = 3600.0
UNKNOWN_MODEL = "unknown"
FIELDS = ("gpu_seconds", "busy_gpu_seconds", "idle_held_gpu_seconds", "gpu_mem_byte_seconds")
_ZEROS = (0.0,) * len(FIELDS)


class UsageKey(NamedTuple):
    hour_start_s: float  # epoch seconds at the start of the hour
    day_start_s: float  # epoch seconds at the hub's local midnight that starts the day
    user: str
    node_id: str
    model: str
    group: str  # "" for a node in no group
    job: str  # "" where the agent knows none (hub.domain.usage.process_job)


Totals: TypeAlias = "array[float]"  # in FIELDS order: doubles in one block, not four float objects
Pending = dict[UsageKey, list[float]]  # in FIELDS order
# (hour start, day start, node, group) -> (user, job, model) -> totals
Counted = dict[tuple[float, float, str, str], dict[tuple[str, str, str], Totals]]
Charge = tuple[
    tuple[str, str, str], float, bool, bool, float
]  # (user, job, model), share, busy, idle-held, bytes


def local_day_start(epoch_s: float) -> float:
    """The hub's local midnight at or before ``epoch_s``."""
    t = time.localtime(epoch_s)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


class _NodeFacts:
    __slots__ = ("group", "interval_s", "last_mono_s", "late_after_s", "models")

    def __init__(self, interval_s: float, late_after_s: float, group: str, models: dict[str, str]) -> None:
        self.interval_s = interval_s
        self.late_after_s = late_after_s  # the most one sample counts for (Liveness.late_after_s)
        self.group = group
        self.models = models  # GPU index -> model name from the hello
        self.last_mono_s: float | None = None  # when the previous new sample arrived


class UsageAccounting:
    """Counts usage from :class:`SampleApplied` events (new samples only).

    ``on_gap(node_id, uncounted_s, at_wall_s)`` hears of each gap longer than a sample may
    cover (:func:`hub.domain.usage.covered_s`), so a missing stretch is never a silent zero.
    """

    def __init__(
        self,
        clock: Clock,
        idle: IdleRule,
        liveness: Liveness,
        names: Mapping[str, Naming],
        day_start: Callable[[float], float] = local_day_start,
        on_gap: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self._clock = clock
        self.busy_above_percent = idle.max_util_percent
        self._liveness = liveness
        self._names = names
        self._day_start = day_start
        self._on_gap = on_gap
        self._nodes: dict[str, _NodeFacts] = {}
        self.idle_held: set[tuple[str, str, str | None]] = set()  # (node, GPU index, MIG uuid)
        # (hour start, day start, node, group) -> (user, job, model) -> totals: nested, so a
        # sample builds one small key per charge
        self._counted: Counted = {}
        # the hour and day the last counted piece fell in: most pieces fall in the same ones
        self._span = (0.0, 0.0, 0.0, 0.0)  # (from, to, hour start, day start) of the last bucket

    def subscribe(self, events: EventBus) -> None:
        events.subscribe(NodeConnected, self.connected)
        events.subscribe(NodeRemoved, self.removed)
        events.subscribe(IdleHeldChanged, self.idle_held_changed)
        events.subscribe(SampleApplied, self.sample)

    # ------------------------------------------------------------------ events
    def connected(self, event: NodeConnected) -> None:
        hello = event.hello
        naming = self._names.get(event.node_id) or self._names.get(event.address or "") or Naming()
        models = {
            str(g.get("index")): g["name"] for g in hello.gpus if isinstance(g.get("name"), str) and g["name"]
        }
        late_after_s = self._liveness.late_after_s(hello.interval_s)
        facts = self._nodes.get(event.node_id)
        if facts is None:
            self._nodes[event.node_id] = _NodeFacts(
                hello.interval_s, late_after_s, naming.group or "", models
            )
        else:  # a reconnect: the series goes on (the gap is capped like any other)
            facts.interval_s, facts.late_after_s = hello.interval_s, late_after_s
            facts.group, facts.models = naming.group or "", models

    def removed(self, event: NodeRemoved) -> None:
        self._nodes.pop(event.node_id, None)
        self.idle_held = {key for key in self.idle_held if key[0] != event.node_id}

    def idle_held_changed(self, event: IdleHeldChanged) -> None:
        key = (event.node_id, event.gpu_index, event.mig_uuid)
        if event.idle_held:
            self.idle_held.add(key)
        else:
            self.idle_held.discard(key)

    def sample(self, event: SampleApplied) -> None:
        if not event.new_sample:
            return
        facts = self._nodes.get(event.node_id)
        if facts is None:
            return  # no hello seen by this accounting (it cannot happen in one hub process)
        previous, facts.last_mono_s = facts.last_mono_s, event.at_mono_s
        seconds, uncounted = covered_s(
            None if previous is None else event.at_mono_s - previous, facts.interval_s, facts.late_after_s
        )
        now_wall = self._clock.wall()
        if uncounted > 0 and self._on_gap is not None:
            self._on_gap(event.node_id, uncounted, now_wall)
        if seconds <= 0:
            return
        gpus = event.state.get("gpus")
        if gpus.__class__ is not dict:
            return
        charges = self._charges(event.node_id, facts, gpus)
        if charges:
            self._count(now_wall - seconds, now_wall, event.node_id, facts.group, charges)

    # ------------------------------------------------------------------ counting
    def _charges(self, node_id: str, facts: _NodeFacts, gpus: Mapping[str, Any]) -> list[Charge]:
        """((user, job, model), share of a GPU, busy, idle-held, bytes) for every held GPU or
        slice. Hot: runs for every sample; a free GPU costs two lookups."""
        idle_held = self.idle_held
        models = facts.models
        charges: list[Charge] = []
        for index, gpu in gpus.items():
            if gpu.__class__ is not dict:
                continue
            processes: Any = gpu.get("processes")
            slices: Any = gpu.get("mig_slices")
            if not (processes or slices) or gpu.get("error"):
                continue
            model = gpu.get("name") or models.get(index) or UNKNOWN_MODEL
            util = gpu.get("util_gpu_percent")
            if slices:
                for weight, mig in zip(slice_weights(gpu, slices), slices, strict=True):
                    mig_processes = mig.get("processes")
                    if not mig_processes:
                        continue
                    mig_util = mig.get("util_gpu_percent")
                    busy = self._busy(util if mig_util is None else mig_util)
                    held_idle = (node_id, index, mig.get("uuid")) in idle_held
                    for (user, job), (share, mem) in shares(mig_processes).items():
                        charges.append(((user, job, model), share * weight, busy, held_idle, mem))
                continue  # in MIG mode the GPU's own list repeats its slices' processes
            busy = self._busy(util)
            held_idle = bool(idle_held) and (node_id, index, None) in idle_held
            if len(processes) == 1:  # most held GPUs: one process holds all of it
                user, job, mem = sole_holder(processes[0])
                charges.append(((user, job, model), 1.0, busy, held_idle, mem))
                continue
            for (user, job), (share, mem) in shares(processes).items():
                charges.append(((user, job, model), share, busy, held_idle, mem))
        return charges

    def _busy(self, util: Any) -> bool:
        kind = util.__class__
        return (kind is float or kind is int) and util > self.busy_above_percent

    def _count(self, start_s: float, end_s: float, node_id: str, group: str, charges: list[Charge]) -> None:
        counted = self._counted
        while start_s < end_s:
            bucket_start, bucket_end, day = self._bucket(start_s)
            piece_end = min(end_s, bucket_end)
            seconds = piece_end - start_s
            place = (bucket_start, day, node_id, group)
            per_key = counted.get(place)
            if per_key is None:
                per_key = counted[place] = {}
            for key, share, busy, held_idle, mem in charges:
                gpu_s = share * seconds
                totals = per_key.get(key)
                if totals is None:
                    totals = per_key[key] = array("d", _ZEROS)
                totals[0] += gpu_s
                if busy:
                    totals[1] += gpu_s
                if held_idle:
                    totals[2] += gpu_s
                totals[3] += mem * seconds
            start_s = piece_end

    def _bucket(self, at_s: float) -> tuple[float, float, float]:
        """(hour start, end of the piece that stays in this hour and day, day start) for ``at_s``."""
        piece_start, end, hour, day = self._span
        if piece_start <= at_s < end:
            return hour, end, day
        hour = at_s - at_s % HOUR_S
        day = self._day_start(at_s)
        next_day = self._day_start(day + 26 * HOUR_S)  # days last 23 to 25 hours
        end = min(hour + HOUR_S, next_day)
        self._span = (max(hour, day), end, hour, day)  # a midnight may fall inside an hour
        return hour, end, day

    # ------------------------------------------------------------------ for the store
    @property
    def pending(self) -> Pending:
        """What was counted since the last take, keyed by :class:`UsageKey` (a copy)."""
        return usage_rows(self._counted)

    def take(self) -> Counted:
        """What was counted since the last take, as counted: a swap, so the event loop never
        waits for a batch to be built (:func:`usage_rows` builds it on the store's thread)."""
        taken, self._counted = self._counted, {}
        return taken

    def put_back(self, taken: Counted, max_rows: int) -> int:
        """Returns a batch the store could not write; past ``max_rows`` keys the oldest hours
        are dropped. Returns how many keys were dropped."""
        counted = self._counted
        for place, more in taken.items():
            per_key = counted.get(place)
            if per_key is None:
                counted[place] = more
                continue
            for key, totals in more.items():
                have = per_key.get(key)
                if have is None:
                    per_key[key] = totals
                else:
                    for i, value in enumerate(totals):
                        have[i] += value
        over = sum(len(per_key) for per_key in counted.values()) - max_rows
        dropped = 0
        for place in sorted(counted, key=lambda p: p[0]):
            if dropped >= over:
                break
            dropped += len(counted.pop(place))
        return dropped


def usage_rows(counted: Counted) -> Pending:
    """A take's counts keyed by :class:`UsageKey`, for the store."""
    return {
        UsageKey(hour, day, user, node_id, model, group, job): list(totals)
        for (hour, day, node_id, group), per_key in counted.items()
        for (user, job, model), totals in per_key.items()
    }
