"""``/ws/agent``: one node agent's connection. Bad input closes that connection, nothing else.

Before accept: the bearer token (``Authorization`` header only). A missing token is answered
with HTTP 401, a wrong one with 403; refusals are logged at most once per source per minute.
After accept: a hello within :data:`HELLO_TIMEOUT_S`, then deltas. Every limit closes only this
connection, with a close code that says why (see ``docs/security.md``):

- 1009: a message over ``MAX_MESSAGE_BYTES`` (uvicorn enforces it as ``ws_max_size``);
- 1007: malformed JSON, wrong types, non-finite or huge numbers, over-long strings and lists;
- 1008: policy: no hello first, a second hello, unknown message types, more messages per second
  than ``agent_max_messages_per_s`` (or 3 per announced interval, if more), a token bound to another node, too many nodes, or a newer
  connection for the same node (the newer one wins), more than :data:`HELLOS_PER_MINUTE`
  connections a minute for one node name; also a delta that is valid by itself but
  would take the node's merged state over a limit (more than ``MAX_GPUS`` GPUs, or more than
  ``MAX_STATE_BYTES`` as JSON): the node keeps its previous state;
- 1003: binary frames.

Once the hello is in, the deltas take the direct path of :mod:`hub.ws_direct`: decoded and
merged as uvicorn parses them. A message that fails any check there goes the ASGI way to the
endpoint's loop, which raises what failed: one error path for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.frames import CloseCode

from hub.memory import connection_closed
from hub.security import FailureLog, bearer_token, route_path, tokens_equal
from hub.settings import HubSettings
from hub.state import HubState
from hub.ws_direct import DIRECT_TEXT
from node_agent.protocol import (
    CLOSE_BAD_DATA,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    MAX_MESSAGE_BYTES,
    Delta,
    Hello,
    ProtocolError,
    decode,
)

log = logging.getLogger("sers.hub")

HELLO_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0


def token_owner(settings: HubSettings, token: str | None) -> tuple[bool, str | None]:
    """(accepted, the node the token is bound to). Open when no token is configured at all.

    Every configured token is compared, in constant time, whatever matched before.
    """
    if settings.agent_token is None and not settings.node_tokens:
        return True, None
    if token is None:
        return False, None
    ok = tokens_equal(token, settings.agent_token)
    bound = None
    for node, node_token in settings.node_tokens.items():
        if tokens_equal(token, node_token):
            ok, bound = True, node
    return ok, bound


class RateLimit:
    """A token bucket: ``rate`` messages per second, bursts of ``burst`` (``2 * rate``)."""

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self._rate = rate_per_s
        self._capacity = burst if burst is not None else 2 * rate_per_s
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


AGENT_PATH = "/ws/agent"

HELLOS_PER_MINUTE = 20
"""Connections one node name may open per minute (bursts as large): an agent backs off between
reconnects, while a client in a connect-and-hello loop would have every hello render the card
anew and log two lines."""


def _hello_allowed(hub: HubState, node: str) -> bool:
    limits = hub.hello_limits
    limit = limits.get(node)
    if limit is None:
        if len(limits) >= hub.settings.max_nodes:  # only names the registry holds are kept
            for gone in [name for name in limits if name not in hub.registry.nodes]:
                del limits[gone]
        limit = limits[node] = RateLimit(HELLOS_PER_MINUTE / 60, burst=HELLOS_PER_MINUTE)
    return limit.allow()


class AgentRoute:
    """Serves :data:`AGENT_PATH` straight from the middleware stack, right after the proxy and
    Host checks: thousands of agent connections stay open for days, and each one held a dozen
    more coroutine frames and wrappers (Router, route, exception handlers, page headers) that an
    agent never needs; everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, hub: HubState, failures: FailureLog) -> None:
        self._app = app
        self._hub = hub
        self._failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and route_path(scope) == AGENT_PATH:
            try:
                await agent_endpoint(WebSocket(scope, receive, send), self._hub, self._failures)
            finally:
                connection_closed()
        else:
            await self._app(scope, receive, send)


