from __future__ import annotations

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
