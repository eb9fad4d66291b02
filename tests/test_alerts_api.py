"""Silences through the API (admin token) on a real hub with real agents, the /alerts page, and
``sers-hub alerts test`` against real receivers."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.alert_receivers import REFUSE_PATH, MailReceiver, WebhookReceiver, alerts_toml, settle
from tests.procs import REPO, Hub, Proc, base_env, start_agent, start_hub, wait_until

ADMIN = "admin-secret-token"


def request(hub: Hub, method: str, path: str, body: Any = None, token: str | None = ADMIN) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(hub.url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_silence_create_list_suppress_and_expire(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    rule = {"name": "node down", "when": "node_offline", "for_s": 1, "channels": ["hook"]}
    toml = alerts_toml({"hook": webhooks.url("/hook")}, [rule], group_wait_s=1)
    hub = start_hub(procs, tmp_path, "--admin-token", ADMIN, toml=toml)
    silence = {
        "node": "gpu0*",
        "duration_s": 3600,
        "comment": "rack B <b>maintenance</b>",
        "created_by": "ops",
    }
    assert request(hub, "POST", "/api/v1/silences", silence, token=None)[0] == 401
    assert request(hub, "POST", "/api/v1/silences", silence, token="wrong")[0] == 403
    assert request(hub, "POST", "/api/v1/silences", {"node": "x", "duration_s": 60}) == (
        400,
        '{"error":"comment: say why (it is shown with the silence)"}',
    )
    assert request(hub, "POST", "/api/v1/silences", {"comment": "x", "duration_s": 60})[0] == 400
    form = urllib.request.Request(
        hub.url + "/api/v1/silences",
        data=json.dumps(silence).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/plain"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form, timeout=5)
    assert refused.value.code == 415
    status, created = request(hub, "POST", "/api/v1/silences", silence)
    assert status == 201 and created["node"] == "gpu0*" and created["comment"] == silence["comment"]
    agent = start_agent(hub, "gpu01", interval_s=0.5)
    procs.append(agent)
    hub.wait_status("gpu01", "live")
    agent.kill()
    wait_until(lambda: hub.get("/api/v1/alerts")["firing"], 10, what="the alert firing")
    settle(3)
    assert webhooks.on("/hook") == [], "a silenced alert was sent"
    [firing] = hub.get("/api/v1/alerts")["firing"]
    assert firing["subject"] == "gpu01" and firing["notified"] is False
    page = urllib.request.urlopen(hub.url + "/alerts", timeout=5).read().decode()
    assert "rack B &lt;b&gt;maintenance&lt;/b&gt;" in page and "<b>maintenance" not in page
    assert "(silenced)" in page
    assert request(hub, "DELETE", f"/api/v1/silences/{created['id']}", token=None)[0] == 401
    assert request(hub, "DELETE", f"/api/v1/silences/{created['id']}") == (200, {"expired": created["id"]})
    assert request(hub, "DELETE", f"/api/v1/silences/{created['id']}")[0] == 404
    wait_until(lambda: webhooks.on("/hook"), 10, what="the firing message once the silence expired")
    assert [b["title"] for b in webhooks.on("/hook")] == ["[FIRING] node down: gpu01"]
    assert hub.get("/api/v1/alerts")["silences"] == []


def alerts_test(config: Path) -> subprocess.CompletedProcess[str]:
    """``sers-hub alerts test --config config``, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "hub", "alerts", "test", "--config", str(config)],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=REPO,
        timeout=60,
    )


def test_alerts_test_command_says_per_channel_delivered_or_why_not(
    tmp_path: Path, webhooks: WebhookReceiver, mail: MailReceiver
) -> None:
    channels = {
        "hook": webhooks.url("/hook"),
        "broken": webhooks.url(REFUSE_PATH),
        "unknown": "nosuchservice://x",
    }
    config = tmp_path / "hub.toml"
    config.write_text(
        alerts_toml(channels, [], group_wait_s=1, users={"alice": mail.url("alice@lab.example")})
    )
    done = alerts_test(config)
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert done.returncode == 1, done.stderr
    assert lines["hook"] == "delivered" and lines["user:alice"] == "delivered"
    assert lines["broken"].startswith("NOT delivered: ") and "500" in lines["broken"]
    assert lines["unknown"].startswith("NOT delivered: not a URL Apprise knows")
    assert [b["title"] for b in webhooks.on("/hook")] == ["[TEST] sers-monitor alerts"]
    assert mail.subjects("alice@lab.example") == ["[TEST] sers-monitor alerts"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[alerts.rules]]\nname = "r"\nwhen = "nope"\n')
    done = alerts_test(bad)
    assert done.returncode == 2 and "alerts.rules[0].when: expected one of" in done.stderr
