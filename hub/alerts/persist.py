"""Firing alerts and silences in the hub's state file, so a restarted hub neither sends an
alert again nor forgets a silence.

The tables ``alerts_firing`` and ``alerts_silences`` live beside the store's own tables; these
functions run on the store's thread (:meth:`hub.store.StoreSync.on_store`) with its connection.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from hub.alerts.engine import Alert, Silence, Subject

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
);
CREATE TABLE IF NOT EXISTS alerts_silences (
    silence_id INTEGER PRIMARY KEY,
    rule TEXT,
    node_glob TEXT,
    gpu TEXT,
    comment TEXT NOT NULL,
    created_by TEXT NOT NULL,
    starts_epoch_s REAL NOT NULL,
    ends_epoch_s REAL NOT NULL
)
"""


class FiringRow(NamedTuple):
    rule: str
    subject: Subject
    text: str
    fired_epoch_s: float
    notified: bool  # its firing message left for the delivery (not held by quiet hours)


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
        FiringRow(alert.rule.name, alert.subject, alert.text, alert.fired_wall, alert.sent),
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def load(db: sqlite3.Connection) -> tuple[list[FiringRow], list[Silence]]:
    db.executescript(_SCHEMA)
    silences = []
    for silence_id, rule, node, gpu, comment, by, starts, ends in db.execute(
        "SELECT silence_id, rule, node_glob, gpu, comment, created_by, starts_epoch_s, ends_epoch_s"
        " FROM alerts_silences"
    ):
        if isinstance(comment, str) and isinstance(starts, int | float) and isinstance(ends, int | float):
            silences.append(
                Silence(
                    int(silence_id),
                    comment,
                    str(by),
                    float(starts),
                    float(ends),
                    _text_or_none(rule),
                    _text_or_none(node),
                    _text_or_none(gpu),
                )
            )
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
    return rows, silences


def save(db: sqlite3.Connection, changes: list[Change], silences: list[Silence] | None = None) -> int:
    """Writes ``changes`` and, when given, the whole list of ``silences`` in one transaction;
    returns how many changes."""
    db.executescript(_SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    try:
        if silences is not None:
            db.execute("DELETE FROM alerts_silences")
            db.executemany(
                "INSERT INTO alerts_silences VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.silence_id, s.rule, s.node, s.gpu, s.comment, s.created_by, s.starts_wall, s.ends_wall)
                    for s in silences
                ],
            )
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
