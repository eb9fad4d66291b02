"""Idle-holder tracking (hub/domain/idle.py) on a real registry with a manual clock: exact start
and end times, the threshold's edge, holders exiting, GPUs faulting or going, MIG slices, the
node going offline or removed."""

from __future__ import annotations

from typing import Any

import pytest

from hub.clock import ManualClock
from hub.domain.events import IdleHeldChanged
from hub.domain.gpus import IdleRule
from hub.domain.idle import IdleHolders
from hub.domain.nodes import Liveness
from hub.registry import NodeRegistry
from node_agent.protocol import Delta, Hello

GIB = 1024**3
RULE = IdleRule(max_util_percent=5.0, min_idle_s=60.0)


def proc(pid: int, user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "user": user, "command": "python", "gpu_mem_bytes": GIB, **extra}


def gpu(util: float | None, *processes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"util_gpu_percent": util, "mem_total_bytes": 80 * GIB, "processes": list(processes), **extra}


class Lab:
    """One node on a registry with a manual clock, its tracker, and the events it published."""

    def __init__(self, rule: IdleRule = RULE) -> None:
        self.clock = ManualClock()
        self.registry = NodeRegistry(self.clock, Liveness(stale_after_intervals=3, offline_after_intervals=8))
        self.tracker = IdleHolders(self.registry.events, self.clock, rule)
        self.seen: list[IdleHeldChanged] = []
        self.registry.events.subscribe(IdleHeldChanged, self.seen.append)
        self.connection = self.registry.hello(Hello(node="n1", agent_version="t", interval_s=1.0))
        self.seq = 0

    def sample(self, gpus: dict[str, Any] | None = None, advance_s: float = 0.0) -> None:
        self.clock.advance(advance_s)
        self.seq += 1
        patch: dict[str, Any] = {"sampled_at": float(self.seq)}
        if gpus is not None:
            patch["gpus"] = gpus
        self.registry.delta("n1", self.connection, Delta(seq=self.seq, ts=0.0, patch=patch))

    def changes(self) -> list[tuple[str, str | None, bool, float, float]]:
        """(GPU, slice, idle-held, idle since, when) of each event, as offsets from the start."""
        start = ManualClock().wall_s
        return [
            (e.gpu_index, e.mig_uuid, e.idle_held, e.idle_since_wall_s - start, e.at_wall_s - start)
            for e in self.seen
        ]


def test_a_gpu_held_at_the_limit_turns_idle_held_after_min_idle_s_and_ends_above_it() -> None:
    lab = Lab()
    lab.sample({"0": gpu(30.0, proc(10))}, advance_s=1)  # busy
    lab.sample({"0": gpu(5.0, proc(10))}, advance_s=9)  # at the limit: idle, since t=10
    lab.sample(advance_s=59.0)  # t=69: a sample without a change of GPU 0, 59 s idle
    assert lab.changes() == []
    lab.sample(advance_s=1.0)  # t=70: 60 s
    assert lab.changes() == [("0", None, True, 10.0, 70.0)]
    [start] = lab.seen
    assert start.node_id == "n1" and [p["pid"] for p in start.holders] == [10]
    assert lab.tracker.held() == {("n1", "0", None): start.idle_since_wall_s}
    lab.sample({"0": {"util_gpu_percent": 5.0001}}, advance_s=5)  # t=75: just above the limit
    assert lab.changes()[1:] == [("0", None, False, 10.0, 75.0)]
    assert lab.tracker.held() == {}


def test_time_alone_turns_a_quiet_gpu_idle_held_on_tick() -> None:
    lab = Lab()
    lab.sample({"0": gpu(0.0, proc(10))}, advance_s=1)  # t=1
    lab.clock.advance(59.5)
    lab.tracker.tick()
    assert lab.seen == [], "59.5 s: not yet"
    lab.clock.advance(0.5)
    lab.tracker.tick()
    assert lab.changes() == [("0", None, True, 1.0, 61.0)]
    lab.tracker.tick()
    assert len(lab.seen) == 1, "once"


