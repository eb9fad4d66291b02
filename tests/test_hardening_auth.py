"""Access control against a real hub: agent tokens (shared, per node, from files), the view
token and its cookie (HTTP clients and a real Chromium), the viewer Origin check, trusted hosts,
rate-limited refusal logs, and forgetting remembered nodes (API and CLI)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.procs import REPO, Hub, Proc, base_env, free_port, start_agent, wait_until
from tests.wsclients import close_code, delta, hello, open_agent, open_viewer, open_ws, recv_text, snapshot


def start_hub(tmp: Path, procs: list[Proc], *args: str, **env: str) -> Hub:
    tmp.mkdir(parents=True, exist_ok=True)
    hub = Hub(port=free_port(), tmp=tmp, args=args, env=dict(env)).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    return hub


def refused_status(connect: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect()  # type: ignore[operator]
    return refused.value.response.status_code


def hub_log(hub: Hub) -> str:
    assert hub.proc is not None
    return hub.proc.log()


# --------------------------------------------------------------------------- agent tokens
def test_agent_token_is_required_checked_and_refusals_logged_once(tmp_path: Path, procs: list[Proc]) -> None:
    token_file = tmp_path / "hub-token"
    token_file.write_text("s3cret-agent-token\n")
    hub = start_hub(tmp_path, procs, "--token-file", str(token_file))

    assert refused_status(lambda: open_agent(hub)) == 401
    assert refused_status(lambda: open_agent(hub, token="wrong")) == 403
    assert (
        refused_status(lambda: open_agent(hub, headers={"Authorization": "Basic s3cret-agent-token"})) == 401
    )
    query = hub.ws_url + "/ws/agent?token=s3cret-agent-token"
    assert refused_status(lambda: open_ws(query)) == 401, "a token in the query string does not count"
    for _ in range(10):
        assert refused_status(lambda: open_agent(hub, token="wrong")) == 403

    ws = open_agent(hub, token="s3cret-agent-token")
    ws.send(hello("raw-ok"))
    ws.send(delta(1, snapshot()))
    hub.wait_status("raw-ok", "live")
    ws.close()

    agent_file = tmp_path / "agent-token"
    agent_file.write_text("s3cret-agent-token")
    procs.append(start_agent(hub, "real-ok", "--token-file", str(agent_file)))
    hub.wait_status("real-ok", "live")

    wrong = start_agent(hub, "real-wrong", "--token", "not-it")
    procs.append(wrong)
    line = wait_until(
        lambda: next((x for x in wrong.log().splitlines() if "refused by the hub" in x), None),
        15,
        what="the agent to say it was refused",
    )
    assert "HTTP 403" in line and "check the token" in line
    delay_s = float(line.rsplit("reconnecting in ", 1)[1].split()[0])
    assert delay_s >= 15, "a refused token waits long instead of hammering"
    assert "real-wrong" not in hub.nodes()

    refusals = [x for x in hub_log(hub).splitlines() if "refused an agent" in x]
    assert len(refusals) == 1, refusals  # 14 refusals from one source in a minute: one line


def test_per_node_tokens_bind_the_node_name(tmp_path: Path, procs: list[Proc]) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('agent_token = "shared"\n[node_tokens]\nalpha = "token-alpha"\nbeta = "token-beta"\n')
    hub = start_hub(tmp_path, procs, "--config", str(config))

    ws = open_agent(hub, token="token-alpha")
    ws.send(hello("beta"))  # alpha's token speaking for beta
    code, reason = close_code(ws)
    assert code == 1008 and "belongs to node 'alpha'" in reason

    ws = open_agent(hub, token="shared")
    ws.send(hello("alpha"))  # the shared token cannot take over a node with its own token
    code, reason = close_code(ws)
    assert code == 1008 and "own token" in reason
    assert "alpha" not in hub.nodes() and "beta" not in hub.nodes()

    ws = open_agent(hub, token="token-alpha")
    ws.send(hello("alpha"))
    ws.send(delta(1, snapshot()))
    hub.wait_status("alpha", "live")
    ws.close()

    procs.append(start_agent(hub, "beta", "--token", "token-beta"))
    procs.append(start_agent(hub, "gamma", "--token", "shared"))
    hub.wait_status("beta", "live")
    hub.wait_status("gamma", "live")

    # only per-node tokens and a shared one, no admin token: the shared one is the admin token
    response = httpx.delete(hub.url + "/api/v1/nodes/alpha", headers={"Authorization": "Bearer token-alpha"})
    assert response.status_code == 403


# --------------------------------------------------------------------------- view token
def test_view_token_cookie_flow_over_http(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start_hub(tmp_path, procs, SERS_VIEW_TOKEN="v1ew-token", SERS_TOKEN="agent-token")
    procs.append(start_agent(hub, "seen", "--token", "agent-token"))  # agents never need it

    with httpx.Client(base_url=hub.url, follow_redirects=False, timeout=5) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/static/app.css").status_code == 200
        for path in ("/", "/api/v1/nodes", "/node/seen", "/metrics", "/?token=wrong", "/?token="):
            assert client.get(path).status_code == 401, path
        assert client.get("/api/v1/nodes", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for path in ("/api/v1/nodes", "/metrics"):  # scripts and Prometheus
            assert client.get(path, headers={"Authorization": "Bearer v1ew-token"}).status_code == 200
        deep = client.get("/node/seen?token=v1ew-token")
        assert (deep.status_code, deep.headers["location"]) == (303, "/node/seen")
        client.cookies.clear()

        login = client.get("/?token=v1ew-token&group=lab&theme=light")
        assert login.status_code == 303
        assert login.headers["location"] == "/?group=lab&theme=light", "the token leaves the URL"
        assert login.headers["referrer-policy"] == "no-referrer"
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("sers_view=")
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/"):
            assert attribute.lower() in cookie.lower(), cookie
        assert "v1ew-token" not in cookie, "the cookie is derived from the token, not the token"
        assert client.cookies.get("sers_view")

        wait_until(lambda: "seen" in client.get("/api/v1/nodes").text, 15, what="the agent's node")
        page = client.get("/?group=")
        assert page.status_code == 200 and 'id="node-seen"' in page.text
        cookie_header = {"Cookie": f"sers_view={client.cookies['sers_view']}"}

    assert refused_status(lambda: open_viewer(hub)) == 401
    assert refused_status(lambda: open_viewer(hub, headers={"Cookie": "sers_view=forged"})) == 401
    viewer = open_viewer(hub, headers=cookie_header)
    try:
        assert 'id="node-seen"' in recv_text(viewer)
    finally:
        viewer.close()
    view_refusals = [x for x in hub_log(hub).splitlines() if "refused a wrong view token" in x]
    assert len(view_refusals) == 1, view_refusals


def test_empty_variables_keep_the_config_files_tokens(tmp_path: Path, procs: list[Proc]) -> None:
    """``SERS_TOKEN=`` and ``SERS_VIEW_TOKEN=`` (as Compose, Helm and systemd set them) count as
    unset: the tokens in the TOML file still apply."""
    config = tmp_path / "hub.toml"
    config.write_text('agent_token = "file-agent"\nview_token = "file-view"\n')
    hub = start_hub(
        tmp_path, procs, SERS_CONFIG=str(config), SERS_TOKEN="", SERS_VIEW_TOKEN="", SERS_TOKEN_FILE=""
    )
    assert refused_status(lambda: open_agent(hub)) == 401
    assert refused_status(lambda: open_viewer(hub)) == 401
    assert httpx.get(hub.url + "/").status_code == 401
    assert (
        httpx.get(hub.url + "/api/v1/nodes", headers={"Authorization": "Bearer file-view"}).status_code == 200
    )
    ws = open_agent(hub, token="file-agent")
    ws.send(hello("with-token"))
    ws.send(delta(1, snapshot()))
    wait_until(
        lambda: "with-token" in httpx.get(hub.url + "/?token=file-view", follow_redirects=True).text,
        15,
        what="the node on the page",
    )
    ws.close()


def raw_get(port: int, target: str) -> tuple[int, dict[str, str]]:
    """Sends ``target`` exactly as given (no client-side clean-up); returns status and headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


