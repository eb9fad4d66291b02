"""The shipped docs/deploy/Caddyfile in front of a real hub under /monitor/: real Caddy, a real
agent connecting through it and a viewer WebSocket (with a browser's Origin) through it."""

from __future__ import annotations

import http.client
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import REPO, Proc, answers, free_port, spawn, start_agent, wait_until
from tests.proxying import ROOT_PATH, Proxied, check_viewer_through, start_hub_under_root

SHIPPED = REPO / "docs" / "deploy" / "Caddyfile"


def caddyfile(hub_port: int, listen_port: int) -> str:
    """The shipped file with the site name and hub port swapped; the admin API turned off so a
    system Caddy (Debian starts one when systemd runs) cannot clash with this one."""
    text = SHIPPED.read_text()
    text, sites = re.subn(
        r"^monitor\.example\.org \{$", f"http://127.0.0.1:{listen_port} {{", text, flags=re.M
    )
    text, upstreams = re.subn(
        r"reverse_proxy 127\.0\.0\.1:8000 ", f"reverse_proxy 127.0.0.1:{hub_port} ", text
    )
    assert (sites, upstreams) == (1, 1), "docs/deploy/Caddyfile changed shape: update this test"
    return "{\n\tadmin off\n}\n\n" + text


@pytest.fixture
def proxied(tmp_path: Path, procs: list[Proc]) -> Iterator[Proxied]:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy not installed (Debian package 'caddy'; .ci/run installs it)")
    hub = start_hub_under_root(tmp_path, procs)
    port = free_port()
    config = tmp_path / "Caddyfile"
    config.write_text(caddyfile(hub.port, port))
    home = tmp_path / "caddy-home"
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    server = spawn(
        [caddy, "run", "--config", str(config), "--adapter", "caddyfile"], tmp_path / "caddy.log", env
    )
    procs.append(server)
    running = Proxied(hub, port, tmp_path)

    def up() -> bool:
        if server.popen.poll() is not None:
            raise AssertionError(f"caddy exited:\n{server.log()}")
        return answers(running.url + "/healthz")

    wait_until(up, timeout_s=20, what="caddy to proxy /healthz")
    yield running
    server.stop()


def test_agent_and_viewer_through_caddy(proxied: Proxied, procs: list[Proc]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=5)
    connection.request("GET", ROOT_PATH)
    redirect = connection.getresponse()
    assert (redirect.status, redirect.getheader("Location")) == (301, f"{ROOT_PATH}/")
    connection.close()
    assert answers(proxied.url + "/static/app.js")

    hub = proxied.hub
    procs.append(start_agent(hub, "cady", interval_s=0.3, hub_url=proxied.url))
    hub.wait_status("cady", "live")

    check_viewer_through(proxied, f"ws://127.0.0.1:{proxied.port}{ROOT_PATH}/ws/view", "cady", "Caddy")
