"""The alert engine on a fake clock: for_s, one firing and one resolved per subject, grouping,
repeat_s, quiet hours, silences, and alerts restored after a restart; and the config's checks."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import pytest

from hub.alerts import persist
from hub.alerts.config import ConfigError, Kind, Severity, parse_alerts
from hub.alerts.engine import AlertEngine, Message, Status, Subject
from hub.alerts.messages import body, title
from hub.clock import ManualClock
from hub.settings import SettingsError, load_settings

WALL_AT_NOON = datetime(2026, 6, 1, 12, 0, 0).timestamp()  # local time, as quiet hours read it


def config(**rule: Any) -> Any:
    raw = {
        "group_wait_s": rule.pop("group_wait_s", 3),
        "channels": [{"name": "chat", "url": "json://127.0.0.1:1/x"}],
        "rules": [{"name": "node down", "when": "node_offline", "channels": ["chat"], **rule}],
    }
    return parse_alerts(raw)


def engine_for(**rule: Any) -> tuple[AlertEngine, ManualClock]:
    clock = ManualClock(wall_s=WALL_AT_NOON)
    cfg = config(**rule)
    return AlertEngine(cfg, clock), clock


def run(engine: AlertEngine, clock: ManualClock, seconds: float, step_s: float = 0.5) -> list[Message]:
    out: list[Message] = []
    for _ in range(int(seconds / step_s)):
        clock.advance(step_s)
        out += engine.tick()
    return out


def down(engine: AlertEngine, node: str, active: bool = True) -> None:
    rule = engine.rules["node down"]
    engine.observe(rule, Subject(node, node), active, f"{node} offline")


def test_fires_once_after_for_s_and_resolves_once() -> None:
    engine, clock = engine_for(for_s=60)
    down(engine, "gpu01")
    assert run(engine, clock, 59) == []
    down(engine, "gpu01")  # seen again while pending: still one alert
    fired = run(engine, clock, 10)
    assert [(m.status, [line.subject.key for line in m.lines]) for m in fired] == [(Status.FIRING, ["gpu01"])]
    assert run(engine, clock, 120) == []
    down(engine, "gpu01", False)
    resolved = run(engine, clock, 10)
    assert [(m.status, len(m.lines)) for m in resolved] == [(Status.RESOLVED, 1)]
    assert "resolved: gpu01 offline" in body(resolved[0])
    assert run(engine, clock, 60) == []


def test_flapping_faster_than_for_s_sends_nothing() -> None:
    engine, clock = engine_for(for_s=10)
    messages = []
    for _ in range(20):
        down(engine, "gpu01")
        messages += run(engine, clock, 5)
        down(engine, "gpu01", False)
        messages += run(engine, clock, 2)
    assert messages == []
    assert engine.firing() == [] and engine.pending() == []


def test_subjects_firing_within_group_wait_make_one_message() -> None:
    engine, clock = engine_for(for_s=5, group_wait_s=3)
    for i in range(23):
        down(engine, f"gpu{i:02}")
        clock.advance(0.05)
    messages = run(engine, clock, 20)
    assert len(messages) == 1
    assert len(messages[0].lines) == 23
    assert title(messages[0]) == "[FIRING] node down: 23 nodes offline (gpu00…gpu22)"
    assert body(messages[0]).splitlines()[:2] == ["23 nodes offline:", "gpu00 offline"]
    down(engine, "gpu99")  # later: a message of its own
    assert [len(m.lines) for m in run(engine, clock, 20)] == [1]


def test_resolved_within_the_group_wait_cancels_the_firing() -> None:
    engine, clock = engine_for(for_s=0, group_wait_s=5)
    down(engine, "gpu01")
    run(engine, clock, 2)
    down(engine, "gpu01", False)
    assert run(engine, clock, 10) == []


def test_repeat_s_reminds_while_firing() -> None:
    engine, clock = engine_for(for_s=0, repeat_s=60)
    down(engine, "gpu01")
    messages = run(engine, clock, 200)
    assert [(m.status, m.reminder) for m in messages] == [
        (Status.FIRING, False),
        (Status.FIRING, True),
        (Status.FIRING, True),
        (Status.FIRING, True),
    ]
    assert title(messages[1]).startswith("[REMINDER]")


def test_quiet_hours_hold_non_critical_until_they_end() -> None:
    # 11:00-12:30 around the clock's noon: held for 30 minutes, then sent
    engine, clock = engine_for(for_s=0, quiet_hours="11:00-12:30", severity="warning")
    down(engine, "gpu01")
    assert run(engine, clock, 60) == []
    assert run(engine, clock, 28 * 60, step_s=10) == []
    released = run(engine, clock, 120, step_s=10)
    assert [m.status for m in released] == [Status.FIRING]


def test_quiet_hours_drop_a_held_alert_that_resolved_meanwhile() -> None:
    engine, clock = engine_for(for_s=0, quiet_hours="11:00-12:30", severity="warning")
    down(engine, "gpu01")
    run(engine, clock, 60)
    down(engine, "gpu01", False)
    assert run(engine, clock, 3600, step_s=10) == []


def test_quiet_hours_never_hold_critical() -> None:
    engine, clock = engine_for(for_s=0, quiet_hours="11:00-12:30")
    assert engine.rules["node down"].severity is Severity.CRITICAL
    down(engine, "gpu01")
    assert len(run(engine, clock, 10)) == 1


def test_quiet_hours_across_midnight() -> None:
    quiet = (
        parse_alerts(
            {
                "channels": [{"name": "c", "url": "json://h/"}],
                "rules": [
                    {"name": "r", "when": "node_offline", "channels": ["c"], "quiet_hours": "22:00-07:00"}
                ],
            }
        )
        .rules[0]
        .quiet_hours
    )
    assert quiet is not None
    assert quiet.contains(datetime(2026, 1, 1, 23, 0).time())
    assert quiet.contains(datetime(2026, 1, 1, 6, 59).time())
    assert not quiet.contains(datetime(2026, 1, 1, 7, 0).time())
    assert not quiet.contains(datetime(2026, 1, 1, 12, 0).time())


def test_a_silence_suppresses_firing_and_resolved_and_expires() -> None:
    engine, clock = engine_for(for_s=0)
    silence = engine.add_silence("rack B maintenance", "admin", 600, node="gpu0*")
    down(engine, "gpu01")
    down(engine, "cpu01")  # not matched
    messages = run(engine, clock, 10)
    assert [[line.subject.key for line in m.lines] for m in messages] == [["cpu01"]]
    down(engine, "gpu02")
    run(engine, clock, 10)
    down(engine, "gpu02", False)  # silenced the whole time: no resolved either
    assert run(engine, clock, 10) == []
    assert [a.subject.key for a in engine.firing() if not a.notified] == ["gpu01"]
    # the silence ends while gpu01 still fires: it is sent then, once
    late = run(engine, clock, 600)
    assert engine.silences == {} and silence.silence_id not in engine.silences
    assert [(m.status, [line.subject.key for line in m.lines]) for m in late] == [(Status.FIRING, ["gpu01"])]
    assert all(a.notified for a in engine.firing())


def test_expiring_a_silence_sends_what_it_held() -> None:
    engine, clock = engine_for(for_s=0)
    silence = engine.add_silence("testing", "admin", 3600, rule="node down")
    down(engine, "gpu01")
    assert run(engine, clock, 10) == []
    assert engine.expire_silence(silence.silence_id)
    assert [m.status for m in run(engine, clock, 10)] == [Status.FIRING]


def test_silence_needs_a_matcher_and_a_known_rule() -> None:
    engine, _ = engine_for()
    with pytest.raises(ValueError, match="a rule or a node"):
        engine.add_silence("x", "admin", 60)
    with pytest.raises(ValueError, match="no rule named"):
        engine.add_silence("x", "admin", 60, rule="nope")
    with pytest.raises(ValueError, match="duration_s"):
        engine.add_silence("x", "admin", -1, node="*")


def test_restored_alert_is_not_sent_again_and_resolves_once() -> None:
    engine, clock = engine_for(for_s=0)
    assert engine.restore("node down", Subject("gpu01", "gpu01"), "gpu01 offline", WALL_AT_NOON - 60, True)
    assert not engine.restore("gone rule", Subject("x"), "x", 0, True)
    down(engine, "gpu01")  # still down after the restart
    assert run(engine, clock, 30) == []
    down(engine, "gpu01", False)
    assert [m.status for m in run(engine, clock, 10)] == [Status.RESOLVED]


def test_unconfirmed_restored_alerts_resolve() -> None:
    engine, clock = engine_for(for_s=0)
    engine.restore("node down", Subject("gpu01/0", "gpu01", "0"), "fault", WALL_AT_NOON, True)
    engine.restore("node down", Subject("gpu01/1", "gpu01", "1"), "fault", WALL_AT_NOON, True)
    engine.observe(engine.rules["node down"], Subject("gpu01/1", "gpu01", "1"), True, "still")
    engine.resolve_unconfirmed("gpu01")
    assert [a.subject.key for a in engine.firing()] == ["gpu01/1"]
    assert [[line.subject.key for line in m.lines] for m in run(engine, clock, 10)] == [["gpu01/0"]]


def restarted(engine: AlertEngine, clock: ManualClock, **rule: Any) -> AlertEngine:
    """A new engine holding what ``engine`` left in a state file (a real SQLite one, in memory),
    restored in the hub's order: the silences, then the firing alerts."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    changes = [persist.change_of(key, alert) for key, alert in engine.changed.items()]
    persist.save(db, changes, list(engine.silences.values()))
    rows, silences = persist.load(db)
    again = AlertEngine(config(**rule), clock)
    for silence in silences:
        again.restore_silence(silence)
    for row in rows:
        assert again.restore(row.rule, row.subject, row.text, row.fired_epoch_s, row.notified)
    return again


