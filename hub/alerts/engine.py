"""Alert evaluation with Alertmanager's semantics. Pure: no I/O; the clock is injected.

The conditions (:mod:`hub.alerts.conditions`) call :meth:`AlertEngine.observe` when a rule's
condition for a subject (a node, a GPU, a group's model) turns true or false; the hub calls
:meth:`AlertEngine.tick` a couple of times a second and hands the :class:`Message` s it returns
to the delivery. So evaluation rides on the events: a tick looks only at due deadlines (a heap),
open groups, held messages and, when silences change, the firing alerts, never at every node.

- A condition must hold for the rule's ``for_s`` before the alert fires; one that ends sooner
  (flapping) sends nothing.
- One firing and one resolved message per (rule, subject); ``repeat_s`` re-sends a reminder
  while it fires. A resolved alert whose firing message was not sent yet (still grouping, or
  held by quiet hours) cancels it and sends nothing.
- Grouping: the first message of a rule opens a group for ``group_wait_s``; every subject of
  that rule firing (or resolving) within it joins the same message.
- Quiet hours (local time of the hub) hold a non-critical rule's messages until they end.
- Silences (by rule, node glob, GPU index) suppress the firing message; an alert still firing
  when its silence ends or is expired is sent then. A silenced alert never sends a resolved one.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import NamedTuple

from hub.alerts.config import SEVERITY_RANK, AlertConfig, Rule, Severity
from hub.domain.nodes import Clock

MAX_TEXT_CHARS = 300  # one subject's words in a message (agent-provided text goes in them)
RECENT_RESOLVED = 50  # kept for the /alerts page
MAX_SILENCES = 500
MAX_COMMENT_CHARS = 500
MAX_HELD = 1000  # messages held by quiet hours; the oldest go first past this


class Status(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Subject(NamedTuple):
    """What an alert is about. ``key`` is unique within a rule; ``node`` and ``gpu`` are what
    silences match."""

    key: str
    node: str | None = None
    gpu: str | None = None


@dataclass(slots=True)
class Alert:
    rule: Rule
    subject: Subject
    text: str
    since_mono: float  # when the condition started holding
    users: tuple[str, ...] = ()  # besides the rule's: [alerts.users] to tell (a GPU's holders)
    firing: bool = False
    fired_wall: float = 0.0
    notified: bool = False  # a firing message went out (or is on its way) for it
    # its firing message left the engine for the delivery (not still grouping or held by quiet
    # hours): what the state file keeps, so a restart re-sends one that never left
    sent: bool = False
    restored: bool = False  # firing from the state file, not yet seen again since the restart
    resolved_wall: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule.name, self.subject.key)


@dataclass(frozen=True, slots=True)
class AlertLine:
    subject: Subject
    text: str
    since_wall: float


@dataclass(frozen=True, slots=True)
class Message:
    """One message for a rule's channels and users: one or more subjects, firing or resolved."""

    rule: Rule
    status: Status
    lines: tuple[AlertLine, ...]
    users: tuple[str, ...]
    reminder: bool = False


@dataclass(slots=True)
class Silence:
    silence_id: int
    comment: str
    created_by: str
    starts_wall: float
    ends_wall: float
    rule: str | None = None
    node: str | None = None  # a glob
    gpu: str | None = None

    def matches(self, alert: Alert) -> bool:
        if self.rule is not None and alert.rule.name != self.rule:
            return False
        subject = alert.subject
        if self.node is not None and (subject.node is None or not fnmatchcase(subject.node, self.node)):
            return False
        return self.gpu is None or subject.gpu == self.gpu


@dataclass(slots=True)
class _Group:
    opened_mono: float
    alerts: list[Alert] = field(default_factory=list)


class _Due(NamedTuple):
    at_mono: float
    seq: int
    alert: Alert
    repeat: bool  # a reminder, else the end of ``for_s``


