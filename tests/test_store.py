"""The state file in-process: files the hub did not write are refused untouched, rows it cannot
read are skipped, failures at runtime are logged once and retried, and new files are private."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from hub.app import create_app
from hub.clock import ManualClock
from hub.registry import Liveness, NodeRegistry, NodeStatus
from hub.settings import HubSettings
from hub.store import (
    APPLICATION_ID,
    SKIPPED_LOGGED,
    NodeStore,
    StoredNode,
    StoreError,
    StoreSync,
    forget_offline,
)
from node_agent.protocol import MAX_GPUS, MAX_OBJECT_LIST, MAX_STATE_BYTES, MAX_STRING_CHARS, Delta, Hello

# --------------------------------------------------------------------------- helpers
# a state file of schema version 1 (nodes gpu01 and gpu02), written by the release before the
# hub's memory (hub/store.py at 64021bb), for the tests of files written by an older hub
V1_FILE = Path(__file__).parent / "data" / "state-v1.sqlite3"


def hello(node: str) -> Hello:
    return Hello(node=node, agent_version="t", interval_s=1.0, host={"hostname": node})


def stored(node: str, last_seen_epoch_s: float = 1000.0) -> StoredNode:
    return StoredNode(
        node, node.upper(), None, "10.0.0.1", hello(node), {"sampled_at": 1.0}, last_seen_epoch_s
    )


def hub_file(path: Path, *nodes: str) -> Path:
    """A state file as the hub writes it, holding ``nodes``, closed (no -wal left)."""
    store = NodeStore(str(path))
    store.save([stored(node) for node in nodes])
    store.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def registry() -> NodeRegistry:
    return NodeRegistry(ManualClock(), Liveness(stale_after_intervals=3, offline_after_intervals=8))


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- files it did not write
def not_sqlite(path: Path) -> None:
    path.write_text("node_id,status\ngpu01,live\n")


def truncated(path: Path) -> None:
    data = hub_file(path, *(f"n{i}" for i in range(60))).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damaged_page(path: Path) -> None:
    data = bytearray(hub_file(path, *(f"n{i}" for i in range(60))).read_bytes())
    page_bytes = 4096
    data[3 * page_bytes : 3 * page_bytes + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def other_programs_nodes_table(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY, hostname TEXT, rack TEXT)")
        db.execute("INSERT INTO nodes VALUES (1, 'gpu01', 'r1')")
        db.commit()


def other_programs_application_id(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA application_id = 1234")  # set, with no tables yet
        db.commit()


def newer_sers_hub(path: Path) -> None:
    hub_file(path, "n1")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")


FOREIGN: dict[str, tuple[Callable[[Path], None], str]] = {
    "not sqlite": (not_sqlite, "is not an SQLite file"),
    "truncated": (truncated, "is damaged"),
    "damaged page": (damaged_page, "is damaged"),
    "another program's nodes table": (other_programs_nodes_table, "is not a sers-hub state file"),
    "another program's application id": (other_programs_application_id, "is not a sers-hub state file"),
    "newer sers-hub": (newer_sers_hub, "newer sers-hub (schema 99)"),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_a_file_it_cannot_use_is_refused_untouched(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make, problem = FOREIGN[case]
    path = tmp_path / "state.sqlite3"
    make(path)
    before = digest(path)
    with pytest.raises(StoreError, match=re.escape(problem)) as raised:
        NodeStore(str(path))
    assert str(path) in str(raised.value) and "move it aside" in str(raised.value)

    reg = registry()
    reg.hello(hello("live1"))
    sync = StoreSync(str(path), reg, {})

    async def scenario() -> tuple[int, int]:
        remembered = await sync.open()
        written = await sync.flush()
        await sync.open()  # tried again: the same reason is not logged twice
        await sync.close()
        return remembered, written

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        assert asyncio.run(scenario()) == (0, 0)
    [line] = errors(caplog)
    assert problem in line and "without remembering nodes" in line and "\n" not in line
    assert digest(path) == before, "never a byte written into a file the hub cannot use"
    assert set(reg.nodes) == {"live1"}


CRASHED_WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA wal_autocheckpoint = 0")
db.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY, hostname TEXT)")
db.execute("INSERT INTO nodes VALUES (1, 'gpu01')")
os._exit(0)  # as if killed: its last transactions stay in the -wal file
"""


