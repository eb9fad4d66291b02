from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Hub, Proc, free_port


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Register child processes here; they are stopped when the test ends."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.kill()


@pytest.fixture
def hub(tmp_path: Path, procs: list[Proc]) -> Iterator[Hub]:
    """A real ``sers-hub`` process on a free port (no auth, state in tmp_path)."""
    running = Hub(port=free_port(), tmp=tmp_path).start()
    assert running.proc is not None
    procs.append(running.proc)
    yield running


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
