"""Raw WebSocket clients for hardening tests: hand-made agent frames and viewers, no agent code."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from node_agent.protocol import PROTOCOL_VERSION
from tests.procs import Hub


def hello(node: str, interval_s: float = 1.0, **extra: Any) -> str:
    message = {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "node": node,
        "agent_version": "raw-test",
        "interval_s": interval_s,
        "host": {"hostname": node, "cpu_model": "Test CPU", "cpu_cores_logical": 4},
        "gpu_driver": {},
        "gpus": [],
    }
    message.update(extra)
    return orjson.dumps(message).decode()


def snapshot(cpu_percent: float = 12.5) -> dict[str, Any]:
    return {
        "sampled_at": round(time.time(), 3),
        "host": {"cpu_percent": cpu_percent, "mem_total_bytes": 8 << 30, "mem_used_bytes": 2 << 30},
        "gpus": {},
    }


def delta(seq: int, patch: Mapping[str, Any] | None = None) -> str:
    return orjson.dumps({"type": "delta", "seq": seq, "ts": time.time(), "patch": patch or {}}).decode()


def open_ws(url: str, headers: Mapping[str, str] | None = None, **options: Any) -> ClientConnection:
    """An open connection the caller closes (``__enter__``: websockets >= 17 warns on a bare
    ``connect()``, older versions return the connection itself)."""
    return connect(
        url, additional_headers=dict(headers or {}), max_size=None, open_timeout=10, **options
    ).__enter__()


def open_agent(
    hub: Hub, token: str | None = None, headers: Mapping[str, str] | None = None
) -> ClientConnection:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return open_ws(hub.ws_url + "/ws/agent", all_headers)


def open_viewer(
    hub: Hub, path: str = "/ws/view", headers: Mapping[str, str] | None = None, **options: Any
) -> ClientConnection:
    return open_ws(hub.ws_url + path, headers, **options)


def recv_text(ws: ClientConnection, timeout_s: float = 10.0) -> str:
    message = ws.recv(timeout=timeout_s)
    return message.decode() if isinstance(message, bytes) else message


def close_code(ws: ClientConnection, timeout_s: float = 10.0) -> tuple[int | None, str]:
    """Reads (and drops) messages until the hub closes; returns its close code and reason."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the hub did not close the connection within {timeout_s} s")
            ws.recv(timeout=left)
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return None, "no close frame"
        return exc.rcvd.code, exc.rcvd.reason
    except TimeoutError:
        raise AssertionError(f"the hub did not close the connection within {timeout_s} s") from None
