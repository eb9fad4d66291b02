"""The agent's link loop and settings, in-process: retries, backoff, bad URLs, the token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest

from node_agent import __main__ as agent_main
from node_agent import link as link_module
from node_agent.link import Backoff, HubLink
from node_agent.protocol import Hello
from node_agent.settings import SettingsError, load_settings


class CeilingRandom(random.Random):
    """Records the upper bound of every ``uniform`` call: the backoff ceiling of each retry."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ceilings: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.ceilings.append(b)
        return super().uniform(a, b)


class NoSamples:
    """A sample source that never has a sample: the link must never get that far here."""

    latest = None
    version = -1


def make_link(url: str, rng: random.Random, backoff: Backoff) -> HubLink:
    hello = Hello(node="n1", agent_version="0", interval_s=1.0)
    return HubLink(
        url=url,
        token=None,
        hello=lambda: hello,
        static_generation=lambda: 0,
        source=NoSamples(),  # type: ignore[arg-type]
        backoff=backoff,
        rng=rng,
    )


async def run_for_attempts(link: HubLink, attempts: Callable[[], int], wanted: int) -> None:
    """Runs the link loop until it made ``wanted`` attempts, then cancels it: it must still be
    running then, and its cancellation must come through as CancelledError."""
    task = asyncio.create_task(link.run_forever())
    async with asyncio.timeout(10):
        while attempts() < wanted:
            assert not task.done(), f"the link task ended: {task.exception()!r}"
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def fake_connect(monkeypatch: pytest.MonkeyPatch, opening: Callable[[], Awaitable[None]]) -> list[str]:
    """Replaces ``connect`` in the link module: each attempt awaits ``opening`` (which may raise),
    then yields a stand-in WebSocket. Returns the list of URLs attempted."""
    urls: list[str] = []

    @contextlib.asynccontextmanager
    async def connect(url: str, **_: Any) -> AsyncIterator[object]:
        urls.append(url)
        await opening()
        yield object()

    monkeypatch.setattr(link_module, "connect", connect)
    return urls


