"""``/usage``, ``/events``, the node page's stored part and the wall header's memory line,
rendered by a hub whose memory was written from registry events (in-process)."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from frontend.usage_views import memory_text
from hub.app import create_app
from hub.clock import ManualClock
from hub.domain.nodes import Naming
from hub.settings import HubSettings
from hub.store import NodeStore
from hub.usage.schema import HOST_METRICS, USAGE_COLUMNS, metric_columns
from hub.usage.store import store_info
from tests.test_usage_api import HOSTILE, T0, lab, range_query, run_lab  # lab: the fixture, shared

__all__ = ["lab"]


def cells(page: str, table_id: str) -> list[list[str]]:
    table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)]
        for r in rows
    ]


def test_the_usage_page_shows_the_table_the_chart_and_links(lab: Any) -> None:
    client, _ = lab
    page = client.get(f"/usage?{range_query()}&by=user").text
    rows = cells(page, "usage-table")
    assert rows[1][:5] == ["alice", "0.02", "0.02", "0.00", "0.1"]  # 75 s; 3 GiB x 100 s
    assert rows[2][0] == HOSTILE and "<script>" not in page.split("<body", 1)[1]  # escaped
    assert rows[-1][:2] == ["total", "0.04"]
    assert 'href="usage?from=' in page and "user=alice" in page and "by=node" in page
    assert re.search(r'<a id="csv" href="api/v1/usage\?[^"]*format=csv', page)
    assert len(re.findall(r"<rect ", page)) == 1  # one day with usage
    detail = client.get(f"/usage?{range_query()}&user=alice&by=node").text
    assert [row[0] for row in cells(detail, "usage-table")[1:-1]] == ["gpu01"]
    assert "GPU-hours of alice by node" in detail


def test_a_bad_range_is_named_on_the_page(lab: Any) -> None:
    client, _ = lab
    response = client.get("/usage?from=last-tuesday")
    assert response.status_code == 400 and "from: expected an ISO date" in response.text


def test_the_events_page_lists_and_filters(lab: Any) -> None:
    client, _ = lab
    rows = cells(client.get("/events").text, "event-table")
    assert {row[1] for row in rows[1:]} == {"gpu01", "gpu02"} and rows[1][2] == "status"
    only = cells(client.get("/events?node=gpu02&kind=status").text, "event-table")
    assert [row[1] for row in only[1:]] == ["gpu02"]
    assert "No events." in client.get("/events?kind=driver").text


def test_the_node_page_has_stored_charts_and_events_and_the_wall_a_memory_line(lab: Any) -> None:
    client, _ = lab
    page = client.get("/node/gpu01").text
    stored = page.split('id="stored"', 1)[1]
    assert "GPU 0, last 24 hours" in stored and "GPU 0, last 7 days" in stored
    assert re.search(
        r'<svg id="stored-hours-gpu0-gpu01"[^>]*><title>GPU 0, last 24 hours</title><path d="M', stored
    )
    assert "offline → live (hello)" in stored
    wall = client.get("/").text
    assert re.search(
        r'class="memory-line" href="usage">memory [0-9.]+[KM] · [0-9]+ (min|h) since [0-9]{2}:[0-9]{2}<', wall
    )


def test_a_store_that_fails_is_warned_of_in_the_header(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    settings = HubSettings(state_db=str(folder), names={"gpu01": Naming(group="vision")})
    clock = ManualClock(mono_s=10.0, wall_s=T0)
    with TestClient(create_app(settings, clock)) as client:
        run_lab(client, clock)
        wall = client.get("/").text
        assert 'class="memory-warn"' in wall and "is a folder" in wall
        assert client.get("/usage").status_code == 503
        assert client.get("/node/gpu01").status_code == 200  # live monitoring goes on


def test_the_header_says_how_far_back_the_file_remembers_not_since_midnight(tmp_path: Path) -> None:
    """A day's usage row starts at midnight; a hub that began counting at 09:55 remembers since
    09:55, not since 00:00 (the hourly rows, the history and the events say when it began)."""
    path = str(tmp_path / "hub.sqlite3")
    store = NodeStore(path)
    db = store.connection
    midnight = dt.datetime(2026, 12, 7).timestamp()
    began = midnight + 9 * 3600 + 55 * 60
    zeros = ", 0" * len(USAGE_COLUMNS)
    for table, start in (("usage_daily", midnight), ("usage_hourly", midnight + 9 * 3600)):
        db.execute(f"INSERT INTO {table} VALUES (?, 'alice', 'gpu01', 'A100', '', ''{zeros})", (start,))
    db.execute(
        "INSERT INTO events (at_s, node_id, kind, summary) VALUES (?, 'gpu01', 'status', 'offline → live')",
        (began,),
    )
    db.execute(
        "INSERT INTO events (at_s, node_id, kind, summary) VALUES (?, 'gpu01', 'status', 'live → offline')",
        (began + 20 * 60,),
    )
    info = store_info(path, db)
    assert info.oldest_s == began and info.newest_s == began + 20 * 60
    assert memory_text(4096, info.oldest_s, info.newest_s) == "memory 4.0K · 20 min since 09:55"
    # once the hourly rows are past their retention, the daily ones say how far back it goes
    db.execute("DELETE FROM usage_hourly")
    db.execute("UPDATE usage_daily SET day_start_s = ?", (midnight - 40 * 86400,))
    info = store_info(path, db)
    assert info.oldest_s == midnight - 40 * 86400
    assert memory_text(4096, info.oldest_s, info.newest_s).startswith("memory 4.0K · 40 d since 2026-10-28")
    store.close()


def test_the_header_s_time_range_reads_no_table_whole(tmp_path: Path) -> None:
    """The page header's span is read after every flush: each statement must be an index seek
    (a min() and a max() in one query, or over a column that leads no index, read the whole
    table: seconds for a 500-node file)."""
    path = str(tmp_path / "hub.sqlite3")
    store = NodeStore(path)
    db = store.connection
    for node, tier, bucket in (("gpu01", 60, 600), ("gpu01", 900, 0), ("gpu02", 60, 660)):
        db.execute(
            "INSERT INTO history_host (node_id, tier_s, bucket_start_s, "
            + ", ".join(c for c in metric_columns(HOST_METRICS) if c.endswith("_n"))
            + ") VALUES (?, ?, ?"
            + ", 1" * len(HOST_METRICS)
            + ")",
            (node, tier, bucket),
        )
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    info = store_info(path, db)
    db.set_trace_callback(None)
    assert (info.oldest_s, info.newest_s) == (0, 660)
    plans = [" ".join(str(step[3]) for step in db.execute(f"EXPLAIN QUERY PLAN {sql}")) for sql in statements]
    assert plans and not [plan for plan in plans if "SCAN" in plan], list(zip(statements, plans, strict=True))
    store.close()
