"""What happened to a node or a GPU, as typed events, and the small in-process bus that
delivers them.

:class:`hub.registry.NodeRegistry` publishes an event for every change it makes; subscribers
(the presenter, the store, the liveness log, and later alerts, usage accounting and idle-holder
tracking) get
everything they need in the event and never reach back into the registry. Events are
NamedTuples (cheap to build: a delta arrives thousands of times a second), and the registry
builds the per-sample ones (:class:`SampleApplied`, :class:`GpuStateChanged`,
:class:`GpuHealthChanged`) only while
someone subscribes to them (:meth:`EventBus.wants`).

Handlers run synchronously, in order of subscription, on the event loop: they must be quick
and must not block; one that raises is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from hub.domain.gpus import GpuState
from hub.domain.health import Level
from hub.domain.nodes import NodeStatus
from node_agent.protocol import Hello, Snapshot

log = logging.getLogger("sers.hub")


class NodeConnected(NamedTuple):
    """An agent said hello; its connection now speaks for the node."""

    node_id: str
    hello: Hello
    address: str | None
    facts_changed: bool  # the static facts (host, GPUs, driver) differ from the last hello's
    at_wall_s: float


class StatusCause(StrEnum):
    HELLO = "hello"  # the agent (re)connected
    MESSAGE = "message"  # a message after silence
    SILENCE = "silence"  # the liveness sweep: heartbeats late or stopped
    GOODBYE = "goodbye"  # the agent's connection ended


class StatusChanged(NamedTuple):
    """Live, stale or offline, and why."""

    node_id: str
    old: NodeStatus
    new: NodeStatus
    cause: StatusCause
    last_seen_wall_s: float  # when the hub last heard from the node


class SampleApplied(NamedTuple):
    """A delta merged into the node's state. ``state`` is the merged snapshot (never mutated
    afterwards: a subscriber may keep it); ``new_sample`` is true when it carried a new
    ``sampled_at`` (heartbeats carry none). The events of the same delta that
    ``late_ended`` and ``came_live`` stand for (:class:`SampleLate`, :class:`StatusChanged`)
    are published before it."""

    node_id: str
    state: Snapshot
    host: bool  # the host part changed
    gpus: frozenset[str]  # indexes of the GPUs that changed
    new_sample: bool
    gpu_set_changed: bool  # GPUs appeared or disappeared
    late_ended: bool  # the first new sample after a late spell
    came_live: bool  # the node was stale or offline before this delta
    at_mono_s: float


class SampleLate(NamedTuple):
    """Heartbeats arrive but samples do not (a hung collector), or samples resumed."""

    node_id: str
    late: bool
    at_mono_s: float


class SampleStillLate(NamedTuple):
    """Published on every liveness sweep while a node's samples stay late (after its
    :class:`SampleLate`): how late they are now."""

    node_id: str
    sample_age_s: float  # since the last new sample
    at_mono_s: float


class GpuStateChanged(NamedTuple):
    """A GPU turned free, busy, faulted or not current (``old`` is ``None`` for a GPU seen for
    the first time, ``new`` is ``None`` for one that disappeared). ``gpu`` is its sample."""

    node_id: str
    gpu_index: str  # not `index`: a NamedTuple has an index() method
    old: GpuState | None
    new: GpuState | None
    gpu: Mapping[str, Any]
    at_mono_s: float


class GpuHealthChanged(NamedTuple):
    """A GPU's health (:func:`hub.domain.health.gpu_health`) turned ok, warning or fault. ``old``
    is ``Level.OK`` for a GPU first seen with a problem; a GPU that disappears publishes none
    (:class:`GpuStateChanged` says so). ``findings`` are the words the wall shows, the worst
    first (empty when ``new`` is ok)."""

    node_id: str
    gpu_index: str
    gpu_uuid: str | None  # from the hello's facts, where the agent gave one
    old: Level
    new: Level
    findings: tuple[str, ...]
    at_mono_s: float


class IdleHeldChanged(NamedTuple):
    """A GPU, or one MIG slice of it (``mig_uuid``), started (``idle_held`` true) or stopped
    being idle-held (:class:`hub.domain.gpus.IdleRule`). ``idle_since_wall_s``: when its
    utilization went to or under the rule's limit while held (hub receive time). ``holders``:
    the processes holding it, as the agent sent them (user, pid, command, gpu_mem_bytes, job,
    container, started_epoch_s; on an end, those of the last idle sample)."""

    node_id: str
    gpu_index: str
    mig_uuid: str | None
    idle_held: bool
    idle_since_wall_s: float
    holders: tuple[Mapping[str, Any], ...]
    at_wall_s: float


class AlertNotified(NamedTuple):
    """An alert message went to a channel (``delivered``) or was given up after its retries
    (``reason``). Published by :mod:`hub.alerts` (on the event loop) for the event log."""

    rule: str
    status: str  # firing or resolved
    subjects: tuple[str, ...]
    nodes: tuple[str, ...]  # the nodes the subjects are about, each once (none: lab-wide, gpus_free)
    channel: str
    delivered: bool
    reason: str | None
    at_wall_s: float


class NodeRestored(NamedTuple):
    """A node remembered in the hub's state file came back into the registry as offline (the
    hub restarted; :meth:`hub.registry.NodeRegistry.restore`). Not a :class:`StatusChanged`:
    nothing happened to the node, so the presenter, the store, the liveness and event logs, usage
    accounting and idle-holder tracking have nothing to do (the page reads restored nodes from the
    registry). Alerts subscribe: a node still offline after a restart can fire ``node_offline``,
    counted from ``last_seen_wall_s``."""

    node_id: str
    hello: Hello | None  # the last hello remembered (its GPUs' models), if any
    group: str | None
    last_seen_wall_s: float  # when the hub last heard from the node, before the restart


class NodeRemoved(NamedTuple):
    """The node was forgotten (``DELETE /api/v1/nodes/{id}``)."""

    node_id: str


Event = (
    NodeConnected
    | StatusChanged
    | SampleApplied
    | SampleLate
    | SampleStillLate
    | GpuStateChanged
    | GpuHealthChanged
    | IdleHeldChanged
    | AlertNotified
    | NodeRestored
    | NodeRemoved
)
E = TypeVar(
    "E",
    NodeConnected,
    StatusChanged,
    SampleApplied,
    SampleLate,
    SampleStillLate,
    GpuStateChanged,
    GpuHealthChanged,
    IdleHeldChanged,
    AlertNotified,
    NodeRestored,
    NodeRemoved,
)


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def wants(self, kind: type) -> bool:
        """Whether anyone subscribes to ``kind``: publishers skip building events nobody reads."""
        return kind in self._handlers

    def publish(self, event: Event) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:  # one subscriber's bug must not cost the others, or the agent
                log.exception("handling %s failed", type(event).__name__)