async def agent_endpoint(websocket: WebSocket, hub: HubState, failures: FailureLog) -> None:
    address = websocket.client.host if websocket.client else None
    token = bearer_token(websocket.headers)
    accepted, bound_node = token_owner(hub.settings, token)
    if not accepted:
        status = 401 if token is None else 403
        failures.refused(address or "unknown", f"an agent with {'no' if token is None else 'a wrong'} token")
        await websocket.send_denial_response(
            PlainTextResponse(
                "missing agent token\n" if status == 401 else "invalid agent token\n",
                status,
                headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
            )
        )
        return
    await websocket.accept()
    try:
        hello = await _receive_hello(websocket)
        _check_hello(hub, hello, bound_node)
    except (ProtocolError, WebSocketDisconnect, TimeoutError) as exc:
        await _close(websocket, exc, node=None, address=address)
        return
    if not _hello_allowed(hub, hello.node):
        failures.refused(
            address or "unknown", f"node {hello.node}: over {HELLOS_PER_MINUTE} connections a minute"
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                websocket.close(CLOSE_POLICY, f"over {HELLOS_PER_MINUTE} connections a minute for this node"),
                CLOSE_TIMEOUT_S,
            )
        return
    connection = hub.registry.hello(hello, address)
    older = hub.agent_sockets.get(hello.node)
    hub.agent_sockets[hello.node] = (connection, websocket)
    if older is not None:
        log.warning("node %s: a newer connection from %s replaces the older one", hello.node, address)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                older[1].close(CLOSE_POLICY, "replaced by a newer connection for this node"),
                CLOSE_TIMEOUT_S,
            )
    log.info("node %s connected from %s (agent %s)", hello.node, address, hello.agent_version)
    # an agent sends about one message per interval: a fast interval gets a higher limit
    max_per_s = max(hub.settings.agent_max_messages_per_s, 3.0 / hello.interval_s)
    limit = RateLimit(max_per_s)
    failure: list[Exception] = []  # what the direct path met; the loop below raises it

    def handle(text: str) -> None:
        if not limit.allow():
            raise ProtocolError(f"more than {max_per_s:g} messages per second", CLOSE_POLICY)
        decoded = decode(text)
        if not isinstance(decoded, Delta):
            raise ProtocolError("a second hello on the same connection", CLOSE_POLICY)
        hub.registry.delta(hello.node, connection, decoded, len(text))

    def handle_direct(text: str) -> bool:
        """Called by the protocol as each message arrives (hub.ws_direct); False sends this
        message, and every one after it, the ASGI way, where the failure is raised."""
        if failure:
            return False
        try:
            handle(text)
        except Exception as exc:
            failure.append(exc)
            return False
        return True

    set_direct = websocket.scope.get("extensions", {}).get(DIRECT_TEXT)
    if set_direct is not None:
        set_direct(handle_direct)
    try:
        while True:
            message = await websocket.receive()
            if failure:
                raise failure[0]
            if message["type"] == "websocket.disconnect":
                _log_transport_close(message, hello.node, address)
                break
            text = message.get("text")
            if text is None:
                raise ProtocolError("binary frames are not part of the protocol", CLOSE_UNSUPPORTED_DATA)
            handle(text)
    except ProtocolError as exc:
        await _close(websocket, exc, node=hello.node, address=address)
    except WebSocketDisconnect:
        pass
    except Exception:  # a bug must cost this one connection, never the hub
        log.exception("node %s: internal error; closing its connection", hello.node)
        await _close(
            websocket, ProtocolError("internal error", CLOSE_INTERNAL_ERROR), node=hello.node, address=address
        )
    finally:
        if set_direct is not None:
            set_direct(None)
        current = hub.agent_sockets.get(hello.node)
        if current is not None and current[0] == connection:
            del hub.agent_sockets[hello.node]
        hub.registry.disconnect(hello.node, connection)
        log.info("node %s disconnected", hello.node)


def _check_hello(hub: HubState, hello: Hello, bound_node: str | None) -> None:
    """Raises unless this connection may speak for ``hello.node``."""
    if bound_node is not None and hello.node != bound_node:
        raise ProtocolError(f"this token belongs to node {bound_node!r}, not {hello.node!r}", CLOSE_POLICY)
    if bound_node is None and hello.node in hub.settings.node_tokens:
        raise ProtocolError(
            f"node {hello.node!r} has its own token; the shared one cannot speak for it", CLOSE_POLICY
        )
    if hello.node not in hub.registry.nodes and len(hub.registry.nodes) >= hub.settings.max_nodes:
        raise ProtocolError(f"the hub already has max_nodes={hub.settings.max_nodes} nodes", CLOSE_POLICY)


async def _receive_hello(websocket: WebSocket) -> Hello:
    message = await asyncio.wait_for(websocket.receive(), HELLO_TIMEOUT_S)
    if message["type"] == "websocket.disconnect":
        _log_transport_close(message, None, websocket.client.host if websocket.client else None)
        raise WebSocketDisconnect(message.get("code", CloseCode.NORMAL_CLOSURE))
    text = message.get("text")
    if text is None:
        raise ProtocolError("binary frames are not part of the protocol", CLOSE_UNSUPPORTED_DATA)
    decoded = decode(text)
    if not isinstance(decoded, Hello):
        raise ProtocolError("the first message must be a hello", CLOSE_POLICY)
    return decoded


def _log_transport_close(message: Mapping[str, Any], node: str | None, address: str | None) -> None:
    """uvicorn closes over-size messages (1009) and bad UTF-8 (1007) itself; say so in our log."""
    code = message.get("code")
    if code == CLOSE_TOO_BIG:
        reason = f"a message over {MAX_MESSAGE_BYTES} bytes"
    elif code == CLOSE_BAD_DATA:
        reason = "a text frame that is not UTF-8"
    else:
        return
    log.warning("closed agent %s from %s with %d: %s", node or "(before hello)", address, code, reason)


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
            await asyncio.wait_for(websocket.close(exc.close_code, _reason(exc.reason)), CLOSE_TIMEOUT_S)


def _reason(text: str) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    encoded = text.encode()[:120]
    return encoded.decode(errors="ignore")
