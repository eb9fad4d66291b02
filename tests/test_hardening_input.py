"""Hostile agent input against a real hub: each bad frame closes only its own connection.

One hub process serves the whole module, with a real agent process ("steady") reporting all the
while. Every case asserts the close code the hostile client receives, a log line naming the node
and the reason, and that "steady" stays live and the hub keeps serving pages and viewers.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from hub.agent_ws import HELLOS_PER_MINUTE
from node_agent.protocol import (
    MAX_GPUS,
    MAX_MESSAGE_BYTES,
    MAX_OBJECT_LIST,
    MAX_STATE_BYTES,
    MAX_STRING_CHARS,
)
from tests.procs import Hub, free_port, start_agent, wait_until
from tests.wsclients import close_code, delta, hello, open_agent, open_viewer, recv_text, snapshot

STEADY = "steady"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    running = Hub(port=free_port(), tmp=tmp).start()
    assert running.proc is not None
    agent = start_agent(running, STEADY, interval_s=0.5)
    try:
        running.wait_status(STEADY, "live")
        yield running
    finally:
        for proc in (agent, running.proc):
            proc.kill()


def steady_seen(hub: Hub) -> float:
    node = hub.nodes()[STEADY]
    assert node["status"] == "live", node
    return float(node["last_seen_epoch_s"])


def assert_unaffected(hub: Hub) -> None:
    """The other node still reports (its last-seen moves on) and the hub serves pages."""
    before = steady_seen(hub)
    wait_until(lambda: steady_seen(hub) > before, 10, what="the steady node to report again")
    assert hub.get("/healthz")["status"] == "ok"
    with urllib.request.urlopen(hub.url + "/", timeout=5) as response:
        assert response.status == 200
        assert f'id="node-{STEADY}"' in response.read().decode()


def log_has(hub: Hub, text: str) -> bool:
    assert hub.proc is not None
    return text in hub.proc.log()


HELLO_FIRST = object()  # stands for a valid hello of the case's own node

CASES: list[tuple[str, list[object], int]] = [
    ("malformed-json", ["{not json"], 1007),
    ("binary-frame", [b"\x00\x01 not text"], 1003),
    ("not-an-object", ["[1, 2, 3]"], 1007),
    ("unknown-type", ['{"type": "shell", "cmd": "rm -rf /"}'], 1008),
    ("delta-before-hello", [delta(1, snapshot())], 1008),
    ("wrong-protocol", [hello("wrong-protocol", protocol=99)], 1008),
    ("wrong-type", [hello("wrong-type", interval_s="1")], 1007),
    ("bad-node-name", [hello("<script>alert(1)</script>")], 1007),
    ("long-string", [hello("long-string", agent_version="v" * 300)], 1007),
    ("too-many-gpus", [hello("too-many-gpus", gpus=[{}] * 65)], 1007),
    ("second-hello", [HELLO_FIRST, hello("second-hello")], 1008),
    ("nan", [HELLO_FIRST, '{"type": "delta", "seq": 1, "ts": NaN, "patch": {}}'], 1007),
    ("infinity", [HELLO_FIRST, '{"type": "delta", "seq": 1, "ts": 1e400, "patch": {}}'], 1007),
    ("huge-number", [HELLO_FIRST, delta(1, {"host": {"cpu_percent": 1e300}})], 1007),
    (
        "huge-int",
        [HELLO_FIRST, '{"type": "delta", "seq": 1000000000000000000000000000000, "ts": 1, "patch": {}}'],
        1007,
    ),
    ("bool-for-number", [HELLO_FIRST, delta(1, {"host": {"mem_used_bytes": True}})], 1007),
    ("string-for-number", [HELLO_FIRST, delta(1, {"host": {"cpu_percent": "N/A"}})], 1007),
    ("gpu-key-not-index", [HELLO_FIRST, delta(1, {"gpus": {"../../etc": {"name": "x"}}})], 1007),
    ("patch-not-object", [HELLO_FIRST, '{"type": "delta", "seq": 1, "ts": 1, "patch": [1]}'], 1007),
    ("too-many-processes", [HELLO_FIRST, delta(1, {"gpus": {"0": {"processes": [{}] * 129}}})], 1007),
    ("delta-missing-seq", [HELLO_FIRST, '{"type": "delta", "ts": 1, "patch": {}}'], 1007),
]


@pytest.mark.parametrize(("node", "frames", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_closes_only_that_connection(hub: Hub, node: str, frames: list[object], code: int) -> None:
    ws = open_agent(hub)
    for frame in frames:
        ws.send(hello(node) if frame is HELLO_FIRST else frame)  # type: ignore[arg-type]
    got, reason = close_code(ws)
    assert got == code, (got, reason)
    assert reason, "the close frame says why"
    named = node if HELLO_FIRST in frames else "(before hello)"
    wait_until(
        lambda: log_has(hub, f"agent {named} from 127.0.0.1 with {code}: "), 5, what="a log line naming it"
    )
    if HELLO_FIRST in frames:
        wait_until(lambda: hub.status(node) == "offline", 5, what=f"{node} offline after its close")
    assert_unaffected(hub)


LATE_CASES: list[tuple[str, object, int]] = [
    ("late-malformed-json", "{not json", 1007),
    ("late-binary-frame", b"\x00\x01 not text", 1003),
    ("late-second-hello", "HELLO", 1008),
    ("late-huge-number", delta(2, {"host": {"cpu_percent": 1e300}}), 1007),
    ("late-bad-utf8-in-text", "\ud800", 1007),
]


@pytest.mark.parametrize(("node", "frame", "code"), LATE_CASES, ids=[c[0] for c in LATE_CASES])
def test_bad_input_after_good_deltas_closes_that_connection(
    hub: Hub, node: str, frame: object, code: int
) -> None:
    """The same closes once the node reports: its messages then take the direct path
    (hub.ws_direct), and a bad one must leave it for the one error path."""
    ws = open_agent(hub)
    ws.send(hello(node))
    ws.send(delta(1, snapshot(17.0)))
    wait_until(lambda: hub.status(node) == "live", 5, what=f"{node} live")
    ws.send(delta(2, snapshot(18.0)))
    wait_until(lambda: hub.nodes()[node]["state"]["host"]["cpu_percent"] == 18.0, 5, what="the second delta")
    if frame == "\ud800":  # a lone surrogate: not UTF-8, sent as a text frame's raw bytes
        ws.send(b"\xed\xa0\x80", text=True)
    else:
        ws.send(hello(node) if frame == "HELLO" else frame)  # type: ignore[arg-type]
    got, reason = close_code(ws)
    assert got == code, (got, reason)
    wait_until(lambda: hub.status(node) == "offline", 5, what=f"{node} offline after its close")
    assert hub.nodes()[node]["state"]["host"]["cpu_percent"] == 18.0  # nothing of the bad frame
    assert_unaffected(hub)


def test_message_over_64_kib_is_closed_with_1009_and_one_just_under_is_fine(hub: Hub) -> None:
    # unknown fields are dropped by the decoder, so padding makes a valid message of any size
    ws = open_agent(hub)
    ws.send(hello("big-ok"))
    wait_until(lambda: hub.status("big-ok") == "live", 5, what="big-ok live")  # before reading its state
    head = delta(1, snapshot(33.0))[:-1] + ', "pad": "'
    near_limit = head + "p" * (MAX_MESSAGE_BYTES - len(head) - 2 - 10) + '"}'
    assert MAX_MESSAGE_BYTES - 100 < len(near_limit) <= MAX_MESSAGE_BYTES
    ws.send(near_limit)
    wait_until(
        lambda: (hub.nodes()["big-ok"]["state"].get("host") or {}).get("cpu_percent") == 33.0,
        5,
        what="the near-limit delta to be applied",
    )
    ws.close()

    ws = open_agent(hub)
    ws.send(hello("too-big"))
    wait_until(lambda: hub.status("too-big") == "live", 5, what="too-big live")  # hello handled first
    ws.send(delta(1, snapshot())[:-1] + ', "pad": "' + "p" * MAX_MESSAGE_BYTES + '"}')
    got, _ = close_code(ws)
    assert got == 1009
    wait_until(lambda: log_has(hub, "agent too-big from 127.0.0.1 with 1009: "), 5, what="the 1009 log line")
    assert_unaffected(hub)


def test_flood_is_closed_with_1008(hub: Hub) -> None:
    ws = open_agent(hub)
    ws.send(hello("flood", interval_s=1.0))
    with contextlib.suppress(ConnectionClosed):  # the hub closes it long before the end
        for seq in range(5000):
            ws.send(delta(seq))
    got, reason = close_code(ws)
    assert got == 1008
    assert "messages per second" in reason
    wait_until(lambda: log_has(hub, "agent flood from 127.0.0.1 with 1008: more than"), 5, what="log line")
    assert_unaffected(hub)


def test_agent_at_its_own_pace_is_never_rate_limited(hub: Hub) -> None:
    ws = open_agent(hub)
    ws.send(hello("paced", interval_s=0.05))  # the fastest interval the protocol allows
    for seq in range(60):  # 3 s at 20 messages per second
        ws.send(delta(seq, snapshot(float(seq))))
        time.sleep(0.05)
    wait_until(lambda: hub.nodes()["paced"]["state"]["host"]["cpu_percent"] == 59.0, 5, what="last delta")
    assert hub.status("paced") == "live"
    ws.close()


def test_newer_connection_for_the_same_node_wins(hub: Hub) -> None:
    older = open_agent(hub)
    older.send(hello("twin"))
    older.send(delta(1, snapshot(10.0)))
    wait_until(lambda: hub.status("twin") == "live", 5, what="twin live")

    newer = open_agent(hub)
    newer.send(hello("twin"))
    got, reason = close_code(older)
    assert got == 1008
    assert "replaced" in reason
    newer.send(delta(1, snapshot(77.0)))
    wait_until(
        lambda: hub.nodes()["twin"]["state"].get("host", {}).get("cpu_percent") == 77.0,
        5,
        what="the newer connection's delta to be applied",
    )
    assert hub.status("twin") == "live"  # the older one's close did not take the node offline
    newer.close()
    wait_until(lambda: hub.status("twin") == "offline", 5, what="twin offline after the newer one left")
    assert_unaffected(hub)


def test_a_node_name_reconnecting_in_a_loop_is_closed_with_1008(hub: Hub) -> None:
    """Each hello renders the card anew and logs two lines: a client that connects, says hello
    and leaves in a loop gets HELLOS_PER_MINUTE connections for that name, then 1008 (logged
    once), while other names connect as usual."""
    for _ in range(HELLOS_PER_MINUTE):
        ws = open_agent(hub)
        ws.send(hello("flappy"))
        ws.send(delta(1, snapshot(5.0)))
        ws.close()
    looping = open_agent(hub)
    looping.send(hello("flappy"))
    assert close_code(looping) == (1008, f"over {HELLOS_PER_MINUTE} connections a minute for this node")
    wait_until(
        lambda: log_has(hub, f"node flappy: over {HELLOS_PER_MINUTE} connections a minute from 127.0.0.1"),
        5,
        what="log line",
    )
    other = open_agent(hub)
    other.send(hello("calm"))
    other.send(delta(1, snapshot(5.0)))
    wait_until(lambda: hub.status("calm") == "live", 5, what="another name to connect")
    other.close()
    assert_unaffected(hub)


def test_no_hello_in_time_is_closed(hub: Hub) -> None:
    ws = open_agent(hub)
    got, reason = close_code(ws, timeout_s=20)
    assert got == 1008
    assert "no hello" in reason
    assert_unaffected(hub)


def test_xss_in_agent_text_is_escaped_on_the_page(hub: Hub) -> None:
    payload = "<img src=x onerror=alert(1)>"
    ws = open_agent(hub)
    ws.send(hello("xss", host={"hostname": payload, "cpu_model": payload, "os_name": payload}))
    # a GPU process's container, pod and job names are agent strings too
    attributed = [
        {
            "pid": 10,
            "user": "ann",
            "gpu_mem_bytes": 1 << 30,
            "container_runtime": payload,
            "container_name": payload,
        },
        {"pid": 11, "user": "bob", "gpu_mem_bytes": 1 << 30, "pod_namespace": payload, "pod_name": payload},
        {"pid": 12, "user": "cy", "gpu_mem_bytes": 1 << 30, "slurm_job_id": 81234, "slurm_step": payload},
    ]
    ws.send(delta(1, {**snapshot(), "gpus": {"0": {"name": "H100", "processes": attributed}}}))
    wait_until(lambda: hub.status("xss") == "live", 5, what="xss node live")
    for path in ("/", "/node/xss"):
        with urllib.request.urlopen(hub.url + path, timeout=5) as response:
            html = response.read().decode()
        assert payload not in html, path
    assert "job 81234 step &lt;img" in html, "the escaped step shows on the node page"
    with urllib.request.urlopen(hub.url + "/api/v1/nodes", timeout=5) as response:
        (node,) = [n for n in orjson.loads(response.read())["nodes"] if n["id"] == "xss"]
    assert node["state"]["gpus"]["0"]["processes"][2]["slurm_job_id"] == 81234
    assert node["state"]["gpus"]["0"]["processes"][0]["container_name"] == payload, "JSON carries it as is"
    viewer = open_viewer(hub)
    try:
        text = recv_text(viewer)
        assert 'id="node-xss"' in text
        assert payload not in text
    finally:
        viewer.close()
        ws.close()


def test_hub_still_serves_a_viewer_after_everything(hub: Hub) -> None:
    viewer = open_viewer(hub)
    try:
        text = recv_text(viewer)
        assert f'id="node-{STEADY}"' in text
    finally:
        viewer.close()
    assert_unaffected(hub)


def one_more_each_time(kind: str, count: int) -> dict[str, object]:
    """A delta that is valid by itself: the state with ``count`` GPUs, processes or disks."""
    if kind == "gpus":
        return {"gpus": {str(count - 1): {"name": "H100", "util_gpu_percent": 1.0}}}
    if kind == "processes":
        procs = [{"pid": pid, "user": "eve", "gpu_mem_bytes": 1 << 20} for pid in range(count)]
        return {"gpus": {"0": {"name": "H100", "processes": procs}}}
    if kind == "disks":
        return {
            "host": {"disks": [{"mount": f"/d{i}", "total_bytes": 1, "used_bytes": 0} for i in range(count)]}
        }
    # long process lists on one more GPU each time: every delta fits, their sum does not
    procs = [{"pid": pid, "user": "eve", "command": "x" * MAX_STRING_CHARS} for pid in range(100)]
    return {"gpus": {str(count - 1): {"processes": procs}}}


GROWTH: list[tuple[str, int, str]] = [
    ("gpus", 1008, f"over the limit of {MAX_GPUS}"),
    ("state-bytes", 1008, f"over the limit of {MAX_STATE_BYTES}"),
    ("processes", 1007, f"at most {MAX_OBJECT_LIST} items"),
    ("disks", 1007, f"at most {MAX_OBJECT_LIST} items"),
]


@pytest.mark.parametrize(("kind", "code", "why"), GROWTH, ids=[g[0] for g in GROWTH])
def test_growing_a_node_one_item_per_delta_stops_at_the_limit(
    hub: Hub, kind: str, code: int, why: str
) -> None:
    """The limits hold for the node's merged state: an agent that adds one GPU (or process,
    disk, long process list) per delta is closed at the limit, the log says why, and the node
    keeps its last state within the limits."""
    node = f"grow-{kind}"
    ws = open_agent(hub)
    ws.send(hello(node, interval_s=0.05))  # the fastest interval: 60 messages/s are allowed
    with contextlib.suppress(ConnectionClosed):  # closed at the limit, before the end
        for count in range(1, 200):
            ws.send(delta(count, one_more_each_time(kind, count)))
            time.sleep(0.02)
    got, reason = close_code(ws)
    assert got == code and why in reason, (got, reason)
    wait_until(lambda: log_has(hub, f"agent {node} from 127.0.0.1 with {code}: "), 5, what="the log line")
    assert log_has(hub, why), "the log line names the limit"
    wait_until(lambda: hub.status(node) == "offline", 5, what=f"{node} offline after its close")
    state = hub.nodes()[node]["state"]
    gpus = state.get("gpus") or {}
    assert len(orjson.dumps(state)) <= MAX_STATE_BYTES and len(gpus) <= MAX_GPUS
    assert all(len(g.get("processes") or []) <= MAX_OBJECT_LIST for g in gpus.values())
    assert len((state.get("host") or {}).get("disks") or []) <= MAX_OBJECT_LIST
    if kind == "gpus":
        assert len(gpus) == MAX_GPUS, "the state before the refused delta is kept"
    assert_unaffected(hub)
