"""What the reverse-proxy tests (nginx, Caddy, Traefik) share: a hub under :data:`ROOT_PATH`,
the proxied hub's URLs, and the check that a viewer through the proxy gets live updates."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.procs import Hub, Proc, free_port

ROOT_PATH = "/monitor"


def start_hub_under_root(tmp_path: Path, procs: list[Proc]) -> Hub:
    """A hub serving under :data:`ROOT_PATH`, stopped with the test's other processes."""
    hub = Hub(port=free_port(), tmp=tmp_path, args=("--root-path", ROOT_PATH)).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    return hub


@dataclass
class Proxied:
    """A hub behind a proxy listening on ``port``; the proxy's files (logs) are in ``workdir``."""

    hub: Hub
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ROOT_PATH}"

    def read(self, name: str) -> str:
        """A file of the proxy's (a log), or "" while it does not exist."""
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""


def check_viewer_through(proxied: Proxied, ws_url: str, node: str, proxy: str) -> None:
    """A viewer with the hub's own Origin gets the full state with ``node``'s card, then two
    different host parts of it; a foreign Origin is still refused with 403."""
    origin = f"http://127.0.0.1:{proxied.port}"
    with connect(ws_url, origin=Origin(origin), open_timeout=5) as viewer:
        first = viewer.recv(timeout=5)
        assert isinstance(first, bytes) and f'id="node-{node}"'.encode() in first, "full state first"
        host_parts: set[bytes] = set()
        pattern = re.compile(rf'<div id="host-{node}".*?</div>\n</div>'.encode(), re.S)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(host_parts) < 2:
            frame = viewer.recv(timeout=5)
            assert isinstance(frame, bytes)
            host_parts.update(pattern.findall(frame))
        assert len(host_parts) >= 2, f"new samples were pushed through {proxy}"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin=Origin("http://elsewhere.example"), open_timeout=5)
    assert refused.value.response.status_code == 403, f"the hub still checks Origin behind {proxy}"
