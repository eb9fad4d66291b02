"""The rendered picture of every node: each part rendered once per change, then shared.

A card is made of parts with their own element ids (:mod:`frontend.element_ids`): the host
part, one row per GPU and the sparklines (CPU, and one per GPU). A delta that touched only the
host or one GPU renders only that part, and a GPU row is pushed only when its HTML changed.
Sparklines show closed history buckets, so they are pushed only when a bucket group closes
(every 20 s per node, staggered). Status changes and hellos render the whole card.

:func:`subscribe_changes` is where the presenter learns what to render: it turns the registry's
events (:mod:`hub.domain.events`) into :class:`NodeChange`, one per agent message or sweep
verdict that changed what a card shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from frontend.element_ids import element_id
from frontend.render import Renderer
from frontend.viewmodels import (
    DetailView,
    GpuTally,
    SummaryView,
    detail_view,
    gpu_collector_down,
    gpu_tally,
    gpu_view,
    head_view,
    host_view,
    slice_views,
    spark_view,
    summary_view,
)
from hub.domain.events import (
    EventBus,
    NodeConnected,
    NodeRemoved,
    SampleApplied,
    SampleLate,
    SampleStillLate,
    StatusCause,
    StatusChanged,
)
from hub.domain.gpus import GpuFreeRule
from hub.domain.health import HEALTHY, Health
from hub.domain.nodes import Node, sort_key
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


@dataclass(slots=True)
class RenderedNode:
    host: str = ""
    cpu_spark: str = ""
    gpus: dict[str, str] = field(default_factory=dict)
    gpu_sparks: dict[str, str] = field(default_factory=dict)
    tallies: dict[str, GpuTally] = field(default_factory=dict)  # per GPU, for the summary bar


def gpu_order(gpus: Iterable[str]) -> list[str]:
    return sorted(gpus, key=lambda index: (len(index), index))


@dataclass(frozen=True, slots=True)
class ViewFilter:
    """Which nodes one viewer sees (kiosk URL options). Empty sets mean "all"."""

    groups: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    gpu_only: bool = False

    def matches(self, node: Node) -> bool:
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

    def render_change(self, change: NodeChange) -> dict[str, str]:
        """Renders what ``change`` touched: element id -> HTML (parts, or the whole card)."""
        node_id = change.node_id
        card_id = element_id("node", node_id)
        node = self._registry.nodes.get(node_id)
        if change.removed or node is None:
            self._rendered.pop(node_id, None)
            self.history.forget(node_id)
            return {card_id: f'<template id="{card_id}" data-remove></template>'}
        sparks_changed = self._record(node)
        rendered = self._rendered.get(node_id)
        if change.card or rendered is None:
            return {card_id: self._render_card(node)}
        out = {}
        if change.host:
            rendered.host = out[element_id("host", node_id)] = self._render_host(node)
        gpus = node.state.get("gpus") or {}
        live = node.reporting
        verdicts = node.gpu_health
        for index in gpu_order(change.gpus):
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

    def card(self, node: Node) -> str:
        """The whole card from cached parts (for a page load or a new viewer)."""
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
        rendered = self._rendered
        empty: dict[str, GpuTally] = {}
        nodes = [node for node in self._registry.nodes.values() if view_filter.matches(node)]
        return summary_view(
            (
                (
                    node.status,
                    (rendered[node.node_id].tallies if node.node_id in rendered else empty).values(),
                )
                for node in nodes
            ),
            gpu_collectors_down=sum(1 for node in nodes if gpu_collector_down(node)),
        )

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
        view = gpu_view(node_id, index, gpu, rule, live, health)
        slices = slice_views(gpu, rule) if gpu.get("mig_slices") else ()
        rendered.tallies[index] = gpu_tally(gpu, view.state, view.health, slices)
        return self._renderer.gpu(view)

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