# --------------------------------------------------------------------------- backoff
def test_timed_out_attempts_back_off_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handshake that times out after longer than a healthy connection lives is no success."""
    monkeypatch.setattr(link_module, "HEALTHY_CONNECTION_S", 0.02)

    async def times_out() -> None:
        await asyncio.sleep(0.03)
        raise TimeoutError("timed out during opening handshake")

    urls = fake_connect(monkeypatch, times_out)
    rng = CeilingRandom()
    link = make_link("ws://hub:8000/ws/agent", rng, Backoff(base_s=0.001, cap_s=0.008))
    asyncio.run(run_for_attempts(link, lambda: len(urls), 6))
    assert rng.ceilings[:5] == [0.001, 0.002, 0.004, 0.008, 0.008]


def test_a_healthy_connection_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "HEALTHY_CONNECTION_S", 0.02)

    async def opens() -> None:
        return None

    async def lives_long(self: HubLink, ws: object, *_: object) -> None:
        await asyncio.sleep(0.03)

    monkeypatch.setattr(HubLink, "_stream", lives_long)
    urls = fake_connect(monkeypatch, opens)
    rng = CeilingRandom()
    link = make_link("ws://hub:8000/ws/agent", rng, Backoff(base_s=0.001, cap_s=0.008))
    asyncio.run(run_for_attempts(link, lambda: len(urls), 4))
    assert rng.ceilings[:3] == [0.001, 0.001, 0.001]


# --------------------------------------------------------------------------- unexpected errors
def test_a_bug_in_the_stream_is_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def opens() -> None:
        return None

    async def buggy(self: HubLink, ws: object, *_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(HubLink, "_stream", buggy)
    urls = fake_connect(monkeypatch, opens)
    rng = CeilingRandom()
    link = make_link("ws://hub:8000/ws/agent", rng, Backoff(base_s=0.001, cap_s=0.004))
    with caplog.at_level(logging.INFO, logger="sers.agent"):
        asyncio.run(run_for_attempts(link, lambda: len(urls), 4))
    tracebacks = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(tracebacks) >= 3, "each failure is logged with its traceback"
    assert rng.ceilings[:3] == [0.001, 0.002, 0.004], "a bug counts as a failed attempt"


def test_a_malformed_url_at_run_time_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    """The real ``connect`` raises ValueError for an IPv6 host without brackets."""
    rng = CeilingRandom()
    link = make_link("ws://fd00::1:8000/ws/agent", rng, Backoff(base_s=0.001, cap_s=0.004))
    with caplog.at_level(logging.INFO, logger="sers.agent"):
        asyncio.run(run_for_attempts(link, lambda: len(rng.ceilings), 3))
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)


class QuietSocket:
    """Stands in for a connection: records what is sent and how it was closed, never receives."""

    def __init__(self, news: asyncio.Event) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_with: int | None = None
        self._news = news  # set at every send

    async def send(self, message: bytes, text: bool) -> None:
        self.sent.append(orjson.loads(message))
        self._news.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code

    def __aiter__(self) -> QuietSocket:
        return self

    async def __anext__(self) -> object:
        await asyncio.Event().wait()
        raise StopAsyncIteration


class TickingSource:
    """A sample source with a new (unchanged) snapshot every few milliseconds."""

    latest: dict[str, Any] = {"sampled_at": 1.0}
    version = 0

    async def wait_newer(self, version: int, timeout_s: float) -> None:
        await asyncio.sleep(0.005)
        self.version += 1

    def patch_since(self, sent: dict[str, Any]) -> dict[str, Any]:
        return {} if sent == self.latest else self.latest


def test_changed_static_facts_reconnect_at_once_with_a_new_hello(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML came up after the agent connected: the hub needs the GPUs' static facts."""
    sockets: list[QuietSocket] = []
    news = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connect(url: str, **_: Any) -> AsyncIterator[QuietSocket]:
        sockets.append(QuietSocket(news))
        yield sockets[-1]

    monkeypatch.setattr(link_module, "connect", connect)
    generation = [0]
    link = HubLink(
        url="ws://hub:8000/ws/agent",
        token=None,
        hello=lambda: Hello(node="n1", agent_version=f"gen{generation[0]}", interval_s=1.0),
        static_generation=lambda: generation[0],
        source=TickingSource(),  # type: ignore[arg-type]
        backoff=Backoff(base_s=60.0, cap_s=60.0),  # any backoff would outlast the test
        rng=random.Random(0),
    )

    async def sent(connection: int, messages: int) -> None:
        while len(sockets) <= connection or len(sockets[connection].sent) < messages:
            news.clear()
            await news.wait()

    async def scenario() -> None:
        task = asyncio.create_task(link.run_forever())
        async with asyncio.timeout(5):
            await sent(0, 3)
            generation[0] = 1
            await sent(1, 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(sockets) == 2, "one reconnect, and only one"
    assert [ws.closed_with for ws in sockets] == [None, 1001], "going away when the agent stops"
    assert [ws.sent[0]["agent_version"] for ws in sockets] == ["gen0", "gen1"]
    assert sockets[1].sent[1]["patch"] == TickingSource.latest, "the new connection starts whole"


def test_stream_ends_when_the_link_task_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever ends a task the agent cannot run without ends the agent, so its service
    manager restarts it; it does not sample on without a hub."""

    async def dies(self: HubLink) -> None:
        raise RuntimeError("the link died")

    closed: list[str] = []
    close_sampler = agent_main.Sampler.close

    def recording_close(self: agent_main.Sampler, timeout_s: float = 2.0) -> None:
        closed.append("sampler")
        close_sampler(self, timeout_s)

    monkeypatch.setattr(agent_main.HubLink, "run_forever", dies)
    monkeypatch.setattr(agent_main.Sampler, "close", recording_close)
    settings = load_settings(["--name", "n1", "--interval", "0.1"], env={})

    async def scenario() -> None:
        streaming = asyncio.create_task(agent_main.stream(settings))
        done, _ = await asyncio.wait([streaming], timeout=5)
        if not done:
            streaming.cancel()
            await asyncio.gather(streaming, return_exceptions=True)
            pytest.fail("the agent streams on without its link")
        await streaming

    with pytest.raises(RuntimeError, match="the link died"):
        asyncio.run(scenario())
    assert closed == ["sampler"], "the sampling thread is stopped on the way out"


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize("hub", ["http://fd00::1:8000", "http://hub:8000x", "ws://:8000", "http://hub:99999"])
def test_a_malformed_hub_url_is_a_settings_error(hub: str) -> None:
    with pytest.raises(SettingsError, match="--hub / SERS_HUB_URL"):
        load_settings(["--hub", hub], env={})
    with pytest.raises(SettingsError, match="--hub / SERS_HUB_URL"):
        load_settings([], env={"SERS_HUB_URL": hub})


def test_a_malformed_hub_url_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never_run(main: Coroutine[Any, Any, None]) -> None:
        main.close()
        raise AssertionError("the agent started with a hub URL it can never connect to")

    monkeypatch.delenv("SERS_HUB_URL", raising=False)
    monkeypatch.setattr(agent_main, "run_event_loop", never_run)
    assert agent_main.main(["--hub", "http://fd00::1:8000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sers-agent: error: --hub / SERS_HUB_URL") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("hub", "url"),
    [
        ("http://[fd00::1]:8000", "ws://[fd00::1]:8000/ws/agent"),
        ("https://hub.example/sers/", "wss://hub.example/sers/ws/agent"),
        ("ws://hub:8000/ws/agent", "ws://hub:8000/ws/agent"),
    ],
)
def test_good_hub_urls_are_accepted(hub: str, url: str) -> None:
    assert load_settings(["--hub", hub], env={}).hub_url == url


def test_an_empty_token_falls_back_to_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    env = {"SERS_TOKEN": "", "SERS_TOKEN_FILE": str(token_file)}
    assert load_settings([], env=env).token == "s3cret"
    assert load_settings(["--token", ""], env={"SERS_TOKEN_FILE": str(token_file)}).token == "s3cret"
    assert load_settings([], env={"SERS_TOKEN": "t0ken", "SERS_TOKEN_FILE": str(token_file)}).token == "t0ken"
    assert load_settings([], env={"SERS_TOKEN": ""}).token is None


def test_the_sysfs_root_comes_from_the_flag_or_the_environment() -> None:
    assert load_settings([], env={}).sysfs_root == Path("/sys")
    assert load_settings([], env={"SERS_SYSFS_ROOT": "/host/sys"}).sysfs_root == Path("/host/sys")
    flag = load_settings(["--sysfs-root", "/mnt/sys"], env={"SERS_SYSFS_ROOT": "/host/sys"})
    assert flag.sysfs_root == Path("/mnt/sys")


@pytest.mark.parametrize(
    ("field", "flag", "variable", "default"),
    [
        ("proc_root", "--proc-root", "SERS_PROC_ROOT", "/proc"),
        ("docker_root", "--docker-root", "SERS_DOCKER_ROOT", "/var/lib/docker"),
        ("podman_root", "--podman-root", "SERS_PODMAN_ROOT", "/var/lib/containers/storage"),
        ("pod_log_dir", "--pod-log-dir", "SERS_POD_LOG_DIR", "/var/log/pods"),
    ],
)
def test_attribution_paths_come_from_the_flag_or_the_environment(
    field: str, flag: str, variable: str, default: str
) -> None:
    assert getattr(load_settings([], env={}), field) == Path(default)
    assert getattr(load_settings([], env={variable: "/host/x"}), field) == Path("/host/x")
    assert getattr(load_settings([flag, "/mnt/x"], env={variable: "/host/x"}), field) == Path("/mnt/x")
    assert getattr(load_settings([flag, ""], env={variable: ""}), field) == Path(default)
