"""The hub's memory at work: counting on the event loop, writing on the store's thread.

:class:`MemorySync` subscribes usage accounting, the downsampled history and the event log to
the registry's events (each handler costs a few dictionary updates per sample), and every
``flush_every_s`` (at most 60) hands what they gathered to the store's thread
(:meth:`hub.store.StoreSync.on_store`) in one transaction. A hub killed with ``kill -9`` loses
at most that interval; every row it writes is added to what the file holds, so nothing is
counted twice after a restart.

When the file cannot be opened or written, the batch goes back into memory (at most
``pending_max_rows`` rows of each kind; the oldest are dropped beyond, with a log line), the
problem is logged once and shown in the page header, and the next flush tries again. Every
``PRUNE_EVERY_S`` the rows past their retention are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from hub.domain.gpus import IdleRule
from hub.domain.nodes import Clock, Liveness, Naming
from hub.domain.usage import MemoryLimits
from hub.eventlog import EventLog, EventRow
from hub.registry import NodeRegistry
from hub.store import NodeStore, StoreError, StoreSync, describe_sqlite_error
from hub.usage.accounting import Counted, UsageAccounting, usage_rows
from hub.usage.history import HistoryAggregator, Minutes, minute_rows
from hub.usage.store import (
    MemoryBatch,
    QuarterBook,
    Span,
    StoreInfo,
    history_span,
    hold_size,
    prune,
    remembered_versions,
    store_info,
    write_batch,
)

log = logging.getLogger("sers.hub")
PRUNE_EVERY_S = 600.0
T = TypeVar("T")


class MemorySync:
    def __init__(
        self,
        store: StoreSync,
        path: str,
        registry: NodeRegistry,
        clock: Clock,
        limits: MemoryLimits,
        idle: IdleRule,
        liveness: Liveness,
        names: Mapping[str, Naming],
    ) -> None:
        self._store = store
        self._path = path
        self._clock = clock
        self.limits = limits
        self.events = EventLog(clock)
        self.accounting = UsageAccounting(clock, idle, liveness, names, on_gap=self.events.sample_gap)
        self.history = HistoryAggregator(clock)
        for part in (self.events, self.accounting, self.history):
            part.subscribe(registry.events)
        self.info: StoreInfo | None = None  # size and time range, as of the last write
        self._problem: str | None = None  # why writing fails, as logged when it started
        self._seeded = False  # the event log has the versions the file remembers
        self._prune_at_mono = 0.0
        self._quarters = QuarterBook()  # on the store's thread only
        # the host history's (oldest, newest) bucket, read whole only when pruning (on the
        # store's thread only)
        self._history_span: Span | None = None
        # node id -> (until when, on the monotonic clock; the node page's stored part as HTML)
        self.node_page_cache: dict[str, tuple[float, str]] = {}

    @property
    def problem(self) -> str | None:
        """Why the memory is not being written now, for the page header; ``None`` when it is."""
        return self._store.problem or self._problem

    def _put_back(self, usage: Counted, minutes: Minutes, events: list[EventRow]) -> None:
        most = int(self.limits.pending_max_rows)
        dropped = (
            self.accounting.put_back(usage, most)
            + self.history.put_back(minutes, most)
            + self.events.put_back(events, most)
        )
        if dropped:
            log.warning(
                "memory: %d of the oldest unwritten rows dropped (at most %d of each kind wait for the state file)",
                dropped,
                most,
            )

    async def open(self) -> None:
        """After the store's open, before agents connect: the event log learns the agent and
        driver versions the file remembers, so an upgrade made while the hub was down is logged.
        (A file that opens later is read at the first write, for nodes not seen by then.)"""
        with contextlib.suppress(StoreError, sqlite3.Error):
            self.events.seed(await self._store.on_store(remembered_versions))
            self._seeded = True
            self.info = await self._store.on_store(self._read_info)

    def _read_info(self, store: NodeStore) -> StoreInfo:
        self._history_span = history_span(store.connection)
        return store_info(self._path, store.connection, self._history_span)

    async def flush(self) -> int:
        """Writes what was counted since the last flush; returns how many rows (0 on failure)."""
        # swaps on the loop; the rows are built and written on the store's thread
        usage, minutes, events = self.accounting.take(), self.history.take(), self.events.take()
        now_s = self._clock.wall()
        prune_now = time.monotonic() >= self._prune_at_mono
        keep_1m_s = self.limits.history_1m_keep_h * 3600.0

        def write(store: NodeStore) -> tuple[int, StoreInfo, dict[str, tuple[str | None, str | None]] | None]:
            versions = None if self._seeded else remembered_versions(store)
            book = self._quarters
            book.catch_up(store.connection)
            latest = book.wrote(minutes)
            quarters = book.ready(now_s, keep_1m_s)
            batch = MemoryBatch(usage_rows(usage), minute_rows(minutes), events, quarters)
            if batch.rows() or quarters:
                write_batch(store, batch)
            book.made(quarters, latest)
            if prune_now:
                dropped = prune(store, self.limits, now_s)
                book.pruned_below_s = now_s - keep_1m_s
                if dropped:
                    log.info("memory: dropped %d rows past their retention", dropped)
                over = hold_size(store, self.limits)
                if over:
                    log.warning(
                        "memory: the state file %s holds more than max_file_mib=%g: dropped %d rows of "
                        "the oldest 15-minute history (or hourly usage) before their retention",
                        self._path,
                        self.limits.max_file_mib,
                        over,
                    )
            if prune_now or self._history_span is None:
                info = self._read_info(store)
            else:
                oldest, newest = self._history_span
                for minute in latest.values():
                    oldest = minute if oldest is None else min(oldest, minute)
                    newest = minute if newest is None else max(newest, minute)
                self._history_span = (oldest, newest)
                info = store_info(self._path, store.connection, self._history_span)
            return batch.rows(), info, versions

        try:
            rows, self.info, versions = await self._store.on_store(write)
        except (StoreError, sqlite3.Error, OSError) as exc:
            self._put_back(usage, minutes, events)
            if self._problem is None and self._store.problem is None:
                reason = (
                    describe_sqlite_error(self._path, exc) if isinstance(exc, sqlite3.Error) else str(exc)
                )
                log.error(
                    "%s. Usage, history and events are kept in memory (at most %d rows of each) and "
                    "written when the file works again",
                    reason,
                    int(self.limits.pending_max_rows),
                )
                self._problem = reason
            return 0
        if versions is not None:
            self.events.seed(versions)
            self._seeded = True
        if prune_now:
            self._prune_at_mono = time.monotonic() + PRUNE_EVERY_S
        if self._problem is not None:
            log.info("memory: writing the state file %s works again", self._path)
            self._problem = None
        return rows

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.limits.flush_every_s)
            await self.flush()

    def hub_stopping(self) -> None:
        """The hub shuts down: the offline transitions of the connections it closes now are
        logged as "hub stopping", not as the agents' goodbyes."""
        self.events.hub_stopping = True

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs a query on the store's thread; raises :class:`StoreError` while no file is open."""
        return await self._store.on_store(lambda store: fn(store.connection))
