"""The rendered picture of every node: each part rendered once per change, then shared.

A card is made of parts with their own element ids: the host part (``node-<id>-host``) and one
row per GPU (``node-<id>-gpu-<index>``). A delta that touched only the host or one GPU renders
only that part. Status changes and hellos render the whole card (``node-<id>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from frontend.render import Renderer
from frontend.viewmodels import (
    SummaryView,
    gpu_is_free,
    gpu_view,
    head_view,
    host_view,
    summary_view,
)
from hub.registry import Node, NodeChange, NodeRegistry, NodeStatus, sort_key
from hub.settings import GpuFreeRule


@dataclass(slots=True)
class RenderedNode:
    host: str = ""
    gpus: dict[str, str] = field(default_factory=dict)


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
        return not (self.gpu_only and not (node.state.get("gpus") or (node.hello and node.hello.gpus)))


class Scene:
    def __init__(
        self,
        registry: NodeRegistry,
        renderer: Renderer,
        gpu_free: GpuFreeRule,
        wall_clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._renderer = renderer
        self._gpu_free = gpu_free
        self._wall = wall_clock
        self._rendered: dict[str, RenderedNode] = {}

    def render_change(self, change: NodeChange) -> dict[str, str]:
        """Renders what ``change`` touched: element id -> HTML (parts, or the whole card)."""
        node_id = change.node_id
        card_id = f"node-{node_id}"
        node = self._registry.nodes.get(node_id)
        if change.removed or node is None:
            self._rendered.pop(node_id, None)
            return {card_id: f'<template id="{card_id}" data-remove></template>'}
        if change.card or node_id not in self._rendered:
            return {card_id: self._render_card(node)}
        rendered = self._rendered[node_id]
        out = {}
        if change.host:
            rendered.host = out[f"{card_id}-host"] = self._render_host(node)
        gpus = node.state.get("gpus") or {}
        for index in gpu_order(change.gpus):
            if index in gpus:
                row = self._render_gpu(node, index, gpus[index])
                if row != rendered.gpus.get(index):  # only what a person would see change
                    rendered.gpus[index] = out[f"{card_id}-gpu-{index}"] = row
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
        rule = self._gpu_free
        nodes = (n for n in self._registry.nodes.values() if view_filter.matches(n))
        return summary_view(nodes, rule.max_util_percent, rule.max_mem_percent)

    def summary(self, view: SummaryView) -> str:
        return self._renderer.summary(view, self._wall())

    # ------------------------------------------------------------------ rendering
    def _render_card(self, node: Node) -> str:
        gpus = node.state.get("gpus") or {}
        rendered = RenderedNode(
            host=self._render_host(node),
            gpus={i: self._render_gpu(node, i, gpus[i]) for i in gpu_order(gpus)},
        )
        self._rendered[node.node_id] = rendered
        return self._assemble(node, rendered)

    def _assemble(self, node: Node, rendered: RenderedNode) -> str:
        gpus = node.state.get("gpus") or {}
        free = 0
        if node.status is NodeStatus.LIVE:
            rule = self._gpu_free
            free = sum(gpu_is_free(g, rule.max_util_percent, rule.max_mem_percent) for g in gpus.values())
        return self._renderer.card(head_view(node, free), rendered.host, list(rendered.gpus.values()))

    def _render_host(self, node: Node) -> str:
        late_s = self._registry.sample_age_s(node) if node.sample_late else None
        return self._renderer.host(host_view(node, late_s))

    def _render_gpu(self, node: Node, index: str, gpu: dict) -> str:  # type: ignore[type-arg]
        rule = self._gpu_free
        return self._renderer.gpu(
            gpu_view(node.node_id, index, gpu, rule.max_util_percent, rule.max_mem_percent)
        )
