"""hub.ws_direct against uvicorn's real protocol: a handler takes text messages as they arrive,
in order, and whatever it declines, or arrives behind a queued message, goes the ASGI way.

The bytes are a real WebSocket client's (websockets' sans-I/O ``ClientProtocol``), fed to the
protocol through a transport that records what uvicorn does with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from hub.__main__ import uvicorn_config
from hub.settings import load_settings
from hub.ws_direct import DIRECT_TEXT, DirectWebSocketProtocol


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = 0  # pause_reading calls
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Endpoint:
    """An ASGI app that accepts, sets ``handler`` as the direct path and records what reaches
    it the ASGI way."""

    def __init__(self, take: set[str]) -> None:
        self.take = take  # the texts the handler takes
        self.direct: list[str] = []
        self.asgi: list[dict[str, Any]] = []
        self.ready = asyncio.Event()

    def handler(self, text: str) -> bool:
        if text in self.take:
            self.direct.append(text)
            return True
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        scope["extensions"][DIRECT_TEXT](self.handler)
        self.ready.set()
        while True:
            message = await receive()
            self.asgi.append(message)
            if message["type"] == "websocket.disconnect":
                return


async def connect(app: Endpoint) -> tuple[DirectWebSocketProtocol, Transport, ClientProtocol]:
    config = Config(app, ws=DirectWebSocketProtocol, ws_ping_interval=None, lifespan="off")
    config.load()
    protocol = DirectWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/ws/agent"))
    request = client.connect()
    client.send_request(request)
    protocol.data_received(b"".join(client.data_to_send()))
    await asyncio.wait_for(app.ready.wait(), 5)
    client.receive_data(bytes(transport.written))
    assert isinstance(client.events_received()[0], Response)
    return protocol, transport, client


def frames(client: ClientProtocol, *messages: str | bytes) -> bytes:
    for message in messages:
        if isinstance(message, str):
            client.send_text(message.encode())
        else:
            client.send_binary(message)
    return b"".join(client.data_to_send())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def texts(app: Endpoint) -> list[Any]:
    return [m.get("text", m.get("bytes")) for m in app.asgi if m["type"] == "websocket.receive"]


def test_the_handler_takes_messages_as_they_arrive_without_the_queue() -> None:
    async def run() -> None:
        app = Endpoint(take={"a", "b", "c"})
        protocol, transport, client = await connect(app)
        protocol.data_received(frames(client, "a", "b"))  # two messages in one read
        protocol.data_received(frames(client, "c"))
        await settle()
        assert app.direct == ["a", "b", "c"]
        assert texts(app) == []
        assert transport.paused == 0  # reading never paused for them
        assert protocol.queue.empty()

    asyncio.run(run())


def test_what_the_handler_declines_and_all_behind_it_go_the_asgi_way_in_order() -> None:
    async def run() -> None:
        app = Endpoint(take={"a", "c", "d"})
        protocol, transport, client = await connect(app)
        # "b" is declined; "c" arrives while "b" waits in the queue, so it must queue behind it
        protocol.data_received(frames(client, "a", "b", "c"))
        assert app.direct == ["a"]
        assert transport.paused == 1
        await settle()
        assert texts(app) == ["b", "c"]
        protocol.data_received(frames(client, "d"))  # the queue is empty again: direct
        await settle()
        assert app.direct == ["a", "d"]
        assert texts(app) == ["b", "c"]

    asyncio.run(run())


def test_binary_frames_and_a_cleared_handler_go_the_asgi_way() -> None:
    async def run() -> None:
        app = Endpoint(take={"a"})
        protocol, _, client = await connect(app)
        protocol.data_received(frames(client, b"a"))
        await settle()
        assert texts(app) == [b"a"]
        protocol.scope["extensions"][DIRECT_TEXT](None)
        protocol.data_received(frames(client, "a"))
        await settle()
        assert app.direct == []
        assert texts(app) == [b"a", "a"]

    asyncio.run(run())


def test_the_hub_serves_with_the_direct_protocol() -> None:
    assert uvicorn_config(load_settings([], env={})).ws is DirectWebSocketProtocol