def test_a_message_held_by_quiet_hours_is_sent_when_they_end_even_across_a_restart() -> None:
    rule = {"for_s": 0, "quiet_hours": "11:00-12:30", "severity": "warning"}
    engine, clock = engine_for(**rule)
    down(engine, "gpu01")
    assert run(engine, clock, 600, step_s=10) == []  # held: 12:10
    engine = restarted(engine, clock, **rule)
    assert run(engine, clock, 18 * 60, step_s=10) == []  # 12:28: still quiet
    released = run(engine, clock, 120, step_s=10)
    assert [(m.status, [line.subject.key for line in m.lines]) for m in released] == [
        (Status.FIRING, ["gpu01"])
    ]
    engine = restarted(engine, clock, **rule)  # sent now: a later restart sends nothing
    assert run(engine, clock, 600, step_s=10) == [] and [a.subject.key for a in engine.firing()] == ["gpu01"]


def test_a_silenced_alert_restored_stays_unsent_until_its_silence_ends() -> None:
    engine, clock = engine_for(for_s=0)
    silence = engine.add_silence("maintenance", "admin", 600, node="gpu01")
    down(engine, "gpu01")
    assert run(engine, clock, 10) == []
    engine = restarted(engine, clock)
    assert [s.silence_id for s in engine.silences.values()] == [silence.silence_id]
    assert run(engine, clock, 500, step_s=10) == []
    assert [m.status for m in run(engine, clock, 120, step_s=10)] == [Status.FIRING]


