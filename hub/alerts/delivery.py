"""Sending alert messages through Apprise, off the event loop, so no channel can slow the hub.

Each channel (and each ``[alerts.users]`` URL) has a worker thread and a bounded queue: the hub
only ever puts a message in the queue without waiting; a full queue drops the message and counts
it. The worker holds the channel to ``max_per_minute``, retries a failed send with exponential
backoff, and records the channel's health (delivered, failed, dropped, the last error) for
``/alerts``. A channel that fails is logged once per :data:`LOG_EVERY_S`, not once per message.
A hanging channel holds only its own thread (Apprise's HTTP timeouts bound each try).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hub.alerts.url_check import UNKNOWN_URL, refusals

log = logging.getLogger("sers.hub")

QUEUE_SIZE = 100
RETRIES = 3
BACKOFF_S = 1.0
LOG_EVERY_S = 60.0
MAX_REASON_CHARS = 300


class Outgoing(NamedTuple):
    title: str
    body: str
    notify_type: str  # info, success, warning, failure
    tag: object = None  # given back to ``on_result`` (the message it came from)


# (channel name, what was sent, delivered, why not) -> None; called on the worker's thread
ResultHook = Callable[[str, Outgoing, bool, str | None], None]
Send = Callable[[Outgoing], str | None]  # None when delivered, else why not


def apprise_sender(url: str) -> Send:
    """A send function for one Apprise URL; raises ValueError when Apprise does not know it."""
    import apprise  # only a hub that sends a message pays for importing it (hub.alerts.url_check)

    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise ValueError(UNKNOWN_URL)

    def send(item: Outgoing) -> str | None:
        try:
            result = notifier.notify(title=item.title, body=item.body, notify_type=item.notify_type)
        except Exception as exc:  # a plugin's bug must not kill the worker
            return f"{type(exc).__name__}: {exc}"
        if result:
            return None
        # Apprise (2.x) keeps the log of each call with its result: its last warning says why
        problems = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
        return problems[-1] if problems else "the service refused the message"

    return send


def first_use_sender(url: str) -> Send:
    """:func:`apprise_sender` made when the first message is sent (on the channel's worker
    thread): a hub that sends nothing never loads Apprise (:mod:`hub.alerts.url_check`)."""
    made: list[Send] = []

    def send(item: Outgoing) -> str | None:
        if not made:
            try:
                made.append(apprise_sender(url))
            except ValueError as exc:
                return str(exc)
        return made[0](item)

    return send


@dataclass(slots=True)
class ChannelHealth:
    name: str
    delivered: int = 0
    failed: int = 0  # messages given up after every retry
    retried: int = 0
    dropped: int = 0  # the queue was full
    last_error: str | None = None
    last_error_wall: float = 0.0
    last_delivered_wall: float = 0.0
    queued: int = 0

    @property
    def ok(self) -> bool:
        return self.last_error is None or self.last_delivered_wall > self.last_error_wall


class ChannelWorker:
    """One channel's queue and thread."""

    def __init__(
        self,
        name: str,
        send: Send,
        max_per_minute: int,
        on_result: ResultHook | None = None,
        queue_size: int = QUEUE_SIZE,
        retries: int = RETRIES,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.name = name
        self.health = ChannelHealth(name)
        self._send = send
        self._max_per_minute = max_per_minute
        self._on_result = on_result
        self._retries = retries
        self._backoff_s = backoff_s
        self._queue: queue.Queue[Outgoing] = queue.Queue(queue_size)
        self._sent_at: deque[float] = deque()
        self._stop = threading.Event()
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0
        self._thread = threading.Thread(target=self._run, name=f"sers-alert-{name}"[:40], daemon=True)
        self._thread.start()

    def offer(self, item: Outgoing) -> bool:
        """Queues ``item`` without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.health.dropped += 1
            self._log_problem(f"its queue is full ({self._queue.maxsize}): a message was dropped")
            return False
        self.health.queued = self._queue.qsize()
        return True

    def signal_stop(self) -> None:
        self._stop.set()

    def stop(self, wait_s: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(wait_s)  # a send in progress may hang on: the thread is a daemon

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.health.queued = self._queue.qsize()
            self._wait_for_rate()
            self._deliver(item)

    def _wait_for_rate(self) -> None:
        sent = self._sent_at
        while sent and time.monotonic() - sent[0] >= 60.0:
            sent.popleft()
        if len(sent) >= self._max_per_minute:
            self._stop.wait(60.0 - (time.monotonic() - sent[0]))
            sent.popleft()
        sent.append(time.monotonic())

    def _deliver(self, item: Outgoing) -> None:
        health = self.health
        reason: str | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                health.retried += 1
                if self._stop.wait(self._backoff_s * 2 ** (attempt - 1)):
                    return
            reason = self._send(item)
            if reason is None:
                health.delivered += 1
                health.last_delivered_wall = time.time()
                if health.last_error is not None and self._unlogged >= 0:
                    log.info("alert channel %s: delivering again", self.name)
                self._report(item, True, None)
                return
            reason = reason[:MAX_REASON_CHARS]
        health.failed += 1
        health.last_error = reason
        health.last_error_wall = time.time()
        self._log_problem(f"a message was not delivered after {self._retries + 1} tries: {reason}")
        self._report(item, False, reason)

    def _report(self, item: Outgoing, delivered: bool, reason: str | None) -> None:
        if self._on_result is not None:
            try:
                self._on_result(self.name, item, delivered, reason)
            except Exception:
                log.exception("alert channel %s: reporting a result failed", self.name)

    def _log_problem(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more problems since the last line)" if self._unlogged else ""
        log.warning("alert channel %s: %s%s", self.name, what, more)
        self._logged_at = now
        self._unlogged = 0


class Delivery:
    """Every channel's worker, by name (user URLs as ``user:<name>``)."""

    def __init__(self, on_result: ResultHook | None = None) -> None:
        self.workers: dict[str, ChannelWorker] = {}
        self.broken: dict[str, str] = {}  # channels whose URL Apprise refused, and why
        self._on_result = on_result

    def add(self, name: str, url: str, max_per_minute: int, send: Send | None = None) -> None:
        if send is not None:
            self.workers[name] = ChannelWorker(name, send, max_per_minute, self._on_result)
        else:
            self.add_all([(name, url, max_per_minute)])

    def add_all(self, channels: Sequence[tuple[str, str, int]]) -> None:
        """Channels sent through Apprise, as (name, URL, max per minute): their URLs checked
        at once, by one child process (:mod:`hub.alerts.url_check`)."""
        for (name, url, max_per_minute), reason in zip(
            channels, refusals([url for _, url, _ in channels]), strict=True
        ):
            if reason is not None:
                self.broken[name] = reason
                log.error("alert channel %s: %s; its messages are not sent", name, reason)
                continue
            self.workers[name] = ChannelWorker(name, first_use_sender(url), max_per_minute, self._on_result)

    def offer(self, channel: str, item: Outgoing) -> bool:
        worker = self.workers.get(channel)
        return worker is not None and worker.offer(item)

    def stop(self, wait_s: float = 1.0) -> None:
        """Stops every worker, waiting ``wait_s`` in all (a send that hangs is left to its
        daemon thread)."""
        for worker in self.workers.values():
            worker.signal_stop()
        deadline = time.monotonic() + wait_s
        for worker in self.workers.values():
            worker.stop(wait_s=max(0.0, deadline - time.monotonic()))
