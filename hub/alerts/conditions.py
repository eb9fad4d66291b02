"""The rules' conditions, from the registry's domain events: the alert engine's input.

:class:`Conditions` subscribes only to the events its rules need (so a hub without GPU rules
never has the registry judge GPU states for it) and calls :meth:`AlertEngine.observe` when a
condition for a subject turns true or false, never on every sample: it keeps the set of
subjects whose condition holds. Each handler looks only at what its event changed (the GPUs of
a delta, its host part), so the cost does not grow with the lab. Everything comes from the
events: a node's group from its hello's name or address (the ``[names]`` table, as the registry
reads it), a GPU's model from its hello's facts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.alerts.config import AlertConfig, Kind, Rule
from hub.alerts.engine import AlertEngine, Subject
from hub.domain.events import (
    EventBus,
    GpuHealthChanged,
    GpuStateChanged,
    IdleHeldChanged,
    NodeConnected,
    NodeRemoved,
    NodeRestored,
    SampleApplied,
    StatusChanged,
)
from hub.domain.gpus import GpuFreeRule, GpuState, ratio_percent
from hub.domain.health import Level
from hub.domain.nodes import Clock, Naming, NodeStatus
from node_agent.protocol import GPU_COLLECTOR_DOWN, Hello

SAMPLES_TO_CONFIRM = 2  # after a hello: the first full sample, and its health judged


@dataclass(slots=True)
class _NodeFacts:
    group: str | None
    gpu_names: dict[str, str] = field(default_factory=dict)  # index -> the hello's GPU name
    # (kind, GPU index or None) -> the rules that apply: rules, the node's group and its GPUs'
    # names are fixed until its next hello (which makes new facts), so each is matched once;
    # nodes alike for every rule share one such dict (Conditions._learn)
    matching: dict[tuple[Kind, str | None], tuple[Rule, ...]] = field(default_factory=dict)
    # the host's disk list last judged: the registry shares it between samples while no disk
    # changed, and the same list gives the same verdicts
    disks_judged: object = None
    # the lowest threshold of the gpu_temp_above and mem_used_above rules for the node (inf:
    # none applies): while no condition of the node holds, a sample at or under it is judged
    # by one comparison, with no rule looked at (most samples of every node)
    temp_floor: float = math.inf
    mem_floor: float = math.inf


@dataclass(slots=True)
class _FreeTally:
    """One gpus_free rule's free GPUs (or MIG slices) per node and GPU, and their total, kept
    up to date as they change (no recount over the lab)."""

    by_node: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> GPU index -> free
    total: int = 0

    def set(self, node_id: str, index: str, count: int) -> None:
        per_node = self.by_node.get(node_id)
        old = per_node.get(index, 0) if per_node else 0
        if count == old:
            return
        self.total += count - old
        if count:
            self.by_node.setdefault(node_id, {})[index] = count
        elif per_node is not None:
            del per_node[index]
            if not per_node:
                del self.by_node[node_id]

    def drop_node(self, node_id: str) -> None:
        counts = self.by_node.pop(node_id, None)
        if counts:
            self.total -= sum(counts.values())


def _clock_text(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


def _offline_text(node_id: str, last_seen_wall_s: float) -> str:
    return f"{node_id} offline (last seen {_clock_text(last_seen_wall_s)})"


MAX_SHARED_MATCHING = 1000
"""Kinds of node (group, GPU names, the rules whose node patterns match) whose cache of
matching rules is shared; nodes of further kinds each keep their own. At 2,000 nodes of a few
kinds, one cache per node held about 5 MiB (#20.3)."""


class Conditions:
    def __init__(
        self,
        engine: AlertEngine,
        config: AlertConfig,
        names: Mapping[str, Naming],
        gpu_free: GpuFreeRule,
        clock: Clock,
    ) -> None:
        self._engine = engine
        self._names = names
        self._gpu_free = gpu_free
        self._clock = clock
        self._users = config.users
        self._rules: dict[Kind, list[Rule]] = {}
        for rule in config.rules:
            self._rules.setdefault(rule.when, []).append(rule)
        self._nodes: dict[str, _NodeFacts] = {}
        self._shared_matching: dict[tuple[object, ...], dict[tuple[Kind, str | None], tuple[Rule, ...]]] = {}
        self._active: set[tuple[str, str]] = set()  # (rule, subject key) whose condition holds
        self._holding: dict[str, int] = {}  # node -> how many of _active are of its subjects
        self._confirming: dict[str, int] = {}  # node -> new samples until restored alerts are judged
        self._gpu_faults: dict[tuple[str, str], set[str]] = {}  # (node, gpu) -> "health", "state"
        # gpus_free, per rule: its free GPUs, or free MIG slices of its profile
        self._free = {rule.name: _FreeTally() for rule in self._rules.get(Kind.GPUS_FREE, ())}
        self._counts_slices = any(rule.mig_profile for rule in self._rules.get(Kind.GPUS_FREE, ()))
        # restored nodes not judged yet, while held (None: judged as they come): see hold_restored
        self._held_restores: dict[str, NodeRestored] | None = None

    def subscribe(self, events: EventBus) -> None:
        kinds = self._rules.keys()
        events.subscribe(NodeConnected, self.node_connected)
        events.subscribe(NodeRestored, self.node_restored)
        events.subscribe(StatusChanged, self.status_changed)
        events.subscribe(NodeRemoved, self.node_removed)
        events.subscribe(SampleApplied, self.sample_applied)  # confirms restored alerts too
        if Kind.GPU_FAULT in kinds or Kind.GPUS_FREE in kinds:
            events.subscribe(GpuStateChanged, self.gpu_state_changed)
        if Kind.GPU_FAULT in kinds or Kind.GPU_WARNING in kinds:
            events.subscribe(GpuHealthChanged, self.gpu_health_changed)
        if Kind.GPU_IDLE_HELD in kinds:
            events.subscribe(IdleHeldChanged, self.idle_held_changed)

    def adopt_restored(self, rule_name: str, subject: Subject) -> None:
        """An alert of no node (gpus_free) restored as firing from the state file: its
        condition counts as holding, so the first count below the rule's resolves it. (A node's
        restored alerts are judged by its first samples: :meth:`AlertEngine.resolve_unconfirmed`.)"""
        if subject.node is None:
            self._active.add((rule_name, subject.key))

    def hold_restored(self) -> None:
        """Keeps the nodes restored from here on unjudged until :meth:`judge_restored`: the
        alerts firing before the restart must be back in the engine first, or a node offline
        since before it would fire ``node_offline`` a second time."""
        if self._held_restores is None:
            self._held_restores = {}

    def judge_restored(self) -> None:
        """Judges the restored nodes held so far, and each later one as it comes."""
        held, self._held_restores = self._held_restores, None
        for event in (held or {}).values():
            self._judge_restored(event)

    # ------------------------------------------------------------------ helpers
    def _set(
        self,
        rule: Rule,
        subject: Subject,
        active: bool,
        text: str = "",
        since_mono: float | None = None,
        users: tuple[str, ...] = (),
    ) -> None:
        key = (rule.name, subject.key)
        node_id = subject.node
        if active:
            if key in self._active:
                return
            self._active.add(key)
            if node_id is not None:
                self._holding[node_id] = self._holding.get(node_id, 0) + 1
        else:
            if key not in self._active:
                return
            self._active.discard(key)
            if node_id is not None:
                left = self._holding.get(node_id, 0) - 1
                if left > 0:
                    self._holding[node_id] = left
                else:
                    self._holding.pop(node_id, None)
        self._engine.observe(rule, subject, active, text, since_mono, users)

    def _matching(self, kind: Kind, node_id: str, gpu: str | None = None) -> tuple[Rule, ...]:
        rules = self._rules.get(kind)
        if not rules:
            return ()
        facts = self._nodes.get(node_id)
        if facts is not None:
            known = facts.matching.get((kind, gpu))
            if known is not None:
                return known
        group = facts.group if facts else None
        name = facts.gpu_names.get(gpu) if facts and gpu is not None else None
        found = tuple(
            r for r in rules if r.matches_node(node_id, group) and (gpu is None or r.matches_model(name))
        )
        if facts is not None:
            facts.matching[(kind, gpu)] = found
        return found

    def _gpu_name(self, node_id: str, index: str, gpu: Mapping[str, Any]) -> str | None:
        facts = self._nodes.get(node_id)
        name = facts.gpu_names.get(index) if facts else None
        sample_name = gpu.get("name")
        return name or (sample_name if isinstance(sample_name, str) else None)

    # ------------------------------------------------------------------ node events
    def _learn(self, node_id: str, group: str | None, hello: Hello | None) -> None:
        facts = self._nodes[node_id] = _NodeFacts(group)
        for gpu in hello.gpus if hello is not None else ():
            name = gpu.get("name")
            if isinstance(name, str):
                facts.gpu_names[str(gpu.get("index"))] = name
        # which rules apply to a node or one of its GPUs depends on nothing else than this
        alike = (
            group,
            tuple(sorted(facts.gpu_names.items())),
            tuple(rule.matches_node(node_id, group) for rules in self._rules.values() for rule in rules),
        )
        shared = self._shared_matching.get(alike)
        if shared is None and len(self._shared_matching) < MAX_SHARED_MATCHING:
            shared = self._shared_matching[alike] = {}
        if shared is not None:
            facts.matching = shared
        facts.temp_floor = self._floor(Kind.GPU_TEMP_ABOVE, node_id, group)
        facts.mem_floor = self._floor(Kind.MEM_USED_ABOVE, node_id, group)

    def _floor(self, kind: Kind, node_id: str, group: str | None) -> float:
        """The lowest threshold of the ``kind`` rules that may apply to the node (whatever its
        GPUs' models): no value at or under it crosses any of them."""
        thresholds = [
            rule.threshold
            for rule in self._rules.get(kind, ())
            if rule.threshold is not None and rule.matches_node(node_id, group)
        ]
        return min(thresholds, default=math.inf)

    def node_connected(self, event: NodeConnected) -> None:
        hello = event.hello
        naming = self._names.get(event.node_id) or self._names.get(event.address or "") or Naming()
        self._learn(event.node_id, naming.group, hello)
        if self._held_restores:
            self._held_restores.pop(event.node_id, None)  # back before it was judged: not offline
        self._confirming[event.node_id] = SAMPLES_TO_CONFIRM
        driver = hello.gpu_driver
        down = driver.get("collector_state") == GPU_COLLECTOR_DOWN
        for rule in self._matching(Kind.GPU_COLLECTOR_DOWN, event.node_id):
            reason = driver.get("error")
            text = f"{event.node_id}: GPU collector down" + (
                f" ({reason})" if isinstance(reason, str) else ""
            )
            self._set(rule, Subject(event.node_id, event.node_id), down, text)

    def node_restored(self, event: NodeRestored) -> None:
        if self._held_restores is not None:
            self._held_restores[event.node_id] = event
        else:
            self._judge_restored(event)

    def _judge_restored(self, event: NodeRestored) -> None:
        """A node back from the state file, offline: ``node_offline`` holds since it was last
        seen (its for_s may be over already; an alert that fired before the restart is only
        confirmed, not sent again). Its coming back resolves it like any other."""
        node_id = event.node_id
        self._learn(node_id, event.group, event.hello)
        rules = self._matching(Kind.NODE_OFFLINE, node_id)
        if not rules:
            return
        offline_for_s = (
            max(0.0, self._clock.wall() - event.last_seen_wall_s) if event.last_seen_wall_s else 0.0
        )
        since_mono = self._clock.monotonic() - offline_for_s
        for rule in rules:
            self._set(
                rule,
                Subject(node_id, node_id),
                True,
                _offline_text(node_id, event.last_seen_wall_s),
                since_mono,
            )

    def status_changed(self, event: StatusChanged) -> None:
        if event.new is NodeStatus.STALE:
            return
        offline = event.new is NodeStatus.OFFLINE
        for rule in self._matching(Kind.NODE_OFFLINE, event.node_id):
            text = _offline_text(event.node_id, event.last_seen_wall_s)
            self._set(rule, Subject(event.node_id, event.node_id), offline, text)
        if offline:  # its MIG slices no longer count (its GPUs' states say so for whole GPUs)
            for rule in self._rules.get(Kind.GPUS_FREE, ()):
                if rule.mig_profile:
                    self._free[rule.name].drop_node(event.node_id)
            self._update_free()

    def node_removed(self, event: NodeRemoved) -> None:
        node_id = event.node_id
        self._nodes.pop(node_id, None)
        self._confirming.pop(node_id, None)
        if self._held_restores:
            self._held_restores.pop(node_id, None)
        for key in [k for k in self._gpu_faults if k[0] == node_id]:
            del self._gpu_faults[key]
        for tally in self._free.values():
            tally.drop_node(node_id)
        prefix = (node_id + "/", node_id + ":")  # its GPUs' and disks' subjects (node names hold neither)
        self._active = {k for k in self._active if k[1] != node_id and not k[1].startswith(prefix)}
        self._holding.pop(node_id, None)
        self._engine.forget_node(node_id)
        self._update_free()

    # ------------------------------------------------------------------ samples
    def sample_applied(self, event: SampleApplied) -> None:
        node_id = event.node_id
        if event.new_sample and node_id in self._confirming:
            left = self._confirming[node_id] - 1
            if left:
                self._confirming[node_id] = left
            else:
                del self._confirming[node_id]
                self._engine.resolve_unconfirmed(node_id)
        state = event.state
        rules = self._rules
        facts = self._nodes.get(node_id)
        # while no condition of the node holds, values at or under the floors need no rule looked at
        quiet = facts if facts is not None and node_id not in self._holding else None
        if event.host and (Kind.DISK_USED_ABOVE in rules or Kind.MEM_USED_ABOVE in rules):
            self._host(node_id, state.get("host") or {}, quiet)
        if event.gpus and Kind.GPU_TEMP_ABOVE in rules and (quiet is None or quiet.temp_floor < math.inf):
            self._temps(node_id, state.get("gpus") or {}, event.gpus, quiet)
        if self._counts_slices:
            gpus = state.get("gpus") or {}
            indexes = gpus.keys() if (event.came_live or event.gpu_set_changed) else event.gpus
            self._mig_free(node_id, gpus, indexes)

    def _temps(
        self, node_id: str, gpus: Mapping[str, Any], indexes: Iterable[str], quiet: _NodeFacts | None
    ) -> None:
        """gpu_temp_above on the GPUs of a sample; ``quiet``: the node's facts while no
        condition of the node holds (the fast path)."""
        for index in indexes:
            gpu = gpus.get(index)
            temp = gpu.get("temp_celsius") if gpu else None
            if quiet is not None and (temp is None or temp <= quiet.temp_floor):
                continue  # under every rule's threshold, and no condition to end
            subject_key = f"{node_id}/{index}"
            for rule in self._matching(Kind.GPU_TEMP_ABOVE, node_id, index):
                assert rule.threshold is not None
                hot = temp is not None and temp > rule.threshold
                if not hot and (rule.name, subject_key) not in self._active:
                    continue  # cool, as it was: nothing to build
                text = f"{node_id} GPU {index} at {temp:g} °C (above {rule.threshold:g})" if hot else ""
                self._set(rule, Subject(subject_key, node_id, index), hot, text)

    def _host(self, node_id: str, host: Mapping[str, Any], quiet: _NodeFacts | None = None) -> None:
        """mem_used_above and disk_used_above on a sample's host part; ``quiet``: as in
        :meth:`_temps`."""
        used = ratio_percent(host.get("mem_used_bytes"), host.get("mem_total_bytes"))
        under = quiet is not None and (used is None or used <= quiet.mem_floor)
        for rule in () if under else self._matching(Kind.MEM_USED_ABOVE, node_id):
            assert rule.threshold is not None
            full = used is not None and used > rule.threshold
            if not full and (rule.name, f"{node_id}:mem") not in self._active:
                continue
            text = f"{node_id} memory {used:.0f}% used (above {rule.threshold:g}%)" if full else ""
            self._set(rule, Subject(f"{node_id}:mem", node_id), full, text)
        disks = host.get("disks")
        if disks is None:
            return
        facts = self._nodes.get(node_id)
        if facts is not None:
            if facts.disks_judged is disks:
                return
            facts.disks_judged = disks
        for rule in self._matching(Kind.DISK_USED_ABOVE, node_id):
            assert rule.threshold is not None
            for disk in disks:
                mount = disk.get("mount")
                used = ratio_percent(disk.get("used_bytes"), disk.get("total_bytes"))
                full = used is not None and used > rule.threshold
                if not full and (rule.name, f"{node_id}:{mount}") not in self._active:
                    continue
                text = f"{node_id} disk {mount} {used:.0f}% used (above {rule.threshold:g}%)" if full else ""
                self._set(rule, Subject(f"{node_id}:{mount}", node_id), full, text)

    # ------------------------------------------------------------------ GPUs
    def gpu_state_changed(self, event: GpuStateChanged) -> None:
        node_id, index = event.node_id, event.gpu_index
        if Kind.GPU_FAULT in self._rules:
            error = event.gpu.get("error")
            self._gpu_fault(node_id, index, "state", event.new is GpuState.FAULT, str(error or "GPU failed"))
        if Kind.GPUS_FREE in self._rules:
            name = self._gpu_name(node_id, index, event.gpu)
            facts = self._nodes.get(node_id)
            group = facts.group if facts else None
            for rule in self._rules[Kind.GPUS_FREE]:
                if rule.mig_profile:
                    continue
                free = (
                    event.new is GpuState.FREE
                    and rule.matches_node(node_id, group)
                    and rule.matches_model(name)
                )
                self._free[rule.name].set(node_id, index, int(free))
            self._update_free()

    def gpu_health_changed(self, event: GpuHealthChanged) -> None:
        node_id, index = event.node_id, event.gpu_index
        words = "; ".join(event.findings) or event.new.value
        self._gpu_fault(node_id, index, "health", event.new is Level.FAULT, words)
        for rule in self._matching(Kind.GPU_WARNING, node_id, index):
            warning = event.new is Level.WARNING
            self._set(
                rule,
                Subject(f"{node_id}/{index}", node_id, index),
                warning,
                f"{node_id} GPU {index}: {words}",
            )

    def _gpu_fault(self, node_id: str, index: str, source: str, fault: bool, words: str) -> None:
        rules = self._matching(Kind.GPU_FAULT, node_id, index)
        if not rules:
            return
        sources = self._gpu_faults.setdefault((node_id, index), set())
        if fault:
            sources.add(source)
        else:
            sources.discard(source)
            if not sources:
                del self._gpu_faults[(node_id, index)]
        for rule in rules:
            subject = Subject(f"{node_id}/{index}", node_id, index)
            self._set(rule, subject, bool(sources), f"{node_id} GPU {index}: {words}")

    def _mig_free(self, node_id: str, gpus: Mapping[str, Any], indexes: Iterable[str]) -> None:
        facts = self._nodes.get(node_id)
        group = facts.group if facts else None
        allows = self._gpu_free.allows
        for rule in self._rules[Kind.GPUS_FREE]:
            profile = rule.mig_profile
            if not profile or not rule.matches_node(node_id, group):
                continue
            tally = self._free[rule.name]
            for index in indexes:
                gpu = gpus.get(index)
                count = 0
                if gpu and not gpu.get("error") and rule.matches_model(self._gpu_name(node_id, index, gpu)):
                    for mig in gpu.get("mig_slices") or ():
                        if mig.get("profile") == profile and allows(
                            mig.get("processes"),
                            mig.get("util_gpu_percent"),
                            ratio_percent(mig.get("mem_used_bytes"), mig.get("mem_total_bytes")),
                        ):
                            count += 1
                tally.set(node_id, index, count)
        self._update_free()

    def _update_free(self) -> None:
        """Each gpus_free rule against its kept total: only a change of "enough" reaches the
        engine, and only then are the words (which nodes) put together."""
        for rule in self._rules.get(Kind.GPUS_FREE, ()):
            tally = self._free[rule.name]
            kind = f"MIG {rule.mig_profile}" if rule.mig_profile else "GPUs"
            key = f"{rule.model + ' ' if rule.model else ''}{kind} in {rule.group or 'the lab'}"
            enough = tally.total >= rule.min_free
            if enough is ((rule.name, key) in self._active):
                continue
            text = ""
            if enough:
                count = tally.total
                what = (
                    f"MIG {rule.mig_profile} slice" if rule.mig_profile else f"{rule.model or ''} GPU".strip()
                )
                place = f" in {rule.group}" if rule.group else ""
                nodes = ", ".join(sorted(tally.by_node)[:20])
                text = f"{count} {what}{'s' if count > 1 else ''} free{place}: {nodes}"
            self._set(rule, Subject(key), enough, text)

    def idle_held_changed(self, event: IdleHeldChanged) -> None:
        node_id, index = event.node_id, event.gpu_index
        holders = tuple(
            dict.fromkeys(
                user for h in event.holders if isinstance(user := h.get("user"), str) and user in self._users
            )
        )
        who = (
            ", ".join(dict.fromkeys(u for h in event.holders if isinstance(u := h.get("user"), str)))
            or "unknown"
        )
        slice_text = f" (MIG {event.mig_uuid})" if event.mig_uuid else ""
        idle_for_s = max(0.0, event.at_wall_s - event.idle_since_wall_s)
        since_mono = self._clock.monotonic() - idle_for_s
        key = f"{node_id}/{index}" + (f"/{event.mig_uuid}" if event.mig_uuid else "")
        text = f"{node_id} GPU {index}{slice_text} held idle by {who} since {_clock_text(event.idle_since_wall_s)}"
        for rule in self._matching(Kind.GPU_IDLE_HELD, node_id, index):
            self._set(rule, Subject(key, node_id, index), event.idle_held, text, since_mono, holders)
