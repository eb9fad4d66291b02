"""The ``[alerts]`` table of the hub's TOML: channels, rules and users, checked once at startup.

```toml
[alerts]
group_wait_s = 5                      # subjects of a rule firing within this are one message
[[alerts.channels]]
name = "lab-chat"
url = "mmost://chat.lab.example/hookid"   # any Apprise URL
max_per_minute = 20                   # optional rate limit of this channel
[[alerts.rules]]
name = "node down"
when = "node_offline"
for_s = 60
channels = ["lab-chat"]
[alerts.users]
alice = "mailto://alice@lab.example"
```

Every error names the key (``alerts.rules[2].threshold: ...``). Pure: no I/O, no Apprise (the
URLs are checked by :mod:`hub.alerts.delivery` when the hub starts, and by ``sers-hub alerts
test``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time as day_time
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

MAX_NAME_CHARS = 100
DEFAULT_GROUP_WAIT_S = 5.0
DEFAULT_MAX_PER_MINUTE = 20


class ConfigError(ValueError):
    """A bad ``[alerts]`` setting; the message names the key. (hub.settings turns it into its
    SettingsError.)"""


class Kind(StrEnum):
    """What a rule watches (the ``when`` key)."""

    NODE_OFFLINE = "node_offline"
    GPU_FAULT = "gpu_fault"  # a GPU's health is a fault, or the agent reports it lost/failed
    GPU_WARNING = "gpu_warning"  # a health warning: Xid, row remapping, throttling...
    GPU_TEMP_ABOVE = "gpu_temp_above"
    DISK_USED_ABOVE = "disk_used_above"
    MEM_USED_ABOVE = "mem_used_above"
    GPU_IDLE_HELD = "gpu_idle_held"
    GPUS_FREE = "gpus_free"
    GPU_COLLECTOR_DOWN = "gpu_collector_down"


class Severity(StrEnum):
    CRITICAL = "critical"  # sent during quiet hours too
    WARNING = "warning"
    INFO = "info"


SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}

DEFAULT_SEVERITY = {
    Kind.NODE_OFFLINE: Severity.CRITICAL,
    Kind.GPU_FAULT: Severity.CRITICAL,
    Kind.GPU_WARNING: Severity.WARNING,
    Kind.GPU_TEMP_ABOVE: Severity.WARNING,
    Kind.DISK_USED_ABOVE: Severity.WARNING,
    Kind.MEM_USED_ABOVE: Severity.WARNING,
    Kind.GPU_IDLE_HELD: Severity.INFO,
    Kind.GPUS_FREE: Severity.INFO,
    Kind.GPU_COLLECTOR_DOWN: Severity.WARNING,
}
THRESHOLD_KINDS = frozenset({Kind.GPU_TEMP_ABOVE, Kind.DISK_USED_ABOVE, Kind.MEM_USED_ABOVE})
# kinds whose condition is about a GPU: ``model`` filters them
GPU_KINDS = frozenset(
    {Kind.GPU_FAULT, Kind.GPU_WARNING, Kind.GPU_TEMP_ABOVE, Kind.GPU_IDLE_HELD, Kind.GPUS_FREE}
)
# "fires once when it becomes true": a resolved message would only say the GPUs were taken
NO_RESOLVED_BY_DEFAULT = frozenset({Kind.GPUS_FREE})


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span of local time (``22:00-07:00`` crosses midnight) during which non-critical
    messages are held, and sent when it ends."""

    start: day_time
    end: day_time

    def contains(self, now: day_time) -> bool:
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    url: str
    max_per_minute: int = DEFAULT_MAX_PER_MINUTE


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    when: Kind
    channels: tuple[str, ...] = ()
    for_s: float = 0.0
    repeat_s: float = 0.0  # 0: no reminders
    send_resolved: bool = True
    severity: Severity = Severity.WARNING
    quiet_hours: QuietHours | None = None
    group: str | None = None  # only nodes of this group (the [names] table's)
    nodes: tuple[str, ...] = ()  # only nodes whose name matches one of these globs
    model: str | None = None  # only GPUs whose name holds this (case-insensitive)
    threshold: float | None = None  # °C for gpu_temp_above, percent for disk and memory
    min_free: int = 1  # gpus_free: at least this many
    mig_profile: str | None = None  # gpus_free: count free MIG slices of this profile instead
    users: tuple[str, ...] = ()  # also tell these [alerts.users] (gpus_free: those waiting)

    def matches_node(self, node_id: str, group: str | None) -> bool:
        if self.group is not None and group != self.group:
            return False
        return not self.nodes or any(fnmatchcase(node_id, pattern) for pattern in self.nodes)

    def matches_model(self, gpu_name: object) -> bool:
        if self.model is None:
            return True
        return isinstance(gpu_name, str) and self.model.lower() in gpu_name.lower()


