"""``/ws/agent``: one node agent's connection. Bad input closes that connection, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from hub.state import HubState
from node_agent.protocol import (
    CLOSE_POLICY,
    Delta,
    Hello,
    ProtocolError,
    decode,
)

log = logging.getLogger("sers.hub")

HELLO_TIMEOUT_S = 10.0
CLOSE_UNSUPPORTED_DATA = 1003


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_owner(hub: HubState, token: str | None) -> tuple[bool, str | None]:
    """(accepted, bound node). Open when no token is configured at all."""
    settings = hub.settings
    if settings.agent_token is None and not settings.node_tokens:
        return True, None
    if token is None:
        return False, None
    ok = settings.agent_token is not None and hmac.compare_digest(
        token.encode(), settings.agent_token.encode()
    )
    bound = None
    for node, node_token in settings.node_tokens.items():  # every entry compared: constant time
        if hmac.compare_digest(token.encode(), node_token.encode()):
            ok, bound = True, node
    return ok, bound


class RateLimit:
    """A token bucket: ``rate`` messages per second, bursts of ``2 * rate``."""

    def __init__(self, rate_per_s: float) -> None:
        self._rate = rate_per_s
        self._capacity = 2 * rate_per_s
        self._tokens = self._capacity
        self._at = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


async def agent_endpoint(websocket: WebSocket) -> None:
    hub: HubState = websocket.app.state.hub
    address = websocket.client.host if websocket.client else None
    accepted, bound_node = token_owner(hub, _bearer(websocket))
    if not accepted:
        status = 401 if _bearer(websocket) is None else 403
        log.warning("agent from %s refused: %s token", address, "missing" if status == 401 else "wrong")
        await websocket.send_denial_response(PlainTextResponse("invalid or missing agent token\n", status))
        return
    await websocket.accept()
    try:
        hello = await _receive_hello(websocket)
    except (ProtocolError, WebSocketDisconnect, TimeoutError) as exc:
        await _close(websocket, exc, node=None, address=address)
        return
    if bound_node is not None and hello.node != bound_node:
        await _close(
            websocket,
            ProtocolError(f"this token belongs to node {bound_node!r}, not {hello.node!r}", CLOSE_POLICY),
            node=hello.node,
            address=address,
        )
        return
    connection, change = hub.registry.hello(hello, address)
    hub.fanout.note(change)
    older = hub.agent_sockets.get(hello.node)
    hub.agent_sockets[hello.node] = (connection, websocket)
    if older is not None:
        log.warning("node %s: a newer connection from %s replaces the older one", hello.node, address)
        with contextlib.suppress(Exception):
            await older[1].close(CLOSE_POLICY, "replaced by a newer connection for this node")
    log.info("node %s connected from %s (agent %s)", hello.node, address, hello.agent_version)
    limit = RateLimit(hub.settings.agent_max_messages_per_s)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                raise ProtocolError("binary frames are not part of the protocol", CLOSE_UNSUPPORTED_DATA)
            if not limit.allow():
                raise ProtocolError(
                    f"more than {hub.settings.agent_max_messages_per_s:g} messages per second",
                    CLOSE_POLICY,
                )
            decoded = decode(text)
            if not isinstance(decoded, Delta):
                raise ProtocolError("a second hello on the same connection", CLOSE_POLICY)
            hub.fanout.note(hub.registry.delta(hello.node, connection, decoded))
    except ProtocolError as exc:
        await _close(websocket, exc, node=hello.node, address=address)
    except WebSocketDisconnect:
        pass
    finally:
        current = hub.agent_sockets.get(hello.node)
        if current is not None and current[0] == connection:
            del hub.agent_sockets[hello.node]
        hub.fanout.note(hub.registry.disconnect(hello.node, connection))
        log.info("node %s disconnected", hello.node)


async def _receive_hello(websocket: WebSocket) -> Hello:
    message = await asyncio.wait_for(websocket.receive(), HELLO_TIMEOUT_S)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise ProtocolError("binary frames are not part of the protocol", CLOSE_UNSUPPORTED_DATA)
    decoded = decode(text)
    if not isinstance(decoded, Hello):
        raise ProtocolError("the first message must be a hello", CLOSE_POLICY)
    return decoded


async def _close(websocket: WebSocket, exc: BaseException, *, node: str | None, address: str | None) -> None:
    if isinstance(exc, WebSocketDisconnect):
        return
    if isinstance(exc, TimeoutError):
        exc = ProtocolError(f"no hello within {HELLO_TIMEOUT_S:g} s", CLOSE_POLICY)
    assert isinstance(exc, ProtocolError)
    log.warning(
        "closing agent %s from %s with %d: %s",
        node or "(before hello)",
        address,
        exc.close_code,
        exc.reason,
    )
    if websocket.application_state is WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(exc.close_code, exc.reason[:120])
