"""The memory's tables in the state file: writing a batch, dropping what is past retention, and
the reads behind ``/usage``, ``/events``, the node page's charts and ``sers-hub usage``.

Blocking SQLite calls, made on the store's thread (:meth:`hub.store.StoreSync.on_store`) or, for
``sers-hub usage``, on a read-only connection of their own (:func:`open_read_only`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from hub.domain.usage import MemoryLimits
from hub.eventlog import EventRow
from hub.store import APPLICATION_ID, NodeStore, StoreError, describe_sqlite_error
from hub.usage.accounting import Pending
from hub.usage.history import MINUTE_S, QUARTER_S, Batch
from hub.usage.schema import GPU_METRICS, HOST_METRICS, USAGE_COLUMNS, metric_columns

DAY_S = 86400.0
HOUR_S = 3600.0
BY_COLUMNS = {"user": "user", "group": "node_group", "model": "model", "node": "node_id"}
MAX_EVENTS_READ = 1000


@dataclass(slots=True)
class MemoryBatch:
    """What the hub counted since its last write."""

    usage: Pending = field(default_factory=dict)
    history: Batch = field(default_factory=dict)  # 1-minute buckets
    events: list[EventRow] = field(default_factory=list)
    # node -> (from, to): the complete quarters whose 15-minute buckets to make (QuarterBook)
    quarters: dict[str, tuple[int, int]] = field(default_factory=dict)

    def rows(self) -> int:
        return len(self.usage) + len(self.history) + len(self.events)


# --------------------------------------------------------------------------- writing
def _usage_upsert(table: str, period: str) -> str:
    columns = ", ".join(USAGE_COLUMNS)
    adds = ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COLUMNS)
    return (
        f"INSERT INTO {table} ({period}, user, node_id, model, node_group, job, {columns}) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        f"ON CONFLICT ({period}, user, node_id, model, node_group, job) DO UPDATE SET {adds}"
    )


def _history_upsert(table: str, metrics: tuple[str, ...], gpu: bool) -> str:
    columns = metric_columns(metrics)
    merged = []
    for c in columns:
        if c.endswith("_max"):
            merged.append(f"{c} = max(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))")
        else:
            merged.append(f"{c} = coalesce({c}, 0) + coalesce(excluded.{c}, 0)")
    keys = "node_id, tier_s, bucket_start_s" + (", gpu_index" if gpu else "")
    marks = ", ".join("?" * (keys.count(",") + 1 + len(columns)))
    return (
        f"INSERT INTO {table} ({keys}, {', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(merged)}"
    )


def _quarter_picks(metrics: tuple[str, ...]) -> str:
    """A quarter's values from its 1-minute rows: sums of the sums and counts, maximum of the maxima."""
    return ", ".join(f"max({c})" if c.endswith("_max") else f"sum({c})" for c in metric_columns(metrics))


_QUARTER_OF = f"bucket_start_s - bucket_start_s % {QUARTER_S}"


def _quarter_upsert(table: str, metrics: tuple[str, ...], gpu: bool) -> str:
    """A node's 15-minute buckets over a time range, made from its 1-minute rows, replacing what
    the file held for them."""
    columns = metric_columns(metrics)
    keys = "node_id, tier_s, bucket_start_s" + (", gpu_index" if gpu else "")
    series = ", gpu_index" if gpu else ""
    return (
        f"INSERT INTO {table} ({keys}, {', '.join(columns)}) "
        f"SELECT node_id, {QUARTER_S}, {_QUARTER_OF}{series}, {_quarter_picks(metrics)} FROM {table} "
        f"WHERE node_id = ? AND tier_s = {MINUTE_S} AND bucket_start_s >= ? AND bucket_start_s < ? "
        f"GROUP BY {_QUARTER_OF}{series} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns)}"
    )


