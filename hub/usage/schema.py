"""The tables of the hub's memory (schema version 2 of the state file): usage per hour and per
day, downsampled history per node and GPU, and the event log. Every statement is idempotent, so
:mod:`hub.store` runs them to migrate a version-1 file in place (in the transaction that sets
the new version) and on every new file.

The usage tables lead with time (reports read a range, retention drops one); the history
tables lead with the node (a node page reads one node; retention drops by node, then time).
History keeps, per metric, the sum, the count and the maximum of its samples, so that batches
written at different times (or by a hub restarted in the middle of a bucket) add up exactly.
"""

from __future__ import annotations

USAGE_COLUMNS = ("gpu_seconds", "busy_gpu_seconds", "idle_held_gpu_seconds", "gpu_mem_byte_seconds")
GPU_METRICS = ("util_gpu_percent", "mem_used_bytes", "temp_celsius", "power_draw_watts")
HOST_METRICS = ("cpu_percent", "mem_used_bytes", "net_rx_bytes_per_s", "net_tx_bytes_per_s")
EVENT_KINDS = (
    "status",
    "gpu_health",
    "idle_held_start",
    "idle_held_end",
    "agent_version",
    "driver",
    "sample_gap",
    "node_removed",
    "alert",
)


def _usage_table(name: str, period: str) -> str:
    values = ", ".join(f"{c} REAL NOT NULL" for c in USAGE_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ({period} REAL NOT NULL, user TEXT NOT NULL, "
        f"node_id TEXT NOT NULL, model TEXT NOT NULL, node_group TEXT NOT NULL, job TEXT NOT NULL, "
        f"{values}, PRIMARY KEY ({period}, user, node_id, model, node_group, job)) WITHOUT ROWID"
    )


def metric_columns(metrics: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{m}_{part}" for m in metrics for part in ("sum", "n", "max"))


def _history_table(name: str, metrics: tuple[str, ...], series: str) -> str:
    columns = ", ".join(
        f"{c} {'INTEGER NOT NULL' if c.endswith('_n') else 'REAL'}" for c in metric_columns(metrics)
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {name} (node_id TEXT NOT NULL, tier_s INTEGER NOT NULL, "
        f"bucket_start_s INTEGER NOT NULL, {series}{columns}, "
        f"PRIMARY KEY (node_id, tier_s, bucket_start_s{', gpu_index' if series else ''})) WITHOUT ROWID"
    )


MEMORY_TABLES = (
    _usage_table("usage_hourly", "hour_start_s"),
    _usage_table("usage_daily", "day_start_s"),
    _history_table("history_gpu", GPU_METRICS, "gpu_index TEXT NOT NULL, "),
    _history_table("history_host", HOST_METRICS, ""),
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at_s REAL NOT NULL, "
    "node_id TEXT NOT NULL, kind TEXT NOT NULL, gpu TEXT, summary TEXT NOT NULL, detail_json TEXT)",
    "CREATE INDEX IF NOT EXISTS events_at ON events (at_s)",
    "CREATE INDEX IF NOT EXISTS events_node_at ON events (node_id, at_s)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: MEMORY_TABLES,  # version 1 held the nodes table alone
}
"""Statements that bring a file to each version from the one before."""