def test_another_programs_unfinished_wal_is_not_merged(tmp_path: Path) -> None:
    """Closing a read-write connection would checkpoint the other program's -wal into its file."""
    path = tmp_path / "other.sqlite3"
    subprocess.run([sys.executable, "-c", CRASHED_WRITER, str(path)], check=True, timeout=30)
    wal = tmp_path / "other.sqlite3-wal"
    before = digest(path), digest(wal)
    assert wal.stat().st_size > 0
    with pytest.raises(StoreError, match="is not a sers-hub state file"):
        NodeStore(str(path))
    assert (digest(path), digest(wal)) == before


def test_forget_refuses_files_it_cannot_use_and_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(StoreError, match="there is no state file"):
        forget_offline(str(missing), "n1")
    assert not missing.exists()
    other = tmp_path / "other.sqlite3"
    other_programs_nodes_table(other)
    before = digest(other)
    with pytest.raises(StoreError, match="not a sers-hub state file"):
        forget_offline(str(other), "1")
    assert digest(other) == before


def test_a_path_it_cannot_create_says_why_and_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(StoreError, match="is a folder, not a state file"):
        NodeStore(str(tmp_path))
    path = tmp_path / "not-yet" / "state.sqlite3"
    reg = registry()
    reg.hello(hello("n1"))
    sync = StoreSync(str(path), reg, {}, reopen_every_s=0.0)

    async def scenario() -> list[int]:
        written = [await sync.open(), await sync.flush()]
        path.parent.mkdir()  # a volume mounted late, say
        written += [await sync.open(), await sync.flush()]
        await sync.close()
        return written

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        assert asyncio.run(scenario()) == [0, 0, 0, 1]
    [line] = errors(caplog)
    assert f"cannot create the state file {path}: there is no folder {path.parent}" in line
    assert "usable again" in caplog.text
    assert NodeStore(str(path)).node_ids() == ["n1"]


# --------------------------------------------------------------------------- files it did write
def test_an_empty_file_and_a_file_from_before_the_mark_are_taken(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    NodeStore(str(empty)).close()
    unmarked = tmp_path / "unmarked.sqlite3"
    unmarked.write_bytes(V1_FILE.read_bytes())  # schema 1, as the release before the memory wrote it
    with contextlib.closing(sqlite3.connect(unmarked)) as db:
        db.execute("PRAGMA application_id = 0")  # as sers-hub wrote it before it set the mark
    store = NodeStore(str(unmarked))
    nodes, skipped = store.load()
    store.close()
    assert [n.node_id for n in nodes] == ["gpu01", "gpu02"] and skipped == []
    for path in (empty, unmarked):
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def bad_rows(path: Path) -> list[str]:
    """Adds rows no hub wrote to ``path``; returns the reason each one's log line names."""
    hello_json = '{"type":"hello","protocol":1,"node":"%s","agent_version":"t","interval_s":1.0}'
    rows: list[tuple[object, ...]] = [
        ("textseen", "T", None, None, hello_json % "textseen", "{}", "yesterday"),
        ("badjson", "B", None, None, hello_json % "badjson", "{not json", 1.0),
        ("notstate", "N", None, None, hello_json % "notstate", '{"gpus": [1, 2]}', 1.0),
        ("otherhello", "O", None, None, hello_json % "good", "{}", 1.0),
        ("bad name!", "X", None, None, hello_json % "bad name!", "{}", 1.0),
        ("blobname", b"\x00\x01", None, None, hello_json % "blobname", "{}", 1.0),
        ("notutf8", "U", None, None, hello_json % "notutf8", "{}", 1.0),
    ]
    with contextlib.closing(sqlite3.connect(path)) as db:
        for row in rows:
            db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, 0)", row)
        # text that is not UTF-8: only raw SQL can store it
        db.execute("UPDATE nodes SET node_group = CAST(X'FFFE' AS TEXT) WHERE node_id = 'notutf8'")
        db.commit()
    return [
        "last_seen_epoch_s",
        "state_json",  # JSON that does not parse
        "state_json.gpus",  # JSON that is not a state
        "hello_json",
        "node_id",
        "display_name",
        "node_group",
    ]


