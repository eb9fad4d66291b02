"""``sers-hub usage --state-db FILE --from ... --to ... --by user``: the usage table offline, for
a monthly report by cron. Reads the file read-only, so it can run beside a running hub (which
has written everything but its last flush interval)."""

from __future__ import annotations

import argparse
import csv
import os
import sqlite3
import sys
import time
from collections.abc import Sequence

from hub.settings import default_state_db
from hub.store import StoreError, describe_sqlite_error
from hub.usage.store import BY_COLUMNS, DAY_S, csv_lines, open_read_only, usage_report
from hub.usage.timerange import RangeError, iso, resolve
from node_agent.given import env_value


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def usage_cli(argv: Sequence[str]) -> int:
    state_db = env_value(os.environ, "SERS_STATE_DB") or default_state_db(os.environ)
    parser = argparse.ArgumentParser(
        prog="sers-hub usage",
        description="Print GPU-hours per user, group, GPU model or node from the hub's state file.",
        epilog="Dates and times are ISO (2026-11-01, 2026-11-01T08:00), in local time unless they "
        "carry an offset; a date means its midnight. Without --from and --to: today.",
    )
    parser.add_argument("--state-db", metavar="FILE", default=state_db, help=f"(default: {state_db})")
    parser.add_argument("--from", dest="start", metavar="WHEN", help="start (default: today's midnight)")
    parser.add_argument("--to", dest="end", metavar="WHEN", help="end, excluded (default: now)")
    parser.add_argument("--by", choices=tuple(BY_COLUMNS), default="user")
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    parser.add_argument(
        "--hourly-keep-days",
        type=float,
        default=90.0,
        metavar="DAYS",
        help="the hub's usage_hourly_keep_d: older ranges are read per day (default: 90)",
    )
    args = parser.parse_args(argv)
    now = time.time()
    try:
        start, end = resolve(args.start, args.end, None, now)
    except RangeError as exc:
        print(f"sers-hub usage: error: {exc}", file=sys.stderr)
        return 2
    try:
        db = open_read_only(args.state_db)
        try:
            report = usage_report(db, start, end, args.by, now - args.hourly_keep_days * DAY_S)
        finally:
            db.close()
    except StoreError as exc:
        print(f"sers-hub usage: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"sers-hub usage: error: {describe_sqlite_error(args.state_db, exc)}", file=sys.stderr)
        return 2
    if args.format == "csv":
        csv.writer(sys.stdout).writerows(csv_lines(report.rows, args.by))
        return 0
    print(f"GPU-hours by {args.by}, {iso(start)} to {iso(end)}")
    header = (args.by, "held", "busy", "idle-held", "GiB-hours")
    lines = [
        (
            row.key[:40].encode("unicode_escape").decode("ascii"),  # no terminal escapes from agents
            _hours(row.gpu_seconds),
            _hours(row.busy_gpu_seconds),
            _hours(row.idle_held_gpu_seconds),
            f"{row.gpu_mem_byte_seconds / 3600 / 1024**3:.1f}",
        )
        for row in report.rows
    ]
    widths = [max(len(line[i]) for line in (header, *lines)) for i in range(len(header))]
    for line in (header, *lines):
        print(
            line[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))
        )
    if not lines:
        print("(no usage recorded in this range)")
    return 0
