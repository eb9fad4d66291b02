"""The rendered picture of every node: each part rendered once per change, then shared.

A card is made of parts with their own element ids (:mod:`frontend.element_ids`): the host
part, one row per GPU and the sparklines (CPU, and one per GPU). A delta that touched only the
host or one GPU renders only that part, and a GPU row is pushed only when its HTML changed.
Sparklines show closed history buckets, so they are pushed only when a bucket group closes
(every 20 s per node, staggered). Status changes and hellos render the whole card.

A change of a node that no viewer shows (:meth:`Scene.defer`, as the fan-out decides) is not
rendered: its history is recorded and its GPUs' tallies for the summary bar are kept, and what
it touched waits until the card is asked for (a page, a joining viewer, a card scrolled into
view) or the node's next rendered change, which render it first. The hub's rendering then
follows what the walls show, not the size of the lab.

:func:`subscribe_changes` is where the presenter learns what to render: it turns the registry's
events (:mod:`hub.domain.events`) into :class:`NodeChange`, one per agent message or sweep
verdict that changed what a card shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from frontend.element_ids import element_id
from frontend.people import PeopleView, people_view
from frontend.render import Renderer
from frontend.viewmodels import (
    AlertBadge,
    DetailView,
    GpuTally,
    NodeTally,
    SummaryView,
    detail_view,
    gpu_collector_down,
    gpu_tally,
    gpu_view,
    head_view,
    host_view,
    node_tally,
    slice_states,
    spark_view,
    summary_view,
)
from hub.domain.events import (
    EventBus,
    IdleHeldChanged,
    NodeConnected,
    NodeRemoved,
    SampleApplied,
    SampleLate,
    SampleStillLate,
    StatusCause,
    StatusChanged,
)
from hub.domain.gpus import GpuFreeRule, GpuState, gpu_state
from hub.domain.health import HEALTHY, Health, Level
from hub.domain.nodes import Node, NodeStatus, sort_key
from hub.domain.people import PeopleSort, holdings
from hub.history import History, sample_values
from hub.registry import NodeRegistry
from node_agent.protocol import GPU_COLLECTOR_DOWN

DEFAULT_HISTORY_S = 900.0


class NodeChange(NamedTuple):
    """What to render again: the whole card, or only the host part and some GPU rows. (One per
    agent message: a NamedTuple is several times cheaper to make than a frozen dataclass.)"""

    node_id: str
    card: bool = False
    host: bool = False
    gpus: frozenset[str] = frozenset()
    removed: bool = False


def subscribe_changes(events: EventBus, note: Callable[[NodeChange], None]) -> None:
    """Calls ``note`` with what to render again for each event that changes what a card shows.

    One registry mutation may publish several events; exactly one of them asks for a render:
    a hello's :class:`NodeConnected` (not its :class:`StatusChanged` or :class:`SampleLate`), a
    delta's :class:`StatusChanged` when the node came back, else its :class:`SampleApplied`
    (whose ``came_live`` says the card was rendered already)."""

    def status_changed(event: StatusChanged) -> None:
        if event.cause is not StatusCause.HELLO:
            note(NodeChange(event.node_id, card=True))

    def sample_applied(event: SampleApplied) -> None:
        if event.came_live:
            return
        if event.gpu_set_changed or event.late_ended:
            note(NodeChange(event.node_id, card=True))  # rows come or go, or regain their colours
        else:
            note(NodeChange(event.node_id, host=event.host, gpus=event.gpus))

    def sample_late(event: SampleLate) -> None:
        if event.late:  # the GPU rows no longer show the truth; the end of it is a SampleApplied's
            note(NodeChange(event.node_id, card=True))

    events.subscribe(NodeConnected, lambda event: note(NodeChange(event.node_id, card=True)))
    events.subscribe(StatusChanged, status_changed)
    events.subscribe(SampleApplied, sample_applied)
    events.subscribe(SampleLate, sample_late)
    # how late: the host part counts it on every sweep
    events.subscribe(SampleStillLate, lambda event: note(NodeChange(event.node_id, host=True)))
    events.subscribe(NodeRemoved, lambda event: note(NodeChange(event.node_id, removed=True)))
    # a GPU (or slice) turned idle-held or stopped: its row says so, and the summary counts it
    events.subscribe(
        IdleHeldChanged, lambda event: note(NodeChange(event.node_id, gpus=frozenset((event.gpu_index,))))
    )


@dataclass(slots=True)
class RenderedNode:
    host: str = ""
    cpu_spark: str = ""
    gpus: dict[str, str] = field(default_factory=dict)
    gpu_sparks: dict[str, str] = field(default_factory=dict)
    tallies: dict[str, GpuTally] = field(default_factory=dict)  # per GPU, for the summary bar
    tally: NodeTally | None = None  # their sums, made when the summary asks; None: to be made

    def node_tally(self) -> NodeTally:
        tally = self.tally
        if tally is None:
            tally = self.tally = node_tally(self.tallies.values())
        return tally


@dataclass(slots=True)
class _Unrendered:
    """What deferred changes of a node touched, not rendered yet."""

    host: bool = False
    gpus: set[str] = field(default_factory=set)
    sparks: bool = False  # its history closed a sparkline bucket


_NO_GPUS = node_tally(())


def gpu_order(gpus: Iterable[str]) -> list[str]:
    return sorted(gpus, key=lambda index: (len(index), index))


@dataclass(frozen=True, slots=True)
class ViewFilter:
    """Which nodes one viewer sees (kiosk URL options). Empty sets mean "all". ``people_sort``:
    the people board's order (:class:`~hub.domain.people.PeopleSort`), "" for no board;
    ``cards``: whether the viewer shows node cards (``/users`` shows only the board)."""

    groups: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    gpu_only: bool = False
    people_sort: str = ""
    cards: bool = True

    def matches(self, node: Node) -> bool:
        """Whether the viewer shows ``node``'s card."""
        return self.cards and self.selects(node)

    @property
    def every_card(self) -> bool:
        """Whether the viewer shows every node's card."""
        return self.cards and not (self.groups or self.names or self.gpu_only)

    def selects(self, node: Node) -> bool:
        """Whether ``node`` is in the viewer's part of the lab (its summary bar, its board)."""
        if self.groups and (node.group or "") not in self.groups:
            return False
        if self.names and node.node_id not in self.names and node.display_name not in self.names:
            return False
        return not (self.gpu_only and not _has_gpus(node))


