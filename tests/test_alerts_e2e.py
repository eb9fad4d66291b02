"""Alerts end to end: a real hub with an ``[alerts]`` config, real agent processes, and real
deliveries through Apprise to a local webhook server (``json://`` and a Mattermost-shaped
``mmost://`` hook) and a real SMTP server (``mailto://``)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests import fakes
from tests.alert_receivers import (
    A100_ROOM_TOML,
    HANG_PATH,
    REFUSE_PATH,
    TWO_A100_FREE_RULE,
    MailReceiver,
    WebhookReceiver,
    alerts_toml,
    settle,
)
from tests.procs import Hub, Proc, start_agent, start_hub, stop_cleanly, wait_until

FOR_S = 3
GROUP_WAIT_S = 2
# agents killed at once for the grouping test, as the issue asks (about 30 s on a 2-core machine)
MANY_AGENTS = 30


def node_down(channels: dict[str, str], for_s: float = FOR_S, flush_every_s: float | None = None) -> str:
    """The hub's TOML: one "node down" rule (node_offline) sent to every channel; with
    ``flush_every_s``, the event log written that often."""
    rule = {"name": "node down", "when": "node_offline", "for_s": for_s, "channels": list(channels)}
    toml = alerts_toml(channels, [rule], GROUP_WAIT_S)
    return toml if flush_every_s is None else toml + f"[memory]\nflush_every_s = {flush_every_s}\n"


def restart(hub: Hub, procs: list[Proc]) -> Hub:
    """The hub again, on its port with its config and state file."""
    return start_hub(procs, hub.tmp, *hub.args, port=hub.port)


def agent(hub: Hub, procs: list[Proc], name: str) -> Proc:
    proc = start_agent(hub, name, interval_s=0.5)
    procs.append(proc)
    return proc


def gpu01_back_resolves(hub: Hub, procs: list[Proc], webhooks: WebhookReceiver) -> None:
    """gpu01's agent started again: the firing message on /hook is followed by one resolved."""
    agent(hub, procs, "gpu01")
    wait_until(lambda: len(webhooks.on("/hook")) == 2, 20, what="the resolved message")
    settle(GROUP_WAIT_S + 1)
    assert firing_and_resolved(webhooks.on("/hook")) == (
        ["[FIRING] node down: gpu01"],
        ["[RESOLVED] node down: gpu01"],
    )


def firing_and_resolved(bodies: list[dict[str, Any]], key: str = "title") -> tuple[list[str], list[str]]:
    titles = [str(b.get(key, "")) for b in bodies]
    return [t for t in titles if "[FIRING]" in t], [t for t in titles if "[RESOLVED]" in t]


def test_kill_one_agent_one_firing_then_one_resolved_on_every_channel(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver, mail: MailReceiver
) -> None:
    channels = {
        "hook": webhooks.url("/hook"),
        "chat": f"mmost://127.0.0.1:{webhooks.port}/lab-hook-id",
        "mail": mail.url("ops@lab.example"),
    }
    hub = start_hub(procs, tmp_path, toml=node_down(channels, flush_every_s=1))
    gpu01 = agent(hub, procs, "gpu01")
    agent(hub, procs, "gpu02")
    hub.wait_status("gpu01", "live")
    hub.wait_status("gpu02", "live")
    killed_at = time.monotonic()
    gpu01.kill()
    wait_until(lambda: webhooks.on("/hook"), 20, what="the firing webhook")
    assert time.monotonic() - killed_at >= FOR_S
    wait_until(lambda: webhooks.on("/hooks/lab-hook-id") and mail.subjects(), 20, what="chat and mail")
    settle(FOR_S + GROUP_WAIT_S)
    [fired] = webhooks.on("/hook")
    assert fired["title"] == "[FIRING] node down: gpu01" and fired["type"] == "failure"
    assert fired["message"].startswith("gpu01 offline (last seen ")
    [chat] = webhooks.on("/hooks/lab-hook-id")  # Mattermost's shape: one "text"
    assert "[FIRING] node down: gpu01" in chat["text"]
    assert mail.subjects("ops@lab.example") == ["[FIRING] node down: gpu01"]

    gpu01_back_resolves(hub, procs, webhooks)
    wait_until(lambda: len(mail.subjects()) == 2, 20, what="the resolved mail")
    assert mail.subjects() == ["[FIRING] node down: gpu01", "[RESOLVED] node down: gpu01"]
    # the page and the API say what happened
    alerts = hub.get("/api/v1/alerts")
    assert alerts["firing"] == [] and [a["subject"] for a in alerts["resolved"]] == ["gpu01"]
    assert {c["name"]: c["delivered"] for c in alerts["channels"]} == {"hook": 2, "chat": 2, "mail": 2}
    # and the event log keeps each message sent, under the node it was about
    wait_until(lambda: len(hub.get("/api/v1/events?kind=alert")["events"]) == 6, 10, what="alert events")
    logged = hub.get("/api/v1/events?kind=alert")["events"]
    assert {e["node"] for e in logged} == {"gpu01"}
    assert sorted(e["summary"] for e in logged) == sorted(
        f"alert 'node down' {status} → {channel}: sent"
        for status in ("firing", "resolved")
        for channel in ("hook", "chat", "mail")
    )


