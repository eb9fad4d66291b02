"""A node as the hub knows it: identity, liveness status, its agent's hello and merged state.

The liveness thresholds (when a silent node turns stale, then offline) are defined here;
:meth:`hub.registry.NodeRegistry.sweep` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from hub.domain.health import Health
from node_agent.protocol import Hello, Snapshot


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...


class NodeStatus(StrEnum):
    LIVE = "live"
    STALE = "stale"  # heartbeats are late
    OFFLINE = "offline"  # heartbeats stopped long enough, or the agent said goodbye


@dataclass(frozen=True, slots=True)
class Liveness:
    """When a silent node turns stale and offline, in multiples of its sampling interval."""

    stale_after_intervals: float = 3.0
    offline_after_intervals: float = 8.0
    min_offline_after_s: float = 3.0  # fast intervals still get a few seconds of grace

    def late_after_s(self, interval_s: float) -> float:
        """Silence (or, with heartbeats, no new sample) for this long makes a node late."""
        return self.stale_after_intervals * interval_s

    def offline_after_s(self, interval_s: float) -> float:
        return max(self.offline_after_intervals * interval_s, self.min_offline_after_s)

    def status_after(self, silent_s: float, interval_s: float) -> NodeStatus:
        """The status of a node that has been silent for ``silent_s``."""
        if silent_s >= self.offline_after_s(interval_s):
            return NodeStatus.OFFLINE
        if silent_s >= self.late_after_s(interval_s):
            return NodeStatus.STALE
        return NodeStatus.LIVE


@dataclass(frozen=True, slots=True)
class Naming:
    """Display name and group for a node, looked up by node name, then by address."""

    display_name: str | None = None
    group: str | None = None


@dataclass(slots=True)
class Node:
    node_id: str
    display_name: str
    group: str | None
    interval_s: float = 1.0
    hello: Hello | None = None
    state: Snapshot = field(default_factory=dict)
    state_bytes_max: int = 2  # at least the size of ``state`` as JSON (``{}`` at first)
    status: NodeStatus = NodeStatus.OFFLINE
    address: str | None = None
    connection: int = 0  # id of the connection that currently speaks for this node
    last_seen_mono: float = 0.0
    last_seen_wall: float = 0.0
    last_sample_mono: float = 0.0  # when a patch with a new ``sampled_at`` arrived
    samples: int = 0  # patches with a new ``sampled_at`` so far: the history records each once
    clock_ahead_s: float = 0.0  # the agent's wall clock minus the hub's, at its last message
    sample_late: bool = False  # heartbeats arrive but samples do not (a hung collector)
    # each GPU's health other than ok, by index: judged by the registry when a patch may change
    # it (and when its time is up), read by whatever shows it
    gpu_health: dict[str, Health] = field(default_factory=dict)

    @property
    def reporting(self) -> bool:
        """Live with fresh samples: only then do its GPU rows show what is true now."""
        return self.status is NodeStatus.LIVE and not self.sample_late


def sort_key(node: Node) -> tuple[Any, ...]:
    """Display order: by group (ungrouped last), then display name, case-insensitively; the
    browser orders the cards it inserts the same way (``HeadView.sort_key``)."""
    return (node.group is None, (node.group or "").lower(), node.display_name.lower(), node.node_id)