def _clip(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


class AlertEngine:
    def __init__(
        self,
        config: AlertConfig,
        clock: Clock,
        local_time: Callable[[float], datetime] = datetime.fromtimestamp,
    ) -> None:
        self._config = config
        self._clock = clock
        self._local_time = local_time
        self.rules = {rule.name: rule for rule in config.rules}
        self._alerts: dict[tuple[str, str], Alert] = {}
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self._groups: dict[tuple[str, Status], _Group] = {}
        self._held: list[Message] = []  # held by quiet hours, oldest first
        self.held_dropped = 0  # held past MAX_HELD
        self.silences: dict[int, Silence] = {}
        self._silence_ids = itertools.count(1)
        self._silences_changed = False
        self.silences_version = 0  # counts changes, for the state file
        self.recent_resolved: deque[Alert] = deque(maxlen=RECENT_RESOLVED)
        # for the state file: alerts whose firing state changed since the last drain (None: gone)
        self.changed: dict[tuple[str, str], Alert | None] = {}

    # ------------------------------------------------------------------ input
    def observe(
        self,
        rule: Rule,
        subject: Subject,
        active: bool,
        text: str = "",
        since_mono: float | None = None,
        users: tuple[str, ...] = (),
    ) -> None:
        """The rule's condition for ``subject`` is now true (``active``) or false. ``since_mono``:
        when it started holding, if before now (an idle-held GPU's idle start)."""
        key = (rule.name, subject.key)
        alert = self._alerts.get(key)
        if not active:
            if alert is not None:
                self._end(alert)
            return
        if alert is not None:
            alert.text = _clip(text)
            alert.users = users
            alert.restored = False
            return
        now = self._clock.monotonic()
        since = now if since_mono is None else min(since_mono, now)
        alert = self._alerts[key] = Alert(rule, subject, _clip(text), since, users)
        due = since + rule.for_s
        if due <= now:
            self._fire(alert, now)
        else:
            heapq.heappush(self._due, _Due(due, next(self._seq), alert, False))

    def forget_node(self, node_id: str) -> None:
        """The node was removed from the hub: its alerts end without a message."""
        for key, alert in list(self._alerts.items()):
            if alert.subject.node == node_id:
                del self._alerts[key]
                self._unqueue(alert)
                if alert.firing:
                    self.changed[key] = None

    def restore(self, rule_name: str, subject: Subject, text: str, fired_wall: float, sent: bool) -> bool:
        """A firing alert from the state file: firing again, without a message if its firing
        message was ``sent`` before the restart; else (it was still held by quiet hours, or
        grouping) its message is queued again, unless a silence holds it. False when its rule is
        no longer configured."""
        rule = self.rules.get(rule_name)
        if rule is None or (rule.name, subject.key) in self._alerts:
            return False
        now = self._clock.monotonic()
        alert = Alert(rule, subject, _clip(text), now, firing=True, restored=True)
        alert.fired_wall = fired_wall
        alert.notified = alert.sent = sent
        self._alerts[alert.key] = alert
        if not sent and not self.silenced(alert):
            alert.notified = True
            self._queue(alert, Status.FIRING, now)
        if rule.repeat_s:
            self._push_repeat(alert, self._clock.monotonic())
        return True

    def resolve_unconfirmed(self, node_id: str) -> None:
        """The node has reported since the restart: its restored alerts not seen again since
        have ended (their conditions publish nothing when they are false)."""
        for alert in [a for a in self._alerts.values() if a.restored and a.subject.node == node_id]:
            self._end(alert)

    # ------------------------------------------------------------------ silences
    def add_silence(
        self,
        comment: str,
        created_by: str,
        duration_s: float,
        rule: str | None = None,
        node: str | None = None,
        gpu: str | None = None,
    ) -> Silence:
        """Raises ValueError for a silence that would match nothing or everything."""
        if rule is None and node is None:
            raise ValueError("a silence needs a rule or a node")
        if rule is not None and rule not in self.rules:
            raise ValueError(f"no rule named {rule!r}")
        if not 0 < duration_s <= 366 * 86400:
            raise ValueError("duration_s: more than 0 and at most a year")
        if len(self.silences) >= MAX_SILENCES:
            raise ValueError(f"already {MAX_SILENCES} silences: expire some")
        now = self._clock.wall()
        silence = Silence(
            next(self._silence_ids),
            _clip(comment)[:MAX_COMMENT_CHARS],
            _clip(created_by),
            now,
            now + duration_s,
            rule,
            node,
            gpu,
        )
        self.silences[silence.silence_id] = silence
        self.silences_version += 1
        return silence

    def restore_silence(self, silence: Silence) -> None:
        """A silence from the state file (one that has ended goes at the next tick)."""
        if silence.rule is not None and silence.rule not in self.rules:
            return
        self.silences[silence.silence_id] = silence
        self._silence_ids = itertools.count(max(self.silences) + 1)

    def expire_silence(self, silence_id: int) -> bool:
        silence = self.silences.pop(silence_id, None)
        if silence is None:
            return False
        self._silences_changed = True
        self.silences_version += 1
        return True

    def silenced(self, alert: Alert) -> bool:
        now = self._clock.wall()
        return any(s.starts_wall <= now < s.ends_wall and s.matches(alert) for s in self.silences.values())

    # ------------------------------------------------------------------ time
    def tick(self) -> list[Message]:
        """Fires what is due, sends reminders, closes groups and releases held messages;
        returns the messages to deliver now."""
        now = self._clock.monotonic()
        due = self._due
        while due and due[0].at_mono <= now:
            entry = heapq.heappop(due)
            alert = entry.alert
            if self._alerts.get(alert.key) is not alert:
                continue  # ended meanwhile
            if entry.repeat:
                if alert.firing:
                    if alert.notified and not self.silenced(alert):
                        self._send_reminder(alert)
                    self._push_repeat(alert, now)
            elif not alert.firing:
                self._fire(alert, now)
        self._expire_silences()
        if self._silences_changed:
            self._silences_changed = False
            for alert in self._alerts.values():
                if alert.firing and not alert.notified and not self.silenced(alert):
                    alert.notified = True
                    self.changed[alert.key] = alert
                    self._queue(alert, Status.FIRING, now)
        out: list[Message] = []
        wait_s = self._config.group_wait_s
        for group_key, group in list(self._groups.items()):
            if now - group.opened_mono >= wait_s:
                del self._groups[group_key]
                if group.alerts:
                    out.append(self._message(group.alerts[0].rule, group_key[1], group.alerts))
        candidates, self._held = self._held + out, []  # held ones first: they are older
        ready = []
        for message in candidates:
            if self._quiet(message.rule):
                self._held.append(message)
            else:
                ready.append(message)
        if len(self._held) > MAX_HELD:
            self.held_dropped += len(self._held) - MAX_HELD
            del self._held[: len(self._held) - MAX_HELD]
        for message in ready:
            if message.status is Status.FIRING and not message.reminder:
                self._mark_sent(message)
        return ready

    def _mark_sent(self, message: Message) -> None:
        for line in message.lines:
            key = (message.rule.name, line.subject.key)
            alert = self._alerts.get(key)
            if alert is not None and not alert.sent:
                alert.sent = True
                self.changed[key] = alert  # the state file learns it went out

    def _expire_silences(self) -> None:
        now = self._clock.wall()
        for silence_id in [i for i, s in self.silences.items() if s.ends_wall <= now]:
            del self.silences[silence_id]
            self._silences_changed = True
            self.silences_version += 1

    def _quiet(self, rule: Rule) -> bool:
        quiet = rule.quiet_hours
        if quiet is None or rule.severity is Severity.CRITICAL:
            return False
        return quiet.contains(self._local_time(self._clock.wall()).time())

    # ------------------------------------------------------------------ views
    def firing(self) -> list[Alert]:
        """Firing alerts, the worst first, then the oldest."""
        return sorted(
            (a for a in self._alerts.values() if a.firing),
            key=lambda a: (SEVERITY_RANK[a.rule.severity], a.fired_wall, a.subject.key),
        )

    def pending(self) -> list[Alert]:
        return [a for a in self._alerts.values() if not a.firing]

    # ------------------------------------------------------------------ helpers
    def _fire(self, alert: Alert, now: float) -> None:
        alert.firing = True
        alert.fired_wall = self._clock.wall()
        self.changed[alert.key] = alert
        if not self.silenced(alert):
            alert.notified = True
            self._queue(alert, Status.FIRING, now)
        if alert.rule.repeat_s:
            self._push_repeat(alert, now)

    def _push_repeat(self, alert: Alert, now: float) -> None:
        heapq.heappush(self._due, _Due(now + alert.rule.repeat_s, next(self._seq), alert, True))

    def _end(self, alert: Alert) -> None:
        del self._alerts[alert.key]
        if not alert.firing:
            return  # still pending: a condition shorter than for_s sends nothing
        self.changed[alert.key] = None
        alert.resolved_wall = self._clock.wall()
        self.recent_resolved.appendleft(alert)
        if self._unqueue(alert) or not alert.notified or not alert.rule.send_resolved:
            return
        self._queue(alert, Status.RESOLVED, self._clock.monotonic())

    def _unqueue(self, alert: Alert) -> bool:
        """Takes the alert's firing out of an open group or a held message; True if found
        (nobody was told it fired, so nobody needs to hear it resolved)."""
        group = self._groups.get((alert.rule.name, Status.FIRING))
        if group is not None and alert in group.alerts:
            group.alerts.remove(alert)
            return True
        for i, message in enumerate(self._held):
            if message.status is Status.FIRING and message.rule is alert.rule:
                lines = tuple(line for line in message.lines if line.subject != alert.subject)
                if len(lines) != len(message.lines):
                    if lines:
                        self._held[i] = Message(message.rule, message.status, lines, message.users)
                    else:
                        del self._held[i]
                    return True
        return False

    def _queue(self, alert: Alert, status: Status, now: float) -> None:
        group_key = (alert.rule.name, status)
        group = self._groups.get(group_key)
        if group is None:
            group = self._groups[group_key] = _Group(now)
        group.alerts.append(alert)

    def _send_reminder(self, alert: Alert) -> None:
        # reminders are not grouped: each comes on its own alert's schedule
        message = self._message(alert.rule, Status.FIRING, [alert], reminder=True)
        self._held.append(message)  # released (now, unless quiet) by the same path as the rest

    def _message(
        self, rule: Rule, status: Status, alerts: Iterable[Alert], reminder: bool = False
    ) -> Message:
        alerts = list(alerts)
        lines = tuple(
            AlertLine(a.subject, a.text, a.fired_wall if status is Status.FIRING else a.resolved_wall)
            for a in alerts
        )
        users = tuple(dict.fromkeys(u for a in alerts for u in (*rule.users, *a.users)))
        return Message(rule, status, lines, users, reminder)
