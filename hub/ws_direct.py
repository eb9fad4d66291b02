"""uvicorn's WebSocket protocol, with a direct path for the agents' messages.

Through ASGI, each agent message costs the hub a round trip: uvicorn puts it on the
connection's ``asyncio.Queue`` and pauses reading, the endpoint's task wakes from ``await
receive()``, takes it and resumes reading (two ``epoll_ctl`` calls). At 2,000 agents that is
2,000 task wakes and 4,000 system calls a second for messages the hub handles synchronously
anyway (decode, merge, render: no ``await`` in between).

:class:`DirectWebSocketProtocol` lets an endpoint hand the protocol a handler for text messages
(:data:`DIRECT_TEXT`, in the scope's ``extensions``). The protocol calls it as each message
is parsed, in ``data_received``. The handler returns ``True`` when it took the message; on
``False`` (anything it will not take: the endpoint's error path) the message goes the ASGI way,
so errors and closes keep one code path. It is called only while the queue is empty and no
close was sent, so messages keep their order: whatever is already queued is received first,
and uvicorn does not read the socket while its queue holds a message.

It extends uvicorn's ``websockets-sansio`` implementation and reads its ``frames``,
``curr_msg_data_type``, ``close_sent`` and ``queue`` (``tests/test_ws_direct.py`` holds them
to it). Browsers' connections never set a handler and go the ASGI way unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DIRECT_TEXT = "sers.direct_text"
"""The scope extension: ``set(handler)`` with ``handler(text) -> bool``, or ``set(None)``."""

TextHandler = Callable[[str], bool]


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    _on_text: TextHandler | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None:
            scope["extensions"][DIRECT_TEXT] = self._set_on_text

    def _set_on_text(self, handler: TextHandler | None) -> None:
        self._on_text = handler

    def send_receive_event_to_app(self) -> None:
        on_text = self._on_text
        if (
            on_text is not None
            and self.curr_msg_data_type == "text"
            and not self.close_sent
            and self.queue.empty()
        ):
            frames = self.frames
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            try:
                text = data.decode()
            except UnicodeDecodeError:  # uvicorn closes it with 1007
                pass
            else:
                if on_text(text):
                    self.frames = []
                    return
        super().send_receive_event_to_app()
