"""The agent's one WebSocket to the hub: hello, then deltas and heartbeats; reconnects forever.

Reconnects back off exponentially with full jitter. Two cases wait differently: a hub that
refuses the token (HTTP 401/403) will not change its mind soon, so the agent says why and waits
long; a hub that restarts (close code 1012) closes every agent at once, so each agent waits a
random delay spread over :data:`RESTART_SPREAD_S` to avoid reconnecting all in the same second.

No message larger than the hub accepts (``MAX_MESSAGE_BYTES``) ever leaves: a snapshot too big
for it (hundreds of GPU processes) is trimmed first, the least GPU memory first.

The hello's static facts can change while the agent runs (NVML came up after the driver loaded):
then the link ends the connection and opens a new one at once, which starts with a new hello.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from node_agent.protocol import MAX_MESSAGE_BYTES, Delta, Hello, Snapshot, encode, make_patch
from node_agent.sampler import SampleSource

log = logging.getLogger("sers.agent")

# How long a stopping agent waits for the hub to answer its close frame before it drops the TCP
# connection: short, because a stopping agent must be gone within 2 s (see __main__).
CLOSE_TIMEOUT_S = 1.0
RESTART_SPREAD_S = 5.0
# A heartbeat goes out when no new sample came for this many intervals since the last message.
# More than one: samples come one interval apart, give or take a few milliseconds, and a heartbeat
# due at exactly one interval would often go out just before the sample it waited for.
HEARTBEAT_AFTER_INTERVALS = 1.5


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: a random delay up to ``min(cap, base * 2**n)``."""

    base_s: float = 1.0
    cap_s: float = 30.0

    def delay_s(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(failures, 16))
        return rng.uniform(self.base_s / 2, ceiling)


# A connection open this long (counted from the end of its handshake, so an attempt that times out
# is no success) was healthy: the next failure starts the backoff anew.
HEALTHY_CONNECTION_S = 10.0


class EndKind(Enum):
    """Why a connection to the hub ended, as far as the reconnect delay cares."""

    FACTS_CHANGED = "facts changed"  # no failure: reconnect at once with a new hello
    REFUSED = "refused"  # HTTP 401/403: a wrong token will not fix itself
    RESTARTING = "restarting"  # the hub closed with 1012
    FAILED = "failed"  # closed, unreachable, or anything else: exponential backoff
    ENDED = "ended"


class LinkEnd(NamedTuple):
    kind: EndKind
    text: str  # one readable line for the log


def reconnect_delay_s(end: LinkEnd, failures: int, backoff: Backoff, rng: random.Random) -> float:
    """How long to wait after a connection that ended as ``end`` (see ``_connect_once``)."""
    if end.kind is EndKind.FACTS_CHANGED:
        return 0.0
    if end.kind is EndKind.REFUSED:  # a wrong token will not fix itself: wait long
        return max(backoff.delay_s(failures, rng), backoff.cap_s * rng.uniform(0.5, 1.0))
    if end.kind is EndKind.RESTARTING:
        # every agent got 1012 in the same instant: spread the reconnects out
        return rng.uniform(backoff.base_s / 2, RESTART_SPREAD_S)
    return backoff.delay_s(failures, rng)


