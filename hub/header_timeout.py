"""A deadline for each HTTP request head, which uvicorn lacks.

uvicorn times out only an idle kept-alive connection (``timeout_keep_alive``), and any byte
received cancels even that: a client that opens connections and sends nothing, or trickles a
header line every few seconds (slowloris), holds each one, with its file descriptor and
buffers, for as long as it likes. :class:`HeaderTimeoutProtocol` closes a connection whose
request head (request line and headers) is not complete within ``header_timeout_s`` of its
first byte, or of the connection's opening for the first request. Once the head is in, the
request, or the WebSocket it upgrades to, is no longer under this deadline.

It extends uvicorn's h11 protocol (the one uvicorn picks when httptools is not installed, as in
this project's dependencies) and reads two of its attributes, ``conn`` (the h11 connection,
whose ``their_state`` stays ``IDLE`` until a request head is complete) and ``transport``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("sers.hub")


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout_s: float = 10.0  # set per hub by :func:`header_timeout_protocol`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            if self._head_deadline is None:  # the first bytes of a kept-alive connection's next request
                self._arm()
        else:  # the head is complete: the request (or its WebSocket) runs without this deadline
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug(
                "closed a connection from %s: no complete request head in %g s",
                self.client,
                self.header_timeout_s,
            )
            self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for this deadline."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": header_timeout_s})