@dataclass(frozen=True, slots=True)
class AlertConfig:
    channels: tuple[Channel, ...] = ()
    rules: tuple[Rule, ...] = ()
    users: dict[str, str] = field(default_factory=dict)  # user name -> Apprise URL
    group_wait_s: float = DEFAULT_GROUP_WAIT_S

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def kinds(self) -> frozenset[Kind]:
        return frozenset(rule.when for rule in self.rules)


# --------------------------------------------------------------------------- parsing
_QUIET_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_RULE_KEYS = frozenset(Rule.__dataclass_fields__)
_CHANNEL_KEYS = frozenset(Channel.__dataclass_fields__)
_TOP_KEYS = frozenset({"channels", "rules", "users", "group_wait_s"})


def _name(raw: Any, key: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{key}: expected a non-empty name, got {raw!r:.60}")
    if len(raw) > MAX_NAME_CHARS or any(ord(c) < 32 for c in raw):
        raise ConfigError(f"{key}: at most {MAX_NAME_CHARS} printable characters")
    return raw


def _number(raw: Any, key: str, minimum: float = 0.0) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw or raw < minimum:
        raise ConfigError(f"{key}: expected a number of at least {minimum:g}, got {raw!r:.60}")
    return float(raw)


def _strings(raw: Any, key: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(f"{key}: expected a list of strings, got {raw!r:.60}")
    return tuple(raw)


def parse_quiet_hours(raw: Any, key: str) -> QuietHours:
    match = _QUIET_RE.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise ConfigError(f'{key}: expected "HH:MM-HH:MM" such as "22:00-07:00", got {raw!r:.60}')
    h1, m1, h2, m2 = (int(x) for x in match.groups())
    try:
        quiet = QuietHours(day_time(h1, m1), day_time(h2, m2))
    except ValueError:
        raise ConfigError(f"{key}: not a time of day: {raw!r:.60}") from None
    if quiet.start == quiet.end:
        raise ConfigError(f"{key}: starts and ends at the same time")
    return quiet


def _channel(raw: Any, key: str) -> Channel:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table")
    unknown = raw.keys() - _CHANNEL_KEYS
    if unknown:
        raise ConfigError(
            f"{key}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(_CHANNEL_KEYS))})"
        )
    url = raw.get("url")
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{key}.url: expected an Apprise URL such as json://host/path, got {url!r:.60}")
    per_minute = _number(raw.get("max_per_minute", DEFAULT_MAX_PER_MINUTE), f"{key}.max_per_minute", 1)
    return Channel(_name(raw.get("name"), f"{key}.name"), url, int(per_minute))


def _rule(raw: Any, key: str, channels: set[str], users: dict[str, str]) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table")
    unknown = raw.keys() - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
    name = _name(raw.get("name"), f"{key}.name")
    try:
        when = Kind(str(raw.get("when")))
    except ValueError:
        raise ConfigError(
            f"{key}.when: expected one of {', '.join(k.value for k in Kind)}, got {raw.get('when')!r:.60}"
        ) from None
    values: dict[str, Any] = {"name": name, "when": when}
    values["channels"] = _strings(raw.get("channels", []), f"{key}.channels")
    for channel in values["channels"]:
        if channel not in channels:
            raise ConfigError(f"{key}.channels: no channel named {channel!r} in [[alerts.channels]]")
    values["users"] = _strings(raw.get("users", []), f"{key}.users")
    for user in values["users"]:
        if user not in users:
            raise ConfigError(f"{key}.users: no user {user!r} in [alerts.users]")
    if not values["channels"] and not values["users"] and when is not Kind.GPU_IDLE_HELD:
        raise ConfigError(f"{key}: no channels and no users: nobody would be told")
    for number in ("for_s", "repeat_s"):
        if number in raw:
            values[number] = _number(raw[number], f"{key}.{number}")
    for flag in ("send_resolved",):
        if flag in raw:
            if not isinstance(raw[flag], bool):
                raise ConfigError(f"{key}.{flag}: expected true or false")
            values[flag] = raw[flag]
    if "send_resolved" not in values:
        values["send_resolved"] = when not in NO_RESOLVED_BY_DEFAULT
    try:
        values["severity"] = Severity(raw.get("severity", DEFAULT_SEVERITY[when]))
    except ValueError:
        raise ConfigError(f"{key}.severity: expected critical, warning or info") from None
    if "quiet_hours" in raw:
        values["quiet_hours"] = parse_quiet_hours(raw["quiet_hours"], f"{key}.quiet_hours")
    if "group" in raw:
        values["group"] = _name(raw["group"], f"{key}.group")
    if "nodes" in raw:
        values["nodes"] = _strings(raw["nodes"], f"{key}.nodes")
    for text in ("model", "mig_profile"):
        if text in raw:
            if text == "model" and when not in GPU_KINDS:
                raise ConfigError(f"{key}.model: {when.value} is not about GPUs")
            values[text] = _name(raw[text], f"{key}.{text}")
    if "mig_profile" in values and when is not Kind.GPUS_FREE:
        raise ConfigError(f"{key}.mig_profile: only for gpus_free")
    if when in THRESHOLD_KINDS:
        if "threshold" not in raw:
            unit = "°C" if when is Kind.GPU_TEMP_ABOVE else "percent"
            raise ConfigError(f"{key}.threshold: {when.value} needs a threshold ({unit})")
        values["threshold"] = _number(raw["threshold"], f"{key}.threshold")
    elif "threshold" in raw:
        raise ConfigError(f"{key}.threshold: only for {', '.join(sorted(k.value for k in THRESHOLD_KINDS))}")
    if "min_free" in raw:
        if when is not Kind.GPUS_FREE:
            raise ConfigError(f"{key}.min_free: only for gpus_free")
        values["min_free"] = int(_number(raw["min_free"], f"{key}.min_free", 1))
    return Rule(**values)


def parse_alerts(raw: Any, key: str = "alerts") -> AlertConfig:
    """The ``[alerts]`` table; raises :class:`ConfigError` naming the key at fault."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table")
    unknown = raw.keys() - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    users_raw = raw.get("users", {})
    if not isinstance(users_raw, dict):
        raise ConfigError(f'{key}.users: expected a table of user = "Apprise URL"')
    users = {}
    for user, url in users_raw.items():
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"{key}.users.{user}: expected an Apprise URL, got {url!r:.60}")
        users[_name(user, f"{key}.users")] = url
    channels_raw = raw.get("channels", [])
    if not isinstance(channels_raw, list):
        raise ConfigError(f"{key}.channels: expected [[alerts.channels]] tables")
    channels = tuple(_channel(item, f"{key}.channels[{i}]") for i, item in enumerate(channels_raw))
    names = [c.name for c in channels]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{key}.channels: two channels named {name!r}")
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{key}.rules: expected [[alerts.rules]] tables")
    rules = tuple(_rule(item, f"{key}.rules[{i}]", set(names), users) for i, item in enumerate(rules_raw))
    rule_names = [r.name for r in rules]
    for name in rule_names:
        if rule_names.count(name) > 1:
            raise ConfigError(f"{key}.rules: two rules named {name!r}")
    group_wait_s = _number(raw.get("group_wait_s", DEFAULT_GROUP_WAIT_S), f"{key}.group_wait_s")
    return AlertConfig(channels, rules, users, group_wait_s)