def test_rows_it_cannot_read_are_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = hub_file(tmp_path / "state.sqlite3", "good")
    reasons = bad_rows(path)
    store = NodeStore(str(path))
    nodes, skipped = store.load()
    store.close()
    assert [n.node_id for n in nodes] == ["good"]
    assert [(row.reason.split(":")[0]) for row in skipped] == reasons

    reg = registry()
    sync = StoreSync(str(path), reg, {})

    async def scenario() -> int:
        remembered = await sync.open()
        await sync.close()
        return remembered

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        assert asyncio.run(scenario()) == 1
    assert reg.nodes["good"].status is NodeStatus.OFFLINE
    lines = errors(caplog)
    assert len(lines) == SKIPPED_LOGGED + 1
    assert "skipped node 'textseen'" in lines[0] and "sers-hub forget textseen --state-db" in lines[0]
    assert "skipped 2 more of its 8 nodes" in lines[-1]
    assert all("\n" not in line for line in lines)


def test_rows_past_the_limits_of_a_live_node_are_skipped(tmp_path: Path) -> None:
    """A row can hold what no agent could have made the hub write: names and an address
    longer than a wire string, or a state whose every field is within its limits but whose
    whole is far over a node's (64 GPUs of 128 processes each: megabytes on every page)."""
    path = hub_file(tmp_path / "state.sqlite3", "good")
    hello_json = '{"type":"hello","protocol":1,"node":"%s","agent_version":"t","interval_s":1.0}'
    process = {"pid": 1, "user": "u" * MAX_STRING_CHARS, "command": "c" * MAX_STRING_CHARS}
    huge_state = {"gpus": {str(i): {"processes": [process] * MAX_OBJECT_LIST} for i in range(MAX_GPUS)}}
    long_text = "x" * (MAX_STRING_CHARS + 1)
    rows: list[tuple[object, ...]] = [
        ("longname", long_text, None, None, hello_json % "longname", "{}", 1.0),
        ("longgroup", "G", long_text, None, hello_json % "longgroup", "{}", 1.0),
        ("longaddress", "A", None, long_text, hello_json % "longaddress", "{}", 1.0),
        ("hugestate", "H", None, None, hello_json % "hugestate", orjson.dumps(huge_state).decode(), 1.0),
    ]
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, 0)", rows)
        db.commit()
    store = NodeStore(str(path))
    nodes, skipped = store.load()
    store.close()
    assert [n.node_id for n in nodes] == ["good"]
    assert [(row.node_id, row.reason.split(":")[0]) for row in skipped] == [
        ("longname", "display_name"),
        ("longgroup", "node_group"),
        ("longaddress", "address"),
        ("hugestate", "state_json"),
    ]
    assert f"over the limit of {MAX_STATE_BYTES}" in skipped[-1].reason


