"""Alerts in a real headless Chromium: the top bar's strip pushed live when an alert fires, and
the browser's own "notify me when ≥ N GPUs of a model are free (in a group)" watch raising a
real Web Notification (notifications permitted), against a real hub and real agents whose GPUs
come from the fake NVML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import fakes
from tests.alert_receivers import A100_ROOM_TOML, WebhookReceiver, alerts_toml
from tests.browser import CHROMIUM, new_tab
from tests.procs import Proc, start_agent, start_hub, wait_until

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

# records every Notification the page makes, then makes the real one
RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  window.__notes = [];
  window.Notification = function (title, options) {
    window.__notes.push({ title, body: options && options.body });
    return new Real(title, options);
  };
  window.Notification.requestPermission = Real.requestPermission.bind(Real);
  Object.defineProperty(window.Notification, "permission", { get: () => Real.permission });
})();
"""


def free_a100(index: int) -> dict[str, Any]:
    return fakes.gpu(index, "A100", util_gpu=0, mem_used_bytes=0)


def test_strip_and_free_gpu_notification(
    tmp_path: Path, procs: list[Proc], browser: Any, webhooks: WebhookReceiver
) -> None:
    rule = {"name": "node down", "when": "node_offline", "channels": ["hook"]}
    alerts = alerts_toml({"hook": webhooks.url("/hook")}, [rule], group_wait_s=0)
    hub = start_hub(procs, tmp_path, toml=A100_ROOM_TOML + alerts)
    one_free = fakes.scenario([free_a100(0), fakes.gpu(1, "A100", util_gpu=90)])
    procs.append(
        start_agent(hub, "a1", env=fakes.fake_env(fakes.write_scenario(tmp_path / "a1.json", one_free)))
    )
    cpu = start_agent(hub, "cpu1")
    procs.append(cpu)
    hub.wait_status("a1", "live")
    hub.wait_status("cpu1", "live")

    options = {"viewport": {"width": 1600, "height": 900}, "permissions": ["notifications"]}
    with new_tab(browser, RECORD_NOTIFICATIONS, **options) as page:
        page.goto(hub.url + "/")
        page.wait_for_selector("html[data-conn=live]")
        assert page.locator("#summary .alerts").count() == 0

        # the watch: ≥ 2 A100 free in "A100 room" (one is free now)
        page.click("#watch-open")
        page.fill("#watch-form input[name=count]", "2")
        page.fill("#watch-form input[name=model]", "A100")
        page.fill("#watch-form input[name=group]", "A100 room")
        page.click("#watch-form button[type=submit]")
        assert page.locator("#watch-list li").inner_text().startswith("≥ 2 A100 free in A100 room")
        stored = page.evaluate("JSON.parse(localStorage.getItem('sers.freeWatches'))")
        assert stored == [{"count": 2, "model": "A100", "group": "A100 room", "told": False}]
        page.wait_for_timeout(2500)
        assert page.evaluate("window.__notes") == []

        # a second node of the group with a free A100: the pushed summary now says 2
        two_free = fakes.scenario([free_a100(0)])
        procs.append(
            start_agent(hub, "a2", env=fakes.fake_env(fakes.write_scenario(tmp_path / "a2.json", two_free)))
        )
        page.wait_for_function("window.__notes.length > 0")
        assert page.evaluate("window.__notes") == [
            {"title": "sers: 2 A100 GPUs free", "body": "≥ 2 A100 free in A100 room"}
        ]
        assert page.evaluate("Notification.permission") == "granted"
        page.reload()
        page.wait_for_selector("html[data-conn=live]")
        page.wait_for_timeout(2000)
        assert page.evaluate("window.__notes") == [], "told again after a reload"

        # an alert fires: the strip appears without a reload, and links to /alerts
        cpu.kill()
        strip = page.locator("#summary a.alerts")
        strip.wait_for()
        assert strip.inner_text() == "🔔 1 alert: node down: cpu1"
        assert "sev-critical" in (strip.get_attribute("class") or "")
        wait_until(lambda: webhooks.on("/hook"), 10, what="the firing webhook")
        strip.click()
        page.wait_for_selector("#firing")
        assert "cpu1 offline" in page.locator("#firing").inner_text()

        # a silence from the page's form (no token is configured: the hub is open), then expired
        page.fill("#silence-form input[name=node]", "cpu*")
        page.fill("#silence-form input[name=hours]", "1")
        page.fill("#silence-form input[name=comment]", "<i>moving racks</i>")
        page.click("#silence-form button[type=submit]")
        page.wait_for_selector("button[data-expire]")
        row = page.locator("#silences tr", has=page.locator("button[data-expire]"))
        assert "cpu*" in row.inner_text() and "<i>moving racks</i>" in row.inner_text()
        assert [s["comment"] for s in hub.get("/api/v1/alerts")["silences"]] == ["<i>moving racks</i>"]
        page.click("button[data-expire]")
        page.wait_for_selector("text=No silences.")
        assert hub.get("/api/v1/alerts")["silences"] == []
