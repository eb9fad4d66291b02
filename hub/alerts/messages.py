"""An alert :class:`~hub.alerts.engine.Message` in words: a title and a plain-text body.

A grouped message names how many subjects and lists them ("node down: 23 firing", then one
line each), so a dead switch makes one message, not 23. Bounded: chat services cut or refuse
long messages, and subjects carry agent-provided text.
"""

from __future__ import annotations

from hub.alerts.engine import Message, Status

MAX_LINES = 40
MAX_TITLE_SUBJECTS = 3


def title(message: Message) -> str:
    lines = message.lines
    status = "REMINDER" if message.reminder else message.status.value.upper()
    subjects = [line.subject.key for line in lines[:MAX_TITLE_SUBJECTS]]
    more = "…" if len(lines) > MAX_TITLE_SUBJECTS else ""
    count = f" {len(lines)} {message.status.value}" if len(lines) > 1 else ""
    return f"[{status}] {message.rule.name}:{count} {', '.join(subjects)}{more}"


def body(message: Message) -> str:
    lines = message.lines
    rule = message.rule
    head = []
    if len(lines) > 1:
        place = f" in group {rule.group}" if rule.group else ""
        verb = "firing" if message.status is Status.FIRING else "resolved"
        head.append(f"{len(lines)} {rule.when.value} alerts {verb}{place}:")
    shown = [
        line.text if message.status is Status.FIRING else f"resolved: {line.text}"
        for line in lines[:MAX_LINES]
    ]
    if len(lines) > MAX_LINES:
        shown.append(f"… and {len(lines) - MAX_LINES} more")
    return "\n".join(head + shown)


def notify_type(message: Message) -> str:
    """Apprise's notify type (its colour or icon on most services)."""
    if message.status is Status.RESOLVED:
        return "success"
    return {"critical": "failure", "warning": "warning"}.get(message.rule.severity.value, "info")
