"""The shipped docs/deploy/nginx.conf in front of a real hub under /monitor/: real nginx, real
agents connecting through it, and headless Chromium watching live updates flow through it."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.procs import REPO, Proc, answers, free_port, start_agent, wait_until
from tests.proxying import ROOT_PATH, Proxied, start_hub_under_root

SHIPPED = REPO / "docs" / "deploy" / "nginx.conf"


def site_config(hub_port: int, listen_port: int) -> str:
    """The shipped file with its two ports swapped for free ones; nothing else changes."""
    text = SHIPPED.read_text()
    text, upstreams = re.subn(r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{hub_port};", text)
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", text)
    assert (upstreams, listens) == (1, 1), "docs/deploy/nginx.conf changed shape: update this test"
    return text


def main_config(workdir: Path, site: Path) -> str:
    """What /etc/nginx/nginx.conf provides around conf.d/, with every path in ``workdir``."""
    return f"""
worker_processes 1;
pid {workdir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format sers '$request_method $uri $status';
    access_log {workdir}/access.log sers;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {site};
}}
"""


@pytest.fixture
def proxied(tmp_path: Path, procs: list[Proc]) -> Iterator[Proxied]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx not installed (Debian package 'nginx-light'; .ci/run installs it)")
    hub = start_hub_under_root(tmp_path, procs)
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    port = free_port()
    site = workdir / "sers-monitor.conf"
    site.write_text(site_config(hub.port, port))
    config = workdir / "nginx.conf"
    config.write_text(main_config(workdir, site))
    command = [nginx, "-c", str(config), "-p", str(workdir), "-e", str(workdir / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr
    log = (workdir / "nginx.out").open("wb")
    server = subprocess.Popen([*command, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        running = Proxied(hub, port, workdir)
        wait_until(lambda: answers(running.url + "/healthz"), timeout_s=15, what="nginx to proxy /healthz")
        yield running
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def test_sub_path_urls_through_nginx(proxied: Proxied) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=5)
    connection.request("GET", ROOT_PATH)
    redirect = connection.getresponse()
    assert (redirect.status, redirect.getheader("Location")) == (301, f"{ROOT_PATH}/")
    connection.close()

    with urllib.request.urlopen(proxied.url + "/", timeout=5) as response:
        html = response.read().decode()
    base = re.search(r'<base href="([^"]*)"', html)
    page_url = urllib.parse.urljoin(proxied.url + "/", base.group(1)) if base else proxied.url + "/"
    assets = [urllib.parse.urljoin(page_url, ref) for ref in re.findall(r'(?:href|src)="([^"#]+)"', html)]
    assert any(a.endswith("/static/app.css") for a in assets) and any(
        a.endswith("/static/app.js") for a in assets
    )
    for asset in assets:
        assert asset.startswith(proxied.url + "/"), f"{asset} leaves the sub-path"
        assert answers(asset), f"{asset} does not load through nginx"


def test_agents_and_browser_through_nginx(proxied: Proxied, procs: list[Proc]) -> None:
    from playwright.sync_api import sync_playwright

    hub = proxied.hub
    first = start_agent(hub, "px1", interval_s=0.3, hub_url=proxied.url)
    procs.append(first)
    hub.wait_status("px1", "live")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(proxied.url + "/", wait_until="domcontentloaded")
            page.wait_for_selector("html[data-conn=live]", timeout=15_000)
            page.wait_for_selector("#node-px1[data-status=live]", timeout=15_000)
            page.evaluate("window.sersNotReloaded = true")
            first_host = page.inner_html("#host-px1")

            # New samples reach the card through nginx (CPU %, rates).
            page.wait_for_function(
                "old => document.getElementById('host-px1').innerHTML !== old",
                arg=first_host,
                timeout=15_000,
            )
            # A second agent's card appears, then the first agent's goodbye turns it offline.
            procs.append(start_agent(hub, "px2", interval_s=0.5, hub_url=proxied.url))
            page.wait_for_selector("#node-px2[data-status=live]", state="attached", timeout=15_000)
            first.stop()
            page.wait_for_selector("#node-px1[data-status=offline]", state="attached", timeout=15_000)
            assert page.evaluate("window.sersNotReloaded") is True, "updates came without a reload"
            assert sockets == [f"ws://127.0.0.1:{proxied.port}{ROOT_PATH}/ws/view"]
        finally:
            browser.close()

    log = proxied.read("access.log")
    assert re.search(rf"^GET {ROOT_PATH}/ws/agent 101$", log, re.M), log
    assert re.search(rf"^GET {ROOT_PATH}/ws/view 101$", log, re.M), log
