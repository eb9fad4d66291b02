"""The hub's memory of the nodes it has seen, in an SQLite file, so a restart loses nobody.

One row per node: name, display name, group, address, the last hello (static facts), the last
state and the wall time it was last seen. :class:`StoreSync` mirrors the registry into the file
from a background task: it subscribes to the registry's events, and a node is written after its
hello (which sets its naming) and when its status changes (a disconnect included); every
:data:`REFRESH_EVERY_S` the nodes heard from since their last write are written again. All SQLite calls run on the store's own
thread, never on the event loop. On startup the remembered nodes come back as offline with their
"last seen" time.

Live monitoring never depends on the file. One the hub cannot use (not SQLite, another program's,
damaged, locked, unreadable, in a read-only directory) is logged in one line and left untouched;
the hub runs without memory and tries the file again every :data:`REOPEN_EVERY_S`, so moving it
aside is enough. A row it cannot read is skipped with a log line. A write that fails later is
logged once and retried. The hub marks its files with :data:`APPLICATION_ID` and only ever
writes a file so marked, an empty one, or one written by a sers-hub from before the mark. It
creates the file readable by its own user only (SQLite gives the -wal and -shm files beside it
the same mode).

Nodes leave the file only deliberately: ``DELETE /api/v1/nodes/{id}`` on a running hub (see
:func:`forget_node`) or ``sers-hub forget NODE --state-db FILE`` with the hub stopped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shlex
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.domain.events import NodeConnected, NodeRemoved, StatusChanged
from hub.domain.nodes import Naming, Node, NodeStatus
from hub.memory import collector_paused
from hub.registry import NodeRegistry
from hub.security import admin_denial
from hub.state import HubState
from hub.usage.schema import MIGRATIONS
from node_agent.protocol import (
    MAX_STATE_BYTES,
    MAX_STRING_CHARS,
    Hello,
    ProtocolError,
    Snapshot,
    check_node_name,
    check_patch,
    decode,
    encode,
)

log = logging.getLogger("sers.hub")

APPLICATION_ID = 0x53455253  # "SERS": ``PRAGMA application_id`` of every file this hub writes
SCHEMA_VERSION = 2  # 2: the memory's tables (hub/usage/schema.py)
SYNC_EVERY_S = 1.0
REFRESH_EVERY_S = 30.0
REOPEN_EVERY_S = 10.0
OPEN_BUSY_TIMEOUT_S = 1.0  # short: a locked file must not hold up the hub's startup
WRITE_BUSY_TIMEOUT_MS = 5000
SKIPPED_LOGGED = 5  # unreadable rows logged one by one; any beyond, as a count
T = TypeVar("T")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_COLUMNS = (
    "node_id",
    "display_name",
    "node_group",
    "address",
    "hello_json",
    "state_json",
    "last_seen_epoch_s",
    "written_epoch_s",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    node_group TEXT,
    address TEXT,
    hello_json TEXT NOT NULL,
    state_json TEXT NOT NULL,
    last_seen_epoch_s REAL NOT NULL,
    written_epoch_s REAL NOT NULL
)
"""
_LEFT_ALONE = "the hub leaves it untouched: move it aside or point --state-db at another file"


class StoreError(Exception):
    """The state file cannot be used; the message says which file, why, and what to do."""


class StoreGone(StoreError):
    """The state file was deleted or replaced under the running hub."""