HOSTILE_TARGETS = [
    "//evil.example/",
    "///evil.example/",
    "/\\evil.example/",
    "/\\/evil.example/",
    "\\\\evil.example/",
    "/%2F%2Fevil.example/",
    "/%2F/evil.example/",
    "/%5Cevil.example/",
    "/%5C%5Cevil.example/",
    "/%2f%5cevil.example/",
    "/%09/evil.example/",
    "//evil.example/%2e%2e/",
    "/./%2Fevil.example/",
    "//evil.example",
    "//@evil.example/",
]


@pytest.mark.parametrize("root_path", ["", "/monitor"])
def test_the_login_redirect_stays_on_the_hub(root_path: str, tmp_path: Path, procs: list[Proc]) -> None:
    args = ("--root-path", root_path) if root_path else ()
    hub = start_hub(tmp_path, procs, *args, SERS_VIEW_TOKEN="v1ew")
    own = f"127.0.0.1:{hub.port}"
    status, headers = raw_get(hub.port, "/node/a%20b?x=1&token=v1ew")
    assert (status, headers["location"]) == (303, root_path + "/node/a%20b?x=1"), "an ordinary login"
    for target in HOSTILE_TARGETS:
        status, headers = raw_get(hub.port, target + "?token=v1ew")
        if status == 400:  # refused outright (h11 takes no target that does not start with '/')
            continue
        assert status == 303, (target, status)
        location = headers["location"]
        assert location.startswith(root_path + "/"), (target, location)
        assert not location.startswith(("//", "/\\")) and "\\" not in location, (target, location)
        resolved = urlsplit(urljoin(f"http://{own}/", location))
        assert (resolved.scheme, resolved.netloc) == ("http", own), (target, location)


