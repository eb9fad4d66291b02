"""What a browser on ``/ws/view`` may tell the hub: which cards it shows.

The page sends ``{"show": ["gpu01", "gpu02", ...]}`` (the node ids of the cards in or near its
viewport, or on the current page of ``?cycle=``) whenever that set changes, and
``{"show": null}`` when it shows every card or cannot tell. The hub then sends it only those
nodes' parts, whole cards of every node (they come, go or change status: the page lays them
all out) and the summary; a node that joins the set gets its whole current card on the next
tick (:mod:`hub.fanout`).

Every claim is bounded, and anything else is a client that is not the hub's page: it is
closed with a close code that says why (:class:`~node_agent.protocol.ProtocolError`: 1003
binary, 1007 not the shape above, 1008 too many ids or messages, 1009 too big).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from node_agent.protocol import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    NODE_NAME_RE,
    ProtocolError,
)

MAX_SHOWN_NODES = 500
"""Cards one page may name (app.js's ``SHOW_MAX``; a page with more in view asks for
everything). Each named card costs the hub a lookup per tick and a whole card when it joins."""
MAX_SHOW_MESSAGE_BYTES = MAX_SHOWN_NODES * 66 + 64  # 63-character names, quoted, with commas
SHOW_BURST = 20
SHOW_PER_S = 10.0
"""Messages a page may send: it sends at most one per 100 ms while its cards scroll by."""

Shown = frozenset[str] | None
"""The node ids a viewer shows; None: every node."""


class ShowRate:
    """A token bucket of :data:`SHOW_BURST` messages refilled at :data:`SHOW_PER_S`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = float(SHOW_BURST)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(SHOW_BURST), self._tokens + (now - self._at) * SHOW_PER_S)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def parse_show(message: Mapping[str, Any]) -> Shown:
    """The set a ``websocket.receive`` message names; :class:`ProtocolError` for anything else."""
    text = message.get("text")
    if text is None:
        raise ProtocolError("binary frames are not accepted on /ws/view", CLOSE_UNSUPPORTED_DATA)
    if len(text) > MAX_SHOW_MESSAGE_BYTES:
        raise ProtocolError(
            f"a message of {len(text)} characters, over {MAX_SHOW_MESSAGE_BYTES}", CLOSE_TOO_BIG
        )
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("a message that is not JSON") from None
    if not isinstance(body, dict) or set(body) != {"show"}:
        raise ProtocolError('a message other than {"show": [...]}')
    ids = body["show"]
    if ids is None:
        return None
    if not isinstance(ids, list):
        raise ProtocolError('"show" must be a list of node ids or null')
    if len(ids) > MAX_SHOWN_NODES:
        raise ProtocolError(f"{len(ids)} node ids, over {MAX_SHOWN_NODES}", CLOSE_POLICY)
    for node_id in ids:
        if not (isinstance(node_id, str) and NODE_NAME_RE.fullmatch(node_id)):
            raise ProtocolError(f"not a node id: {str(node_id)[:70]!r}")
    return frozenset(ids)
