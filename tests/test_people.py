"""Who holds the GPUs (hub/domain/people.py) and the people board's view and template
(frontend/people.py, _people.html): MIG slices held apart from their GPU, the three orders,
hostile and huge names escaped and bounded, and /metrics' per-user series bounded."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from frontend.element_ids import person_id
from frontend.people import MAX_NAME_CHARS, MAX_ROWS, people_view
from frontend.render import Renderer
from hub.clock import ManualClock
from hub.domain.people import PeopleSort, holdings, sort_holdings
from hub.metrics import MAX_USER_SERIES, OTHER_USERS, exposition, read_nodes
from hub.registry import NodeRegistry
from hub.settings import GpuFreeRule
from node_agent.protocol import Delta, Hello
from tests.test_metrics import samples, value

GIB = 1024**3
NOW = 1_700_000_000.0


def proc(pid: int, user: str | None, mem: int | None = GIB, **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "user": user, "command": "python", "gpu_mem_bytes": mem, **extra}


def gpu(util: float | None, *processes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "NVIDIA H100 80GB HBM3", "util_gpu_percent": util, "processes": list(processes), **extra}


def test_holdings_per_user_with_mig_slices_apart_and_idle_spells() -> None:
    slices = [
        {"uuid": "MIG-a", "profile": "3g.40gb", "processes": [proc(20, "carol", 3 * GIB)]},
        {"uuid": "MIG-b", "profile": "3g.40gb", "processes": []},
    ]
    state = {
        "gpus": {
            "0": gpu(0.0, proc(10, "alice", 2 * GIB, started_epoch_s=NOW - 50), proc(11, "alice", None)),
            "1": gpu(90.0, proc(12, "alice", GIB, started_epoch_s=NOW - 900), proc(13, None)),
            "2": gpu(None, proc(20, "carol", 3 * GIB), proc(21, "dave"), mig_slices=slices),
        }
    }
    people = holdings([("gpu07", state)], {("gpu07", "0", None): NOW - 100})
    assert sorted(people) == ["alice", "carol", "dave", "unknown"]
    alice = people["alice"]
    assert [(g.gpu_index, g.mem_bytes) for g in alice.gpus] == [("0", 2 * GIB), ("1", GIB)]
    assert [g.gpu_index for g in alice.idle] == ["0"] and alice.idle[0].idle_since_epoch_s == NOW - 100
    assert alice.mem_bytes == 3 * GIB and alice.oldest_started_epoch_s == NOW - 900
    [carol] = people["carol"].gpus
    assert (carol.mig_uuid, carol.model, carol.mem_bytes) == ("MIG-a", "3g.40gb", 3 * GIB), (
        "on its slice only"
    )
    [dave] = people["dave"].gpus
    assert (dave.gpu_index, dave.mig_uuid) == ("2", None), "a process no slice lists holds the GPU"


def test_the_three_orders() -> None:
    state = {
        "gpus": {
            "0": gpu(0.0, proc(1, "many", started_epoch_s=NOW - 10)),
            "1": gpu(0.0, proc(2, "many", started_epoch_s=NOW - 10)),
            "2": gpu(0.0, proc(3, "idler", started_epoch_s=NOW - 20)),
            "3": gpu(0.0, proc(4, "old", started_epoch_s=NOW - 9999)),
        }
    }
    idle = {("n", "2", None): NOW - 30}
    people = holdings([("n", state)], idle).values()
    order = {sort: [h.user for h in sort_holdings(people, sort)] for sort in PeopleSort}
    assert order == {
        PeopleSort.GPUS: ["many", "idler", "old"],
        PeopleSort.IDLE: ["idler", "many", "old"],
        PeopleSort.HELD: ["old", "idler", "many"],
    }


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.ids += [v or "" for k, v in attrs if k == "id"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_hostile_and_huge_names_are_escaped_and_bounded() -> None:
    hostile = "<script>alert(1)</script>\u202e" + "x" * 300
    job_proc = proc(1, hostile, container_name='"><img src=x onerror=alert(2)>', container_runtime="docker")
    gpus = {str(i): gpu(0.0, proc(100 + i, f"user{i:04d}")) for i in range(MAX_ROWS + 5)}
    gpus["hostile"] = gpu(0.0, job_proc)
    view = people_view(holdings([("n", {"gpus": gpus})], {}).values(), PeopleSort.GPUS, NOW, {"group": "a&b"})
    html = Renderer().people(view)
    parsed = Collect()
    parsed.feed(html)
    assert "script" not in parsed.tags and "img" not in parsed.tags, "markup stays text"
    assert "&lt;U+202E&gt;" in html and "\u202e" not in html, "an unseen character is spelled out"
    assert len(view.rows) == MAX_ROWS and view.more_users == 6 and f"+{view.more_users} more users" in html
    hostile_row = next(r for r in view.rows if r.user.startswith("<script>"))
    assert len(hostile_row.user) == MAX_NAME_CHARS and hostile_row.user.endswith("…")
    assert hostile_row.row_id == person_id(hostile), "the id names the whole name"
    assert len(set(parsed.ids)) == len(parsed.ids) == MAX_ROWS + 1, "one id per row, and the board's"
    assert 'href="users?group=a%26b&amp;sort=idle"' in html, "the sort links keep the filter"


def test_metrics_bound_the_users_with_their_own_series() -> None:
    clock = ManualClock()
    registry = NodeRegistry(clock)
    many = MAX_USER_SERIES + 5
    for first in range(0, many, 100):  # a node's state holds at most 64 KiB
        node = f"n{first}"
        connection = registry.hello(Hello(node=node, agent_version="t", interval_s=1.0))
        procs = [proc(i + 1, f"u{i:05d}", GIB) for i in range(first, min(first + 100, many))]
        registry.delta(node, connection, Delta(1, 0.0, {"sampled_at": 1.0, "gpus": {"0": gpu(0.0, *procs)}}))
    connection = registry.hello(Hello(node="big", agent_version="t", interval_s=1.0))
    registry.delta(
        "big", connection, Delta(1, 0.0, {"sampled_at": 1.0, "gpus": {"1": gpu(0.0, proc(1, "u00000"))}})
    )
    text = exposition(read_nodes(registry), GpuFreeRule(), 0, {("big", "1", None): NOW}).decode()
    found = samples(text)
    assert len(found["sers_user_gpus_held"]) == MAX_USER_SERIES + 1
    assert value(found, "sers_user_gpus_held", user="u00000") == 2.0, "the most GPUs keep a series"
    assert value(found, "sers_user_gpus_idle_held", user="u00000") == 1.0
    assert value(found, "sers_user_gpus_held", user=OTHER_USERS) == 5.0
    assert value(found, "sers_user_gpu_memory_used_bytes", user=OTHER_USERS) == 5 * GIB
