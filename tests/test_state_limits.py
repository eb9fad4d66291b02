"""The limits on a node's merged state: deltas that are fine one by one but would grow the state
past a limit are refused, the state stays as it was, and the agent never grows it that far."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hub.clock import ManualClock
from hub.registry import STATE_BYTES_PER_MESSAGE_CHAR, NodeRegistry
from node_agent import link as link_module
from node_agent.link import Backoff, HubLink
from node_agent.protocol import (
    CLOSE_POLICY,
    MAX_GPUS,
    MAX_OBJECT_LIST,
    MAX_STATE_BYTES,
    MAX_STRING_CHARS,
    Delta,
    Hello,
    ProtocolError,
    check_patch,
    decode,
    encode,
    make_patch,
    merge_patch,
)


def connected(node: str = "n1") -> tuple[NodeRegistry, int]:
    registry = NodeRegistry(ManualClock())
    connection = registry.hello(Hello(node=node, agent_version="t", interval_s=1.0))
    return registry, connection


def send(registry: NodeRegistry, connection: int, patch: dict[str, Any], node: str = "n1") -> None:
    """As the hub's agent endpoint does: the encoded message, decoded, with its length."""
    text = encode(Delta(seq=1, ts=0.0, patch=patch)).decode()
    registry.delta(node, connection, decode(text), len(text))  # type: ignore[arg-type]


def process(pid: int, command_chars: int = 8) -> dict[str, Any]:
    return {"pid": pid, "user": "u" * 32, "command": "c" * command_chars, "gpu_mem_bytes": 1 << 30}


def test_one_gpu_per_delta_stops_at_the_gpu_limit_and_keeps_the_state() -> None:
    registry, connection = connected()
    for index in range(MAX_GPUS):
        send(registry, connection, {"sampled_at": float(index), "gpus": {str(index): {"name": "H100"}}})
    node = registry.nodes["n1"]
    before = node.state
    with pytest.raises(ProtocolError) as refused:
        send(registry, connection, {"sampled_at": 99.0, "gpus": {str(MAX_GPUS): {"name": "H100"}}})
    assert refused.value.close_code == CLOSE_POLICY
    assert f"{MAX_GPUS + 1} GPUs" in refused.value.reason and str(MAX_GPUS) in refused.value.reason
    assert node.state is before and len(node.state["gpus"]) == MAX_GPUS
    # replacing a GPU, or removing one to add another, stays within the limit and is fine
    send(registry, connection, {"gpus": {"0": None, str(MAX_GPUS): {"name": "A100"}}})
    assert len(node.state["gpus"]) == MAX_GPUS and node.state["gpus"][str(MAX_GPUS)]["name"] == "A100"


def test_processes_spread_over_gpus_stop_at_the_size_limit_and_keep_the_state() -> None:
    """Each delta fits in a message, but the merged state would not."""
    registry, connection = connected()
    node = registry.nodes["n1"]
    full_list = [process(pid, MAX_STRING_CHARS) for pid in range(100)]
    with pytest.raises(ProtocolError) as refused:
        for index in range(MAX_GPUS):
            before = node.state
            send(registry, connection, {"gpus": {str(index): {"processes": full_list}}})
            assert len(orjson.dumps(node.state)) <= MAX_STATE_BYTES
    assert refused.value.close_code == CLOSE_POLICY
    assert f"over the limit of {MAX_STATE_BYTES}" in refused.value.reason
    assert node.state is before, "the refused delta left the state as it was"
    assert 1 <= len(node.state.get("gpus") or {}) < MAX_GPUS


def test_heartbeats_and_other_connections_are_not_checked_against_the_state() -> None:
    registry, connection = connected()
    send(registry, connection, {"gpus": {str(i): {"name": "x"} for i in range(MAX_GPUS)}})
    registry.delta("n1", connection, Delta(2, 0.0, {}))  # a heartbeat of a live node: not refused
    stale = connection + 1000  # not the connection that owns the node: ignored, never refused
    registry.delta("n1", stale, Delta(3, 0.0, {"gpus": {str(MAX_GPUS): {}}}))
    assert len(registry.nodes["n1"].state["gpus"]) == MAX_GPUS, "the other connection's delta was not merged"


