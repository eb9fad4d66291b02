"""The liveness sweep: a few times a second, silent nodes turn stale, then offline."""

from __future__ import annotations

import asyncio
import logging

from hub.fanout import Fanout
from hub.registry import NodeRegistry

log = logging.getLogger("sers.hub")

SWEEP_EVERY_S = 0.5


async def run_sweeps(registry: NodeRegistry, fanout: Fanout, every_s: float = SWEEP_EVERY_S) -> None:
    while True:
        await asyncio.sleep(every_s)
        for change in registry.sweep():
            node = registry.nodes.get(change.node_id)
            if change.card and node is not None:
                log.info("node %s is now %s", change.node_id, node.status.value)
            fanout.note(change)