def test_changes_are_recorded_for_the_state_file() -> None:
    engine, clock = engine_for(for_s=0)
    down(engine, "gpu01")
    run(engine, clock, 1)
    assert list(engine.changed) == [("node down", "gpu01")]
    engine.changed = {}
    down(engine, "gpu01", False)
    assert engine.changed == {("node down", "gpu01"): None}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            {"rules": [{"name": "r", "when": "nope", "channels": []}]},
            r"alerts.rules\[0\].when: expected one of",
        ),
        ({"rules": [{"name": "r", "when": "node_offline", "channels": ["x"]}]}, "no channel named 'x'"),
        ({"rules": [{"name": "r", "when": "node_offline"}]}, "nobody would be told"),
        (
            {
                "channels": [{"name": "c", "url": "json://h"}],
                "rules": [{"name": "r", "when": "gpu_temp_above", "channels": ["c"]}],
            },
            r"alerts.rules\[0\].threshold: gpu_temp_above needs a threshold",
        ),
        (
            {
                "channels": [{"name": "c", "url": "json://h"}],
                "rules": [{"name": "r", "when": "node_offline", "channels": ["c"], "quiet_hours": "late"}],
            },
            "HH:MM-HH:MM",
        ),
        ({"channels": [{"name": "c", "url": "nope"}]}, r"alerts.channels\[0\].url"),
        ({"users": {"alice": 3}}, "alerts.users.alice"),
        ({"colour": 1}, "alerts.colour: unknown key"),
        (
            {
                "channels": [{"name": "c", "url": "json://h"}],
                "rules": [{"name": "r", "when": "node_offline", "channels": ["c"], "for_s": -1}],
            },
            r"alerts.rules\[0\].for_s",
        ),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_alerts(raw)


