"""The memory in the state file, in-process: schema 2 migrated in place from a version-1 file,
what is counted is written in batches and read back exactly, a failing file keeps the counts in
memory and is retried, and retention drops old rows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hub.clock import ManualClock
from hub.domain.events import IdleHeldChanged
from hub.domain.gpus import IdleRule
from hub.domain.nodes import Liveness, Naming
from hub.domain.usage import MemoryLimits
from hub.registry import NodeRegistry
from hub.store import APPLICATION_ID, SCHEMA_VERSION, NodeStore, StoreSync
from hub.usage.accounting import UsageKey
from hub.usage.history import QUARTER_S, SeriesKey
from hub.usage.store import (
    MemoryBatch,
    SeriesPoint,
    hold_size,
    live_bytes,
    read_events,
    read_history,
    usage_report,
    write_batch,
)
from hub.usage.sync import MemorySync
from node_agent.protocol import Delta, Hello
from tests.test_store import V1_FILE

GIB = 1024**3
T0 = 1_796_637_600.0 + 120.0  # 2026-12-07 10:02:00 UTC


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(V1_FILE.read_bytes())
    assert tables(path) == {"nodes"}
    store = NodeStore(str(path))
    nodes, skipped = store.load()
    store.close()
    assert [n.node_id for n in nodes] == ["gpu01", "gpu02"] and skipped == []
    assert nodes[0].group == "vision" and nodes[0].hello.agent_version == "0.9.0"
    assert {"usage_hourly", "usage_daily", "history_gpu", "history_host", "events"} <= tables(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    NodeStore(str(path)).close()  # opening a version-2 file again changes nothing
    assert len(NodeStore(str(path)).node_ids()) == 2


class Hub:
    """A registry with the store and the memory on a file, driven by a manual clock."""

    def __init__(self, path: Path, limits: MemoryLimits | None = None) -> None:
        self.clock = ManualClock(mono_s=50.0, wall_s=T0)
        liveness = Liveness(stale_after_intervals=3.0)
        self.registry = NodeRegistry(self.clock, liveness)
        self.store = StoreSync(str(path), self.registry, {})
        self.memory = MemorySync(
            self.store,
            str(path),
            self.registry,
            self.clock,
            limits or MemoryLimits(),
            IdleRule(max_util_percent=5.0),
            liveness,
            {"gpu01": Naming(group="vision")},
        )
        self.seq = 0

    def connect(self, node: str = "gpu01", agent: str = "1.0", driver: str = "550.54") -> None:
        hello = Hello(
            node=node,
            agent_version=agent,
            interval_s=1.0,
            gpu_driver={"driver_version": driver},
            gpus=[{"index": 0, "name": "NVIDIA H100"}],
        )
        self.connection = self.registry.hello(hello)

    def sample(self, after_s: float, gpus: dict[str, Any], node: str = "gpu01") -> None:
        self.clock.advance(after_s)
        self.seq += 1
        patch = {"sampled_at": self.clock.wall(), "host": {"cpu_percent": 10.0 * self.seq}, "gpus": gpus}
        self.registry.delta(node, self.connection, Delta(self.seq, self.clock.wall(), patch))


def alice(util: float, mem_gib: float = 8) -> dict[str, Any]:
    return {
        "0": {
            "util_gpu_percent": util,
            "mem_used_bytes": int(mem_gib * GIB),
            "temp_celsius": 50.0 + util / 10,
            "processes": [{"pid": 7, "user": "alice", "gpu_mem_bytes": int(mem_gib * GIB)}],
        }
    }


def test_counts_are_written_in_batches_and_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    hub = Hub(path)

    async def scenario() -> list[int]:
        await hub.store.open()
        hub.connect()
        written = []
        hub.sample(0.0, alice(80.0))  # covers 1 s
        for _ in range(9):
            hub.sample(1.0, alice(80.0))
        written.append(await hub.memory.flush())
        hub.registry.events.publish(IdleHeldChanged("gpu01", "0", None, True, T0, (), hub.clock.wall()))
        for _ in range(5):
            hub.sample(1.0, alice(1.0))  # idle-held: 5 s, not busy
        written.append(await hub.memory.flush())
        hub.clock.advance(QUARTER_S)  # the quarter is complete: its 15-minute bucket is made
        written.append(await hub.memory.flush())
        await hub.store.close()
        return written

    written = asyncio.run(scenario())
    assert written[0] > 0 and written[1] > 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        report = usage_report(db, T0 - 3600, T0 + 3600, "user", hourly_since_s=0.0)
        (row,) = report.rows
        assert (row.key, report.table) == ("alice", "usage_hourly")
        assert row.gpu_seconds == pytest.approx(15.0)
        assert row.busy_gpu_seconds == pytest.approx(10.0)
        assert row.idle_held_gpu_seconds == pytest.approx(5.0)
        assert row.gpu_mem_byte_seconds == pytest.approx(15.0 * 8 * GIB)
        (group_row,) = usage_report(db, T0 - 3600, T0 + 3600, "group", 0.0).rows
        assert (group_row.key, group_row.gpu_seconds) == ("vision", pytest.approx(15.0))
        by_day = usage_report(db, T0 - 86400 * 3, T0 + 86400, "model", hourly_since_s=T0)
        assert by_day.table == "usage_daily" and by_day.rows[0].key == "NVIDIA H100"
        assert sum(by_day.daily[day]["NVIDIA H100"] for day in by_day.daily) == pytest.approx(15.0)

        history = read_history(db, "gpu01", 60, T0 - 60)
        util = history["gpu0"]["util_gpu_percent"]
        assert sum(p.max or 0 for p in util) >= 80.0
        # 15 samples across minute buckets: the means weighted by their counts give the total
        counts = db.execute(
            "SELECT sum(util_gpu_percent_n), sum(util_gpu_percent_sum) FROM history_gpu WHERE tier_s = 60"
        ).fetchone()
        assert counts == (15, pytest.approx(10 * 80.0 + 5 * 1.0))
        quarter = db.execute(
            "SELECT util_gpu_percent_n, util_gpu_percent_max FROM history_gpu WHERE tier_s = 900"
        ).fetchall()
        assert quarter == [(15, 80.0)]
        assert [p.max for p in history["host"]["cpu_percent"]][-1] == pytest.approx(150.0)

        events = read_events(db, node="gpu01")
        assert [e.kind for e in events] == ["idle_held_start", "status"]  # newest first
        assert events[1].summary == "offline → live (hello)"


def test_an_agent_or_driver_upgrade_is_logged_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"

    async def run(agent: str, driver: str) -> None:
        hub = Hub(path)
        await hub.store.open()
        await hub.memory.open()
        hub.connect(agent=agent, driver=driver)
        await hub.store.flush(final=True)
        await hub.memory.flush()
        await hub.store.close()

    asyncio.run(run("1.0", "550.54"))
    asyncio.run(run("1.1", "550.54"))
    asyncio.run(run("1.1", "560.10"))
    with contextlib.closing(sqlite3.connect(path)) as db:
        summaries = [e.summary for e in read_events(db, kinds=("agent_version", "driver"))]
    assert summaries == ["GPU driver 550.54 → 560.10", "agent 1.0 → 1.1"]


def test_a_file_that_cannot_be_written_keeps_the_counts_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite3"
    hub = Hub(path)
    # 120 users on one GPU: their rows need more pages than the new file has free
    processes = [{"pid": i, "user": f"user{i:02}", "gpu_mem_bytes": GIB} for i in range(120)]
    crowd = {"0": {"util_gpu_percent": 80.0, "processes": processes}}

    def set_max_pages(store: NodeStore, pages: int | None) -> None:
        count = store.connection.execute("PRAGMA page_count").fetchone()[0]
        store.connection.execute(f"PRAGMA max_page_count = {pages or count}")

    async def scenario() -> list[int]:
        await hub.store.open()
        hub.connect()
        await hub.store.flush(final=True)
        await hub.store.on_store(lambda store: set_max_pages(store, None))  # a full disk
        written = []
        hub.sample(0.0, crowd)
        for _ in range(3):
            for _ in range(10):
                hub.sample(1.0, crowd)
            written.append(await hub.memory.flush())
        problem = hub.memory.problem
        await hub.store.on_store(lambda store: set_max_pages(store, 1_000_000))
        written.append(await hub.memory.flush())
        assert hub.memory.problem is None
        await hub.store.close()
        assert problem is not None and "disk is full" in problem
        return written

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        written = asyncio.run(scenario())
    assert written[:3] == [0, 0, 0] and written[3] > 0
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "kept in memory" in failures[0]
    assert "works again" in caplog.text
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = usage_report(db, T0 - 3600, T0 + 3600, "user", 0.0).rows
    assert len(rows) == 120
    assert sum(row.gpu_seconds for row in rows) == pytest.approx(31.0)  # nothing lost, nothing twice


def test_a_file_that_cannot_be_opened_is_named_and_live_counting_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    hub = Hub(folder)

    async def scenario() -> tuple[int, str | None, int]:
        await hub.store.open()
        hub.connect()
        hub.sample(0.0, alice(80.0))
        written = await hub.memory.flush()
        return written, hub.memory.problem, len(hub.memory.accounting.pending)

    written, problem, pending = asyncio.run(scenario())
    assert written == 0 and problem is not None and "is a folder" in problem
    assert pending == 1  # kept for when the file works


def test_retention_drops_what_is_past_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    limits = MemoryLimits(
        history_1m_keep_h=1.0, history_15m_keep_d=1.0, usage_hourly_keep_d=1.0, events_keep_d=1.0
    )
    hub = Hub(path, limits)

    async def scenario() -> None:
        await hub.store.open()
        hub.connect()
        hub.sample(0.0, alice(80.0))
        await hub.memory.flush()  # the first flush prunes too: nothing is old yet
        hub.clock.advance(2 * 3600)  # the 1-minute history is now past its hour
        hub.sample(1.0, alice(80.0))
        last_minute.append(int(hub.clock.wall() - hub.clock.wall() % 60))
        hub.memory._prune_at_mono = 0.0  # prune now rather than in 10 minutes
        await hub.memory.flush()  # the first quarter is made before its minutes go
        hub.clock.advance(QUARTER_S)
        await hub.memory.flush()  # and the second, once complete
        await hub.store.close()

    last_minute: list[int] = []

    asyncio.run(scenario())
    with contextlib.closing(sqlite3.connect(path)) as db:
        minutes = [r[0] for r in db.execute("SELECT bucket_start_s FROM history_gpu WHERE tier_s = 60")]
        quarters = db.execute("SELECT count(*) FROM history_gpu WHERE tier_s = 900").fetchone()[0]
        hours = db.execute("SELECT count(*) FROM usage_hourly").fetchone()[0]
    assert minutes == last_minute  # the old minute is gone
    assert quarters == 2 and hours == 2  # kept a day


def test_past_max_file_mib_the_oldest_15_minute_history_goes_first(tmp_path: Path) -> None:
    store = NodeStore(str(tmp_path / "state.sqlite3"))
    day0 = T0 - T0 % 86400 - 5 * 86400
    batch = MemoryBatch()
    for node in ("gpu01", "gpu02", "gpu03"):
        for quarter in range(5 * 96):  # five days of 15-minute buckets
            start = int(day0 + quarter * QUARTER_S)
            for gpu in (None, *(str(i) for i in range(8))):
                batch.history[SeriesKey(node, QUARTER_S, start, gpu)] = [50.0, 1.0, 50.0] * 4
        batch.history[SeriesKey(node, 60, int(day0), None)] = [1.0, 1.0, 1.0] * 4  # an old minute
    batch.usage[UsageKey(day0, day0, "alice", "gpu01", "H100", "", "")] = [3600.0, 0.0, 0.0, 0.0]
    write_batch(store, batch)
    before = live_bytes(store.connection)
    limit_mib = (before - 200 * 1024) / 1024**2  # about a day's worth under what it holds
    dropped = hold_size(store, MemoryLimits(max_file_mib=limit_mib))
    db = store.connection
    oldest = db.execute("SELECT min(bucket_start_s) FROM history_gpu WHERE tier_s = 900").fetchone()[0]
    assert dropped > 0 and live_bytes(db) <= limit_mib * 1024**2
    assert oldest >= day0 + 86400  # whole days, the oldest first
    assert db.execute("SELECT count(*) FROM history_gpu WHERE tier_s = 900").fetchone()[0] >= 3 * 9 * 96 * 2
    assert (
        db.execute("SELECT count(*) FROM history_host WHERE tier_s = 60").fetchone()[0] == 3
    )  # other tiers stay
    assert db.execute("SELECT count(*) FROM usage_daily").fetchone()[0] == 1
    assert hold_size(store, MemoryLimits(max_file_mib=0)) == 0  # 0: no limit
    store.close()


def test_a_gap_in_the_samples_is_logged_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    hub = Hub(path)

    async def scenario() -> None:
        await hub.store.open()
        hub.connect()
        hub.sample(0.0, alice(80.0))
        hub.sample(1.0, alice(80.0))
        hub.sample(30.0, alice(80.0))  # late after 3 s: 27 s not counted
        await hub.memory.flush()
        await hub.store.close()

    asyncio.run(scenario())
    with contextlib.closing(sqlite3.connect(path)) as db:
        (row,) = usage_report(db, T0 - 3600, T0 + 3600, "user", 0.0).rows
        (gap,) = read_events(db, kinds=("sample_gap",))
    assert row.gpu_seconds == pytest.approx(1.0 + 1.0 + 3.0)
    assert gap.node_id == "gpu01" and "no samples for 27 s" in gap.summary


def test_a_quarter_a_stopped_hub_left_unmade_is_made_by_the_next_once(tmp_path: Path) -> None:
    """15-minute buckets are made from the 1-minute rows once a quarter is complete; a hub that
    stops (or is killed) before then leaves the quarter to the next hub, which makes it from the
    file's rows, the same however often it is made."""
    path = tmp_path / "state.sqlite3"
    first = Hub(path)

    async def stopped_mid_quarter() -> None:
        await first.store.open()
        await first.memory.open()
        first.connect()
        for k in range(10):
            first.sample(1.0, alice(70.0 + k))
        await first.memory.flush()
        await first.store.close()  # no flush of the memory after this one: as if killed

    asyncio.run(stopped_mid_quarter())

    def week_points() -> list[SeriesPoint]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return read_history(db, "gpu01", QUARTER_S, T0 - 3600)["gpu0"]["util_gpu_percent"]

    unmade = week_points()  # the quarter going on, summed from its minutes
    assert unmade == [SeriesPoint(int(T0 - T0 % QUARTER_S), pytest.approx(74.5), 79.0)]
    second = Hub(path)
    second.clock.advance(QUARTER_S + 60.0)  # gpu01 stays away; its quarter is over

    async def next_hub() -> None:
        await second.store.open()
        await second.memory.open()
        await second.memory.flush()
        await second.memory.flush()
        await second.store.close()

    asyncio.run(next_hub())
    with contextlib.closing(sqlite3.connect(path)) as db:
        quarters = db.execute(
            "SELECT bucket_start_s, util_gpu_percent_n, util_gpu_percent_sum, util_gpu_percent_max,"
            " temp_celsius_max FROM history_gpu WHERE tier_s = 900"
        ).fetchall()
        hosts = db.execute(
            "SELECT cpu_percent_n, cpu_percent_max FROM history_host WHERE tier_s = 900"
        ).fetchall()
    assert quarters == [
        (int(T0 - T0 % QUARTER_S), 10, pytest.approx(sum(70.0 + k for k in range(10))), 79.0, 57.9)
    ]
    assert hosts == [(10, 100.0)]
    assert week_points() == unmade  # made: read from its row alone