def describe_sqlite_error(path: str, exc: sqlite3.Error) -> str:
    """One sentence for an SQLite failure on ``path``: what is wrong and what to do."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (
            f"the state file {path} is locked by another program ({exc}): "
            "stop whatever holds it (another sers-hub on the same file?)"
        )
    if name.startswith("SQLITE_NOTADB"):
        return f"{path} is not an SQLite database ({exc}); {_LEFT_ALONE}"
    if name.startswith("SQLITE_CORRUPT"):
        return (
            f"the state file {path} is damaged ({exc}); the hub leaves it untouched: move it aside "
            "(keep it to look into) and the hub starts a new one"
        )
    if name.startswith("SQLITE_FULL"):
        return f"cannot write the state file {path}: the disk is full ({exc})"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_AUTH")):
        folder = os.path.dirname(os.path.abspath(path))
        base = os.path.basename(path)
        return (
            f"cannot use the state file {path} ({exc}): the hub's user needs to read and write it "
            f"and to create files in {folder} (SQLite keeps {base}-wal and {base}-shm beside it)"
        )
    return f"cannot use the state file {path} ({exc}); move it aside or point --state-db at another file"


def _text(raw: bytes) -> str | bytes:
    """SQLite TEXT as str; bytes that are not UTF-8 stay bytes (the row check refuses them)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _check_file(path: str, create: bool) -> os.stat_result:
    """Creates the file with mode 0600, or checks that the existing one is an SQLite file the
    hub can read and write; returns its status. Never writes a byte of an existing file."""
    flags = os.O_RDWR | os.O_CLOEXEC
    fd = None
    if create:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except FileNotFoundError:
            folder = os.path.dirname(os.path.abspath(path))
            raise StoreError(f"cannot create the state file {path}: there is no folder {folder}") from None
        except OSError as exc:
            folder = os.path.dirname(os.path.abspath(path))
            raise StoreError(
                f"cannot create the state file {path}: {exc.strerror}; the hub's user needs to create "
                f"files in {folder}, or point --state-db at another file"
            ) from None
    if fd is None:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise StoreError(f"there is no state file {path}") from None
        except IsADirectoryError:
            raise StoreError(f"{path} is a folder, not a state file: point --state-db at a file") from None
        except OSError as exc:
            raise StoreError(
                f"cannot open the state file {path}: {exc.strerror}; give the hub's user read and "
                "write access to it, or point --state-db at another file"
            ) from None
    try:
        header = os.pread(fd, len(_SQLITE_MAGIC), 0)
        status = os.fstat(fd)
    except OSError as exc:
        raise StoreError(f"cannot read the state file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if header and header != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not an SQLite file; {_LEFT_ALONE}")
    return status


def _recognize(path: str) -> tuple[int, int]:
    """Reads, on a read-only connection, whether ``path`` is a file this hub may write (one it
    marked, an empty one, or one a sers-hub wrote before it set the mark) and whether it is
    intact; returns its ``application_id`` and ``user_version``. Raises :class:`StoreError`."""
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=OPEN_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StoreError(describe_sqlite_error(path, exc)) from None
    try:
        app_id: int = db.execute("PRAGMA application_id").fetchone()[0]
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        tables = sorted(
            str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
        columns = tuple(row[1] for row in db.execute("PRAGMA table_info(nodes)"))
        empty = not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the state file {path} was written by a newer sers-hub (schema {version}); {_LEFT_ALONE}"
                )
        elif app_id != 0 or not (
            (empty and version == 0) or (version == 1 and tables == ["nodes"] and columns == _COLUMNS)
        ):
            what = f"tables: {', '.join(tables[:5])}" if tables else f"application id {app_id:#x}"
            raise StoreError(
                f"{path} is not a sers-hub state file (another program's SQLite database, {what}); "
                f"{_LEFT_ALONE}"
            )
        check = " ".join(str(db.execute("PRAGMA quick_check(1)").fetchone()[0]).split())  # one line
    except sqlite3.Error as exc:
        raise StoreError(describe_sqlite_error(path, exc)) from None
    finally:
        db.close()
    if check != "ok":
        raise StoreError(
            f"the state file {path} is damaged ({check}); the hub leaves it untouched: move it "
            "aside (keep it to look into) and the hub starts a new one"
        )
    return app_id, version


@dataclass(frozen=True, slots=True)
class StoredNode:
    node_id: str
    display_name: str
    group: str | None
    address: str | None
    hello: Hello
    state: Snapshot
    last_seen_epoch_s: float


@dataclass(frozen=True, slots=True)
class SkippedRow:
    """A row of the file that does not make a node, and why."""

    node_id: object
    reason: str