def test_alerts_table_from_the_hub_toml(tmp_path: Any) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        """
[[alerts.channels]]
name = "lab-chat"
url = "mmost://chat.lab.example/hookid"
[[alerts.rules]]
name = "node down"
when = "node_offline"
for_s = 60
channels = ["lab-chat"]
[[alerts.rules]]
name = "2 A100 free"
when = "gpus_free"
model = "A100"
min_free = 2
group = "A100 room"
users = ["alice"]
[alerts.users]
alice = "mailto://alice@lab.example"
"""
    )
    settings = load_settings(["--config", str(path)], env={})
    rules = settings.alerts.rules
    assert [r.when for r in rules] == [Kind.NODE_OFFLINE, Kind.GPUS_FREE]
    assert rules[1].send_resolved is False and rules[1].min_free == 2 and rules[1].users == ("alice",)
    path.write_text('[[alerts.rules]]\nname = "x"\nwhen = "gpu_fault"\n')
    with pytest.raises(SettingsError, match="nobody would be told"):
        load_settings(["--config", str(path)], env={})


def test_the_readme_alert_config_is_valid_and_means_what_it_says(tmp_path: Any) -> None:
    import tomllib

    from tests.procs import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Alerts") :]
    block = section[
        section.index("```toml") + len("```toml") : section.index("```", section.index("```toml") + 7)
    ]
    assert len(block.strip().splitlines()) <= 10
    alerts = parse_alerts(tomllib.loads(block)["alerts"])
    kinds = {rule.name: rule.when for rule in alerts.rules}
    assert kinds == {
        "node down": Kind.NODE_OFFLINE,
        "GPU fault": Kind.GPU_FAULT,
        "idle-held 2 h": Kind.GPU_IDLE_HELD,
        "2 A100 free": Kind.GPUS_FREE,
    }
    assert alerts.rules[2].for_s == 7200 and alerts.rules[3].min_free == 2 and alerts.rules[3].model == "A100"
    # and as the hub reads it: the block as a whole hub TOML, through the settings loader
    path = tmp_path / "hub.toml"
    path.write_text(block)
    loaded = load_settings(["--config", str(path)], env={}).alerts
    assert loaded.enabled and loaded == alerts
    assert dict(loaded.users) == {
        "alice": "mailto://alice@lab.example",
        "bob": "ntfy://ntfy.lab.example/bob-gpus",
    }
    assert loaded.rules[0].channels == ("lab-chat",) and loaded.rules[3].users == ("bob",)
