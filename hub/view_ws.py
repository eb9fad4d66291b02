"""``/ws/view``: one browser. It gets the full state, then rendered changes; it never sends."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect

from hub.fanout import Viewer
from hub.pages import view_filter_from
from hub.state import HubState


async def view_endpoint(websocket: WebSocket) -> None:
    hub: HubState = websocket.app.state.hub
    await websocket.accept()
    viewer = Viewer(
        websocket.send_bytes,
        view_filter_from(websocket.query_params),
        hub.settings.viewer_send_timeout_s,
    )
    hub.fanout.add_viewer(viewer)
    sender = asyncio.create_task(viewer.run())
    reader = asyncio.create_task(_drain(websocket))
    try:
        await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.fanout.remove_viewer(viewer)
        for task in (sender, reader):
            task.cancel()
        with contextlib.suppress(Exception):
            await websocket.close(1008 if sender.done() else 1000)


async def _drain(websocket: WebSocket) -> None:
    """Browsers send nothing; reading still notices when they leave."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
