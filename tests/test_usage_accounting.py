"""Usage accounting with a fake clock: exact GPU-seconds for samples, gaps, shares, hours, days,
MIG slices and idle-held GPUs, from events a real registry publishes."""

from __future__ import annotations

from typing import Any

import pytest

from hub.clock import ManualClock
from hub.domain.events import IdleHeldChanged
from hub.domain.gpus import IdleRule
from hub.domain.nodes import Liveness, Naming
from hub.registry import NodeRegistry
from hub.usage.accounting import UsageAccounting, UsageKey
from node_agent.protocol import Delta, Hello

GIB = 1024**3
HOUR = 3600.0
# a wall clock at 10:00:00 UTC on 2026-12-07
T0 = 1_796_637_600.0


def utc_day(epoch_s: float) -> float:
    return epoch_s - epoch_s % 86400


class Lab:
    """A registry, a clock and the accounting subscribed to the registry's events."""

    def __init__(self, wall_s: float = T0 + 60.0, day_start: Any = utc_day, interval_s: float = 1.0) -> None:
        self.clock = ManualClock(mono_s=100.0, wall_s=wall_s)
        self.registry = NodeRegistry(self.clock, Liveness(stale_after_intervals=3.0))
        self.gaps: list[tuple[str, float, float]] = []
        self.accounting = UsageAccounting(
            self.clock,
            IdleRule(max_util_percent=5.0),
            Liveness(stale_after_intervals=3.0),
            {"n1": Naming(group="vision")},
            day_start=day_start,
            on_gap=lambda *gap: self.gaps.append(gap),
        )
        self.accounting.subscribe(self.registry.events)
        self.interval_s = interval_s
        self.seq = 0

    def connect(self, node: str = "n1") -> int:
        hello = Hello(
            node=node,
            agent_version="t",
            interval_s=self.interval_s,
            gpus=[{"index": 0, "name": "NVIDIA A100"}, {"index": 1, "name": "NVIDIA A100"}],
        )
        self.connection = self.registry.hello(hello)
        return self.connection

    def sample(self, gpus: dict[str, Any], node: str = "n1", after_s: float = 0.0) -> None:
        self.clock.advance(after_s)
        self.seq += 1
        patch = {"sampled_at": self.clock.wall(), "gpus": gpus}
        self.registry.delta(node, self.connection, Delta(self.seq, self.clock.wall(), patch))

    def heartbeat(self, after_s: float) -> None:
        self.clock.advance(after_s)
        self.seq += 1
        self.registry.delta("n1", self.connection, Delta(self.seq, self.clock.wall(), {}))

    def totals(self) -> dict[tuple[str, ...], list[float]]:
        """Summed over hours, per (user, job)."""
        out: dict[tuple[str, ...], list[float]] = {}
        for key, values in self.accounting.pending.items():
            have = out.setdefault((key.user, key.job), [0.0] * 4)
            for i, v in enumerate(values):
                have[i] += v
        return out


def proc(user: str | None, mem_gib: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "pid": 100,
        "user": user,
        "gpu_mem_bytes": None if mem_gib is None else int(mem_gib * GIB),
        **extra,
    }


def test_each_sample_counts_the_interval_since_the_previous_one() -> None:
    lab = Lab()
    lab.connect()
    lab.sample({"0": {"util_gpu_percent": 50.0, "processes": [proc("alice", 2)]}})  # first: 1 interval
    for _ in range(9):
        lab.sample({"0": {"util_gpu_percent": 50.0}}, after_s=1.0)
    lab.sample({"0": {"util_gpu_percent": 2.0}}, after_s=0.5)  # early: counts 0.5 s, not busy
    gpu_s, busy_s, idle_s, mem_byte_s = lab.totals()[("alice", "")]
    assert gpu_s == pytest.approx(10.5)
    assert busy_s == pytest.approx(10.0)
    assert idle_s == 0.0
    assert mem_byte_s == pytest.approx(10.5 * 2 * GIB)
    (key,) = lab.accounting.pending
    assert key == UsageKey(T0, utc_day(T0), "alice", "n1", "NVIDIA A100", "vision", "")