_HOURLY = _usage_upsert("usage_hourly", "hour_start_s")
_DAILY = _usage_upsert("usage_daily", "day_start_s")
_GPU_HISTORY = _history_upsert("history_gpu", GPU_METRICS, gpu=True)
_HOST_HISTORY = _history_upsert("history_host", HOST_METRICS, gpu=False)
_GPU_QUARTERS = _quarter_upsert("history_gpu", GPU_METRICS, gpu=True)
_HOST_QUARTERS = _quarter_upsert("history_host", HOST_METRICS, gpu=False)
_EVENT = "INSERT INTO events (at_s, node_id, kind, gpu, summary, detail_json) VALUES (?, ?, ?, ?, ?, ?)"


def write_batch(store: NodeStore, batch: MemoryBatch) -> None:
    """Adds a batch to the tables, in one transaction: all of it or nothing."""
    db = store.connection
    daily: dict[tuple[Any, ...], list[float]] = {}
    for key, totals in batch.usage.items():
        day_key = (key.day_start_s, key.user, key.node_id, key.model, key.group, key.job)
        have = daily.get(day_key)
        if have is None:
            daily[day_key] = list(totals)
        else:
            for i, value in enumerate(totals):
                have[i] += value
    hourly: dict[tuple[Any, ...], list[float]] = {}
    for key, totals in batch.usage.items():
        hour_key = (key.hour_start_s, key.user, key.node_id, key.model, key.group, key.job)
        have = hourly.get(hour_key)  # an hour split by a midnight has two keys
        if have is None:
            hourly[hour_key] = list(totals)
        else:
            for i, value in enumerate(totals):
                have[i] += value
    with store.transaction():
        db.executemany(_HOURLY, ((*k, *v) for k, v in hourly.items()))
        db.executemany(_DAILY, ((*k, *v) for k, v in daily.items()))
        # rows made as they are bound (generators): a batch's tuples never all exist at once;
        # an aggregate is the row's values as they are: SQLite binds a NaN maximum (no value
        # yet) as NULL, and a sum with a count of 0 means no value
        db.executemany(
            _GPU_HISTORY,
            (
                (k.node_id, k.tier_s, k.bucket_start_s, k.gpu_index, *v)
                for k, v in batch.history.items()
                if k.gpu_index is not None
            ),
        )
        db.executemany(
            _HOST_HISTORY,
            (
                (k.node_id, k.tier_s, k.bucket_start_s, *v)
                for k, v in batch.history.items()
                if k.gpu_index is None
            ),
        )
        for node_id, (from_s, to_s) in batch.quarters.items():
            db.execute(_GPU_QUARTERS, (node_id, from_s, to_s))
            db.execute(_HOST_QUARTERS, (node_id, from_s, to_s))
        db.executemany(
            _EVENT,
            (
                (e.at_s, e.node_id, e.kind, e.gpu, e.summary, orjson.dumps(e.detail).decode())
                for e in batch.events
            ),
        )


class QuarterBook:
    """Which nodes' 15-minute buckets are due: they are made from the 1-minute rows once a
    quarter is complete (all of it written), one statement per node, instead of being added to
    with every write. Made again from scratch, a bucket comes out the same, so a quarter made
    twice (after a restart) is still exact. Used on the store's thread only.

    ``due`` maps a node to the start of its first quarter not made yet.
    """

    def __init__(self) -> None:
        self.due: dict[str, int] = {}
        self.read = False  # the file's own lag was read (quarters_lagging)
        # 1-minute rows before this were dropped by this hub's last prune (None: not yet; a
        # hub before it dropped those older than its retention, as of then)
        self.pruned_below_s: float | None = None

    def _due_from(self, node_id: str, quarter_s: int) -> None:
        if quarter_s < self.due.get(node_id, quarter_s + 1):
            self.due[node_id] = quarter_s

    def catch_up(self, db: sqlite3.Connection) -> None:
        """Once, at the first write: adds the quarters the file's rows leave unmade."""
        if not self.read:
            for node_id, from_s in quarters_lagging(db).items():
                self._due_from(node_id, from_s)
            self.read = True

    def wrote(self, minutes: Iterable[tuple[str, int]]) -> dict[str, int]:
        """Notes the (node, minute start) buckets of a batch; returns each node's latest."""
        latest: dict[str, int] = {}
        for node_id, minute in minutes:
            if minute > latest.get(node_id, -1):
                latest[node_id] = minute
            self._due_from(node_id, minute - minute % QUARTER_S)
        return latest

    def ready(self, now_s: float, keep_1m_s: float) -> dict[str, tuple[int, int]]:
        """node -> (from, to) of the complete quarters to make now: those ended by ``now_s``
        (the batch's take: every sample of them is in the file or the batch) and whose minutes
        no prune has touched (a quarter is made within a flush of its end, long before)."""
        to_s = int(now_s - now_s % QUARTER_S)
        pruned_below_s = now_s - keep_1m_s if self.pruned_below_s is None else self.pruned_below_s
        oldest_whole = math.ceil(pruned_below_s / QUARTER_S) * QUARTER_S
        return {
            node_id: (max(from_s, oldest_whole), to_s)
            for node_id, from_s in self.due.items()
            if max(from_s, oldest_whole) < to_s
        }

    def made(self, quarters: Mapping[str, tuple[int, int]], latest: Mapping[str, int]) -> None:
        """After the batch that made ``quarters`` was written."""
        for node_id, (_, to_s) in quarters.items():
            if latest.get(node_id, -1) >= to_s:
                self.due[node_id] = to_s  # the quarter going on now
            else:
                del self.due[node_id]


