"""Firing alerts in the hub's state file, so a restarted hub does not send them again.

The table ``alerts_firing`` lives beside the store's own tables; these functions run on the
store's thread (:meth:`hub.store.StoreSync.on_store`) with its connection.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from hub.alerts.engine import Alert, Subject

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts_firing (
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    node_id TEXT,
    gpu TEXT,
    text TEXT NOT NULL,
    fired_epoch_s REAL NOT NULL,
    notified INTEGER NOT NULL,
    PRIMARY KEY (rule, subject)
)
"""


class FiringRow(NamedTuple):
    rule: str
    subject: Subject
    text: str
    fired_epoch_s: float
    notified: bool


class Change(NamedTuple):
    rule: str
    subject_key: str
    row: FiringRow | None  # None: no longer firing


def change_of(key: tuple[str, str], alert: Alert | None) -> Change:
    if alert is None:
        return Change(key[0], key[1], None)
    return Change(
        key[0],
        key[1],
        FiringRow(alert.rule.name, alert.subject, alert.text, alert.fired_wall, alert.notified),
    )


def load(db: sqlite3.Connection) -> list[FiringRow]:
    db.execute(_SCHEMA)
    rows = []
    for rule, key, node, gpu, text, fired, notified in db.execute(
        "SELECT rule, subject, node_id, gpu, text, fired_epoch_s, notified FROM alerts_firing"
    ):
        if not (isinstance(rule, str) and isinstance(key, str) and isinstance(text, str)):
            continue  # not a row this hub wrote: leave it for the next save to overwrite or keep
        rows.append(
            FiringRow(
                rule,
                Subject(key, node if isinstance(node, str) else None, gpu if isinstance(gpu, str) else None),
                text,
                float(fired) if isinstance(fired, int | float) else 0.0,
                bool(notified),
            )
        )
    return rows


def save(db: sqlite3.Connection, changes: list[Change]) -> int:
    """Writes ``changes`` in one transaction; returns how many."""
    db.execute(_SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    try:
        for change in changes:
            row = change.row
            if row is None:
                db.execute(
                    "DELETE FROM alerts_firing WHERE rule = ? AND subject = ?",
                    (change.rule, change.subject_key),
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO alerts_firing VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.rule,
                        row.subject.key,
                        row.subject.node,
                        row.subject.gpu,
                        row.text,
                        row.fired_epoch_s,
                        int(row.notified),
                    ),
                )
        db.execute("COMMIT")
        return len(changes)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
