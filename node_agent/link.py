"""The agent's one WebSocket to the hub: hello, then deltas and heartbeats; reconnects forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from node_agent.protocol import Delta, Hello, Snapshot, encode, make_patch
from node_agent.sampler import SampleSource

log = logging.getLogger("sers.agent")

CLOSE_SERVICE_RESTART = 1012


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: a random delay up to ``min(cap, base * 2**n)``."""

    base_s: float = 1.0
    cap_s: float = 30.0

    def delay_s(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(failures, 16))
        return rng.uniform(self.base_s / 2, ceiling)


# A connection that lived this long was a success: the next failure starts the backoff anew.
HEALTHY_CONNECTION_S = 10.0


class HubLink:
    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        hello: Hello,
        source: SampleSource,
        backoff: Backoff,
        rng: random.Random | None = None,
    ) -> None:
        self._url = url
        self._token = token
        self._hello = hello
        self._source = source
        self._backoff = backoff
        self._rng = rng or random.Random()

    async def run_forever(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            reason = await self._connect_once()
            if time.monotonic() - started >= HEALTHY_CONNECTION_S:
                failures = 0
            delay = self._backoff.delay_s(failures, self._rng)
            if reason.startswith("refused"):  # a wrong token will not fix itself: wait long
                delay = max(delay, self._backoff.cap_s * self._rng.uniform(0.5, 1.0))
            failures += 1
            log.warning("%s; reconnecting in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> str:
        """One connection's life. Returns why it ended, as one readable line."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            async with connect(
                self._url,
                additional_headers=headers,
                open_timeout=10,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
                max_size=1 << 20,
                compression=None,
            ) as ws:
                log.info("connected to %s as %s", self._url, self._hello.node)
                await self._stream(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                return f"refused by the hub (HTTP {status}): check the token for node {self._hello.node!r}"
            return f"hub answered HTTP {status} at {self._url}"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            why = exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else "no reason given"
            if code == CLOSE_SERVICE_RESTART:
                return "hub is restarting (1012)"
            return f"hub closed the connection ({code}: {why})"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return f"hub unreachable at {self._url}: {exc}"
        return "connection ended"

    async def _stream(self, ws: ClientConnection) -> None:
        """Hello, then one delta per new snapshot and a heartbeat when none came in time."""
        await ws.send(encode(self._hello).decode())
        reader = asyncio.create_task(_drain(ws))
        try:
            sent: Snapshot = {}
            sent_version = -1
            seq = 0
            interval_s = self._hello.interval_s
            while not reader.done():
                if self._source.version == sent_version:
                    self._source.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._source.changed.wait(), timeout=interval_s)
                latest = self._source.latest
                patch: Snapshot = {}
                if latest is not None and self._source.version != sent_version:
                    patch = make_patch(sent, latest)
                    sent, sent_version = latest, self._source.version
                seq += 1
                await ws.send(encode(Delta(seq=seq, ts=round(time.time(), 3), patch=patch)).decode())
            await reader  # re-raises ConnectionClosed with the hub's close code
        finally:
            reader.cancel()


async def _drain(ws: ClientConnection) -> None:
    """Reads (and ignores) what the hub sends, so a close from the hub is noticed at once."""
    async for _ in ws:
        pass