def quarters_lagging(db: sqlite3.Connection) -> dict[str, int]:
    """For a file just opened: each node's first quarter whose 15-minute buckets may lag its
    1-minute rows (a hub stopped or killed before it made them), one index seek each."""
    due: dict[str, int] = {}
    for table in ("history_host", "history_gpu"):
        for node_id in _node_ids(db, table):
            last_minute, first_minute = db.execute(
                f"SELECT max(bucket_start_s), min(bucket_start_s) FROM {table} WHERE node_id = ? AND tier_s = ?",
                (node_id, MINUTE_S),
            ).fetchone()
            if last_minute is None:
                continue
            last_quarter = db.execute(
                f"SELECT max(bucket_start_s) FROM {table} WHERE node_id = ? AND tier_s = ?",
                (node_id, QUARTER_S),
            ).fetchone()[0]
            if last_quarter is None:
                from_s = first_minute - first_minute % QUARTER_S
            elif last_minute >= last_quarter:
                from_s = last_quarter  # made again: it may have been made before it was complete
            else:
                continue
            due[node_id] = min(due.get(node_id, from_s), from_s)
    return due


def prune(store: NodeStore, limits: MemoryLimits, now_s: float) -> int:
    """Drops what is past retention; returns how many rows. History goes node by node (its
    rows lead with the node), each in its own short transaction."""
    db = store.connection
    dropped = 0
    with store.transaction():
        for sql, keep_s in (
            ("DELETE FROM usage_hourly WHERE hour_start_s < ?", limits.usage_hourly_keep_d * DAY_S),
            ("DELETE FROM usage_daily WHERE day_start_s < ?", limits.usage_daily_keep_d * DAY_S),
            ("DELETE FROM events WHERE at_s < ?", limits.events_keep_d * DAY_S),
        ):
            dropped += db.execute(sql, (now_s - keep_s,)).rowcount
    for table in ("history_gpu", "history_host"):
        for node_id in _node_ids(db, table):
            with store.transaction():
                for tier_s, keep_s in (
                    (MINUTE_S, limits.history_1m_keep_h * HOUR_S),
                    (QUARTER_S, limits.history_15m_keep_d * DAY_S),
                ):
                    dropped += db.execute(
                        f"DELETE FROM {table} WHERE node_id = ? AND tier_s = ? AND bucket_start_s < ?",
                        (node_id, tier_s, now_s - keep_s),
                    ).rowcount
    return dropped


MAX_DAYS_CUT = 31  # per prune: a file far over its limit shrinks over a few prunes


