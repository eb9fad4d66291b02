from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from node_agent.gpu import GpuCollector
from tests import fakes
from tests.alert_receivers import MailReceiver, WebhookReceiver, mail_receiver, webhook_receiver
from tests.browser import chromium
from tests.fakes import MakeCollector
from tests.procs import Hub, Proc, free_port, killed_at_exit, sleeping_child


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Register child processes here; they are stopped when the test ends."""
    with killed_at_exit() as started:
        yield started


@pytest.fixture
def hub(tmp_path: Path, procs: list[Proc]) -> Iterator[Hub]:
    """A real ``sers-hub`` process on a free port (no auth, state in tmp_path)."""
    running = Hub(port=free_port(), tmp=tmp_path).start()
    assert running.proc is not None
    procs.append(running.proc)
    yield running


@pytest.fixture
def webhooks() -> Iterator[WebhookReceiver]:
    """A real HTTP server taking the hub's webhooks (:mod:`tests.alert_receivers`)."""
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
def mail() -> Iterator[MailReceiver]:
    """A real SMTP server taking the hub's mails."""
    with mail_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, one per test module (:func:`tests.browser.chromium`)."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process (``sleep``) for a fake GPU to list; killed when the test ends."""
    child = sleeping_child()
    yield child
    child.kill()
    child.wait()


@pytest.fixture
def two_sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    children = [sleeping_child(), sleeping_child()]
    yield children
    for child in children:
        child.kill()
        child.wait()


@pytest.fixture
def make_collector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeCollector]:
    """Builds a GPU collector over a fresh fake pynvml loaded with ``scenario``."""
    made: list[GpuCollector] = []

    def make(scenario: dict[str, Any], **kwargs: Any) -> tuple[GpuCollector, ModuleType]:
        path = fakes.write_scenario(tmp_path / f"scenario{len(made)}.json", scenario)
        fake = fakes.load_fake_pynvml(path)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        kwargs.setdefault("sysfs_root", tmp_path / "no-sysfs")  # the PCI bus can't be read
        collector = GpuCollector(**kwargs)
        made.append(collector)
        return collector, fake

    yield make
    for collector in made:
        collector.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On CI (``CI`` set, as ``.ci/run`` is run) a skipped test is a failure: CI installs every
    tool the tests need (Chromium, nginx, podman, ...), so a skip there means a broken setup,
    not a missing optional tool."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and call.when in ("setup", "call"):
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {report.longrepr}"
