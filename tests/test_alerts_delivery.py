"""The delivery workers (retries with backoff, rate limit, bounded queue, a hanging channel
holding only itself) with send functions that fail or hang on purpose, and the AlertNotified
event a real delivery publishes on the event loop."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

from hub.alerts.config import parse_alerts
from hub.alerts.delivery import ChannelWorker, Delivery, Outgoing
from hub.alerts.engine import Subject
from hub.alerts.service import AlertService
from hub.clock import ManualClock
from hub.domain.events import AlertNotified, EventBus, IdleHeldChanged
from hub.domain.gpus import GpuFreeRule
from tests.alert_receivers import mail_receiver, webhook_receiver
from tests.procs import REPO, wait_until

ITEM = Outgoing("t", "b", "info")


def test_a_failing_send_is_retried_with_backoff_then_reported() -> None:
    attempts: list[float] = []
    results: list[tuple[bool, str | None]] = []

    def send(item: Outgoing) -> str | None:
        attempts.append(time.monotonic())
        return None if len(attempts) == 3 else "HTTP 503"

    worker = ChannelWorker(
        "c", send, 100, lambda name, item, ok, why: results.append((ok, why)), backoff_s=0.05
    )
    worker.offer(ITEM)
    wait_until(lambda: results, 5, what="a result")
    assert results == [(True, None)] and len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, "the backoff doubles"
    assert worker.health.retried == 2 and worker.health.delivered == 1 and worker.health.ok
    worker.stop()


def test_given_up_after_the_retries() -> None:
    results: list[tuple[bool, str | None]] = []
    worker = ChannelWorker(
        "c",
        lambda item: "refused",
        100,
        lambda n, i, ok, why: results.append((ok, why)),
        retries=2,
        backoff_s=0.01,
    )
    worker.offer(ITEM)
    wait_until(lambda: results, 5, what="a result")
    assert results == [(False, "refused")]
    assert worker.health.failed == 1 and worker.health.last_error == "refused" and not worker.health.ok
    worker.stop()


def test_a_hanging_channel_fills_only_its_own_bounded_queue() -> None:
    release = threading.Event()
    hanging = ChannelWorker("hangs", lambda item: release.wait(30) and None, 100, queue_size=3)
    delivered: list[str] = []
    good = ChannelWorker("good", lambda item: delivered.append(item.title) and None, 100)
    started = time.monotonic()
    offered = [hanging.offer(Outgoing(str(i), "", "info")) for i in range(10)]
    for i in range(10):
        good.offer(Outgoing(str(i), "", "info"))
    assert time.monotonic() - started < 0.5, "offering waited on a channel"
    # one is being sent (hanging), three wait; the rest are dropped and counted
    assert offered.count(False) == hanging.health.dropped >= 6
    wait_until(lambda: len(delivered) == 10, 5, what="the good channel's messages")
    release.set()
    hanging.stop()
    good.stop()


def test_rate_limit_holds_a_channel_to_its_messages_per_minute() -> None:
    sent: list[float] = []
    worker = ChannelWorker("c", lambda item: sent.append(time.monotonic()) and None, 2)
    for _ in range(3):
        worker.offer(ITEM)
    wait_until(lambda: len(sent) == 2, 5, what="two sends")
    time.sleep(0.5)
    assert len(sent) == 2, "a third message within the minute"
    worker.stop()


def test_a_delivery_publishes_alert_notified_on_the_event_loop(tmp_path: Path) -> None:
    with webhook_receiver() as hooks:
        config = parse_alerts(
            {
                "group_wait_s": 0,
                "channels": [
                    {"name": "hook", "url": f"json://127.0.0.1:{hooks.port}/hook"},
                    {"name": "nowhere", "url": "json://127.0.0.1:1/x?cto=1"},
                ],
                "rules": [{"name": "node down", "when": "node_offline", "channels": ["hook", "nowhere"]}],
            }
        )
        events = EventBus()
        seen: list[tuple[AlertNotified, bool]] = []
        service = AlertService(config, events, {}, GpuFreeRule(), ManualClock())
        for worker in service.delivery.workers.values():
            worker._backoff_s = 0.01  # keep the failing channel's retries short

        async def scenario() -> None:
            loop_thread = threading.get_ident()
            events.subscribe(AlertNotified, lambda e: seen.append((e, threading.get_ident() == loop_thread)))
            await service.start(None)
            rule = service.engine.rules["node down"]
            service.engine.observe(rule, Subject("gpu01", "gpu01"), True, "gpu01 offline")
            service.tick()
            for _ in range(200):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.05)
            await service.close()

        asyncio.run(scenario())
    by_channel = {event.channel: (event, on_loop) for event, on_loop in seen}
    ok, on_loop = by_channel["hook"]
    assert on_loop and ok.delivered and ok.rule == "node down" and ok.subjects == ("gpu01",)
    assert ok.status == "firing"
    failed, _ = by_channel["nowhere"]
    assert not failed.delivered and failed.reason


def test_an_unknown_url_is_reported_not_raised() -> None:
    delivery = Delivery()
    delivery.add("bad", "nosuchservice://x", 10)
    assert delivery.broken == {"bad": "not a URL Apprise knows (see https://github.com/caronc/apprise/wiki)"}
    assert not delivery.offer("bad", ITEM)


def test_apprise_is_loaded_by_the_first_message_not_by_the_channels() -> None:
    """The URLs are checked by a child process (a bad one is still reported at once), so a hub
    that sends nothing holds none of Apprise's modules (#20.3: about 28 MiB); the first message
    loads it and is delivered."""
    script = (
        "import sys\n"
        "from hub.alerts.delivery import Delivery, Outgoing\n"
        "from tests.alert_receivers import webhook_receiver\n"
        "from tests.procs import wait_until\n"
        "with webhook_receiver() as hook:\n"
        "    results = []\n"
        "    delivery = Delivery(on_result=lambda name, item, ok, why: results.append(ok))\n"
        "    delivery.add_all([('hook', hook.url('/h'), 10), ('bad', 'nosuchservice://x', 10)])\n"
        "    print('broken', sorted(delivery.broken))\n"
        "    print('loaded before', 'apprise' in sys.modules)\n"
        "    delivery.offer('hook', Outgoing('t', 'b', 'info'))\n"
        "    wait_until(lambda: results, 10, what='a result')\n"
        "    assert hook.on('/h'), 'nothing arrived'\n"
        "    print('delivered', results, 'loaded after', 'apprise' in sys.modules)\n"
        "    delivery.stop()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "broken ['bad']",
        "loaded before False",
        "delivered [True] loaded after True",
    ]


def test_idle_held_is_mailed_to_the_holder_through_apprise() -> None:
    with mail_receiver() as mail:
        config = parse_alerts(
            {
                "group_wait_s": 0,
                "users": {"alice": mail.url("alice@lab.example")},
                "rules": [{"name": "idle-held", "when": "gpu_idle_held"}],
            }
        )
        events = EventBus()
        clock = ManualClock()
        service = AlertService(config, events, {}, GpuFreeRule(), clock)

        async def scenario() -> None:
            await service.start(None)
            now = clock.wall()
            holders = ({"user": "alice", "pid": 42, "command": "python"},)
            events.publish(IdleHeldChanged("gpu07", "3", None, True, now - 3600, holders, now))
            service.tick()
            for _ in range(100):
                if mail.mails:
                    break
                await asyncio.sleep(0.05)
            await service.close()

        asyncio.run(scenario())
    assert mail.subjects("alice@lab.example") == ["[FIRING] idle-held: gpu07/3"]