def _has_gpus(node: Node) -> bool:
    """GPUs reported, or a GPU collector that is down: a GPU server whose driver failed to load
    reports none, and must stay on a GPU-only wall."""
    if node.state.get("gpus"):
        return True
    hello = node.hello
    return hello is not None and bool(
        hello.gpus or hello.gpu_driver.get("collector_state") == GPU_COLLECTOR_DOWN
    )


class Scene:
    def __init__(
        self,
        registry: NodeRegistry,
        renderer: Renderer,
        gpu_free: GpuFreeRule,
        wall_clock: Callable[[], float],
        history: History | None = None,
    ) -> None:
        self._registry = registry
        self._renderer = renderer
        self._gpu_free = gpu_free
        self._wall = wall_clock
        self.history = history or History(DEFAULT_HISTORY_S)
        self._rendered: dict[str, RenderedNode] = {}
        self._unrendered: dict[str, _Unrendered] = {}  # node id -> deferred parts (no viewer shows it)
        # node id -> (GPU index, MIG uuid or None) -> idle-held since: kept from the events,
        # before the fan-out renders the row (it subscribes later)
        self._idle: dict[str, dict[tuple[str, str | None], float]] = {}
        registry.events.subscribe(IdleHeldChanged, self._idle_changed)
        # the top bar's alert strip: (how many fire, the worst few); set by hub.alerts when on
        self.alert_strip: Callable[[], tuple[int, tuple[AlertBadge, ...]]] = lambda: (0, ())
        # while the fan-out sheds (hub.fanout): each card is updated at most this often; 0: as
        # samples come. Every summary says so: the page's, a full state's, the ticks'.
        self.cards_every_s = 0.0

    def _idle_changed(self, event: IdleHeldChanged) -> None:
        key = (event.gpu_index, event.mig_uuid)
        if event.idle_held:
            self._idle.setdefault(event.node_id, {})[key] = event.idle_since_wall_s
            return
        held = self._idle.get(event.node_id)
        if held is not None:
            held.pop(key, None)
            if not held:
                del self._idle[event.node_id]

    def idle_held(self) -> dict[tuple[str, str, str | None], float]:
        """(node id, GPU index, MIG uuid or None) -> idle-held since, as the events told."""
        return {(node_id, *key): since for node_id, held in self._idle.items() for key, since in held.items()}

    def render_change(self, change: NodeChange) -> dict[str, str]:
        """Renders what ``change`` touched: element id -> HTML (parts, or the whole card)."""
        node_id = change.node_id
        card_id = element_id("node", node_id)
        node = self._registry.nodes.get(node_id)
        unrendered = self._unrendered.pop(node_id, None)
        if change.removed or node is None:
            self._rendered.pop(node_id, None)
            self.history.forget(node_id)
            return {card_id: f'<template id="{card_id}" data-remove></template>'}
        sparks_changed = self._record(node)
        rendered = self._rendered.get(node_id)
        if change.card or rendered is None:
            return {card_id: self._render_card(node)}
        host, changed_gpus = change.host, change.gpus
        if unrendered is not None:  # what deferred changes touched renders with this one
            host = host or unrendered.host
            changed_gpus = changed_gpus | unrendered.gpus
            sparks_changed = sparks_changed or unrendered.sparks
        out = {}
        if host:
            rendered.host = out[element_id("host", node_id)] = self._render_host(node)
        gpus = node.state.get("gpus") or {}
        live = node.reporting
        verdicts = node.gpu_health
        for index in gpu_order(changed_gpus):
            if index in gpus:
                row = self._render_gpu(
                    rendered, node_id, index, gpus[index], live, verdicts.get(index, HEALTHY)
                )
                if row != rendered.gpus.get(index):  # only what a person would see change
                    rendered.gpus[index] = out[element_id("gpu", node_id, index)] = row
        if sparks_changed:
            rendered.cpu_spark = out[element_id("spark-cpu", node_id)] = self._render_cpu_spark(node_id)
            for index in gpu_order(gpus):
                spark = self._render_gpu_spark(node_id, index)
                rendered.gpu_sparks[index] = out[element_id("spark-gpu", node_id, index)] = spark
        return out

    def defer(self, change: NodeChange) -> bool:
        """Takes a change of parts without rendering them (no viewer shows the node): records
        the history, keeps the GPUs' tallies for the summary bar, and keeps what it touched for
        the next render of the node. False for a change that must render now (a whole card, a
        removal, a node not rendered yet)."""
        node_id = change.node_id
        node = self._registry.nodes.get(node_id)
        rendered = self._rendered.get(node_id)
        if change.card or change.removed or node is None or rendered is None:
            return False
        unrendered = self._unrendered.get(node_id)
        if unrendered is None:
            unrendered = self._unrendered[node_id] = _Unrendered()
        if self._record(node):
            unrendered.sparks = True
        unrendered.host = unrendered.host or change.host
        if change.gpus:
            unrendered.gpus |= change.gpus
            gpus = node.state.get("gpus") or {}
            live = node.reporting
            verdicts = node.gpu_health
            held = self._idle.get(node_id)
            for index in change.gpus:
                gpu = gpus.get(index)
                if gpu is not None:
                    idle = _idle_of(held, index) if held else None
                    self._tally(
                        rendered,
                        index,
                        gpu,
                        gpu_state(gpu, self._gpu_free, live),
                        verdicts.get(index, HEALTHY).level,
                        idle[1] if idle else 0,
                    )
        return True

    def unrendered(self) -> list[str]:
        """The nodes with deferred changes not rendered yet."""
        return list(self._unrendered)

    def card(self, node: Node) -> str:
        """The whole card from cached parts (for a page load or a new viewer), its deferred
        changes rendered first."""
        if node.node_id in self._unrendered:
            self.render_change(NodeChange(node.node_id))
        rendered = self._rendered.get(node.node_id)
        if rendered is None:
            return self._render_card(node)
        return self._assemble(node, rendered)

    def cards(self, view_filter: ViewFilter) -> list[str]:
        return [
            self.card(n)
            for n in sorted(self._registry.nodes.values(), key=sort_key)
            if view_filter.matches(n)
        ]

    def summary_view(self, view_filter: ViewFilter) -> SummaryView:
        """The summary bar's counts, from the GPU tallies kept as rows render."""
        rendered = self._rendered.get
        nodes = [node for node in self._registry.nodes.values() if view_filter.selects(node)]
        alerts_firing, alerts = self.alert_strip()
        return summary_view(
            (
                (node.status, part.node_tally() if (part := rendered(node.node_id)) else _NO_GPUS, node.group)
                for node in nodes
            ),
            gpu_collectors_down=sum(1 for node in nodes if gpu_collector_down(node)),
            alerts_firing=alerts_firing,
            alerts=alerts,
            cards_every_s=self.cards_every_s,
        )

    def people_view(self, view_filter: ViewFilter) -> PeopleView | None:
        """The people board of the viewer's part of the lab (``None``: it shows none). Walks
        every selected node's processes: the fan-out asks at most once a second per filter."""
        if not view_filter.people_sort:
            return None
        nodes = (
            (node.node_id, node.state)
            for node in self._registry.nodes.values()
            if node.status is not NodeStatus.OFFLINE and view_filter.selects(node)
        )
        query = {
            key: ",".join(sorted(values))
            for key, values in (("group", view_filter.groups), ("node", view_filter.names))
            if values
        }
        if view_filter.gpu_only:
            query["gpus"] = "1"
        return people_view(
            holdings(nodes, self.idle_held()).values(),
            PeopleSort(view_filter.people_sort),
            self._wall(),
            query,
        )

    def people(self, view: PeopleView | None) -> str:
        return "" if view is None else self._renderer.people(view)

    def summary(self, view: SummaryView) -> str:
        return self._renderer.summary(view, self._wall())

    def now(self) -> float:
        """The hub's wall clock (epoch seconds), for pages that count time on in the browser."""
        return self._wall()

    def detail(self, node: Node) -> DetailView:
        """Everything about one node, with its whole history (the detail page)."""
        history = self.history.node(node.node_id)
        points = {key: history.points(key) for key in history.series}
        return detail_view(node, points, history.bucket_s, self._registry.silent_s(node), self._gpu_free)

    # ------------------------------------------------------------------ history
    def _record(self, node: Node) -> bool:
        """Adds the node's newest sample to its history, at the hub's time of its arrival (an
        agent's clock may be hours off); True when its sparklines changed."""
        history = self.history.node(node.node_id)
        if history.samples == node.samples:
            return False
        history.samples = node.samples
        return history.record(node.last_sample_mono, sample_values(node.state))

    # ------------------------------------------------------------------ rendering
    def _render_card(self, node: Node) -> str:
        gpus = node.state.get("gpus") or {}
        live = node.reporting
        node_id = node.node_id
        order = gpu_order(gpus)
        rendered = RenderedNode(host=self._render_host(node), cpu_spark=self._render_cpu_spark(node_id))
        verdicts = node.gpu_health
        rendered.gpus = {
            i: self._render_gpu(rendered, node_id, i, gpus[i], live, verdicts.get(i, HEALTHY)) for i in order
        }
        rendered.gpu_sparks = {i: self._render_gpu_spark(node_id, i) for i in order}
        self._rendered[node_id] = rendered
        return self._assemble(node, rendered)

    def _assemble(self, node: Node, rendered: RenderedNode) -> str:
        lines = [(rendered.gpus[i], rendered.gpu_sparks.get(i, "")) for i in gpu_order(rendered.gpus)]
        head = head_view(node, self._registry.silent_s(node))
        return self._renderer.card(head, rendered.host, rendered.cpu_spark, lines)

    def _render_host(self, node: Node) -> str:
        late_s = self._registry.sample_age_s(node) if node.sample_late else None
        return self._renderer.host(host_view(node, late_s))

    def _render_gpu(
        self,
        rendered: RenderedNode,
        node_id: str,
        index: str,
        gpu: dict[str, Any],
        live: bool,
        health: Health,
    ) -> str:
        """The row's HTML; also refreshes the GPU's tally for the summary bar."""
        rule = self._gpu_free
        held = self._idle.get(node_id)
        idle = _idle_of(held, index) if held else None
        view = gpu_view(node_id, index, gpu, rule, live, health, self._wall() if idle else None, idle)
        self._tally(rendered, index, gpu, view.state, view.health, view.idle_held)
        return self._renderer.gpu(view)

    def _tally(
        self,
        rendered: RenderedNode,
        index: str,
        gpu: dict[str, Any],
        state: GpuState,
        health: Level,
        idle_held: int,
    ) -> None:
        """Refreshes the GPU's tally for the summary bar, and the node's sums."""
        slices = slice_states(gpu, self._gpu_free) if gpu.get("mig_slices") else ()
        tally = gpu_tally(gpu, state, health, slices, idle_held)
        old = rendered.tallies.get(index)
        if tally != old:
            rendered.tallies[index] = tally
            sums = rendered.tally
            if sums is not None and old is not None and _same_but_memory(tally, old):
                # most changes are a busy GPU's memory: the node's sums follow without a recount
                rendered.tally = sums._replace(
                    mem_used_bytes=sums.mem_used_bytes + tally.mem_used_bytes - old.mem_used_bytes,
                    mem_total_bytes=sums.mem_total_bytes + tally.mem_total_bytes - old.mem_total_bytes,
                )
            else:
                rendered.tally = None

    def _render_cpu_spark(self, node_id: str) -> str:
        history = self.history.node(node_id)
        return self._renderer.spark(
            spark_view(
                element_id("spark-cpu", node_id), history.card_points("cpu"), history.card_points("mem")
            )
        )

    def _render_gpu_spark(self, node_id: str, index: str) -> str:
        history = self.history.node(node_id)
        return self._renderer.spark(
            spark_view(
                element_id("spark-gpu", node_id, index),
                history.card_points(f"u{index}"),
                history.card_points(f"m{index}"),
            )
        )


def _same_but_memory(tally: GpuTally, old: GpuTally) -> bool:
    return (
        tally.state is old.state
        and tally.model == old.model
        and tally.health is old.health
        and tally.idle_held == old.idle_held
        and tally.slices == old.slices
    )


def _idle_of(held: dict[tuple[str, str | None], float], index: str) -> tuple[float, int] | None:
    """(the earliest idle-held since, how many) of GPU ``index`` and its MIG slices."""
    since = [at for (gpu_index, _), at in held.items() if gpu_index == index]
    return (min(since), len(since)) if since else None