def live_bytes(db: sqlite3.Connection) -> int:
    """The bytes the file's rows use (SQLite reuses the pages deleted rows free: the file
    stops growing once its rows fit)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages * db.execute("PRAGMA page_size").fetchone()[0])


def hold_size(store: NodeStore, limits: MemoryLimits) -> int:
    """Drops the oldest days of 15-minute history, then of hourly usage, while the rows take
    more than ``max_file_mib``; returns how many rows (logged by the caller)."""
    if limits.max_file_mib <= 0:
        return 0
    limit_bytes = int(limits.max_file_mib * 1024**2)
    db = store.connection
    dropped = 0
    for _ in range(MAX_DAYS_CUT):
        if live_bytes(db) <= limit_bytes:
            break
        oldest = _oldest_quarter(db)
        if oldest is not None:
            for table in ("history_gpu", "history_host"):
                for node_id in _node_ids(db, table):
                    with store.transaction():
                        dropped += db.execute(
                            f"DELETE FROM {table} WHERE node_id = ? AND tier_s = ? AND bucket_start_s < ?",
                            (node_id, QUARTER_S, oldest + DAY_S),
                        ).rowcount
            continue
        hour = db.execute("SELECT min(hour_start_s) FROM usage_hourly").fetchone()[0]
        if hour is None:
            break  # nothing more to give: daily usage and events stay
        with store.transaction():
            dropped += db.execute("DELETE FROM usage_hourly WHERE hour_start_s < ?", (hour + DAY_S,)).rowcount
    return dropped


def _oldest_quarter(db: sqlite3.Connection) -> float | None:
    """The oldest 15-minute bucket of any node, one index seek per node."""
    oldest = None
    for node_id in _node_ids(db, "history_gpu") + _node_ids(db, "history_host"):
        for table in ("history_gpu", "history_host"):
            found = db.execute(
                f"SELECT min(bucket_start_s) FROM {table} WHERE node_id = ? AND tier_s = ?",
                (node_id, QUARTER_S),
            ).fetchone()[0]
            if found is not None and (oldest is None or found < oldest):
                oldest = found
    return oldest


def _node_ids(db: sqlite3.Connection, table: str) -> list[str]:
    """The nodes a history table holds, one index seek each (no scan of the table)."""
    found: list[str] = []
    row = db.execute(f"SELECT min(node_id) FROM {table}").fetchone()
    while row is not None and row[0] is not None:
        found.append(row[0])
        row = db.execute(f"SELECT min(node_id) FROM {table} WHERE node_id > ?", (row[0],)).fetchone()
    return found


def remembered_versions(store: NodeStore) -> dict[str, tuple[str | None, str | None]]:
    """Each remembered node's agent and driver version (for :meth:`hub.eventlog.EventLog.seed`)."""
    rows = store.connection.execute(
        "SELECT node_id, json_extract(hello_json, '$.agent_version'),"
        " json_extract(hello_json, '$.gpu_driver.driver_version') FROM nodes"
        " WHERE json_valid(hello_json)"
    )
    return {
        str(node): (a if isinstance(a, str) else None, d if isinstance(d, str) else None)
        for node, a, d in rows
    }


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    gpu_seconds: float
    busy_gpu_seconds: float
    idle_held_gpu_seconds: float
    gpu_mem_byte_seconds: float


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Rows per key, largest first; ``daily``: per day start, per key, GPU-seconds held;
    ``table``: which table answered (``usage_hourly`` rounds the range to whole hours,
    ``usage_daily`` to whole days)."""

    rows: list[UsageRow]
    daily: dict[float, dict[str, float]]
    table: str


def usage_report(
    db: sqlite3.Connection,
    from_s: float,
    to_s: float,
    by: str,
    hourly_since_s: float,
    user: str | None = None,
) -> UsageReport:
    """Usage in ``[from_s, to_s)`` grouped ``by`` (a key of :data:`BY_COLUMNS`). The hourly
    table answers when it still holds ``from_s`` (it is kept from ``hourly_since_s``), else the
    daily table. ``user``: that user's rows only. A file from before the memory (no tables)
    answers with no rows."""
    column = BY_COLUMNS[by]
    table, period = (
        ("usage_hourly", "hour_start_s") if from_s >= hourly_since_s else ("usage_daily", "day_start_s")
    )
    sums = ", ".join(f"sum({c})" for c in USAGE_COLUMNS)
    only_user = " AND user = ?" if user is not None else ""
    user_args: tuple[str, ...] = (user,) if user is not None else ()
    try:
        rows = db.execute(
            f"SELECT {column}, {sums} FROM {table} WHERE {period} >= ? AND {period} < ?{only_user}"
            f" GROUP BY {column} ORDER BY sum(gpu_seconds) DESC, {column}",
            (from_s - from_s % HOUR_S if table == "usage_hourly" else from_s, to_s, *user_args),
        ).fetchall()
        days = db.execute(
            f"SELECT day_start_s, {column}, sum(gpu_seconds) FROM usage_daily"
            f" WHERE day_start_s >= ? AND day_start_s < ?{only_user} GROUP BY day_start_s, {column}",
            (from_s - DAY_S + 1, to_s, *user_args),  # the day that holds from_s starts before it
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return UsageReport([], {}, table)
        raise
    daily: dict[float, dict[str, float]] = {}
    for day, key, gpu_s in days:
        daily.setdefault(day, {})[key] = gpu_s
    return UsageReport([UsageRow(str(r[0]), *r[1:]) for r in rows], daily, table)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    at_s: float
    node_id: str
    kind: str
    gpu: str | None
    summary: str


def read_events(
    db: sqlite3.Connection,
    node: str | None = None,
    since_s: float | None = None,
    until_s: float | None = None,
    kinds: Sequence[str] = (),
    limit: int = 200,
) -> list[LoggedEvent]:
    """The newest ``limit`` events (at most :data:`MAX_EVENTS_READ`) that match, newest first."""
    where = []
    args: list[Any] = []
    if node:
        where.append("node_id = ?")
        args.append(node)
    if since_s is not None:
        where.append("at_s >= ?")
        args.append(since_s)
    if until_s is not None:
        where.append("at_s < ?")
        args.append(until_s)
    if kinds:
        where.append(f"kind IN ({', '.join('?' * len(kinds))})")
        args.extend(kinds)
    sql = "SELECT at_s, node_id, kind, gpu, summary FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY at_s DESC, id DESC LIMIT ?"
    args.append(max(1, min(limit, MAX_EVENTS_READ)))
    return [LoggedEvent(*row) for row in db.execute(sql, args)]


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    bucket_start_s: int
    mean: float | None
    max: float | None


def read_history(
    db: sqlite3.Connection, node_id: str, tier_s: int, since_s: float
) -> dict[str, dict[str, list[SeriesPoint]]]:
    """A node's stored buckets since ``since_s``: ``{"host": {metric: points}, "gpu<i>": {...}}``.
    The 15-minute tier ends with the quarters not made yet (the one going on), summed from
    their 1-minute rows as the file holds them now."""
    out: dict[str, dict[str, list[SeriesPoint]]] = {}
    for table, metrics, series, gpu_index in (
        ("history_host", HOST_METRICS, "'host'", ""),
        ("history_gpu", GPU_METRICS, "'gpu' || gpu_index", ", gpu_index"),
    ):
        columns = ", ".join(metric_columns(metrics))
        sql = (
            f"SELECT {series}, bucket_start_s, {columns} FROM {table}"
            " WHERE node_id = ? AND tier_s = ? AND bucket_start_s >= ?"
        )
        args: list[Any] = [node_id, tier_s, int(since_s)]
        if tier_s == QUARTER_S:
            sql += (
                f" UNION ALL SELECT {series}, {_QUARTER_OF}, {_quarter_picks(metrics)} FROM {table}"
                f" WHERE node_id = ? AND tier_s = {MINUTE_S} AND bucket_start_s >= max(?, (SELECT"
                f" coalesce(max(bucket_start_s) + {QUARTER_S}, 0) FROM {table} WHERE node_id = ? AND"
                f" tier_s = {QUARTER_S})) GROUP BY {_QUARTER_OF}{gpu_index}"
            )
            args += [node_id, int(since_s), node_id]
        for row in db.execute(sql + " ORDER BY 2", args):
            name, bucket = row[0], row[1]
            per_metric = out.setdefault(name, {})
            for i, metric in enumerate(metrics):
                total, count, top = row[2 + 3 * i : 5 + 3 * i]
                mean = total / count if count else None
                per_metric.setdefault(metric, []).append(SeriesPoint(bucket, mean, top))
    return out


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What the page header says about the memory."""

    size_bytes: int
    oldest_s: float | None
    newest_s: float | None


