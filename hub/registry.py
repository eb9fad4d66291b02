"""Node states: the latest merged snapshot of every node and its liveness. Pure, no I/O.

The registry is where the agents' messages become the hub's picture: a hello connects a node,
deltas merge into its state, and :meth:`NodeRegistry.sweep` marks silent nodes stale and then
offline (the thresholds: :class:`hub.domain.nodes.Liveness`). Each change is published as a
domain event (:mod:`hub.domain.events`) on the registry's bus, for the presenter
(:mod:`hub.fanout`, :mod:`hub.scene`), the store, the liveness log and any later subscriber.

The decoder holds each message to the protocol's limits; :meth:`NodeRegistry.delta` holds the
merged state to them too, since small deltas could otherwise grow it without end. In the
snapshot's shape only ``gpus`` has open-ended keys; every other object has fixed fields and
every list is replaced whole, so each string and list in the merged state was checked in the
message that carried it. What remains is the GPU count and the total size
(:data:`MAX_STATE_BYTES`): a delta that would break either is refused with
:class:`~node_agent.protocol.ProtocolError` (close code 1008) and the state stays as it was.
"""

from __future__ import annotations

import orjson

from hub.domain.events import (
    EventBus,
    GpuHealthChanged,
    GpuStateChanged,
    NodeConnected,
    NodeRemoved,
    NodeRestored,
    SampleApplied,
    SampleLate,
    SampleStillLate,
    StatusCause,
    StatusChanged,
)
from hub.domain.gpus import GpuFreeRule, GpuState, gpu_state
from hub.domain.health import HEALTHY, Health, Level, gpu_health, health_may_change
from hub.domain.nodes import Clock, Liveness, Naming, Node, NodeStatus, sort_key
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

__all__ = ["Clock", "Liveness", "Naming", "Node", "NodeRegistry", "NodeStatus", "sort_key"]

# A merge grows the state's JSON by at most what the patch holds, and a patch's value takes at
# most this many bytes per character of the message that carried it (``1e15``: 18 bytes from 4
# characters; a non-ASCII character: up to 4 bytes): see :func:`_checked_size`.
STATE_BYTES_PER_MESSAGE_CHAR = 5


