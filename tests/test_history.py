"""The hub's short history: rings of bucket means, gaps, and the card's 20 s points."""

from __future__ import annotations

import math

import pytest

from frontend.render import Renderer
from hub.clock import ManualClock
from hub.history import BUCKET_S, CARD_GROUP, CARD_POINTS, MAX_SERIES, History, NodeHistory, sample_values
from hub.registry import NodeRegistry
from hub.scene import Scene
from hub.settings import GpuFreeRule
from node_agent.protocol import MAX_GPUS, Delta, Hello
from tests.rendered import Rendered

GIB = 1024**3


def is_nan(value: float) -> bool:
    return math.isnan(value)


def aligned_start(history: NodeHistory) -> float:
    """A time at the start of a card group for this node (group edges are shifted per node)."""
    group_s = BUCKET_S * CARD_GROUP
    offset = history._offset_s
    return math.ceil((1_700_000_000 + offset) / group_s) * group_s - offset


def test_buckets_close_into_means_and_gaps_become_nan() -> None:
    history = NodeHistory("n1", capacity=50)
    t0 = aligned_start(history)
    assert not history.record(t0, {"cpu": 10.0})
    assert not history.record(t0 + 1, {"cpu": 30.0, "u0": None})
    assert history.points("cpu") == [], "the open bucket is not history yet"
    history.record(t0 + BUCKET_S, {"cpu": 50.0})
    assert history.points("cpu") == [20.0]
    history.record(t0 + 4 * BUCKET_S, {"cpu": 70.0})  # two buckets without samples
    points = history.points("cpu")
    assert points[:2] == [20.0, 50.0] and all(is_nan(p) for p in points[2:]) and len(points) == 4


def test_rings_keep_the_newest_buckets_in_order_in_half_percent_steps() -> None:
    history = NodeHistory("n1", capacity=4)
    t0 = aligned_start(history)
    assert history.points("cpu") == []
    for k in range(7):  # six closed buckets: 1.0 .. 6.0, plus 7.25 still open
        history.record(t0 + k * BUCKET_S, {"cpu": float(k + 1) + (0.25 if k == 6 else 0.0), "mem": 50.0})
    assert history.points("cpu") == [3.0, 4.0, 5.0, 6.0]
    assert history.points("mem") == [50.0] * 4
    history.record(t0 + 100 * BUCKET_S, {"cpu": 1.0})  # 7.25 closes, then a long silence
    assert all(is_nan(p) for p in history.points("cpu")), "only gaps left after the silence"
    fresh = NodeHistory("n2", capacity=4)
    t1 = aligned_start(fresh)
    fresh.record(t1, {"cpu": 33.3})
    fresh.record(t1 + BUCKET_S, {"cpu": 0.0})
    assert fresh.points("cpu") == [33.5], "stored in half-percent steps"


def test_a_series_that_appears_later_lines_up_with_the_others() -> None:
    history = NodeHistory("n1", capacity=50)
    t0 = aligned_start(history)
    for k in range(3):
        history.record(t0 + k * BUCKET_S, {"cpu": 1.0})
    history.record(t0 + 3 * BUCKET_S, {"cpu": 1.0, "u0": 90.0})
    history.record(t0 + 4 * BUCKET_S, {"cpu": 1.0})
    cpu, util = history.points("cpu"), history.points("u0")
    assert len(cpu) == len(util) == 4
    assert all(is_nan(p) for p in util[:3]) and util[3] == 90.0


def test_card_points_change_only_when_a_group_closes() -> None:
    history = NodeHistory("n1", capacity=200)
    t0 = aligned_start(history)
    changed = [history.record(t0 + s, {"cpu": float(s)}) for s in range(0, 61)]
    # groups of 4 buckets of 5 s: the card changes at 20 s, 40 s and 60 s, nowhere else
    assert [s for s, c in enumerate(changed) if c] == [20, 40, 60]
    points = history.card_points("cpu")
    assert len(points) == 3
    assert points == [9.5, 29.5, 49.5], "each point is the mean of its group's samples"
    history.record(t0 + 70, {"cpu": 0.0})  # buckets 60..70 are in an unfinished group
    assert history.card_points("cpu") == points


def test_card_points_cover_ten_minutes_at_most() -> None:
    history = NodeHistory("n1", capacity=300)
    t0 = aligned_start(history)
    for s in range(0, 1200, 5):
        history.record(t0 + s, {"cpu": 50.0})
    assert len(history.card_points("cpu")) == CARD_POINTS == 30
    assert CARD_POINTS * CARD_GROUP * BUCKET_S == 600
    assert history.card_points("nope") == []


def test_group_edges_differ_between_nodes() -> None:
    offsets = {NodeHistory(f"gpu{i:02d}", 10)._offset_s for i in range(20)}
    assert len(offsets) > 10, "sparkline pushes of many nodes spread out over the 20 s"