def test_many_agents_killed_at_once_make_one_grouped_message(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    hub = start_hub(procs, tmp_path, toml=node_down({"hook": webhooks.url("/hook")}))
    names = [f"rackb-{i:02}" for i in range(MANY_AGENTS)]
    agents = [agent(hub, procs, name) for name in names]
    wait_until(
        lambda: sum(n["status"] == "live" for n in hub.nodes().values()) == MANY_AGENTS,
        60,
        what="every agent live",
    )
    for proc in agents:
        proc.signal(signal.SIGKILL)
    wait_until(lambda: webhooks.on("/hook"), 30, what="the grouped message")
    settle(FOR_S + GROUP_WAIT_S + 1)
    [grouped] = webhooks.on("/hook")
    assert (
        grouped["title"]
        == f"[FIRING] node down: {MANY_AGENTS} nodes offline (rackb-00…rackb-{MANY_AGENTS - 1})"
    )
    lines = grouped["message"].splitlines()
    assert lines[0] == f"{MANY_AGENTS} nodes offline:"
    assert sorted(line.split()[0] for line in lines[1:]) == names


def test_an_agent_flapping_faster_than_for_s_sends_nothing(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    for_s = 8
    hub = start_hub(procs, tmp_path, toml=node_down({"hook": webhooks.url("/hook")}, for_s=for_s))
    proc = agent(hub, procs, "flappy")
    hub.wait_status("flappy", "live")
    for _ in range(3):
        proc.kill()
        hub.wait_status("flappy", "offline")
        proc = agent(hub, procs, "flappy")
        hub.wait_status("flappy", "live")
    settle(for_s + GROUP_WAIT_S + 1)
    assert webhooks.on("/hook") == []
    assert hub.get("/api/v1/alerts")["firing"] == []


def test_a_refusing_and_a_hanging_channel_cost_the_hub_and_other_channels_nothing(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    channels = {
        "refuses": webhooks.url(REFUSE_PATH),
        "hangs": webhooks.url(f"{HANG_PATH}?rto=2&cto=2"),
        "good": webhooks.url("/good"),
    }
    hub = start_hub(procs, tmp_path, toml=node_down(channels, flush_every_s=1))
    gpu01 = agent(hub, procs, "gpu01")
    agent(hub, procs, "gpu02")
    hub.wait_status("gpu01", "live")
    gpu01.kill()
    wait_until(lambda: webhooks.on("/good"), 20, what="the good channel's message")
    # while the others retry: the hub answers at once, and the wall still shows gpu02 live
    for _ in range(5):
        started = time.monotonic()
        assert hub.get("/healthz")["status"] == "ok"
        with urllib.request.urlopen(hub.url + "/", timeout=5) as response:
            assert b"gpu02" in response.read()
        assert time.monotonic() - started < 2.0, "the hub waited on a channel"
        assert hub.status("gpu02") == "live"
        time.sleep(0.5)
    wait_until(lambda: webhooks.attempts.get(REFUSE_PATH, 0) >= 4, 30, what="the refused message retried")
    channels = wait_until(
        lambda: (
            c
            if (c := {c["name"]: c for c in hub.get("/api/v1/alerts")["channels"]})["refuses"]["failed"]
            else None
        ),
        30,
        what="the refusing channel reported failing",
    )
    assert channels["good"]["ok"] and channels["good"]["delivered"] == 1
    assert not channels["refuses"]["ok"] and channels["refuses"]["retried"] == 3
    assert "500" in (channels["refuses"]["last_error"] or "")
    assert webhooks.attempts.get(HANG_PATH, 0) >= 1
    assert hub.proc is not None
    log = hub.proc.log()
    assert log.count("alert channel refuses:") == 1, "failures are logged once per interval"
    page = urllib.request.urlopen(hub.url + "/alerts", timeout=5).read().decode()
    assert "refuses" in page and "failing" in page


def test_a_hub_restarted_while_an_alert_fires_does_not_send_it_again(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    hub = start_hub(procs, tmp_path, toml=node_down({"hook": webhooks.url("/hook")}))
    gpu01 = agent(hub, procs, "gpu01")
    hub.wait_status("gpu01", "live")
    silence = {"node": "other*", "duration_s": 3600, "comment": "kept across the restart"}
    request = urllib.request.Request(
        hub.url + "/api/v1/silences",
        data=json.dumps(silence).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )  # no token configured: the hub is open to admin requests (a loopback setup)
    with urllib.request.urlopen(request, timeout=5) as response:
        silence_id = json.loads(response.read())["id"]
    gpu01.kill()
    wait_until(lambda: webhooks.on("/hook"), 20, what="the firing message")
    settle(2.5)  # the firing alert is written to the state file within 2 s
    stop_cleanly(hub)
    hub = restart(hub, procs)
    wait_until(lambda: hub.get("/api/v1/alerts")["firing"], 10, what="the alert firing again, from the file")
    [kept] = hub.get("/api/v1/alerts")["silences"]
    assert (kept["id"], kept["node"], kept["comment"]) == (silence_id, "other*", "kept across the restart")
    settle(FOR_S + GROUP_WAIT_S + 1)
    assert len(webhooks.on("/hook")) == 1, "sent again after the restart"
    gpu01_back_resolves(hub, procs, webhooks)


def test_a_hub_restarted_while_an_offline_node_waits_out_for_s_fires_once_counted_from_last_seen(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    for_s = 12
    hub_down_s = 6  # long enough that counting for_s from the restart would show
    hub = start_hub(procs, tmp_path, toml=node_down({"hook": webhooks.url("/hook")}, for_s, flush_every_s=1))
    gpu01 = agent(hub, procs, "gpu01")
    hub.wait_status("gpu01", "live")
    killed_at = time.monotonic()
    gpu01.kill()
    hub.wait_status("gpu01", "offline")
    stop_cleanly(hub)  # well before for_s: the alert is still pending, and only in memory
    assert webhooks.on("/hook") == []
    settle(hub_down_s)
    restarted_at = time.monotonic()
    hub = restart(hub, procs)
    assert hub.status("gpu01") == "offline"
    wait_until(lambda: webhooks.on("/hook"), for_s + 20, what="the firing message after the restart")
    fired_after_s = time.monotonic() - killed_at
    assert fired_after_s >= for_s
    # counted from when gpu01 was last seen, not from the restart (that would be for_s later)
    assert fired_after_s < (restarted_at - killed_at) + for_s
    settle(GROUP_WAIT_S + 2)
    [fired] = webhooks.on("/hook")
    assert fired["title"] == "[FIRING] node down: gpu01"
    assert fired["message"].startswith("gpu01 offline (last seen ")
    # the restore is no transition: the event log holds gpu01's two real ones, and no third
    statuses = [e["summary"] for e in hub.get("/api/v1/events?node=gpu01&kind=status")["events"]]
    assert len(statuses) == 2 and all("offline" in s for s in statuses)
    gpu01_back_resolves(hub, procs, webhooks)


def test_a_state_file_that_opens_only_after_the_restart_still_sends_nothing_twice(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    hub = start_hub(procs, tmp_path, toml=node_down({"hook": webhooks.url("/hook")}))
    gpu01, gpu02 = agent(hub, procs, "gpu01"), agent(hub, procs, "gpu02")
    hub.wait_status("gpu01", "live")
    hub.wait_status("gpu02", "live")
    gpu01.kill()
    wait_until(lambda: webhooks.on("/hook"), 20, what="gpu01's firing message")
    settle(2.5)  # written to the state file
    gpu02.kill()
    hub.wait_status("gpu02", "offline")
    stop_cleanly(hub)  # gpu02's alert still waits out its for_s
    state = tmp_path / "hub.sqlite3"  # where Hub keeps it
    kept = state.rename(tmp_path / "kept.sqlite3")
    state.write_bytes(b"not a state file " * 100)  # the restarted hub cannot use it at first
    hub = restart(hub, procs)
    assert hub.nodes() == {}
    kept.replace(state)  # now it can: the store opens it within 10 s and restores both nodes
    wait_until(lambda: len(webhooks.on("/hook")) == 2, 30, what="gpu02's firing message")
    settle(FOR_S + GROUP_WAIT_S + 1)
    assert [b["title"] for b in webhooks.on("/hook")] == [
        "[FIRING] node down: gpu01",
        "[FIRING] node down: gpu02",
    ]
    assert {a["subject"] for a in hub.get("/api/v1/alerts")["firing"]} == {"gpu01", "gpu02"}


def test_gpu_rules_from_real_agents_gpus_free_to_the_waiting_user_fault_and_collector_down(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver, mail: MailReceiver
) -> None:
    rules = [
        TWO_A100_FREE_RULE,
        {"name": "GPU fault", "when": "gpu_fault", "channels": ["hook"]},
        {"name": "collector down", "when": "gpu_collector_down", "channels": ["hook"]},
    ]
    alerts = alerts_toml(
        {"hook": webhooks.url("/hook")}, rules, 1, users={"bob": mail.url("bob@lab.example")}
    )
    hub = start_hub(procs, tmp_path, toml=A100_ROOM_TOML + alerts)

    def fake(name: str, scenario: dict[str, Any], *args: str) -> None:
        env = fakes.fake_env(fakes.write_scenario(tmp_path / f"{name}.json", scenario))
        procs.append(start_agent(hub, name, *args, env=env))

    free_a100 = fakes.gpu(0, "A100", util_gpu=0, mem_used_bytes=0)
    fake("a1", fakes.scenario([free_a100, fakes.gpu(1, "A100", util_gpu=90)]))
    fake("lost", fakes.one_gpu_lost())
    sysfs = fakes.gpu_server_sysfs(tmp_path / "sysfs", 2)
    fake("nodriver", fakes.driver_not_loaded(), "--sysfs-root", str(sysfs))
    for name in ("a1", "lost", "nodriver"):
        hub.wait_status(name, "live")
    wait_until(lambda: len(webhooks.on("/hook")) == 2, 20, what="the fault and the collector messages")
    titles = sorted(b["title"] for b in webhooks.on("/hook"))
    assert titles == ["[FIRING] GPU fault: lost/1", "[FIRING] collector down: nodriver"]
    assert mail.subjects() == []  # one A100 free in the room: not yet
    fake("a2", fakes.scenario([free_a100]))
    wait_until(lambda: mail.subjects(), 20, what="bob's mail")
    settle(GROUP_WAIT_S + 1)
    assert mail.subjects("bob@lab.example") == ["[FIRING] 2 A100 free: A100 GPUs in A100 room"]
    [bob] = mail.mails
    text = "".join(
        str(part.get_payload(decode=True), "utf-8")
        for part in bob.walk()
        if part.get_content_type() == "text/plain"
    )
    assert "2 A100 GPUs free in A100 room: a1, a2" in text
    assert len(webhooks.on("/hook")) == 2  # the gpus_free rule has no channel: bob alone
