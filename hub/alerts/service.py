"""Alerts in the running hub: the conditions on the registry's events, the engine ticked on the
event loop, its messages handed to the delivery workers, firing alerts kept in the state file,
and an :class:`~hub.domain.events.AlertNotified` published for each message sent or given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Mapping

from frontend.viewmodels import AlertBadge
from hub.alerts import messages, persist
from hub.alerts.conditions import Conditions
from hub.alerts.config import DEFAULT_MAX_PER_MINUTE, AlertConfig
from hub.alerts.delivery import Delivery, Outgoing
from hub.alerts.engine import AlertEngine, Message, Silence
from hub.domain.events import AlertNotified, EventBus
from hub.domain.gpus import GpuFreeRule
from hub.domain.nodes import Clock, Naming
from hub.store import StoreError, StoreSync

log = logging.getLogger("sers.hub")

TICK_EVERY_S = 0.5
SAVE_EVERY_S = 2.0
STRIP_ALERTS = 5


def user_channel(user: str) -> str:
    return f"user:{user}"


class AlertService:
    def __init__(
        self,
        config: AlertConfig,
        events: EventBus,
        names: Mapping[str, Naming],
        gpu_free: GpuFreeRule,
        clock: Clock,
        delivery: Delivery | None = None,
    ) -> None:
        self.config = config
        self.engine = AlertEngine(config, clock)
        self._events = events
        self._conditions = Conditions(self.engine, config, names, gpu_free, clock)
        self._conditions.subscribe(events)
        self._conditions.hold_restored()  # until the firing alerts are back: see _load
        self._loop: asyncio.AbstractEventLoop | None = None
        self.delivery = delivery or Delivery(on_result=self._result_on_worker)
        if delivery is None:
            self.delivery.add_all(
                [(channel.name, channel.url, channel.max_per_minute) for channel in config.channels]
                + [(user_channel(user), url, DEFAULT_MAX_PER_MINUTE) for user, url in config.users.items()]
            )
        self._store: StoreSync | None = None
        self._save_problem: str | None = None
        self._saved_silences = 0  # the engine's silences_version the file holds
        self._loaded = False  # the firing alerts and silences were read back from the file

    # ------------------------------------------------------------------ lifecycle
    async def start(self, store: StoreSync | None) -> None:
        """Takes the firing alerts back from the state file (they are not sent again), then
        judges the nodes the store restored as offline."""
        self._loop = asyncio.get_running_loop()
        self._store = store
        await self._load()

    async def _load(self) -> None:
        """Reads the firing alerts and silences back, once, and then lets the conditions judge
        the restored nodes. While the file cannot be opened, :meth:`run` tries again: the store
        restores its nodes when it opens the file later, and they wait for this."""
        store = self._store
        if store is not None:
            try:
                rows, silences = await store.on_store(lambda opened: persist.load(opened.connection))
            except StoreError:  # no file open (the store logged why): no node restored either
                return
            except sqlite3.Error as exc:
                log.error("alerts: cannot read the firing alerts from the state file: %s", exc)
                rows, silences = [], []
            self._restore(rows, silences)
        self._loaded = True
        self._conditions.judge_restored()

    def _restore(self, rows: list[persist.FiringRow], silences: list[Silence]) -> None:
        for silence in silences:
            self.engine.restore_silence(silence)
        self._saved_silences = self.engine.silences_version
        restored = 0
        for row in rows:
            if self.engine.restore(row.rule, row.subject, row.text, row.fired_epoch_s, row.notified):
                self._conditions.adopt_restored(row.rule, row.subject)
                restored += 1
        if restored:
            log.info("alerts: %d alert(s) still firing from before the restart (not sent again)", restored)

    async def run(self) -> None:
        saved_at = time.monotonic()
        while True:
            await asyncio.sleep(TICK_EVERY_S)
            try:
                self.tick()
            except Exception:  # alerts must never take the hub down
                log.exception("alerts: evaluation failed")
            if time.monotonic() - saved_at >= SAVE_EVERY_S:
                saved_at = time.monotonic()
                if not self._loaded:
                    await self._load()
                await self.save()

    async def close(self) -> None:
        try:
            self.tick()
            await self.save()
        finally:
            self.delivery.stop()

    def strip(self) -> tuple[int, tuple[AlertBadge, ...]]:
        """The top bar's alert strip: how many fire, and the worst :data:`STRIP_ALERTS`."""
        firing = self.engine.firing()
        return len(firing), tuple(
            AlertBadge(a.rule.severity.value, f"{a.rule.name}: {a.subject.key}")
            for a in firing[:STRIP_ALERTS]
        )

    # ------------------------------------------------------------------ work
    def tick(self) -> None:
        for message in self.engine.tick():
            self.dispatch(message)

    def dispatch(self, message: Message) -> None:
        item = Outgoing(
            messages.title(message), messages.body(message), messages.notify_type(message), message
        )
        for channel in message.rule.channels:
            self.delivery.offer(channel, item)
        for user in message.users:
            self.delivery.offer(user_channel(user), item)

    async def save(self) -> None:
        changed = self.engine.changed
        version = self.engine.silences_version
        silences = list(self.engine.silences.values()) if version != self._saved_silences else None
        if (not changed and silences is None) or self._store is None:
            return
        self.engine.changed = {}
        changes = [persist.change_of(key, alert) for key, alert in changed.items()]
        try:
            done = await self._store.on_store(
                lambda opened: persist.save(opened.connection, changes, silences)
            )
        except StoreError:  # no file open (the store logged why): kept for the next try
            done = None
        except sqlite3.Error as exc:
            done = None
            if self._save_problem is None:
                self._save_problem = str(exc)
                log.error("alerts: cannot write firing alerts to the state file: %s", exc)
        if done is None and self._store is not None:
            # not written (the file is not open, or failed): keep them for the next try
            self.engine.changed = changed | self.engine.changed
        else:
            self._save_problem = None
            self._saved_silences = version

    def _result_on_worker(self, channel: str, item: Outgoing, delivered: bool, reason: str | None) -> None:
        """On a delivery thread: the event goes to the event loop's bus."""
        message = item.tag
        loop = self._loop
        if loop is None or not isinstance(message, Message) or loop.is_closed():
            return
        event = AlertNotified(
            message.rule.name,
            message.status.value,
            tuple(line.subject.key for line in message.lines),
            tuple(dict.fromkeys(line.subject.node for line in message.lines if line.subject.node)),
            channel,
            delivered,
            reason,
            time.time(),
        )
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(self._events.publish, event)
