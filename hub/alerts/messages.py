"""An alert :class:`~hub.alerts.engine.Message` in words: a title and a plain-text body.

A grouped message names how many subjects and lists them ("node down: 23 firing", then one
line each), so a dead switch makes one message, not 23. Bounded: chat services cut or refuse
long messages, and subjects carry agent-provided text.
"""

from __future__ import annotations

from hub.alerts.config import Kind
from hub.alerts.engine import Message, Status

MAX_LINES = 40

# what many subjects of a kind are, for a grouped message: "23 nodes offline"
PLURAL = {
    Kind.NODE_OFFLINE: "nodes offline",
    Kind.GPU_FAULT: "GPUs faulted",
    Kind.GPU_WARNING: "GPUs with a health warning",
    Kind.GPU_TEMP_ABOVE: "GPUs too hot",
    Kind.DISK_USED_ABOVE: "disks nearly full",
    Kind.MEM_USED_ABOVE: "nodes short of memory",
    Kind.GPU_IDLE_HELD: "GPUs held idle",
    Kind.GPUS_FREE: "free GPU counts reached",
    Kind.GPU_COLLECTOR_DOWN: "GPU collectors down",
}


def _many(message: Message) -> str:
    """ "23 nodes offline in group rack B", for a message of several subjects."""
    rule = message.rule
    place = f" in group {rule.group}" if rule.group else ""
    return f"{len(message.lines)} {PLURAL[rule.when]}{place}"


def title(message: Message) -> str:
    lines = message.lines
    status = "REMINDER" if message.reminder else message.status.value.upper()
    if len(lines) == 1:
        return f"[{status}] {message.rule.name}: {lines[0].subject.key}"
    keys = sorted(line.subject.key for line in lines)
    return f"[{status}] {message.rule.name}: {_many(message)} ({keys[0]}…{keys[-1]})"


def body(message: Message) -> str:
    lines = message.lines
    head = []
    if len(lines) > 1:
        resolved = ", resolved" if message.status is Status.RESOLVED else ""
        head.append(f"{_many(message)}{resolved}:")
    prefix = "resolved: " if message.status is Status.RESOLVED and len(lines) == 1 else ""
    shown = [prefix + line.text for line in lines[:MAX_LINES]]
    if len(lines) > MAX_LINES:
        shown.append(f"… and {len(lines) - MAX_LINES} more")
    return "\n".join(head + shown)


def notify_type(message: Message) -> str:
    """Apprise's notify type (its colour or icon on most services)."""
    if message.status is Status.RESOLVED:
        return "success"
    return {"critical": "failure", "warning": "warning"}.get(message.rule.severity.value, "info")
