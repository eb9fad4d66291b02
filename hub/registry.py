"""Node states: the latest merged snapshot of every node and its liveness. Pure, no I/O.

Every mutation returns a :class:`NodeChange` (or ``None`` when nothing visible changed), which
says exactly which parts of the node's card must be rendered again.

The decoder holds each message to the protocol's limits; :meth:`NodeRegistry.delta` holds the
merged state to them too, since small deltas could otherwise grow it without end. In the
snapshot's shape only ``gpus`` has open-ended keys; every other object has fixed fields and
every list is replaced whole, so each string and list in the merged state was checked in the
message that carried it. What remains is the GPU count and the total size
(:data:`MAX_STATE_BYTES`): a delta that would break either is refused with
:class:`~node_agent.protocol.ProtocolError` (close code 1008) and the state stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

import orjson

from node_agent.protocol import (
    CLOSE_POLICY,
    MAX_GPUS,
    MAX_STATE_BYTES,
    Delta,
    Hello,
    ProtocolError,
    Snapshot,
    merge_patch,
)

# A merge grows the state's JSON by at most what the patch holds, and a patch's value takes at
# most this many bytes per character of the message that carried it (``1e15``: 18 bytes from 4
# characters; a non-ASCII character: up to 4 bytes): see :meth:`NodeRegistry._check_limits`.
STATE_BYTES_PER_MESSAGE_CHAR = 5


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
    version: int = 0  # bumped on every visible change

    @property
    def reporting(self) -> bool:
        """Live with fresh samples: only then do its GPU rows show what is true now."""
        return self.status is NodeStatus.LIVE and not self.sample_late


class NodeChange(NamedTuple):
    """What to render again: the whole card, or only the host part and some GPU rows. (One per
    agent message: a NamedTuple is several times cheaper to make than a frozen dataclass.)"""

    node_id: str
    card: bool = False
    host: bool = False
    gpus: frozenset[str] = frozenset()
    removed: bool = False


class NodeRegistry:
    def __init__(
        self,
        clock: Clock,
        liveness: Liveness | None = None,
        names: dict[str, Naming] | None = None,
    ) -> None:
        self._clock = clock
        self._liveness = liveness or Liveness()
        self._names = names or {}
        self.nodes: dict[str, Node] = {}
        self._connections = 0

    # ------------------------------------------------------------------ agent side
    def hello(self, hello: Hello, address: str | None = None) -> tuple[int, NodeChange]:
        """A (re)connecting agent. Returns the connection id that now owns the node."""
        naming = self._names.get(hello.node) or self._names.get(address or "") or Naming()
        node = self.nodes.get(hello.node)
        if node is None:
            node = Node(hello.node, display_name=hello.node, group=None)
            self.nodes[hello.node] = node
        node.display_name = naming.display_name or hello.node
        node.group = naming.group
        node.hello = hello
        node.interval_s = hello.interval_s
        node.address = address
        node.state = {}
        node.state_bytes_max = 2
        self._connections += 1
        node.connection = self._connections
        self._seen(node)
        node.last_sample_mono = node.last_seen_mono
        node.sample_late = False
        node.status = NodeStatus.LIVE
        node.version += 1
        return node.connection, NodeChange(node.node_id, card=True)

    def delta(
        self, node_id: str, connection: int, delta: Delta, message_chars: int | None = None
    ) -> NodeChange | None:
        """Applies a delta from the connection that owns the node; others are ignored.

        ``message_chars``, the length of the message that carried the delta, lets the size
        limit be checked without encoding the state on most messages. Raises
        :class:`ProtocolError` (and keeps the state) when the merged state would break a limit.
        """
        node = self.nodes.get(node_id)
        if node is None or node.connection != connection:
            return None
        patch = delta.patch
        if patch:
            merged = merge_patch(node.state, patch)
            node.state_bytes_max = _checked_size(node, merged, message_chars)
        self._seen(node)
        node.clock_ahead_s = delta.ts - node.last_seen_wall
        was_live = node.status is NodeStatus.LIVE
        node.status = NodeStatus.LIVE
        if not patch:
            if was_live:
                return None
            node.version += 1
            return NodeChange(node_id, card=True)
        old_gpus = node.state.get("gpus") or {}
        node.state = merged
        was_late = node.sample_late
        if "sampled_at" in patch:
            node.last_sample_mono = node.last_seen_mono
            node.samples += 1
            node.sample_late = False
        node.version += 1
        gpus_patch = patch.get("gpus")
        new_gpus = node.state.get("gpus") or {}
        if not was_live or was_late != node.sample_late or old_gpus.keys() != new_gpus.keys():
            return NodeChange(node_id, card=True)
        return NodeChange(
            node_id,
            host="host" in patch,
            gpus=frozenset(gpus_patch) if isinstance(gpus_patch, dict) else frozenset(),
        )

    def disconnect(self, node_id: str, connection: int) -> NodeChange | None:
        """The agent's connection ended. A clean goodbye turns the node offline at once."""
        node = self.nodes.get(node_id)
        if node is None or node.connection != connection:
            return None  # a newer connection already owns this node
        node.connection = 0
        return self._set_status(node, NodeStatus.OFFLINE)

    def remove(self, node_id: str) -> NodeChange | None:
        if self.nodes.pop(node_id, None) is None:
            return None
        return NodeChange(node_id, removed=True)

    # ------------------------------------------------------------------ liveness
    def sweep(self) -> list[NodeChange]:
        """Marks silent nodes stale or offline. Call it a few times per second."""
        now = self._clock.monotonic()
        changes = []
        for node in self.nodes.values():
            if node.status is NodeStatus.OFFLINE:
                continue
            late_after_s = self._liveness.stale_after_intervals * node.interval_s
            silent_s = now - node.last_seen_mono
            if silent_s >= self.offline_after_s(node):
                target = NodeStatus.OFFLINE
            elif silent_s >= late_after_s:
                target = NodeStatus.STALE
            else:
                if now - node.last_sample_mono >= late_after_s:
                    # heartbeats flow but samples don't: show how late, every sweep; the first
                    # time, the whole card (its GPU rows no longer show the truth)
                    became_late = not node.sample_late
                    node.sample_late = True
                    node.version += 1
                    changes.append(NodeChange(node.node_id, card=became_late, host=not became_late))
                continue
            change = self._set_status(node, target)
            if change is not None:
                changes.append(change)
        return changes

    def offline_after_s(self, node: Node) -> float:
        return max(
            self._liveness.offline_after_intervals * node.interval_s,
            self._liveness.min_offline_after_s,
        )

    def sample_age_s(self, node: Node) -> float:
        """Seconds since the node's last new sample (grows while heartbeats alone arrive)."""
        return self._clock.monotonic() - node.last_sample_mono

    def silent_s(self, node: Node) -> float:
        return self._clock.monotonic() - node.last_seen_mono

    # ------------------------------------------------------------------ helpers
    def _seen(self, node: Node) -> None:
        node.last_seen_mono = self._clock.monotonic()
        node.last_seen_wall = self._clock.wall()

    def _set_status(self, node: Node, status: NodeStatus) -> NodeChange | None:
        if node.status is status:
            return None
        node.status = status
        node.version += 1
        return NodeChange(node.node_id, card=True)

    def ordered(self) -> list[Node]:
        """Nodes in display order: by group (ungrouped last), then display name."""
        return sorted(self.nodes.values(), key=sort_key)

    def restore(self, node: Node) -> None:
        """Adds a remembered node (from the hub's store) as offline, unless it is known; its
        silence counts from when it was last seen (by the wall clock: the hub restarted since)."""
        if node.node_id in self.nodes:
            return
        if node.last_seen_wall:
            node.last_seen_mono = self._clock.monotonic() - max(0.0, self._clock.wall() - node.last_seen_wall)
        self.nodes[node.node_id] = node