# Values that take the most bytes in the state per character of their message: big floats
# (``1e15`` is 18 bytes as JSON), astral-plane characters (4 bytes of UTF-8 each), escapes.
WIDE_FLOATS = st.sampled_from([1e15, -1e15, 9e15, 1e-7, 0.1, 123.456, 1e18])
WIDE_TEXT = st.sampled_from(["", "a", "é", "😀", '"\\', "\x01"]).map(lambda s: s * (MAX_STRING_CHARS // 4))


@st.composite
def growing_patches(draw: st.DrawFn) -> dict[str, Any]:
    """A patch that adds, replaces or removes a few GPUs, with process lists of any length."""
    gpus: dict[str, Any] = {}
    for index in draw(st.lists(st.integers(0, 99), max_size=10)):
        if draw(st.integers(0, 5)) == 0:
            gpus[str(index)] = None
            continue
        count = draw(st.just(0) | st.integers(0, MAX_OBJECT_LIST))
        user, command, mem = draw(WIDE_TEXT), draw(WIDE_TEXT), draw(WIDE_FLOATS)
        gpus[str(index)] = {
            "util_gpu_percent": draw(WIDE_FLOATS),
            "processes": [
                {"pid": pid, "user": user, "command": command, "cpu_percent": mem} for pid in range(count)
            ],
        }
    patch: dict[str, Any] = {"sampled_at": draw(WIDE_FLOATS), "gpus": gpus}
    if draw(st.booleans()):
        patch["host"] = {"cpu_percent_per_core": [draw(WIDE_FLOATS)] * draw(st.integers(0, 1024))}
    return patch


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.lists(growing_patches(), min_size=1, max_size=16))
def test_the_merged_state_always_passes_every_limit_of_one_message(patches: list[dict[str, Any]]) -> None:
    """Whatever sequence of valid messages arrives, the state the hub keeps is one that a single
    message could carry (``check_patch`` accepts it and it fits), and the size bound the
    registry keeps instead of encoding the state every time is never below the true size."""
    registry, connection = connected()
    node = registry.nodes["n1"]
    for patch in patches:
        text = encode(Delta(seq=1, ts=0.0, patch=patch)).decode()
        try:
            delta = decode(text)
        except ProtocolError:
            continue  # refused by the decoder already: a per-message limit
        before = node.state
        try:
            registry.delta("n1", connection, delta, len(text))  # type: ignore[arg-type]
        except ProtocolError as refused:
            assert refused.close_code == CLOSE_POLICY
            assert node.state is before
            event("refused: " + ("GPUs" if "GPUs" in refused.reason else "bytes"))
            continue
        size = len(orjson.dumps(node.state))
        assert size <= node.state_bytes_max <= MAX_STATE_BYTES
        assert len(node.state.get("gpus") or {}) <= MAX_GPUS
        check_patch(node.state)  # raises if a string, list or the GPU map breaks a limit


def test_the_size_bound_holds_for_the_widest_values() -> None:
    """The registry's bound assumes a message character becomes at most this many bytes."""
    for value in (1e15, -9e15, "😀" * 10, "\x01" * 10):
        text = orjson.dumps({"v": value}).decode()
        assert len(orjson.dumps(msgspec.json.decode(text))) <= STATE_BYTES_PER_MESSAGE_CHAR * len(text)


class RecordingSocket:
    """Stands in for the hub's end: records each message sent, never receives; the agent's close
    (when the test stops it) is accepted."""

    def __init__(self, wanted: int, done: asyncio.Event) -> None:
        self.sent: list[dict[str, Any]] = []
        self._wanted = wanted
        self._done = done

    async def send(self, message: bytes, text: bool) -> None:
        self.sent.append(orjson.loads(message))
        if len(self.sent) >= self._wanted:
            self._done.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    def __aiter__(self) -> RecordingSocket:
        return self

    async def __anext__(self) -> object:
        await asyncio.Event().wait()
        raise StopAsyncIteration


class GrowingSource:
    """Snapshots in which one more GPU gets a long process list each time: every patch fits in a
    message, the whole snapshot soon does not."""

    def __init__(self) -> None:
        self.version = 0
        self.latest: dict[str, Any] = self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        gpus = {
            str(i): {"name": "H100", "processes": [process(1000 * i + pid, 150) for pid in range(100)]}
            if i <= self.version
            else {"name": "H100", "processes": []}
            for i in range(8)
        }
        return {"sampled_at": float(self.version), "gpus": gpus}

    async def wait_newer(self, version: int, timeout_s: float) -> None:
        await asyncio.sleep(0.001)
        self.version += 1
        self.latest = self._snapshot()

    def patch_since(self, sent: dict[str, Any]) -> dict[str, Any]:
        return make_patch(sent, self.latest)  # type: ignore[no-any-return]


def test_the_agent_keeps_the_merged_state_within_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    done = asyncio.Event()
    socket = RecordingSocket(wanted=10, done=done)

    @contextlib.asynccontextmanager
    async def connect(url: str, **_: Any) -> AsyncIterator[RecordingSocket]:
        yield socket

    monkeypatch.setattr(link_module, "connect", connect)
    link = HubLink(
        url="ws://hub:8000/ws/agent",
        token=None,
        hello=lambda: Hello(node="n1", agent_version="t", interval_s=1.0),
        static_generation=lambda: 0,
        source=GrowingSource(),  # type: ignore[arg-type]
        backoff=Backoff(base_s=60.0, cap_s=60.0),
        rng=random.Random(0),
    )

    async def scenario() -> None:
        task = asyncio.create_task(link.run_forever())
        async with asyncio.timeout(10):
            await done.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    state: dict[str, Any] = {}
    for message in socket.sent[1:]:  # after the hello, as the hub merges them
        state = merge_patch(state, message["patch"])
        assert len(orjson.dumps(state)) <= MAX_STATE_BYTES
    busy = [g for g in state["gpus"].values() if g.get("processes")]
    assert len(busy) == 8, "every GPU still lists its biggest processes, trimmed"