def test_history_window_and_forget() -> None:
    history = History(window_s=3600)
    assert history.window_s == 3600
    assert History(window_s=10).window_s == CARD_POINTS * CARD_GROUP * BUCKET_S, "enough for a card"
    history.node("a").record(1.0, {"cpu": 1.0})
    history.forget("a")
    assert "a" not in history.nodes


def test_sample_values_from_a_snapshot() -> None:
    state = {
        "host": {"cpu_percent": 12.5, "mem_used_bytes": 1, "mem_total_bytes": 4},
        "gpus": {
            "0": {"util_gpu_percent": 90.0, "mem_used_bytes": GIB, "mem_total_bytes": 4 * GIB},
            "1": {"error": "GPU is lost"},
            "2": {"util_gpu_percent": None, "mem_total_bytes": 0},
        },
    }
    assert sample_values(state) == {"cpu": 12.5, "mem": 25.0, "u0": 90.0, "m0": 25.0, "u2": None, "m2": None}
    assert sample_values({}) == {"cpu": None, "mem": None}


def feed(
    registry: NodeRegistry,
    scene: Scene,
    rendered: Rendered,
    clock: ManualClock,
    connection: int,
    seconds: int,
    ahead_s: float,
) -> None:
    """One sample a second for ``seconds``, stamped by an agent whose clock is ``ahead_s`` off."""
    for second in range(seconds):
        clock.advance(1.0)
        agent_now = clock.wall() + ahead_s
        patch = {"sampled_at": agent_now, "host": {"cpu_percent": float(second % 50)}}
        registry.delta("n1", connection, Delta(second, agent_now, patch))
        scene.render_change(rendered.one())


@pytest.mark.parametrize("wrong_s", [2 * 3600.0, -30 * 86400.0], ids=["2-h-ahead", "a-month-behind"])
def test_history_advances_whatever_the_agents_clock_says(wrong_s: float) -> None:
    """A node whose clock is wrong at boot, then corrected (NTP), keeps a history in step with
    the hub's: one bucket per 5 s throughout, neither frozen nor lumped into one bucket."""
    clock = ManualClock()
    registry = NodeRegistry(clock)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    rendered = Rendered(registry)
    connection = registry.hello(Hello(node="n1", agent_version="t", interval_s=1.0))
    scene.render_change(rendered.one())
    history = scene.history.node("n1")
    feed(registry, scene, rendered, clock, connection, 60, ahead_s=wrong_s)
    assert registry.nodes["n1"].clock_ahead_s == pytest.approx(wrong_s)
    shown = {f.label: f.text for f in scene.detail(registry.nodes["n1"]).agent}
    assert shown["agent clock"] == (
        "2 h 00 min ahead of the hub" if wrong_s > 0 else "720 h 00 min behind the hub"
    )
    during = len(history.points("cpu"))
    assert 11 <= during <= 12
    feed(registry, scene, rendered, clock, connection, 60, ahead_s=0.0)  # the clock is corrected
    assert registry.nodes["n1"].clock_ahead_s == pytest.approx(0.0)
    shown = {f.label: f.text for f in scene.detail(registry.nodes["n1"]).agent}
    assert shown["agent clock"] == "in step with the hub"
    after = history.points("cpu")
    assert len(after) - during == 12, "a bucket every 5 s after the correction too"
    assert not any(math.isnan(p) for p in after[1:]), "no gaps: every bucket holds samples"
    assert max(after) < 50, "each bucket holds the mean of its own 5 samples, not of everything"


def test_a_node_that_reports_ever_new_gpu_indexes_keeps_a_bounded_history() -> None:
    """GPU indexes run to 999: an agent that reports other GPUs sample after sample must not add
    rows to its node's history without end. The GPUs of the newest sample keep their series."""
    history = NodeHistory("n1", capacity=180)
    t0 = aligned_start(history)
    for step in range(1000 // 8):
        indexes = range(step * 8, step * 8 + 8)  # eight GPUs per sample, never the same twice
        sample: dict[str, float | None] = {"cpu": 10.0, "mem": 20.0}
        for index in indexes:
            sample[f"u{index}"] = float(index % 100)
            sample[f"m{index}"] = 50.0
        history.record(t0 + step * BUCKET_S, sample)
    history.record(t0 + 1000 // 8 * BUCKET_S, {"cpu": 10.0})  # closes the last sample's bucket
    assert len(history.series) == MAX_SERIES == 2 + 2 * MAX_GPUS
    assert len(history._rows) == MAX_SERIES * 180
    assert history.points("cpu") == [10.0] * (1000 // 8)
    for index in range(992, 1000):
        points = history.points(f"u{index}")
        assert points[-1] == float(index % 100)
        assert all(is_nan(v) for v in points[:-1]), "a row taken over starts as gaps"