def _checked_size(node: Node, merged: Snapshot, message_chars: int | None) -> int:
    """A bound on the size of ``merged`` as JSON, within :data:`MAX_STATE_BYTES`; raises
    :class:`ProtocolError` when ``merged`` holds too many GPUs or too many bytes.

    The bound grows by what the message could add (:data:`STATE_BYTES_PER_MESSAGE_CHAR`); only
    when it passes the limit is the state encoded and the bound made exact, so a node whose
    state is far from the limit is encoded once every several messages, not on every one."""
    gpus = merged.get("gpus")
    if gpus is not None and len(gpus) > MAX_GPUS:
        raise ProtocolError(
            f"the node's state would hold {len(gpus)} GPUs, over the limit of {MAX_GPUS}", CLOSE_POLICY
        )
    if message_chars is not None:
        bound = node.state_bytes_max + STATE_BYTES_PER_MESSAGE_CHAR * message_chars
        if bound <= MAX_STATE_BYTES:
            return bound
    size = len(orjson.dumps(merged))
    if size > MAX_STATE_BYTES:
        raise ProtocolError(
            f"the node's state would take {size} bytes as JSON, over the limit of {MAX_STATE_BYTES}",
            CLOSE_POLICY,
        )
    return size


def sort_key(node: Node) -> tuple[Any, ...]:
    # as the browser orders cards it inserts (HeadView.sort_key): case-insensitively
    return (node.group is None, (node.group or "").lower(), node.display_name.lower(), node.node_id)
