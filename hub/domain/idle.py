"""Idle holders: the GPUs and MIG slices that processes hold while doing (almost) nothing.

:class:`IdleHolders` applies :class:`~hub.domain.gpus.IdleRule` over time and publishes an
:class:`~hub.domain.events.IdleHeldChanged` when a GPU, or a MIG slice of one (keyed by its
uuid), starts or stops being idle-held. It works from the samples as they arrive: on a
:class:`~hub.domain.events.SampleApplied` it looks only at the GPUs that sample changed (a
GPU's patch is empty while nothing about it changes, so an unchanged GPU stays as it was), and
a spell that waits for its ``min_idle_s`` waits in a queue of deadlines (in order: every spell
waits the same time) that is checked on every sample and by :meth:`IdleHolders.tick`: no pass
over every GPU, ever.

A spell of idleness, and what ends it:

- It starts at the first sample (by the hub's receive time) in which the GPU is held by
  processes and its utilization is known and at most ``max_util_percent`` (equality is idle).
- A sample above the limit ends it at once: NVML's utilization is already an average over its
  own sample period, so one reading above the limit means kernels ran; there is no smoothing,
  and a GPU that comes back under the limit starts a new spell from that sample. An unknown
  utilization (``null``), an error on the GPU, or no process left ends it too.
- A process that holds it exiting ends it (the holders changed: whoever remains starts a new
  spell); a process that joins an idle spell joins it (the GPU has been idle that long).
- The GPU (or slice) disappearing, the node going offline and the node being removed end it.
- Stale nodes keep their spells: heartbeats are late, not gone.

Only spells that reached ``min_idle_s`` publish: one event when they become idle-held, one when
they end. Times: ``idle_since_wall_s`` is the hub's wall clock when the spell's first sample
arrived; the length of a spell is measured on the monotonic clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from hub.domain.events import EventBus, IdleHeldChanged, NodeRemoved, SampleApplied, StatusChanged
from hub.domain.gpus import IdleRule
from hub.domain.nodes import Clock, NodeStatus


class HeldKey(NamedTuple):
    """A GPU (``mig_uuid`` None) or one MIG slice of it."""

    gpu_index: str
    mig_uuid: str | None


@dataclass(slots=True)
class IdleSpell:
    """One GPU's (or slice's) current stretch of idleness while held."""

    since_mono_s: float
    since_wall_s: float
    pids: frozenset[Any]  # the holders' pids: one of them exiting ends the spell
    holders: tuple[Mapping[str, Any], ...]  # the processes of the latest idle sample
    held: bool = False  # reached min_idle_s: IdleHeldChanged(idle_held=True) was published


def _pids(processes: Iterable[Mapping[str, Any]]) -> frozenset[Any]:
    return frozenset(p.get("pid") for p in processes)


class IdleHolders:
    """Tracks every node's idle spells; subscribes itself to ``events``."""

    def __init__(self, events: EventBus, clock: Clock, rule: IdleRule | None = None) -> None:
        self._events = events
        self._clock = clock
        self.rule = rule or IdleRule()
        self._spells: dict[str, dict[HeldKey, IdleSpell]] = {}  # node id -> its spells
        # (deadline on the monotonic clock, node id, key, spell's start), oldest first: the
        # spells waiting to be idle-held. An entry of a spell that ended stays until it comes
        # due or the queue is compacted (it holds at most twice the waiting spells, plus a few)
        self._due: deque[tuple[float, str, HeldKey, float]] = deque()
        self._waiting = 0  # spells not yet idle-held
        events.subscribe(SampleApplied, self._sample_applied)
        events.subscribe(StatusChanged, self._status_changed)
        events.subscribe(NodeRemoved, lambda event: self._end_node(event.node_id))

    # ------------------------------------------------------------------ what is idle-held now
    def held(self) -> dict[tuple[str, str, str | None], float]:
        """(node id, GPU index, MIG uuid or None) -> idle since (hub wall clock, epoch seconds),
        for every GPU and slice idle-held now: a copy (``/api/v1/users`` and ``/metrics``)."""
        return {
            (node_id, key.gpu_index, key.mig_uuid): spell.since_wall_s
            for node_id, spells in self._spells.items()
            for key, spell in spells.items()
            if spell.held
        }

    # ------------------------------------------------------------------ time passing
    def tick(self) -> None:
        """Turns the spells whose ``min_idle_s`` has passed idle-held. Cheap when none is due:
        call it about once a second (samples call it too)."""
        now = self._clock.monotonic()
        due = self._due
        while due and due[0][0] <= now:
            _, node_id, key, since = due.popleft()
            spell = self._spells.get(node_id, {}).get(key)
            if spell is not None and spell.since_mono_s == since and not spell.held:
                self._start(node_id, key, spell)

    # ------------------------------------------------------------------ events in
    def _sample_applied(self, event: SampleApplied) -> None:
        """Hot: one per agent message. A GPU with no spell that is not idle now (most GPUs: busy,
        or free) costs three lookups."""
        node_id = event.node_id
        spells = self._spells.get(node_id)
        indexes: Iterable[str] = event.gpus
        gpus = event.state.get("gpus") or {}
        if event.gpu_set_changed and spells:  # GPUs that went away are in no patch of theirs
            indexes = set(indexes) | {key.gpu_index for key in spells if key.gpu_index not in gpus}
        now = event.at_mono_s
        idle_now = self.rule.idle_now
        max_util = self.rule.max_util_percent
        for index in indexes:
            gpu = gpus.get(index)
            if spells is None and gpu is not None:
                # the common case, inlined: busy or free now, no spell to end
                slices = gpu.get("mig_slices")
                if not slices:
                    util = gpu.get("util_gpu_percent")
                    if (util is not None and util > max_util) or not gpu.get("processes"):
                        continue
                elif not idle_now(gpu) and not any(map(idle_now, slices)):
                    continue  # in MIG mode: neither the GPU nor a slice idle now
            if gpu is None:  # gone: its spells and its slices' end
                if spells:
                    for key in [k for k in spells if k.gpu_index == index]:
                        self._end(node_id, key)
            elif gpu.get("mig_slices") or (
                spells and any(k.gpu_index == index and k.mig_uuid for k in spells)
            ):
                self._judge_with_slices(node_id, index, gpu, now)
            elif spells or idle_now(gpu):
                self._judge(node_id, HeldKey(index, None), gpu, now)
            else:
                continue
            spells = self._spells.get(node_id)
        due = self._due
        if due and due[0][0] <= now:
            self.tick()

    def _judge_with_slices(self, node_id: str, index: str, gpu: Mapping[str, Any], now: float) -> None:
        """A GPU in MIG mode: the GPU, each slice by its uuid, and the slices that went away."""
        self._judge(node_id, HeldKey(index, None), gpu, now)
        seen = set()
        for mig in gpu.get("mig_slices") or ():
            uuid = mig.get("uuid")
            if isinstance(uuid, str) and uuid not in seen:
                seen.add(uuid)
                self._judge(node_id, HeldKey(index, uuid), mig, now)
        spells = self._spells.get(node_id)
        if spells:
            for key in [k for k in spells if k.gpu_index == index and k.mig_uuid and k.mig_uuid not in seen]:
                self._end(node_id, key)

    def _status_changed(self, event: StatusChanged) -> None:
        if event.new is NodeStatus.OFFLINE:
            self._end_node(event.node_id)

    # ------------------------------------------------------------------ the rule over time
    def _judge(self, node_id: str, key: HeldKey, sample: Mapping[str, Any] | None, now: float) -> None:
        """One GPU's (or slice's) new sample (``None``: it disappeared)."""
        spell = self._spells.get(node_id, {}).get(key)
        if sample is None or not self.rule.idle_now(sample):
            if spell is not None:
                self._end(node_id, key)
            return
        processes = tuple(sample.get("processes") or ())
        pids = _pids(processes)
        if spell is not None and not spell.pids <= pids:  # a holder exited
            self._end(node_id, key)
            spell = None
        if spell is None:
            spell = IdleSpell(now, self._clock.wall(), pids, processes)
            self._spells.setdefault(node_id, {})[key] = spell
            self._waiting += 1
            if self.rule.held_long(now, now):
                self._start(node_id, key, spell)
            else:
                self._due.append((now + self.rule.min_idle_s, node_id, key, now))
                if len(self._due) > 2 * self._waiting + 64:
                    self._compact()
            return
        spell.pids = pids  # processes that joined the spell
        spell.holders = processes
        if not spell.held and self.rule.held_long(spell.since_mono_s, now):
            self._start(node_id, key, spell)

    def _compact(self) -> None:
        """Drops the queue's entries of spells that ended (a GPU flapping around the limit
        starts a spell every sample)."""
        spells = self._spells
        self._due = deque(
            entry
            for entry in self._due
            if (spell := spells.get(entry[1], {}).get(entry[2])) is not None
            and spell.since_mono_s == entry[3]
            and not spell.held
        )

    def _start(self, node_id: str, key: HeldKey, spell: IdleSpell) -> None:
        spell.held = True
        self._waiting -= 1
        self._publish(node_id, key, spell, True)

    def _end(self, node_id: str, key: HeldKey) -> None:
        spells = self._spells.get(node_id)
        spell = spells.pop(key, None) if spells else None
        if spells is not None and not spells:
            del self._spells[node_id]
        if spell is None:
            return
        if spell.held:
            self._publish(node_id, key, spell, False)
        else:
            self._waiting -= 1

    def _end_node(self, node_id: str) -> None:
        for key in list(self._spells.get(node_id, ())):
            self._end(node_id, key)

    def _publish(self, node_id: str, key: HeldKey, spell: IdleSpell, idle_held: bool) -> None:
        self._events.publish(
            IdleHeldChanged(
                node_id,
                key.gpu_index,
                key.mig_uuid,
                idle_held,
                spell.since_wall_s,
                spell.holders,
                self._clock.wall(),
            )
        )