class NodeRegistry:
    def __init__(
        self,
        clock: Clock,
        liveness: Liveness | None = None,
        names: dict[str, Naming] | None = None,
        gpu_free: GpuFreeRule | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._clock = clock
        self._liveness = liveness or Liveness()
        self._names = names or {}
        self._gpu_free = gpu_free or GpuFreeRule()
        self.events = events or EventBus()
        self.nodes: dict[str, Node] = {}
        self._connections = 0
        # per node, each GPU's state as last published; kept only while GpuStateChanged has subscribers
        self._gpu_states: dict[str, dict[str, GpuState]] = {}
        # per node, its hello's GPU facts by index (the maximum PCIe link its health is judged by)
        self._gpu_statics: dict[str, dict[str, dict[str, object]]] = {}

    # ------------------------------------------------------------------ agent side
    def hello(self, hello: Hello, address: str | None = None) -> int:
        """A (re)connecting agent. Returns the connection id that now owns the node."""
        naming = self._names.get(hello.node) or self._names.get(address or "") or Naming()
        node = self.nodes.get(hello.node)
        if node is None:
            node = Node(hello.node, display_name=hello.node, group=None)
            self.nodes[hello.node] = node
        previous = node.hello
        node.display_name = naming.display_name or hello.node
        node.group = naming.group
        node.hello = hello
        self._gpu_statics[hello.node] = _statics(hello)
        node.interval_s = hello.interval_s
        node.address = address
        node.state = {}
        node.state_bytes_max = 2
        self._connections += 1
        node.connection = self._connections
        self._seen(node)
        node.last_sample_mono = node.last_seen_mono
        was_late, node.sample_late = node.sample_late, False
        old_status, node.status = node.status, NodeStatus.LIVE
        facts_changed = previous is None or (
            previous.host != hello.host
            or previous.gpus != hello.gpus
            or previous.gpu_driver != hello.gpu_driver
        )
        events = self.events
        events.publish(NodeConnected(node.node_id, hello, address, facts_changed, node.last_seen_wall))
        if was_late:
            events.publish(SampleLate(node.node_id, False, node.last_seen_mono))
        if old_status is not NodeStatus.LIVE:
            events.publish(
                StatusChanged(
                    node.node_id, old_status, NodeStatus.LIVE, StatusCause.HELLO, node.last_seen_wall
                )
            )
        return node.connection

    def delta(self, node_id: str, connection: int, delta: Delta, message_chars: int | None = None) -> None:
        """Applies a delta from the connection that owns the node; others are ignored.

        ``message_chars``, the length of the message that carried the delta, lets the size
        limit be checked without encoding the state on most messages. Raises
        :class:`ProtocolError` (and keeps the state) when the merged state would break a limit.
        """
        node = self.nodes.get(node_id)
        if node is None or node.connection != connection:
            return
        patch = delta.patch
        if patch:
            merged = merge_patch(node.state, patch)
            node.state_bytes_max = _checked_size(node, merged, message_chars)
        self._seen(node)
        node.clock_ahead_s = delta.ts - node.last_seen_wall
        old_status = node.status
        was_live = old_status is NodeStatus.LIVE
        node.status = NodeStatus.LIVE
        events = self.events
        if not patch:
            if not was_live:
                events.publish(
                    StatusChanged(
                        node_id, old_status, NodeStatus.LIVE, StatusCause.MESSAGE, node.last_seen_wall
                    )
                )
                self._publish_gpu_states(node, None)
            return
        old_gpus = node.state.get("gpus") or {}
        node.state = merged
        was_late = node.sample_late
        new_sample = "sampled_at" in patch
        if new_sample:
            node.last_sample_mono = node.last_seen_mono
            node.samples += 1
            node.sample_late = False
        gpus_patch = patch.get("gpus")
        if not isinstance(gpus_patch, dict):
            gpus_patch = None
        changed_gpus = frozenset(gpus_patch) if gpus_patch else frozenset()
        new_gpus = node.state.get("gpus") or {}
        gpu_set_changed = old_gpus.keys() != new_gpus.keys()
        aged, health_changes = self._judge_health(node, gpus_patch, gpu_set_changed)
        if aged:  # their rows change though their samples did not
            changed_gpus |= aged
        late_ended = was_late and not node.sample_late
        # the status first, once the state is merged: a subscriber sees the node as it now is
        if not was_live:
            events.publish(
                StatusChanged(node_id, old_status, NodeStatus.LIVE, StatusCause.MESSAGE, node.last_seen_wall)
            )
        if late_ended:
            events.publish(SampleLate(node_id, False, node.last_seen_mono))
        if events.wants(SampleApplied):
            events.publish(
                SampleApplied(
                    node_id,
                    merged,
                    "host" in patch,
                    changed_gpus,
                    new_sample,
                    gpu_set_changed,
                    late_ended,
                    not was_live,
                    node.last_seen_mono,
                )
            )
        if health_changes and events.wants(GpuHealthChanged):
            self._publish_gpu_health(node, health_changes)
        if not was_live or late_ended or gpu_set_changed:
            self._publish_gpu_states(node, None)
        elif changed_gpus and events.wants(GpuStateChanged):
            self._publish_gpu_states(node, changed_gpus)

    def disconnect(self, node_id: str, connection: int) -> None:
        """The agent's connection ended. A clean goodbye turns the node offline at once."""
        node = self.nodes.get(node_id)
        if node is None or node.connection != connection:
            return  # a newer connection already owns this node
        node.connection = 0
        self._set_status(node, NodeStatus.OFFLINE, StatusCause.GOODBYE)

    def remove(self, node_id: str) -> bool:
        """Forgets the node; False when it was not known."""
        if self.nodes.pop(node_id, None) is None:
            return False
        self._gpu_states.pop(node_id, None)
        self._gpu_statics.pop(node_id, None)
        self.events.publish(NodeRemoved(node_id))
        return True

    # ------------------------------------------------------------------ liveness
    def sweep(self) -> None:
        """Marks silent nodes stale or offline, and live nodes whose samples stopped late (the
        rule: :class:`~hub.domain.nodes.Liveness`). Call it a few times per second."""
        now = self._clock.monotonic()
        liveness = self._liveness
        for node in self.nodes.values():
            if node.status is NodeStatus.OFFLINE:
                continue
            target = liveness.status_after(now - node.last_seen_mono, node.interval_s)
            if target is NodeStatus.LIVE:
                if now - node.last_sample_mono >= liveness.late_after_s(node.interval_s):
                    # heartbeats flow but samples don't: SampleLate the first time, then
                    # SampleStillLate on every sweep (how late it is grows)
                    if node.sample_late:
                        self.events.publish(SampleStillLate(node.node_id, now - node.last_sample_mono, now))
                    else:
                        node.sample_late = True
                        self.events.publish(SampleLate(node.node_id, True, now))
                        self._publish_gpu_states(node, None)
                continue
            self._set_status(node, target, StatusCause.SILENCE)

    def sample_age_s(self, node: Node) -> float:
        """Seconds since the node's last new sample (grows while heartbeats alone arrive)."""
        return self._clock.monotonic() - node.last_sample_mono

    def silent_s(self, node: Node) -> float:
        return self._clock.monotonic() - node.last_seen_mono

    # ------------------------------------------------------------------ helpers
    def _seen(self, node: Node) -> None:
        node.last_seen_mono = self._clock.monotonic()
        node.last_seen_wall = self._clock.wall()

    def _set_status(self, node: Node, status: NodeStatus, cause: StatusCause) -> None:
        if node.status is status:
            return
        old, node.status = node.status, status
        self.events.publish(StatusChanged(node.node_id, old, status, cause, node.last_seen_wall))
        self._publish_gpu_states(node, None)

    def _publish_gpu_states(self, node: Node, indexes: frozenset[str] | None) -> None:
        """Publishes a :class:`GpuStateChanged` for each GPU (of ``indexes``, or all) whose
        state changed; does nothing while nobody subscribes."""
        if not self.events.wants(GpuStateChanged):
            return
        known = self._gpu_states.setdefault(node.node_id, {})
        gpus = node.state.get("gpus") or {}
        reporting = node.reporting
        now = node.last_seen_mono
        for index in (known.keys() | gpus.keys()) if indexes is None else indexes:
            gpu = gpus.get(index)
            old = known.get(index)
            new = None if gpu is None else gpu_state(gpu, self._gpu_free, reporting)
            if new is old:
                continue
            if new is None:
                del known[index]
            else:
                known[index] = new
            self.events.publish(GpuStateChanged(node.node_id, index, old, new, gpu or {}, now))

    def _judge_health(
        self, node: Node, gpus_patch: dict[str, object] | None, judge_all: bool
    ) -> tuple[frozenset[str], list[tuple[str, Level, Health]]]:
        """Judges the health of each GPU that ``gpus_patch`` may have changed (every GPU when
        ``judge_all``) and of each whose verdict's time is up (an Xid leaving the wall), and keeps
        the verdicts other than ok in ``node.gpu_health``: the one judgement the rows, the top bar
        and :class:`GpuHealthChanged` share. Most patches hold no field a finding reads and judge
        nothing. Returns the GPUs judged again for their time alone (their rows change though
        their samples may not), and (index, old level, new health) for each change of level."""
        verdicts = node.gpu_health
        gpus = node.state.get("gpus") or {}
        statics = self._gpu_statics.get(node.node_id) or {}
        now = self._clock.wall()
        judge: list[str] = []
        aged: frozenset[str] = frozenset()
        if judge_all:
            for index in verdicts.keys() - gpus.keys():
                del verdicts[index]
            judge = list(gpus)
        else:
            if gpus_patch:
                for index, gpu_patch in gpus_patch.items():
                    gpu = gpus.get(index)
                    if gpu is None:  # the GPU is gone
                        verdicts.pop(index, None)
                    elif isinstance(gpu_patch, dict) and health_may_change(
                        gpu_patch, gpu, statics.get(index)
                    ):
                        judge.append(index)
            if verdicts:
                aged = frozenset(index for index, verdict in verdicts.items() if now > verdict.until_epoch_s)
                judge.extend(index for index in aged if index not in judge)
        changes = []
        for index in judge:
            gpu = gpus.get(index)
            if gpu is None:
                verdicts.pop(index, None)
                continue
            health = gpu_health(gpu, statics.get(index), now)
            old = verdicts.get(index, HEALTHY).level
            if health.level is Level.OK:
                verdicts.pop(index, None)
            else:
                verdicts[index] = health
            if health.level is not old:
                changes.append((index, old, health))
        return aged, changes

    def _publish_gpu_health(self, node: Node, changes: list[tuple[str, Level, Health]]) -> None:
        """A :class:`GpuHealthChanged` for each change of a GPU's health level."""
        statics = self._gpu_statics.get(node.node_id) or {}
        for index, old, health in changes:
            uuid = (statics.get(index) or {}).get("uuid")
            self.events.publish(
                GpuHealthChanged(
                    node.node_id,
                    index,
                    uuid if isinstance(uuid, str) else None,
                    old,
                    health.level,
                    tuple(f.words for f in health.findings),
                    node.last_seen_mono,
                )
            )

    def ordered(self) -> list[Node]:
        """Nodes in display order: by group (ungrouped last), then display name."""
        return sorted(self.nodes.values(), key=sort_key)

    def restore(self, node: Node) -> None:
        """Adds a remembered node (from the hub's store) as offline, unless it is known, and
        publishes :class:`NodeRestored`; its silence counts from when it was last seen (by the
        wall clock: the hub restarted since)."""
        if node.node_id in self.nodes:
            return
        if node.last_seen_wall:
            node.last_seen_mono = self._clock.monotonic() - max(0.0, self._clock.wall() - node.last_seen_wall)
        self.nodes[node.node_id] = node
        if node.hello is not None:
            self._gpu_statics[node.node_id] = _statics(node.hello)
        self._judge_health(node, None, judge_all=True)  # its rows show what its state says
        self.events.publish(NodeRestored(node.node_id, node.hello, node.group, node.last_seen_wall))


def _statics(hello: Hello) -> dict[str, dict[str, object]]:
    """A hello's GPU facts by GPU index (as the snapshot keys its GPUs)."""
    return {str(g.get("index")): g for g in hello.gpus}


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