def test_heartbeats_and_free_gpus_count_nothing() -> None:
    lab = Lab()
    lab.connect()
    lab.sample({"0": {"util_gpu_percent": 90.0, "processes": []}, "1": {"util_gpu_percent": 0.0}})
    lab.heartbeat(1.0)
    lab.sample({"0": {"util_gpu_percent": 90.0}}, after_s=1.0)
    assert lab.accounting.pending == {}


def test_a_gap_counts_at_most_until_late_and_the_rest_is_reported() -> None:
    lab = Lab()
    lab.connect()
    lab.sample({"0": {"util_gpu_percent": 50.0, "processes": [proc("alice", 1)]}})
    lab.sample({}, after_s=1.0)
    lab.sample({}, after_s=20.0)  # 3 s (late after 3 intervals) counted, 17 s not
    assert lab.totals()[("alice", "")][0] == pytest.approx(1.0 + 1.0 + 3.0)
    assert lab.gaps == [("n1", pytest.approx(17.0), T0 + 81.0)]


def test_a_shared_gpu_is_split_by_memory_and_equally_without_memory() -> None:
    lab = Lab()
    lab.connect()
    lab.sample(
        {
            "0": {"util_gpu_percent": 80.0, "processes": [proc("alice", 3), proc("bob", 1)]},
            "1": {
                "util_gpu_percent": 80.0,
                "processes": [proc("carol", None), proc(None, None), proc("carol", None)],
            },
        }
    )
    totals = lab.totals()
    assert totals[("alice", "")][:2] == [pytest.approx(0.75), pytest.approx(0.75)]
    assert totals[("bob", "")][:2] == [pytest.approx(0.25), pytest.approx(0.25)]
    assert totals[("bob", "")][3] == pytest.approx(1 * GIB)  # memory is not split
    assert totals[("carol", "")][0] == pytest.approx(2 / 3)
    assert totals[("unknown", "")][0] == pytest.approx(1 / 3)


def test_jobs_and_containers_are_kept_apart() -> None:
    lab = Lab()
    lab.connect()
    lab.sample(
        {
            "0": {
                "util_gpu_percent": 80.0,
                "processes": [
                    proc("alice", 1, slurm_job_id=4242),
                    proc("alice", 1, container_name="train<1>"),
                    proc("alice", 2, pod_namespace="ml", pod_name="p1"),
                ],
            }
        }
    )
    totals = lab.totals()
    assert totals[("alice", "slurm:4242")][0] == pytest.approx(0.25)
    assert totals[("alice", "container:train<1>")][0] == pytest.approx(0.25)
    assert totals[("alice", "pod:ml/p1")][0] == pytest.approx(0.5)


def test_an_interval_across_an_hour_is_split_at_the_hour() -> None:
    lab = Lab(wall_s=T0 + HOUR - 2.0)  # 10:59:58
    lab.connect()
    lab.sample({"0": {"util_gpu_percent": 50.0, "processes": [proc("alice", 1)]}})
    lab.sample({}, after_s=3.0)  # 10:59:58 .. 11:00:01
    by_hour = {key.hour_start_s: values[0] for key, values in lab.accounting.pending.items()}
    assert by_hour == {T0: pytest.approx(3.0), T0 + HOUR: pytest.approx(1.0)}