def test_a_blip_above_the_limit_restarts_the_count() -> None:
    lab = Lab()
    lab.sample({"0": gpu(0.0, proc(10))}, advance_s=1)  # idle since t=1
    lab.sample({"0": {"util_gpu_percent": 6.0}}, advance_s=30)  # t=31: above: ends the spell
    lab.sample({"0": {"util_gpu_percent": 1.0}}, advance_s=1)  # t=32: a new spell
    lab.clock.advance(59.9)
    lab.tracker.tick()
    assert lab.seen == [], "the first spell never reached 60 s"
    lab.clock.advance(0.1)
    lab.tracker.tick()
    assert lab.changes() == [("0", None, True, 32.0, 92.0)]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"processes": []}, "the last process exited"),
        ({"processes": [proc(11, "bob")]}, "the holder exited, another took its place"),
        ({"error": "GPU is lost"}, "the GPU faulted"),
        ({"util_gpu_percent": None}, "utilization unknown"),
        (None, "the GPU disappeared"),
    ],
)
def test_the_spell_ends_when(change: dict[str, Any] | None, why: str) -> None:
    lab = Lab()
    lab.sample({"0": gpu(0.0, proc(10)), "1": gpu(0.0)}, advance_s=1)
    lab.sample(advance_s=60)  # t=61: idle-held
    lab.sample({"0": change}, advance_s=4)  # t=65
    assert lab.changes() == [("0", None, True, 1.0, 61.0), ("0", None, False, 1.0, 65.0)], why
    assert lab.seen[1].holders == lab.seen[0].holders, "the end names the last idle holders"


def test_a_process_that_joins_an_idle_gpu_joins_the_spell() -> None:
    lab = Lab()
    lab.sample({"0": gpu(0.0, proc(10))}, advance_s=1)
    lab.sample({"0": {"processes": [proc(10), proc(11, "bob")]}}, advance_s=30)
    lab.sample(advance_s=30)  # t=61
    [start] = lab.seen
    assert start.idle_since_wall_s - ManualClock().wall_s == 1.0
    assert {p["user"] for p in start.holders} == {"alice", "bob"}


def test_offline_and_removal_end_every_spell_of_the_node_and_stale_does_not() -> None:
    lab = Lab()
    lab.sample({"0": gpu(0.0, proc(10)), "1": gpu(2.0, proc(11))}, advance_s=1)
    lab.sample(advance_s=60)  # t=61: both idle-held
    assert sorted(lab.tracker.held()) == [("n1", "0", None), ("n1", "1", None)]
    lab.clock.advance(3.5)  # stale after 3 intervals
    lab.registry.sweep()
    assert len(lab.seen) == 2, "a late node keeps its spells"
    lab.clock.advance(5.0)  # offline after 8
    lab.registry.sweep()
    ends = [(e.gpu_index, e.idle_held, e.at_wall_s - ManualClock().wall_s) for e in lab.seen[2:]]
    assert sorted(ends) == [("0", False, 69.5), ("1", False, 69.5)]
    assert lab.tracker.held() == {}

    again = Lab()
    again.sample({"0": gpu(0.0, proc(10))}, advance_s=1)
    again.sample(advance_s=60)
    again.registry.remove("n1")
    assert [e.idle_held for e in again.seen] == [True, False]


def test_mig_slices_are_tracked_by_uuid_apart_from_their_gpu() -> None:
    lab = Lab()

    def mig(uuid: str, util: float, *processes: dict[str, Any]) -> dict[str, Any]:
        return {"uuid": uuid, "profile": "3g.40gb", "util_gpu_percent": util, "processes": list(processes)}

    slices = [mig("MIG-a", 0.0, proc(10)), mig("MIG-b", 50.0, proc(11, "bob"))]
    lab.sample({"0": gpu(None, proc(10), proc(11, "bob"), mig_slices=slices)}, advance_s=1)
    lab.sample(advance_s=60)
    assert lab.changes() == [("0", "MIG-a", True, 1.0, 61.0)], "the whole GPU's utilization is unknown"
    lab.sample({"0": {"mig_slices": [slices[1]]}}, advance_s=1)  # slice a destroyed
    assert lab.changes()[1:] == [("0", "MIG-a", False, 1.0, 62.0)]
    lab.sample({"0": {"mig_slices": [{**slices[1], "util_gpu_percent": 0.0}]}}, advance_s=1)  # t=63
    lab.sample(advance_s=60)
    assert lab.changes()[2:] == [("0", "MIG-b", True, 63.0, 123.0)]
    lab.sample({"0": None}, advance_s=1)  # the GPU is gone, and its slices with it
    assert lab.changes()[3:] == [("0", "MIG-b", False, 63.0, 124.0)]


def test_min_idle_s_zero_turns_idle_held_on_the_first_idle_sample() -> None:
    lab = Lab(IdleRule(max_util_percent=5.0, min_idle_s=0.0))
    lab.sample({"0": gpu(0.0, proc(10))}, advance_s=1)
    assert lab.changes() == [("0", None, True, 1.0, 1.0)]


def test_a_gpu_flapping_around_the_limit_keeps_the_deadline_queue_bounded() -> None:
    lab = Lab()
    for step in range(2000):
        lab.sample({"0": gpu(0.0 if step % 2 else 9.0, proc(10))}, advance_s=1)
    assert lab.seen == []
    assert len(lab.tracker._due) <= 2 * 1 + 64
