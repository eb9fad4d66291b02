"""What the presenter would render again, recorded from a registry's events the way the fan-out
gets them (:func:`hub.scene.subscribe_changes`): for tests that drive a registry and a scene
without a fan-out."""

from __future__ import annotations

from hub.registry import NodeRegistry
from hub.scene import NodeChange, subscribe_changes


class Rendered:
    def __init__(self, registry: NodeRegistry) -> None:
        self._changes: list[NodeChange] = []
        subscribe_changes(registry.events, self._changes.append)

    def take(self) -> list[NodeChange]:
        """The changes since the last call, oldest first."""
        changes = list(self._changes)
        self._changes.clear()
        return changes

    def one(self) -> NodeChange:
        """The one change since the last call (a registry mutation asks for one render at most)."""
        [change] = self.take()
        return change
