"""``/api/v1/usage`` (JSON and CSV), ``/api/v1/events`` and ``sers-hub usage`` over a hub whose
memory was written from registry events: the numbers, the grouping, bad parameters, hostile
names and a hub without a state file."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hub.app import create_app
from hub.clock import ManualClock
from hub.domain.nodes import Naming
from hub.settings import HubSettings
from hub.usage.timerange import iso
from node_agent.protocol import Delta, Hello
from tests.procs import base_env

GIB = 1024**3
T0 = 1_796_637_600.0 + 120.0  # 2026-12-07 10:02:00 UTC
HOSTILE = '=HYPERLINK("http://x")<script>'


def run_lab(client: TestClient, clock: ManualClock) -> None:
    """Two nodes: alice and bob share gpu01's GPU 0 (3:1 by memory) for 100 s; the hostile
    user holds gpu02's GPU 0 for 50 s."""
    registry = client.app.state.hub.registry  # type: ignore[attr-defined]
    a100 = [{"index": 0, "name": "NVIDIA A100"}]
    c1 = registry.hello(Hello(node="gpu01", agent_version="1", interval_s=1.0, gpus=a100))
    c2 = registry.hello(
        Hello(node="gpu02", agent_version="1", interval_s=1.0, gpus=[{"index": 0, "name": "H100"}])
    )
    shared = {
        "0": {
            "util_gpu_percent": 90.0,
            "processes": [
                {"pid": 1, "user": "alice", "gpu_mem_bytes": 3 * GIB},
                {"pid": 2, "user": "bob", "gpu_mem_bytes": GIB},
            ],
        }
    }
    hostile = {
        "0": {"util_gpu_percent": 1.0, "processes": [{"pid": 3, "user": HOSTILE, "gpu_mem_bytes": GIB}]}
    }
    for seq in range(1, 101):
        clock.advance(1.0)
        registry.delta("gpu01", c1, Delta(seq, clock.wall(), {"sampled_at": clock.wall(), "gpus": shared}))
        if seq <= 50:
            registry.delta(
                "gpu02", c2, Delta(seq, clock.wall(), {"sampled_at": clock.wall(), "gpus": hostile})
            )
    asyncio.run(client.app.state.memory.flush())  # type: ignore[attr-defined]


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    clock = ManualClock(mono_s=10.0, wall_s=T0)
    settings = HubSettings(state_db=str(tmp_path / "state.sqlite3"), names={"gpu01": Naming(group="vision")})
    with TestClient(create_app(settings, clock)) as client:
        run_lab(client, clock)
        yield client, tmp_path / "state.sqlite3"


def range_query() -> str:
    return f"from={iso(T0 - 3600)}&to={iso(T0 + 3600)}".replace("+", "%2B")


def test_usage_by_user_and_by_group(lab: Any) -> None:
    client, _ = lab
    answer = client.get(f"/api/v1/usage?{range_query()}&by=user").json()
    rows = {row["user"]: row for row in answer["rows"]}
    assert list(rows) == ["alice", HOSTILE, "bob"]  # the largest first
    assert rows["alice"]["gpu_seconds"] == pytest.approx(75.0)
    assert rows["bob"]["busy_gpu_seconds"] == pytest.approx(25.0)
    assert rows[HOSTILE]["busy_gpu_seconds"] == 0.0 and rows[HOSTILE]["gpu_seconds"] == pytest.approx(50.0)
    assert rows["alice"]["gpu_mem_byte_seconds"] == pytest.approx(100 * 3 * GIB)
    by_group = client.get(f"/api/v1/usage?{range_query()}&by=group").json()["rows"]
    assert {row["group"]: row["gpu_seconds"] for row in by_group} == {
        "vision": pytest.approx(100.0),
        "": pytest.approx(50.0),
    }
    by_model = client.get(f"/api/v1/usage?{range_query()}&by=model").json()["rows"]
    assert [row["model"] for row in by_model] == ["NVIDIA A100", "H100"]


def test_usage_as_csv_defuses_formulas(lab: Any) -> None:
    client, _ = lab
    response = client.get(f"/api/v1/usage?{range_query()}&by=user&format=csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="usage-by-user-')
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "user",
        "gpu_seconds",
        "busy_gpu_seconds",
        "idle_held_gpu_seconds",
        "gpu_mem_byte_seconds",
    ]
    assert rows[1][:2] == ["alice", "75.0"]
    assert rows[2][0] == "'" + HOSTILE  # a spreadsheet shows it as text


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("from=yesterday", "from: expected an ISO date"),
        ("from=2026-12-02&to=2026-12-01", "to: must be after from"),
        ("by=pid", "by: one of user, group, model, node"),
        ("range=year", "range: one of today, 7d, 30d"),
        ("from=" + "9" * 500, "from: at most 40 characters"),
    ],
)
def test_bad_usage_parameters_are_named(lab: Any, query: str, words: str) -> None:
    client, _ = lab
    response = client.get(f"/api/v1/usage?{query}")
    assert response.status_code == 400 and words in response.json()["error"]


def test_events_newest_first_filtered_by_node_and_kind(lab: Any) -> None:
    client, _ = lab
    events = client.get("/api/v1/events").json()["events"]
    assert {(e["node"], e["kind"]) for e in events} == {("gpu01", "status"), ("gpu02", "status")}
    assert [e["node"] for e in client.get("/api/v1/events?node=gpu02").json()["events"]] == ["gpu02"]
    assert client.get("/api/v1/events?kind=driver").json()["events"] == []
    assert client.get("/api/v1/events?kind=nonsense").status_code == 400
    assert client.get(f"/api/v1/events?since={iso(T0 + 3600)}".replace("+", "%2B")).json()["events"] == []


def test_without_a_state_file_the_memory_answers_404() -> None:
    with TestClient(create_app(HubSettings(), ManualClock())) as client:
        response = client.get("/api/v1/usage")
        assert response.status_code == 404 and "keeps no memory" in response.json()["error"]


def test_sers_hub_usage_prints_the_table_offline(lab: Any) -> None:
    _client, path = lab
    # the hub still runs (the fixture's client): the CLI reads the file beside it
    args = [
        sys.executable,
        "-m",
        "hub",
        "usage",
        "--state-db",
        str(path),
        "--from",
        iso(T0 - 3600),
        "--to",
        iso(T0 + 3600),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=base_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["user", "held", "busy", "idle-held", "GiB-hours"]
    assert lines[2].split()[:3] == ["alice", "0.02", "0.02"]  # 75 s
    assert "<script>" in done.stdout and "\x1b" not in done.stdout
    as_csv = subprocess.run(
        [*args, "--by", "node", "--format", "csv"], capture_output=True, text=True, env=base_env(), timeout=30
    )
    assert as_csv.stdout.splitlines()[1:] == [
        "gpu01,100.0,100.0,0.0," + str(100 * 4 * GIB),
        "gpu02,50.0,0.0,0.0," + str(50 * GIB),
    ]
    missing = subprocess.run(
        [sys.executable, "-m", "hub", "usage", "--state-db", str(path) + ".nope"],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=30,
    )
    assert missing.returncode == 2 and "there is no state file" in missing.stderr