class NodeStore:
    """Blocking access to the file. Use it from one thread at a time.

    Raises :class:`StoreError` when the file cannot be used; with ``create`` false, also when it
    does not exist. ``mode`` is the file's permission bits; ``created``, whether this opened a new
    file.
    """

    def __init__(self, path: str, create: bool = True) -> None:
        self.path = path
        existed = os.path.lexists(path)
        status = _check_file(path, create)
        self.created = not existed
        self.mode = stat.S_IMODE(status.st_mode)
        self._identity = (status.st_dev, status.st_ino)
        app_id, version = _recognize(path)
        try:
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=OPEN_BUSY_TIMEOUT_S
            )
        except sqlite3.Error as exc:
            raise StoreError(describe_sqlite_error(path, exc)) from None
        self._db.text_factory = _text
        try:
            self._set_up(app_id, version)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(describe_sqlite_error(path, exc)) from None

    def _set_up(self, app_id: int, version: int) -> None:
        """WAL journal, the table and the mark, on a file :func:`_recognize` took."""
        db = self._db
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
            with self._transaction():  # a migration happens whole or not at all
                db.execute(_SCHEMA)
                for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target]:
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")

    def load(self) -> tuple[list[StoredNode], list[SkippedRow]]:
        """The remembered nodes, and the rows that do not make one."""
        try:
            rows = self._db.execute(
                "SELECT node_id, display_name, node_group, address, hello_json, state_json,"
                " last_seen_epoch_s FROM nodes"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(describe_sqlite_error(self.path, exc)) from None
        nodes = []
        skipped = []
        for row in rows:
            try:
                nodes.append(_stored_node(*row))
            except (ProtocolError, ValueError) as exc:
                skipped.append(SkippedRow(row[0], str(exc)))
        return nodes, skipped

    def save(self, nodes: list[StoredNode]) -> None:
        self._check_same_file()
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET"
                " display_name=excluded.display_name, node_group=excluded.node_group,"
                " address=excluded.address, hello_json=excluded.hello_json,"
                " state_json=excluded.state_json, last_seen_epoch_s=excluded.last_seen_epoch_s,"
                " written_epoch_s=excluded.written_epoch_s",
                # one row's JSON at a time: a list would hold every node's (about 10 MB at
                # 2,000 nodes, every REFRESH_EVERY_S), a peak that stays in the RSS figures
                (
                    (
                        n.node_id,
                        n.display_name,
                        n.group,
                        n.address,
                        encode(n.hello).decode(),
                        orjson.dumps(n.state).decode(),
                        n.last_seen_epoch_s,
                        now,
                    )
                    for n in nodes
                ),
            )

    def forget(self, node_id: str) -> bool:
        try:
            with self._transaction():
                return self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount > 0
        except sqlite3.Error as exc:
            raise StoreError(describe_sqlite_error(self.path, exc)) from None

    def node_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT node_id FROM nodes ORDER BY node_id")]

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For the memory's tables (:mod:`hub.usage.store`): use it on the store's thread only."""
        return self._db

    def transaction(self) -> _Transaction:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception)."""
        self._check_same_file()
        return self._transaction()

    def _check_same_file(self) -> None:
        """SQLite would go on writing a deleted file (its open descriptor): catch that."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            raise StoreGone(f"the state file {self.path} was deleted while the hub ran") from None
        if (status.st_dev, status.st_ino) != self._identity:
            raise StoreGone(f"the state file {self.path} was replaced while the hub ran")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


# the texts of a row that the hub shows or logs: a node's names and address come from the
# protocol or the settings, and are held to the protocol's string limit there too
_NAME_COLUMNS = ("display_name", "node_group", "address")


def _stored_node(
    node_id: object,
    display_name: object,
    group: object,
    address: object,
    hello_json: object,
    state_json: object,
    last_seen: object,
) -> StoredNode:
    """One row as a node; raises :class:`ProtocolError` or :class:`ValueError` saying what is wrong."""
    name = check_node_name(node_id, "node_id")
    for column, value, optional in (
        ("display_name", display_name, False),
        ("node_group", group, True),
        ("address", address, True),
        ("hello_json", hello_json, False),
        ("state_json", state_json, False),
    ):
        if not (isinstance(value, str) or (optional and value is None)):
            raise ValueError(f"{column}: expected text, got {type(value).__name__}")
        if column in _NAME_COLUMNS and isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise ValueError(f"{column}: {len(value)} characters, over the limit of {MAX_STRING_CHARS}")
    assert isinstance(display_name, str) and isinstance(hello_json, str) and isinstance(state_json, str)
    try:
        hello = decode(hello_json)
    except ProtocolError as exc:
        raise ValueError(f"hello_json: {exc}") from None
    if not isinstance(hello, Hello) or hello.node != name:
        raise ValueError("hello_json: not this node's hello")
    try:
        state_obj = orjson.loads(state_json)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"state_json: not JSON: {exc}") from None
    state = check_patch(state_obj, "state_json")
    state_bytes = len(orjson.dumps(state))
    if state_bytes > MAX_STATE_BYTES:  # each field within its limits, the whole past the node's
        raise ValueError(f"state_json: {state_bytes} bytes as JSON, over the limit of {MAX_STATE_BYTES}")
    if isinstance(last_seen, bool) or not isinstance(last_seen, int | float) or not math.isfinite(last_seen):
        raise ValueError(f"last_seen_epoch_s: expected a number of seconds, got {last_seen!r:.40}")
    return StoredNode(
        name,
        display_name,
        group if isinstance(group, str) else None,
        address if isinstance(address, str) else None,
        hello,
        state,
        float(last_seen),
    )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
            self._db.execute("ROLLBACK")


class StoreSync:
    """Mirrors the registry into a :class:`NodeStore` from the event loop, in batches, off-loop.

    Nothing here raises for a file that cannot be used: it is logged once, and :meth:`run` opens
    it again every ``reopen_every_s`` until it can be used, then remembers and writes as usual.
    """

    def __init__(
        self,
        path: str,
        registry: NodeRegistry,
        names: Mapping[str, Naming],
        refresh_every_s: float = REFRESH_EVERY_S,
        reopen_every_s: float = REOPEN_EVERY_S,
        max_nodes: int | None = None,
    ) -> None:
        self._path = path
        self._registry = registry
        self._names = names
        self._max_nodes = max_nodes
        self._refresh_every_s = refresh_every_s
        self._reopen_every_s = reopen_every_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sers-store")
        self._store: NodeStore | None = None
        self._dirty: set[str] = set()  # nodes to write at the next flush
        self._written: dict[str, float] = {}  # node id -> the last-seen time the file holds
        self._refresh_at_mono = 0.0
        self._next_open_mono = 0.0
        self._open_problem: str | None = None  # why the file could not be opened, as last logged
        self._write_problem: str | None = None  # why writing fails, as logged when it started
        events = registry.events
        events.subscribe(NodeConnected, self._mark)
        events.subscribe(StatusChanged, self._mark)
        events.subscribe(NodeRemoved, self._removed)

    def _mark(self, event: NodeConnected | StatusChanged) -> None:
        self._dirty.add(event.node_id)

    def _removed(self, event: NodeRemoved) -> None:
        self._dirty.discard(event.node_id)
        self._written.pop(event.node_id, None)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _paused_call, fn, *args)

    async def on_store(self, fn: Callable[[NodeStore], T]) -> T:
        """Runs ``fn(store)`` on the store's thread; raises :class:`StoreError` (saying why)
        while no file is open. ``fn``'s own exceptions come through unchanged."""
        store = self._store
        if store is None:
            raise StoreError(self._open_problem or f"the state file {self._path} is not open")
        result: T = await self._call(fn, store)
        return result

    @property
    def problem(self) -> str | None:
        """Why the file cannot be opened or written now, as logged; ``None`` when it works."""
        return self._open_problem or self._write_problem

    async def open(self) -> int:
        """Opens the file and puts every remembered node that the registry lacks in it as
        offline; returns how many. When the file cannot be used, logs why (once per reason)."""
        try:
            store: NodeStore = await self._call(NodeStore, self._path)
        except StoreError as exc:
            self._cannot_open(str(exc))
            return 0
        try:
            stored, skipped = await self._call(store.load)
        except StoreError as exc:
            await self._call(store.close)
            self._cannot_open(str(exc))
            return 0
        self._store = store
        self._written = {}
        over = 0
        for item in sorted(stored, key=lambda item: -item.last_seen_epoch_s):
            if item.node_id not in self._registry.nodes and not self._has_room():
                over += 1
                continue
            self._restore(item)
        # a file opened again (after it was deleted) gets every node
        self._dirty.update(node_id for node_id in self._registry.nodes if node_id not in self._written)
        self._log_skipped(skipped, len(stored) + len(skipped))
        if over:
            log.warning(
                "state file %s: %d of its nodes, the least recently seen, not remembered: the hub "
                "holds max_nodes=%d",
                self._path,
                over,
                self._max_nodes,
            )
        if not store.created and store.mode & stat.S_IROTH:
            log.warning(
                "the state file %s is readable by every user (mode %04o) and holds user and process "
                "names: chmod 600 %s",
                self._path,
                store.mode,
                self._path,
            )
        again = " again" if self._open_problem is not None else ""
        log.info("state file %s usable%s: remembered %d node(s)", self._path, again, len(stored) - over)
        self._open_problem = None
        return len(stored) - over

    def _cannot_open(self, reason: str) -> None:
        if reason != self._open_problem:
            log.error(
                "%s. Live monitoring goes on without remembering nodes; the hub tries the file "
                "again every %g s",
                reason,
                self._reopen_every_s,
            )
            self._open_problem = reason
        self._next_open_mono = time.monotonic() + self._reopen_every_s

    def _has_room(self) -> bool:
        return self._max_nodes is None or len(self._registry.nodes) < self._max_nodes

    def _restore(self, item: StoredNode) -> None:
        naming = self._names.get(item.node_id) or self._names.get(item.address or "") or Naming()
        node = Node(
            item.node_id,
            display_name=naming.display_name or item.display_name,
            group=naming.group if naming.group is not None else item.group,
            interval_s=item.hello.interval_s,
            hello=item.hello,
            state=item.state,
            status=NodeStatus.OFFLINE,
            address=item.address,
            last_seen_wall=item.last_seen_epoch_s,
        )
        self._registry.restore(node)
        if self._registry.nodes.get(item.node_id) is node:
            self._written[item.node_id] = node.last_seen_wall

    def _log_skipped(self, skipped: list[SkippedRow], total: int) -> None:
        for row in skipped[:SKIPPED_LOGGED]:
            log.warning(
                "state file %s: skipped node %.80r, which cannot be read (%s); "
                "`sers-hub forget %s --state-db %s` with the hub stopped removes it",
                self._path,
                row.node_id,
                row.reason,
                shlex.quote(str(row.node_id)[:80]),
                shlex.quote(self._path),
            )
        if len(skipped) > SKIPPED_LOGGED:
            log.warning(
                "state file %s: skipped %d more of its %d nodes, which cannot be read either",
                self._path,
                len(skipped) - SKIPPED_LOGGED,
                total,
            )

    async def run(self, every_s: float = SYNC_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self._store is None:
                if time.monotonic() >= self._next_open_mono:
                    await self.open()
            else:
                await self.flush()

    async def flush(self, final: bool = False) -> int:
        """Writes the nodes that are due (every one heard from since its last write when
        ``final``); returns how many."""
        if self._store is None:
            return 0
        nodes = self._registry.nodes
        due_ids = self._dirty
        now = time.monotonic()
        if final or now >= self._refresh_at_mono:
            self._refresh_at_mono = now + self._refresh_every_s
            written_at = self._written.get
            due_ids = due_ids | {
                node_id
                for node_id, node in nodes.items()
                if node.last_seen_wall > written_at(node_id, -math.inf)
            }
        # taken before the write: whatever changes while it runs is marked for the next flush
        self._dirty = set()
        rows = []
        for node_id in due_ids:
            node = nodes.get(node_id)
            if node is not None and node.hello is not None:
                rows.append(
                    StoredNode(
                        node_id,
                        node.display_name,
                        node.group,
                        node.address,
                        node.hello,
                        node.state,
                        node.last_seen_wall,
                    )
                )
        if not rows:
            return 0
        try:
            await self._call(self._store.save, rows)
        except StoreGone as exc:
            log.warning("%s: opening it again", exc)
            await self._drop_store()
            return 0
        except (sqlite3.Error, OSError) as exc:
            self._dirty.update(row.node_id for row in rows)
            if self._write_problem is None:
                reason = (
                    describe_sqlite_error(self._path, exc) if isinstance(exc, sqlite3.Error) else str(exc)
                )
                log.error("%s. Live monitoring goes on; the hub keeps trying to write the file", reason)
                self._write_problem = reason
            return 0
        if self._write_problem is not None:
            log.info("state file %s: writing works again", self._path)
            self._write_problem = None
        for row in rows:
            if row.node_id in nodes:  # not forgotten meanwhile
                self._written[row.node_id] = row.last_seen_epoch_s
        return len(rows)

    async def forget(self, node_id: str) -> bool:
        self._written.pop(node_id, None)
        if self._store is None:
            return False
        try:
            forgotten: bool = await self._call(self._store.forget, node_id)
        except StoreError as exc:
            log.error("cannot remove node %s from the state file: %s", node_id, exc)
            return False
        return forgotten

    async def close(self) -> None:
        try:
            await self.flush(final=True)
            await self._drop_store()
        finally:
            self._executor.shutdown(wait=True)

    async def _drop_store(self) -> None:
        store, self._store = self._store, None
        self._write_problem = None
        if store is not None:
            try:
                await self._call(store.close)
            except sqlite3.Error as exc:
                log.warning("closing the state file %s: %s", self._path, exc)


def forget_offline(path: str, node_id: str) -> bool:
    """For ``sers-hub forget``: removes one node from the file. Blocking; raises
    :class:`StoreError` when the file does not exist or cannot be used."""
    store = NodeStore(path, create=False)
    try:
        return store.forget(node_id)
    finally:
        store.close()


# --------------------------------------------------------------------------- HTTP
async def forget_node(request: Request) -> Response:
    """``DELETE /api/v1/nodes/{node_id}``: forget a node that is not connected.

    Needs ``Authorization: Bearer <admin token>`` when any token is configured (``admin_token``,
    or else the shared ``agent_token``). A connected node cannot be forgotten (409): stop its
    agent first, or it would come straight back.
    """
    hub: HubState = request.app.state.hub
    denial = admin_denial(hub.settings, request, request.app.state.failures)
    if denial is not None:
        return denial
    node_id = request.path_params["node_id"]
    node = hub.registry.nodes.get(node_id)
    if node is not None and node.connection:
        return JSONResponse(
            {"error": f"node {node_id!r} is connected; stop its agent first"}, status_code=409
        )
    known = hub.registry.remove(node_id)  # first, so that no later flush writes it back
    sync: StoreSync | None = request.app.state.store
    in_file = await sync.forget(node_id) if sync is not None else False
    if not known and not in_file:
        return JSONResponse({"error": f"no node {node_id!r}"}, status_code=404)
    log.info("forgot node %s (asked by %s)", node_id, request.client.host if request.client else "?")
    return JSONResponse({"forgotten": node_id})


def _paused_call(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the store's thread with the garbage collector paused: a write builds and
    drops tens of thousands of rows (:func:`hub.memory.collector_paused`)."""
    with collector_paused():
        return fn(*args)
