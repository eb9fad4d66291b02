"""The whole loop with real processes: sers-hub, sers-agent and a viewer WebSocket client."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from websockets.sync.client import connect

from tests.procs import Hub, Proc, base_env, start_agent, wait_until


def test_viewer_sees_node_appear_and_values_change(hub: Hub, procs: list[Proc]) -> None:
    with connect(hub.ws_url + "/ws/view") as viewer:
        first = viewer.recv(timeout=5)
        assert isinstance(first, bytes)
        assert first.startswith(b'<main id="nodes"'), "a new viewer first gets the full state"
        procs.append(start_agent(hub, "alpha", interval_s=0.3))
        seen_card = False
        host_parts: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(set(host_parts)) < 2:
            text = viewer.recv(timeout=5)
            assert isinstance(text, bytes)
            html = text.decode()
            seen_card = seen_card or 'id="node-alpha"' in html
            host_parts += re.findall(r'<div id="host-alpha".*?</div>\n</div>', html, re.S)
        assert seen_card, "the new node's card was pushed"
        assert len(set(host_parts)) >= 2, "the host part was pushed again with new values"
    node = hub.nodes()["alpha"]
    assert node["status"] == "live"
    assert node["state"]["host"]["mem_total_bytes"] > 0
    assert node["static"]["host"]["cpu_cores_logical"] >= 1


def test_kill_agent_goes_offline_and_comes_back(hub: Hub, procs: list[Proc]) -> None:
    agent = start_agent(hub, "beta", interval_s=1.0)
    procs.append(agent)
    hub.wait_status("beta", "live")
    agent.kill()
    took_s = hub.wait_status("beta", "offline", timeout_s=15)
    assert took_s <= 10.0, f"offline {took_s:.1f} s after kill -9 (promised: within 10 s)"
    again = start_agent(hub, "beta", interval_s=1.0)
    procs.append(again)
    hub.wait_status("beta", "live")


def test_clean_agent_stop_is_offline_at_once(hub: Hub, procs: list[Proc]) -> None:
    agent = start_agent(hub, "gamma", interval_s=1.0)
    procs.append(agent)
    hub.wait_status("gamma", "live")
    assert agent.stop() == 0
    assert hub.wait_status("gamma", "offline", timeout_s=2) < 2.0


def test_agent_reconnects_after_hub_restart(hub: Hub, procs: list[Proc]) -> None:
    agent = start_agent(hub, "delta", interval_s=0.5)
    procs.append(agent)
    hub.wait_status("delta", "live")
    assert hub.proc is not None
    hub.proc.stop()
    time.sleep(1.0)  # the agent now fails to connect and backs off
    assert agent.popen.poll() is None, "the agent keeps running without its hub"
    hub.start()
    assert hub.proc is not None
    procs.append(hub.proc)
    hub.wait_status("delta", "live", timeout_s=20)
    assert "reconnecting in" in agent.log()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=base_env(), timeout=30
    )


def test_cli_help_and_errors_are_one_readable_line() -> None:
    for module in ("hub", "node_agent"):
        shown = _cli(module, "--help")
        assert shown.returncode == 0 and "--help" in shown.stdout
        wrong = _cli(module, "--no-such-flag")
        assert wrong.returncode == 2
        assert "Traceback" not in wrong.stderr and "unrecognized arguments: --no-such-flag" in wrong.stderr
    bad = _cli("node_agent", "--interval", "fast")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--interval / SERS_INTERVAL: expected seconds, got 'fast'" in bad.stderr


def test_unreachable_hub_is_one_line_per_retry_not_a_traceback(hub: Hub, procs: list[Proc]) -> None:
    agent = start_agent(hub, "eps", hub_url="http://127.0.0.1:9")
    procs.append(agent)
    wait_until(lambda: "reconnecting in" in agent.log(), 10, what="a retry line")
    assert "hub unreachable at ws://127.0.0.1:9/ws/agent" in agent.log()
    assert "Traceback" not in agent.log()


def test_once_json_prints_one_snapshot() -> None:
    done = _cli("node_agent", "--once", "--json", "--name", "solo")
    assert done.returncode == 0, done.stderr
    import orjson

    document = orjson.loads(done.stdout)
    assert document["hello"]["node"] == "solo"
    assert document["snapshot"]["host"]["cpu_percent"] is not None
