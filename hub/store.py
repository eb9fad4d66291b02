"""The hub's memory of the nodes it has seen, in an SQLite file, so a restart loses nobody.

One row per node: name, display name, group, address, the last hello (static facts), the last
state and the wall time it was last seen. :class:`StoreSync` mirrors the registry into the file
from a background task: a node is written after its hello, when its status changes (a
disconnect included), when its naming changes and otherwise at most every
:data:`REFRESH_EVERY_S` while it stays connected. All SQLite calls run on the store's own
thread, never on the event loop. On startup the remembered nodes come back as offline with their
"last seen" time.

Nodes leave the file only deliberately: ``DELETE /api/v1/nodes/{id}`` on a running hub (see
:func:`forget_node`) or ``sers-hub forget NODE --state-db FILE`` with the hub stopped.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.registry import Naming, Node, NodeRegistry, NodeStatus
from hub.security import admin_denial
from hub.state import HubState
from node_agent.protocol import Hello, ProtocolError, Snapshot, check_patch, decode, encode

log = logging.getLogger("sers.hub")

SCHEMA_VERSION = 1
SYNC_EVERY_S = 1.0
REFRESH_EVERY_S = 30.0
T = TypeVar("T")

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


class StoreError(Exception):
    """The state file cannot be opened or is not a sers-hub state file."""


@dataclass(frozen=True, slots=True)
class StoredNode:
    node_id: str
    display_name: str
    group: str | None
    address: str | None
    hello: Hello
    state: Snapshot
    last_seen_epoch_s: float


class NodeStore:
    """Blocking access to the file. Use it from one thread at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer sers-hub (schema {version})")
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use {path} as the state file: {exc}") from None

    def load(self) -> list[StoredNode]:
        rows = self._db.execute(
            "SELECT node_id, display_name, node_group, address, hello_json, state_json, last_seen_epoch_s"
            " FROM nodes"
        ).fetchall()
        nodes = []
        for node_id, display_name, group, address, hello_json, state_json, last_seen in rows:
            try:
                hello = decode(hello_json)
                if not isinstance(hello, Hello) or hello.node != node_id:
                    raise ProtocolError("the stored hello is not this node's")
                state = check_patch(orjson.loads(state_json), "state")
            except (ProtocolError, orjson.JSONDecodeError) as exc:
                log.warning("state file: skipping node %r: %s", node_id, exc)
                continue
            nodes.append(
                StoredNode(node_id, str(display_name), group, address, hello, state, float(last_seen))
            )
        return nodes

    def save(self, nodes: list[StoredNode]) -> None:
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET"
                " display_name=excluded.display_name, node_group=excluded.node_group,"
                " address=excluded.address, hello_json=excluded.hello_json,"
                " state_json=excluded.state_json, last_seen_epoch_s=excluded.last_seen_epoch_s,"
                " written_epoch_s=excluded.written_epoch_s",
                [
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
                ],
            )

    def forget(self, node_id: str) -> bool:
        with self._transaction():
            return self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount > 0

    def node_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT node_id FROM nodes ORDER BY node_id")]

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


@dataclass(frozen=True, slots=True)
class _Written:
    """What the file holds for one node, to tell whether it is due again."""

    hello: Hello
    status: NodeStatus
    display_name: str
    group: str | None
    last_seen_epoch_s: float


class StoreSync:
    """Mirrors the registry into a :class:`NodeStore` from the event loop, in batches, off-loop."""

    def __init__(
        self,
        path: str,
        registry: NodeRegistry,
        names: Mapping[str, Naming],
        refresh_every_s: float = REFRESH_EVERY_S,
    ) -> None:
        self._path = path
        self._registry = registry
        self._names = names
        self._refresh_every_s = refresh_every_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sers-store")
        self._store: NodeStore | None = None
        self._written: dict[str, _Written] = {}
        self._failing_since: float | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> int:
        """Opens the file and puts every remembered node in the registry as offline."""
        self._store = await self._call(NodeStore, self._path)
        stored: list[StoredNode] = await self._call(self._store.load)
        for item in stored:
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
            self._written[item.node_id] = self._snapshot_of(node)
        log.info("remembered %d node(s) from %s", len(stored), self._path)
        return len(stored)

    async def run(self, every_s: float = SYNC_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.flush()

    async def flush(self, final: bool = False) -> int:
        """Writes the nodes that are due (every changed one when ``final``); returns how many."""
        due = [node for node in self._registry.nodes.values() if self._is_due(node, final)]
        if not due or self._store is None:
            return 0
        # taken before the write: whatever changes while it runs is due at the next flush
        written = {node.node_id: self._snapshot_of(node) for node in due}
        rows = [
            StoredNode(n.node_id, n.display_name, n.group, n.address, w.hello, n.state, w.last_seen_epoch_s)
            for n in due
            for w in (written[n.node_id],)
        ]
        try:
            await self._call(self._store.save, rows)
        except (sqlite3.Error, OSError) as exc:
            now = time.monotonic()
            if self._failing_since is None or now - self._failing_since >= 60:
                log.error("cannot write the state file %s: %s (will retry)", self._path, exc)
                self._failing_since = now
            return 0
        self._failing_since = None
        for node_id, snapshot in written.items():
            if node_id in self._registry.nodes:  # not forgotten meanwhile
                self._written[node_id] = snapshot
        return len(rows)

    async def forget(self, node_id: str) -> bool:
        self._written.pop(node_id, None)
        if self._store is None:
            return False
        forgotten: bool = await self._call(self._store.forget, node_id)
        return forgotten

    async def close(self) -> None:
        try:
            await self.flush(final=True)
            if self._store is not None:
                await self._call(self._store.close)
        finally:
            self._store = None
            self._executor.shutdown(wait=True)

    def _is_due(self, node: Node, final: bool) -> bool:
        if node.hello is None:
            return False
        written = self._written.get(node.node_id)
        if written is None:
            return True
        if (
            written.hello is not node.hello
            or written.status is not node.status
            or written.display_name != node.display_name
            or written.group != node.group
        ):
            return True
        age_s = node.last_seen_wall - written.last_seen_epoch_s
        return age_s > 0 if final else age_s >= self._refresh_every_s

    @staticmethod
    def _snapshot_of(node: Node) -> _Written:
        assert node.hello is not None
        return _Written(node.hello, node.status, node.display_name, node.group, node.last_seen_wall)


def forget_offline(path: str, node_id: str) -> bool:
    """For ``sers-hub forget``: removes one node from the file. Blocking."""
    store = NodeStore(path)
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
    change = hub.registry.remove(node_id)  # first, so that no later flush writes it back
    hub.fanout.note(change)
    sync: StoreSync | None = request.app.state.store
    in_file = await sync.forget(node_id) if sync is not None else False
    if change is None and not in_file:
        return JSONResponse({"error": f"no node {node_id!r}"}, status_code=404)
    log.info("forgot node %s (asked by %s)", node_id, request.client.host if request.client else "?")
    return JSONResponse({"forgotten": node_id})