def test_a_midnight_inside_an_hour_splits_the_days() -> None:
    # a zone at UTC+05:30: local midnight falls at :30 of a UTC hour
    def day_at_0530(epoch_s: float) -> float:
        local = epoch_s + 5.5 * HOUR
        return local - local % 86400 - 5.5 * HOUR

    midnight = day_at_0530(T0) + 86400  # the next local midnight, at hh:30 UTC
    lab = Lab(wall_s=midnight - 1.0, day_start=day_at_0530, interval_s=2.0)
    lab.connect()
    lab.sample({"0": {"util_gpu_percent": 50.0, "processes": [proc("alice", 1)]}})  # covers 2 s
    lab.sample({}, after_s=2.0)
    pieces = {(k.hour_start_s, k.day_start_s): v[0] for k, v in lab.accounting.pending.items()}
    hour = midnight - midnight % HOUR
    assert pieces == {
        (hour, midnight - 86400): pytest.approx(3.0),  # 23:59:57 .. 00:00:00 local
        (hour, midnight): pytest.approx(1.0),
    }


def test_idle_held_seconds_follow_the_idle_held_events() -> None:
    lab = Lab()
    lab.connect()
    held = {"0": {"util_gpu_percent": 1.0, "processes": [proc("alice", 4)]}}
    lab.sample(held)
    lab.sample({}, after_s=1.0)
    bus = lab.registry.events
    bus.publish(IdleHeldChanged("n1", "0", None, True, T0, (proc("alice", 4),), T0 + 1))
    lab.sample({}, after_s=1.0)
    lab.sample({}, after_s=1.0)
    bus.publish(IdleHeldChanged("n1", "0", None, False, T0, (proc("alice", 4),), T0 + 3))
    lab.sample({}, after_s=1.0)
    gpu_s, busy_s, idle_s, _ = lab.totals()[("alice", "")]
    assert (gpu_s, busy_s, idle_s) == (pytest.approx(5.0), 0.0, pytest.approx(2.0))  # 1 + 4 samples
    assert lab.accounting.idle_held == set()


def test_mig_slices_weigh_their_share_of_the_gpu() -> None:
    lab = Lab()
    lab.connect()
    slices = [
        {"uuid": "MIG-a", "mem_total_bytes": 20 * GIB, "processes": [proc("alice", 5)]},
        {
            "uuid": "MIG-b",
            "mem_total_bytes": 10 * GIB,
            "util_gpu_percent": 0.0,
            "processes": [proc("bob", 1)],
        },
        {"uuid": "MIG-c", "mem_total_bytes": 10 * GIB, "processes": []},
    ]
    # the GPU's own list repeats the slices' processes (NVML on a MIG parent): counted once
    repeated = [proc("alice", 5), proc("bob", 1)]
    lab.sample(
        {
            "0": {
                "util_gpu_percent": 70.0,
                "mem_total_bytes": 40 * GIB,
                "mig_slices": slices,
                "processes": repeated,
            }
        }
    )
    lab.registry.events.publish(IdleHeldChanged("n1", "0", "MIG-b", True, T0, (), T0))
    lab.sample({}, after_s=1.0)
    totals = lab.totals()
    assert totals[("alice", "")][:3] == [pytest.approx(1.0), pytest.approx(1.0), 0.0]  # 2 s x 0.5
    assert totals[("bob", "")][:3] == [pytest.approx(0.5), 0.0, pytest.approx(0.25)]


def test_a_batch_that_could_not_be_written_comes_back_bounded() -> None:
    lab = Lab()
    lab.connect()
    lab.sample({"0": {"util_gpu_percent": 50.0, "processes": [proc("alice", 1)]}})
    first = lab.accounting.take()
    assert lab.accounting.pending == {}
    lab.sample({}, after_s=HOUR)  # late: counts 3 s in the next hour
    assert lab.accounting.put_back(first, max_rows=10) == 0
    assert sum(v[0] for v in lab.accounting.pending.values()) == pytest.approx(4.0)
    dropped = lab.accounting.put_back({}, max_rows=1)
    assert dropped == 1
    ((key, values),) = lab.accounting.pending.items()
    assert key.hour_start_s == T0 + HOUR and values[0] == pytest.approx(3.0)  # the oldest went
