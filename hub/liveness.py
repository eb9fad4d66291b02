"""The liveness sweep and log: a few times a second, silent nodes turn stale, then offline (the
rule: :class:`hub.domain.nodes.Liveness`, applied by :meth:`NodeRegistry.sweep`), and each
status change is logged (:func:`log_status_change`, a subscriber to the registry's events)."""

from __future__ import annotations

import asyncio
import logging

from hub.domain.events import SampleLate, StatusCause, StatusChanged
from hub.registry import NodeRegistry

log = logging.getLogger("sers.hub")

SWEEP_EVERY_S = 0.5


async def run_sweeps(registry: NodeRegistry, every_s: float = SWEEP_EVERY_S) -> None:
    while True:
        await asyncio.sleep(every_s)
        registry.sweep()


def log_status_change(event: StatusChanged) -> None:
    """Logs the sweep's verdicts: a silent node turning stale or offline. (Connections and
    goodbyes are logged where the connection is handled.)"""
    if event.cause is StatusCause.SILENCE:
        log.info("node %s is now %s", event.node_id, event.new.value)


def log_sample_late(event: SampleLate) -> None:
    if event.late:
        log.info("node %s: heartbeats arrive but no new samples", event.node_id)
