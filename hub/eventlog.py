"""The lab's event log: what happened to each node and GPU, one line each, kept 90 days.

:class:`EventLog` subscribes to the registry's events and turns each that a person would look
up later ("what happened to gpu07 overnight?") into an :class:`EventRow`: node status
transitions, GPU health changes, idle-held starts and ends, agent version and driver changes,
gaps in a node's samples that usage accounting could not count, nodes forgotten, alert
messages sent or given up (:mod:`hub.alerts`). Rows wait in
:attr:`EventLog.pending` until the store writes them off the event loop. Pure: no I/O, the clock
is injected.

Agent and driver versions are compared with the node's previous hello; after a restart the
store hands the versions it remembers to :meth:`EventLog.seed`, so an upgrade made while the hub
was down is logged too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from hub.domain.events import (
    AlertNotified,
    EventBus,
    GpuHealthChanged,
    IdleHeldChanged,
    NodeConnected,
    NodeRemoved,
    StatusCause,
    StatusChanged,
)
from hub.domain.gpus import UNKNOWN_USER
from hub.domain.nodes import Clock
from node_agent.protocol import MAX_STRING_CHARS

MAX_SUMMARY_CHARS = 300
MAX_USERS_NAMED = 5
MAX_ALERT_NODES = 100  # rows one alert message adds to the log (a grouped message names many nodes)
HUB_STOPPING = "hub stopping"  # the cause of the offline transitions the hub's own shutdown makes


class EventRow(NamedTuple):
    at_s: float  # epoch seconds (the hub's wall clock when it happened)
    node_id: str
    kind: str  # one of hub.usage.schema.EVENT_KINDS
    gpu: str | None  # a GPU index, "<index>/<MIG uuid>" for a slice, or None for the node
    summary: str  # words for people, at most MAX_SUMMARY_CHARS
    detail: Mapping[str, Any]  # the facts behind the words, as JSON


def _short(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _users(holders: tuple[Mapping[str, Any], ...]) -> list[str]:
    users = sorted({str(h.get("user") or UNKNOWN_USER)[:MAX_STRING_CHARS] for h in holders})
    return users


def _version(value: Any) -> str | None:
    return value[:MAX_STRING_CHARS] if isinstance(value, str) and value else None


class EventLog:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._versions: dict[str, tuple[str | None, str | None]] = {}  # node -> (agent, driver)
        self.pending: list[EventRow] = []
        # set when this hub shuts down: the agents' connections it closes are not their goodbyes
        self.hub_stopping = False

    def subscribe(self, events: EventBus) -> None:
        events.subscribe(StatusChanged, self.status_changed)
        events.subscribe(GpuHealthChanged, self.health_changed)
        events.subscribe(IdleHeldChanged, self.idle_held_changed)
        events.subscribe(NodeConnected, self.connected)
        events.subscribe(NodeRemoved, self.removed)
        events.subscribe(AlertNotified, self.alert_notified)

    def seed(self, versions: Mapping[str, tuple[str | None, str | None]]) -> None:
        """The agent and driver versions remembered from before a restart (nodes seen since win)."""
        for node_id, pair in versions.items():
            self._versions.setdefault(node_id, pair)

    def _add(self, node_id: str, kind: str, gpu: str | None, summary: str, **detail: Any) -> None:
        self.pending.append(EventRow(self._clock.wall(), node_id, kind, gpu, _short(summary), detail))

    # ------------------------------------------------------------------ events
    def status_changed(self, event: StatusChanged) -> None:
        cause = event.cause.value
        if self.hub_stopping and event.cause is StatusCause.GOODBYE:
            cause = HUB_STOPPING
        self._add(
            event.node_id,
            "status",
            None,
            f"{event.old.value} → {event.new.value} ({cause})",
            old=event.old.value,
            new=event.new.value,
            cause=cause,
            last_seen_epoch_s=event.last_seen_wall_s,
        )

    def health_changed(self, event: GpuHealthChanged) -> None:
        words = "; ".join(event.findings)
        self._add(
            event.node_id,
            "gpu_health",
            event.gpu_index,
            f"GPU {event.gpu_index}: {event.old.value} → {event.new.value}" + (f": {words}" if words else ""),
            old=event.old.value,
            new=event.new.value,
            uuid=event.gpu_uuid,
            findings=list(event.findings),
        )

    def idle_held_changed(self, event: IdleHeldChanged) -> None:
        users = _users(event.holders)
        named = ", ".join(users[:MAX_USERS_NAMED]) + (" …" if len(users) > MAX_USERS_NAMED else "")
        where = f"GPU {event.gpu_index}" + (f" ({event.mig_uuid})" if event.mig_uuid else "")
        gpu = event.gpu_index if event.mig_uuid is None else f"{event.gpu_index}/{event.mig_uuid}"
        if event.idle_held:
            summary = f"{where}: idle-held by {named or UNKNOWN_USER}"
            kind = "idle_held_start"
        else:
            minutes = max(0.0, event.at_wall_s - event.idle_since_wall_s) / 60
            summary = f"{where}: no longer idle-held ({named or UNKNOWN_USER}; idle {minutes:.0f} min)"
            kind = "idle_held_end"
        self._add(
            event.node_id,
            kind,
            gpu,
            summary,
            users=users[: MAX_USERS_NAMED * 4],
            idle_since_epoch_s=event.idle_since_wall_s,
        )

    def alert_notified(self, event: AlertNotified) -> None:
        """One row per node the message named (a grouped message: each of its nodes), or one
        row under no node for a lab-wide one (``gpus_free``)."""
        outcome = "sent" if event.delivered else f"not delivered ({event.reason or 'gave up'})"
        summary = f"alert {event.rule!r} {event.status} → {event.channel}: {outcome}"
        for node_id in event.nodes[:MAX_ALERT_NODES] or ("",):
            self._add(
                node_id,
                "alert",
                None,
                summary,
                rule=event.rule,
                status=event.status,
                channel=event.channel,
                delivered=event.delivered,
                subjects=list(event.subjects[:MAX_ALERT_NODES]),
            )

    def connected(self, event: NodeConnected) -> None:
        hello = event.hello
        agent = _version(hello.agent_version)
        driver = _version(hello.gpu_driver.get("driver_version"))
        old = self._versions.get(event.node_id)
        self._versions[event.node_id] = (agent, driver)
        if old is None:
            return  # first seen: its status change says so
        if old[0] != agent:
            self._add(
                event.node_id, "agent_version", None, f"agent {old[0]} → {agent}", old=old[0], new=agent
            )
        if old[1] != driver:
            self._add(
                event.node_id, "driver", None, f"GPU driver {old[1]} → {driver}", old=old[1], new=driver
            )

    def removed(self, event: NodeRemoved) -> None:
        self._versions.pop(event.node_id, None)
        self._add(event.node_id, "node_removed", None, "forgotten (DELETE /api/v1/nodes)")

    def sample_gap(self, node_id: str, uncounted_s: float, at_wall_s: float) -> None:
        """From usage accounting: samples stopped for longer than one may cover."""
        self.pending.append(
            EventRow(
                at_wall_s,
                node_id,
                "sample_gap",
                None,
                f"no samples for {uncounted_s:.0f} s beyond the late limit: not counted in usage",
                {"uncounted_s": uncounted_s},
            )
        )

    # ------------------------------------------------------------------ for the store
    def take(self) -> list[EventRow]:
        taken, self.pending = self.pending, []
        return taken

    def put_back(self, rows: list[EventRow], max_rows: int) -> int:
        """Returns rows the store could not write, before the newer ones; past ``max_rows`` the
        oldest are dropped. Returns how many."""
        self.pending = rows + self.pending
        over = len(self.pending) - max_rows
        if over <= 0:
            return 0
        del self.pending[:over]
        return over