def test_a_viewer_that_sends_anything_but_what_it_shows_is_closed(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start_hub(tmp_path, procs)
    viewer = open_viewer(hub)
    try:
        assert 'id="nodes"' in recv_text(viewer)
        viewer.send('{"show": ["gpu01"]}')  # what the page sends: taken
        viewer.send("browsers never send this")
        assert close_code(viewer) == (1007, "a message that is not JSON")
    finally:
        viewer.close()
    line = wait_until(
        lambda: next((x for x in hub_log(hub).splitlines() if "message on /ws/view" in x), None),
        10,
        what="the refusal in the hub's log",
    )
    assert "refused a viewer's message on /ws/view (a message that is not JSON) from 127.0.0.1" in line
    quiet = open_viewer(hub)  # one that only listens stays
    try:
        assert 'id="nodes"' in recv_text(quiet)
        quiet.ping().wait(5)
    finally:
        quiet.close()


def test_kiosk_opens_the_token_url_once_in_chromium(tmp_path: Path, procs: list[Proc]) -> None:
    from playwright.sync_api import sync_playwright

    hub = start_hub(tmp_path, procs, SERS_VIEW_TOKEN="kiosk-token")
    procs.append(start_agent(hub, "wall01"))
    wait_until(
        lambda: (
            "wall01"
            in httpx.get(hub.url + "/api/v1/nodes", headers={"Authorization": "Bearer kiosk-token"}).text
        ),
        15,
        what="wall01 to report",
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(hub.url + "/?token=kiosk-token&density=compact")
            assert page.url == hub.url + "/?density=compact"
            page.wait_for_selector("html[data-conn=live]", timeout=15_000)  # /ws/view: cookie + Origin
            page.wait_for_selector("#node-wall01", timeout=15_000)
            assert "sers_view" not in page.evaluate("document.cookie"), "HttpOnly"
            page.reload()
            page.wait_for_selector("html[data-conn=live]", timeout=15_000)  # the cookie alone will do

            stranger = browser.new_context()  # another browser profile: no cookie
            response = stranger.new_page().goto(hub.url + "/")
            assert response is not None and response.status == 401
            stranger.close()
        finally:
            browser.close()


# --------------------------------------------------------------------------- origin and hosts
def test_viewer_origin_must_be_the_hubs_own_or_allowed(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start_hub(tmp_path / "a", procs, SERS_ALLOWED_ORIGINS="https://wall.lab, http://kiosk.lab:8080")
    own = f"http://127.0.0.1:{hub.port}"

    def viewer_ok(**kwargs: object) -> bool:
        viewer = open_viewer(hub, **kwargs)  # type: ignore[arg-type]
        try:
            return 'id="nodes"' in recv_text(viewer)
        finally:
            viewer.close()

    assert viewer_ok(origin=Origin(own))
    assert viewer_ok()  # no Origin: not a browser
    assert viewer_ok(origin=Origin("https://wall.lab"))
    assert viewer_ok(origin=Origin("http://kiosk.lab:8080"))
    for bad in ("http://evil.example", "null", f"https://127.0.0.1:{hub.port}", "http://kiosk.lab"):
        assert refused_status(lambda bad=bad: open_viewer(hub, origin=Origin(bad))) == 403, bad
    # behind a trusted proxy (127.0.0.1 is trusted by default) the forwarded host and scheme count
    forwarded = {"X-Forwarded-Host": "monitor.lab", "X-Forwarded-Proto": "https"}
    assert viewer_ok(origin=Origin("https://monitor.lab"), headers=forwarded)
    assert (
        refused_status(lambda: open_viewer(hub, origin=Origin("http://monitor.lab"), headers=forwarded))
        == 403
    )

    untrusting = start_hub(tmp_path / "b", procs, SERS_FORWARDED_ALLOW_IPS="10.1.2.3")
    status = refused_status(
        lambda: open_viewer(untrusting, origin=Origin("https://monitor.lab"), headers=forwarded)
    )
    assert status == 403, "X-Forwarded-Host from a peer that is not a trusted proxy is ignored"


def test_trusted_hosts(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start_hub(tmp_path, procs, SERS_TRUSTED_HOSTS="monitor.lab,127.0.0.1")
    assert httpx.get(hub.url + "/healthz").status_code == 200
    assert httpx.get(hub.url + "/", headers={"Host": "monitor.lab"}).status_code == 200
    assert httpx.get(hub.url + "/", headers={"Host": "evil.example"}).status_code == 400
    assert httpx.get(hub.url + "/api/v1/nodes", headers={"Host": "evil.example"}).status_code == 400


# --------------------------------------------------------------------------- forgetting nodes
def stored_nodes(hub: Hub) -> set[str]:
    with sqlite3.connect(hub.tmp / "hub.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT node_id FROM nodes")}


def test_nodes_are_forgotten_only_deliberately(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start_hub(tmp_path, procs, SERS_TOKEN="agent-token", SERS_ADMIN_TOKEN="admin-token")
    gone = start_agent(hub, "gone", "--token", "agent-token")
    kept = start_agent(hub, "kept", "--token", "agent-token")
    procs.extend([gone, kept])
    hub.wait_status("gone", "live")
    hub.wait_status("kept", "live")
    wait_until(lambda: stored_nodes(hub) == {"gone", "kept"}, 10, what="both nodes in the state file")

    url = hub.url + "/api/v1/nodes/gone"
    assert httpx.delete(url).status_code == 401
    assert httpx.delete(url, headers={"Authorization": "Bearer agent-token"}).status_code == 403
    admin = {"Authorization": "Bearer admin-token"}
    assert httpx.delete(url, headers=admin).status_code == 409, "a connected node cannot be forgotten"

    gone.stop()
    kept.stop()
    hub.wait_status("gone", "offline")
    hub.wait_status("kept", "offline")
    assert httpx.delete(url, headers=admin).json() == {"forgotten": "gone"}
    assert "gone" not in hub.nodes()
    assert stored_nodes(hub) == {"kept"}
    assert httpx.delete(url, headers=admin).status_code == 404

    assert hub.proc is not None
    hub.proc.stop()
    hub.start()
    procs.append(hub.proc)
    assert set(hub.nodes()) == {"kept"}, "restarts forget nobody and bring nobody back"
    assert hub.status("kept") == "offline"

    hub.proc.stop()
    forget = [sys.executable, "-m", "hub", "forget", "kept", "--state-db", str(tmp_path / "hub.sqlite3")]
    done = subprocess.run(forget, cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "forgot kept" in done.stdout
    again = subprocess.run(forget, cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "not in" in again.stderr
    hub.start()
    procs.append(hub.proc)
    assert hub.nodes() == {}


# --------------------------------------------------------------------------- pure parts
def test_failure_log_logs_once_per_source_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    from hub.security import FailureLog

    now = [0.0]
    failures = FailureLog(every_s=60, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="sers.hub"):
        assert failures.refused("10.0.0.1", "an agent with a wrong token")
        assert not failures.refused("10.0.0.1", "an agent with a wrong token")
        assert failures.refused("10.0.0.2", "an agent with a wrong token")
        now[0] = 59.0
        assert not failures.refused("10.0.0.1", "an agent with a wrong token")
        now[0] = 61.0
        assert failures.refused("10.0.0.1", "an agent with a wrong token")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert (
        lines[-1]
        == "refused an agent with a wrong token from 10.0.0.1 (2 more from this source in the last 60 s)"
    )


def test_failure_log_holds_a_bounded_table_against_endless_sources(caplog: pytest.LogCaptureFixture) -> None:
    """Refusals from ever new addresses (an IPv6 network has endless ones) within one window:
    the table stays at its limit, and the sources past the limit are logged together once per
    window. (What a refusal costs is not timed here: speed is the benchmarks' to measure.)"""
    from hub.security import MAX_TRACKED_SOURCES, FailureLog

    now = [0.0]
    failures = FailureLog(every_s=60, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="sers.hub"):
        for i in range(3 * MAX_TRACKED_SOURCES):
            failures.refused(f"2001:db8::{i:x}", "a wrong view token")
        assert len(failures._last) == MAX_TRACKED_SOURCES
        now[0] = 61.0  # a new window: the old sources are forgotten, new ones tracked again
        assert failures.refused("2001:db8::ffff:1", "a wrong view token")
        assert len(failures._last) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == MAX_TRACKED_SOURCES + 2
    assert lines[MAX_TRACKED_SOURCES] == (
        f"refused a wrong view token from 2001:db8::{MAX_TRACKED_SOURCES:x} "
        f"(sources past the {MAX_TRACKED_SOURCES} tracked per 60 s: 1 refusal(s) since the last such line)"
    )


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("http://Example.ORG", "http://example.org"),
        ("https://example.org:443", "https://example.org"),
        ("http://example.org:80/", "http://example.org"),
        ("http://example.org:8080", "http://example.org:8080"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("null", None),
        ("file://", None),
        ("http://example.org/path", None),
        ("http://example.org:99999", None),
        ("javascript:alert(1)", None),
    ],
)
def test_origins_are_normalized(raw: str, normal: str | None) -> None:
    from hub.security import normalize_origin

    assert normalize_origin(raw) == normal