class HubLink:
    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        hello: Callable[[], Hello],
        static_generation: Callable[[], int],
        source: SampleSource,
        backoff: Backoff,
        rng: random.Random | None = None,
    ) -> None:
        self._url = url
        self._token = token
        self._hello = hello  # blocks (reads the collectors' static facts): called on a thread
        self._static_generation = static_generation  # a change means a new hello is due
        self._source = source
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._opened_at: float | None = None  # monotonic time the current connection opened

    async def run_forever(self) -> None:
        """Connects again after every end, whatever ended it; only cancellation ends this."""
        failures = 0
        while True:
            end = await self._connect_once()
            if end.kind is EndKind.FACTS_CHANGED:
                log.info("%s", end.text)
                continue
            if self._opened_at is not None and time.monotonic() - self._opened_at >= HEALTHY_CONNECTION_S:
                failures = 0
            delay = reconnect_delay_s(end, failures, self._backoff, self._rng)
            failures += 1
            log.warning("%s; reconnecting in %.2f s", end.text, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> LinkEnd:
        """One connection's life. Returns why it ended."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        self._opened_at = None
        generation = self._static_generation()  # before the hello: a change between resends it
        hello = await asyncio.to_thread(self._hello)
        try:
            async with connect(
                self._url,
                additional_headers=headers,
                open_timeout=10,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=CLOSE_TIMEOUT_S,
                max_size=1 << 20,
                compression=None,
            ) as ws:
                self._opened_at = time.monotonic()
                log.info("connected to %s as %s", self._url, hello.node)
                try:
                    if await self._stream(ws, hello, generation):
                        return LinkEnd(EndKind.FACTS_CHANGED, "static facts changed; sending a new hello")
                except asyncio.CancelledError:  # the agent is stopping: say so (not 1011, an error)
                    try:
                        await ws.close(CloseCode.GOING_AWAY, "agent stopping")
                    except Exception as exc:  # nothing may keep the cancellation from ending the link
                        log.debug("closing the connection failed: %r", exc)
                    raise
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                return LinkEnd(
                    EndKind.REFUSED,
                    f"refused by the hub (HTTP {status}): check the token for node {hello.node!r}",
                )
            return LinkEnd(EndKind.FAILED, f"hub answered HTTP {status} at {self._url}")
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else CloseCode.ABNORMAL_CLOSURE
            why = exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else "no reason given"
            if code == CloseCode.SERVICE_RESTART:
                return LinkEnd(EndKind.RESTARTING, f"hub is restarting ({CloseCode.SERVICE_RESTART:d})")
            return LinkEnd(EndKind.FAILED, f"hub closed the connection ({code:d}: {why})")
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return LinkEnd(EndKind.FAILED, f"hub unreachable at {self._url}: {exc}")
        except Exception as exc:  # a bug or a bad URL must not end the link silently: retry, loudly
            log.exception("link to %s failed unexpectedly", self._url)
            return LinkEnd(EndKind.FAILED, f"unexpected error: {exc!r}")
        return LinkEnd(EndKind.ENDED, "connection ended")

    async def _stream(self, ws: ClientConnection, hello: Hello, generation: int) -> bool:
        """Hello, then one delta per new snapshot and a heartbeat when none came in time.
        Returns ``True`` (ending the connection) when a new snapshot comes after the static facts
        changed from ``generation``: the new snapshot goes out after a new hello instead."""
        await ws.send(encode(hello), text=True)  # UTF-8 JSON, sent as is
        reader = asyncio.create_task(_drain(ws))
        try:
            sent: Snapshot = {}
            # at least the size of the state the hub merged from what was sent (nulls left out),
            # as a whole delta: grown by each message's size, measured anew only when that sum
            # passes the limit (encoding every snapshot whole cost the loop more than its delta)
            sent_bytes_max = 0
            sent_version = -1
            seq = 0
            heartbeat_after_s = hello.interval_s * HEARTBEAT_AFTER_INTERVALS
            while not reader.done():
                await self._source.wait_newer(sent_version, heartbeat_after_s)
                latest, version = self._source.latest, self._source.version
                changed = version != sent_version
                if changed and self._static_generation() != generation:
                    return True
                sent_version = version  # also before the first sample: never spin on "changed"
                seq += 1
                ts = round(time.time(), 3)
                message = b""
                if latest is not None and changed:
                    message = encode(Delta(seq=seq, ts=ts, patch=self._source.patch_since(sent)))
                    # the hub holds the state it merges to one message's size too (MAX_STATE_BYTES):
                    # a merge adds to the state at most what the message spells out
                    fits = len(message) <= _FIT_BYTES
                    latest_bytes_max = sent_bytes_max + len(message)
                    if fits and latest_bytes_max > _FIT_BYTES:
                        latest_bytes_max = _snapshot_bytes(latest)
                    if not fits or latest_bytes_max > _FIT_BYTES:
                        latest = fit_snapshot(latest)
                        message = encode(Delta(seq=seq, ts=ts, patch=make_patch(sent, latest)))
                        latest_bytes_max = _snapshot_bytes(latest)
                        fits = len(message) <= _FIT_BYTES and latest_bytes_max <= _FIT_BYTES
                    if not fits:
                        log.error(
                            "a snapshot does not fit in %d bytes even trimmed; not sent", MAX_MESSAGE_BYTES
                        )
                        message = b""
                    else:
                        sent, sent_bytes_max = latest, latest_bytes_max
                if not message:  # nothing new (or nothing that fits): a heartbeat
                    message = encode(Delta(seq=seq, ts=ts, patch={}))
                await ws.send(message, text=True)
            await reader  # re-raises ConnectionClosed with the hub's close code
            return False
        finally:
            reader.cancel()


async def _drain(ws: ClientConnection) -> None:
    """Reads (and ignores) what the hub sends, so a close from the hub is noticed at once."""
    async for _ in ws:
        pass


# Room for the delta's envelope (type, seq, ts) and the nulls a patch adds for removed keys.
_MESSAGE_MARGIN_BYTES = 1024
_FIT_BYTES = MAX_MESSAGE_BYTES - _MESSAGE_MARGIN_BYTES


def fit_snapshot(snapshot: Snapshot, limit_bytes: int = _FIT_BYTES) -> Snapshot:
    """``snapshot`` with fewer GPU processes per GPU (the biggest users kept), then without
    per-core CPU figures, until its JSON fits in ``limit_bytes``. Returns a new snapshot."""
    gpus = snapshot.get("gpus") or {}
    most = max((len(g.get("processes") or ()) for g in gpus.values() if isinstance(g, dict)), default=0)
    keep = most
    fitted = snapshot
    while _snapshot_bytes(fitted) > limit_bytes:
        if keep > 0:
            keep //= 2
            fitted = {**snapshot, "gpus": {i: _top_processes(g, keep) for i, g in gpus.items()}}
        elif (fitted.get("host") or {}).get("cpu_percent_per_core") is not None:
            fitted = {**fitted, "host": {**fitted["host"], "cpu_percent_per_core": None}}
        else:
            break
    if keep < most:
        log.warning("trimmed GPU processes to %d per GPU to fit the hub's message limit", keep)
    return fitted


def _snapshot_bytes(snapshot: Snapshot) -> int:
    """The size of ``snapshot`` sent whole in one delta (nulls included: a little over)."""
    return len(encode(Delta(seq=0, ts=0.0, patch=snapshot)))


def _top_processes(gpu: object, keep: int) -> object:
    if not isinstance(gpu, dict) or not gpu.get("processes"):
        return gpu
    ranked = sorted(gpu["processes"], key=lambda p: -(p.get("gpu_mem_bytes") or 0))
    return {**gpu, "processes": ranked[:keep]}
