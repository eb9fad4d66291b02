"""The state file's writes run with CPython's garbage collector paused
(:func:`hub.memory.collector_paused`): a collection started by a write's rows would traverse every
young live object of the hub, holding the event loop for about 100 ms at 2,000 nodes."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import memory
from hub.clock import ManualClock
from hub.memory import collector_paused
from hub.registry import NodeRegistry
from hub.store import NodeStore, StoreSync


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    thresholds = gc.get_threshold()
    gc.enable()
    yield
    gc.set_threshold(*thresholds)
    if not was:
        gc.disable()


@pytest.mark.usefixtures("collector_on")
def test_pauses_nest_overlap_across_threads_and_survive_errors() -> None:
    with collector_paused():
        assert not gc.isenabled()
        inner_done = threading.Event()

        def other_thread() -> None:
            with collector_paused():
                inner_done.set()

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert inner_done.is_set()
        assert not gc.isenabled(), "the other thread's pause ended; this one has not"
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed write")
    assert gc.isenabled()
    gc.disable()  # off before: a pause leaves it off
    with collector_paused():
        pass
    assert not gc.isenabled()


@pytest.mark.usefixtures("collector_on")
def test_a_write_on_the_store_thread_starts_no_collection(tmp_path: Path) -> None:
    """With a low threshold, a write of 5,000 rows would start a hundred collections on the
    store's thread; none start, and the collector is back on after it."""
    collections: list[int] = []
    writing = threading.Event()

    def count(phase: str, info: dict[str, int]) -> None:
        # started by the store's thread (the event loop's own allocations are not the write's)
        if (
            phase == "start"
            and writing.is_set()
            and threading.current_thread() is not threading.main_thread()
        ):
            collections.append(info["generation"])

    registry = NodeRegistry(ManualClock())
    sync = StoreSync(str(tmp_path / "state.sqlite3"), registry, {})

    def many_rows(store: NodeStore) -> int:
        writing.set()  # the write itself, on the store's thread
        rows = [(f"n{i}", i, [float(i)] * 3) for i in range(5_000)]  # tracked containers
        store.connection.execute("CREATE TABLE IF NOT EXISTS t (a TEXT, b INTEGER, c TEXT)")
        store.connection.executemany("INSERT INTO t VALUES (?, ?, ?)", ((a, b, str(c)) for a, b, c in rows))
        writing.clear()
        return len(rows)

    async def main() -> int:
        await sync.open()
        gc.collect()
        gc.set_threshold(100)
        gc.callbacks.append(count)
        try:
            return await sync.on_store(many_rows)
        finally:
            gc.callbacks.remove(count)
            gc.set_threshold(700)
            await sync.close()

    assert asyncio.run(main()) == 5_000
    assert collections == []
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_on")
def test_every_few_closed_connections_collect_their_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed connection leaves reference cycles, which the hub's high threshold would let pile
    up while connections churn (``test_hub_memory_stays_bounded_under_churn`` holds the hub to
    it): every COLLECT_AFTER_CLOSES closes collect the young generations, and nothing else does."""
    collected: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collected.append(info["generation"])

    monkeypatch.setattr(memory, "_closed", 0)  # connections this process closed before
    gc.set_threshold(10**9)  # no collection of the allocator's own in between
    gc.callbacks.append(count)
    try:
        for _ in range(memory.COLLECT_AFTER_CLOSES - 1):
            memory.connection_closed()
        assert collected == []
        memory.connection_closed()
        assert collected == [1]
    finally:
        gc.callbacks.remove(count)