Span = tuple[float | None, float | None]  # (oldest, newest)


def history_span(db: sqlite3.Connection) -> Span:
    """The oldest and the newest bucket of the host history, a few index seeks per node (a min()
    or max() over a column that leads no index reads the whole table)."""
    oldest: float | None = None
    newest: float | None = None
    for node_id in _node_ids(db, "history_host"):
        for tier_s in (MINUTE_S, QUARTER_S):
            for pick in ("min", "max"):
                found = db.execute(
                    f"SELECT {pick}(bucket_start_s) FROM history_host WHERE node_id = ? AND tier_s = ?",
                    (node_id, tier_s),
                ).fetchone()[0]
                if found is not None:
                    oldest = found if oldest is None else min(oldest, found)
                    newest = found if newest is None else max(newest, found)
    return oldest, newest


def _bounds(db: sqlite3.Connection, table: str, column: str) -> Span:
    """min() and max() of a column that leads an index, as two seeks (one query asking both
    reads the whole table)."""
    first = db.execute(f"SELECT min({column}) FROM {table}").fetchone()[0]
    last = db.execute(f"SELECT max({column}) FROM {table}").fetchone()[0]
    return first, last


def store_info(path: str, db: sqlite3.Connection, history: Span | None = None) -> StoreInfo:
    """The file's size and time range; ``history``: the host history's span where the caller
    kept it up to date (:func:`history_span` otherwise)."""
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += os.stat(path + suffix).st_size
    # how far back the file remembers: from its finest rows (the history, the event log); an
    # hour's or a day's usage row starts at the top of the hour or at midnight, so it counts
    # only where it reaches back further than that (else a hub started at 09:55 would claim to
    # remember since 00:00), as after the finer rows' retention
    oldest: float | None = None
    newest: list[float] = []
    for first, last in (history_span(db) if history is None else history, _bounds(db, "events", "at_s")):
        if first is not None and last is not None:
            oldest = first if oldest is None else min(oldest, first)
            newest.append(last)
    for (first, last), span_s in (
        (_bounds(db, "usage_hourly", "hour_start_s"), 3600.0),
        (_bounds(db, "usage_daily", "day_start_s"), DAY_S),
    ):
        if first is not None and last is not None:
            if oldest is None or first < oldest - span_s:
                oldest = first
            newest.append(last)
    return StoreInfo(size, oldest, max(newest) if newest else None)