def test_a_file_with_more_nodes_than_max_nodes_fills_the_hub_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The most recently seen nodes are remembered, up to ``max_nodes`` with the live ones."""
    path = tmp_path / "state.sqlite3"
    store = NodeStore(str(path))
    store.save([stored(f"n{i}", last_seen_epoch_s=1000.0 + i) for i in range(10)])
    store.close()
    reg = registry()
    reg.hello(hello("live1"))
    sync = StoreSync(str(path), reg, {}, max_nodes=4)

    async def scenario() -> int:
        remembered = await sync.open()
        await sync.close()
        return remembered

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        assert asyncio.run(scenario()) == 3
    assert set(reg.nodes) == {"live1", "n9", "n8", "n7"}
    [line] = errors(caplog)
    assert "7 of its nodes, the least recently seen, not remembered" in line and "max_nodes=4" in line


# --------------------------------------------------------------------------- at runtime
def test_a_failing_write_is_logged_once_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.sqlite3"
    reg = registry()
    sync = StoreSync(str(path), reg, {})

    def set_max_pages(store: NodeStore, pages: int | None) -> None:
        db = store._db
        count = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages or count}")

    async def scenario() -> list[int]:
        await sync.open()
        store = sync._store
        assert store is not None
        await sync._call(set_max_pages, store, None)  # the file cannot grow: a full disk
        for i in range(40):
            reg.hello(hello(f"node{i}"))
        written = [await sync.flush(), await sync.flush()]
        await sync._call(set_max_pages, store, 1_000_000)
        written.append(await sync.flush())
        await sync.close()
        return written

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        assert asyncio.run(scenario()) == [0, 0, 40]
    [line] = errors(caplog)
    assert "disk is full" in line and str(path) in line
    assert "writing works again" in caplog.text
    assert set(NodeStore(str(path)).node_ids()) == {f"node{i}" for i in range(40)}


def test_a_file_deleted_under_the_hub_is_written_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite3"
    reg = registry()
    reg.hello(hello("n1"))
    sync = StoreSync(str(path), reg, {})

    async def scenario() -> None:
        await sync.open()
        assert await sync.flush() == 1
        for name in os.listdir(tmp_path):
            os.remove(tmp_path / name)
        reg.hello(hello("n2"))
        assert await sync.flush() == 0  # finds the file gone
        assert await sync.open() == 0
        assert await sync.flush() == 2, "every node goes into the new file"
        await sync.close()

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        asyncio.run(scenario())
    assert "was deleted while the hub ran" in caplog.text
    assert set(NodeStore(str(path)).node_ids()) == {"n1", "n2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode = EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another program holding an exclusive lock on ``path`` until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.kill()
        holder.wait(10)


def test_a_locked_file_holds_up_nothing_and_is_taken_when_freed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = hub_file(tmp_path / "state.sqlite3", "remembered")
    reg = registry()
    sync = StoreSync(str(path), reg, {}, reopen_every_s=0.0)

    async def scenario() -> None:
        with locked(path):
            started = time.monotonic()
            assert await sync.open() == 0
            assert time.monotonic() - started < 3, "a lock does not hold up the hub's startup"
        assert await sync.open() == 1
        await sync.close()

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        asyncio.run(scenario())
    [line] = errors(caplog)
    assert "is locked by another program" in line and str(path) in line
    assert "usable again: remembered 1 node(s)" in caplog.text
    assert reg.nodes["remembered"].status is NodeStatus.OFFLINE


# --------------------------------------------------------------------------- file modes
def test_a_new_file_and_its_side_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with umask(0):
        store = NodeStore(str(path))
        store.save([stored("n1")])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    assert modes == {"state.sqlite3": 0o600, "state.sqlite3-wal": 0o600, "state.sqlite3-shm": 0o600}


def test_an_existing_files_mode_is_kept_and_world_readable_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = hub_file(tmp_path / "state.sqlite3", "n1")
    path.chmod(0o644)
    sync = StoreSync(str(path), registry(), {})

    async def scenario() -> None:
        await sync.open()
        await sync.close()

    with caplog.at_level(logging.INFO, logger="sers.hub"):
        asyncio.run(scenario())
    [line] = errors(caplog)
    assert "readable by every user (mode 0644)" in line and f"chmod 600 {path}" in line
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# --------------------------------------------------------------------------- events and HTTP
def test_the_store_writes_what_the_events_name_and_nothing_else(tmp_path: Path) -> None:
    """A node is written after its hello and after a status change; a node that merely sends
    samples waits for the periodic refresh."""
    path = tmp_path / "state.sqlite3"
    reg = registry()
    sync = StoreSync(str(path), reg, {}, refresh_every_s=3600)

    async def scenario() -> list[int]:
        await sync.open()
        connection = reg.hello(hello("n1"))
        written = [await sync.flush()]
        reg.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0}))
        written.append(await sync.flush())
        reg.disconnect("n1", connection)
        written.append(await sync.flush())
        written.append(await sync.flush(final=True))
        await sync.close()
        return written

    assert asyncio.run(scenario()) == [1, 0, 1, 0]


def test_forgetting_a_node_over_http_removes_it_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    settings = HubSettings(state_db=str(path), admin_token="admin-token-1", trusted_hosts=("*",))
    with TestClient(create_app(settings, ManualClock())) as client:
        hub = client.app.state.hub  # type: ignore[attr-defined]
        connection = hub.registry.hello(hello("gone1"))
        asyncio.run(client.app.state.store.flush())  # type: ignore[attr-defined]
        assert NodeStore(str(path)).node_ids() == ["gone1"]
        assert client.delete("/api/v1/nodes/gone1").status_code == 401
        assert client.delete("/api/v1/nodes/gone1", headers=ADMIN).status_code == 409, "still connected"
        hub.registry.disconnect("gone1", connection)
        assert client.delete("/api/v1/nodes/gone1", headers=ADMIN).json() == {"forgotten": "gone1"}
        assert client.delete("/api/v1/nodes/gone1", headers=ADMIN).status_code == 404
    assert NodeStore(str(path)).node_ids() == []


ADMIN = {"Authorization": "Bearer admin-token-1"}