# --------------------------------------------------------------------------- offline
def open_read_only(path: str) -> sqlite3.Connection:
    """For ``sers-hub usage``: the file, read-only (a running hub may be writing it). Raises
    :class:`StoreError` for a file that is missing or is not a sers-hub state file."""
    if not os.path.exists(path):
        raise StoreError(f"there is no state file {path}")
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5.0)
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(describe_sqlite_error(path, exc)) from None
    if app_id != APPLICATION_ID:
        db.close()
        raise StoreError(f"{path} is not a sers-hub state file (or one from before it held usage)")
    return db


def csv_text(text: str) -> str:
    """A name as a CSV cell a spreadsheet will not run: user and node names come from agents,
    and a cell that starts with ``=``, ``+``, ``-`` or ``@`` is a formula to Excel and LibreOffice."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_lines(rows: Iterable[UsageRow], by: str) -> Iterator[list[Any]]:
    """The usage table as CSV rows (a header first); numbers as plain decimals."""
    yield [by, *USAGE_COLUMNS]
    for row in rows:
        yield [
            csv_text(row.key),
            f"{row.gpu_seconds:.1f}",
            f"{row.busy_gpu_seconds:.1f}",
            f"{row.idle_held_gpu_seconds:.1f}",
            f"{row.gpu_mem_byte_seconds:.0f}",
        ]
