"""The registry's domain events (hub/domain/events.py): what each mutation publishes, and that
the per-sample events cost nothing while nobody subscribes."""

from __future__ import annotations

from typing import Any

from hub.clock import ManualClock
from hub.domain.events import (
    EventBus,
    GpuHealthChanged,
    GpuStateChanged,
    NodeConnected,
    NodeRemoved,
    SampleApplied,
    SampleLate,
    SampleStillLate,
    StatusCause,
    StatusChanged,
)
from hub.domain.gpus import GpuFreeRule, GpuState
from hub.domain.health import XID_WARNING_SHOWN_S, Level
from hub.domain.nodes import Liveness, NodeStatus
from hub.registry import NodeRegistry
from node_agent.protocol import Delta, Hello

GIB = 1024**3
ALL_KINDS = (
    NodeConnected,
    StatusChanged,
    SampleApplied,
    SampleLate,
    SampleStillLate,
    GpuStateChanged,
    NodeRemoved,
)


def recorded(bus: EventBus, kinds: tuple[type, ...] = ALL_KINDS) -> list[Any]:
    seen: list[Any] = []
    for kind in kinds:
        bus.subscribe(kind, seen.append)
    return seen


def make(kinds: tuple[type, ...] = ALL_KINDS) -> tuple[NodeRegistry, ManualClock, list[Any]]:
    clock = ManualClock()
    registry = NodeRegistry(
        clock, Liveness(stale_after_intervals=3, offline_after_intervals=8), gpu_free=GpuFreeRule()
    )
    return registry, clock, recorded(registry.events, kinds)


def gpu(util: float = 0.0, processes: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "util_gpu_percent": util,
        "mem_used_bytes": 0,
        "mem_total_bytes": 80 * GIB,
        "processes": processes or [],
        **extra,
    }


def hello(
    node: str = "n1", host: dict[str, Any] | None = None, gpus: list[dict[str, Any]] | None = None
) -> Hello:
    return Hello(node=node, agent_version="t", interval_s=1.0, host=host or {}, gpus=gpus or [])


def test_a_hello_connects_and_says_whether_the_facts_changed() -> None:
    registry, clock, seen = make()
    registry.hello(hello(host={"hostname": "a"}), "10.0.0.1")
    [connected, live] = seen
    assert connected == NodeConnected("n1", hello(host={"hostname": "a"}), "10.0.0.1", True, clock.wall())
    assert live == StatusChanged("n1", NodeStatus.OFFLINE, NodeStatus.LIVE, StatusCause.HELLO, clock.wall())
    seen.clear()
    registry.hello(hello(host={"hostname": "a"}), "10.0.0.1")
    assert [type(e) for e in seen] == [NodeConnected] and not seen[0].facts_changed, "already live"
    seen.clear()
    registry.hello(hello(host={"hostname": "b"}), "10.0.0.1")
    assert seen[0].facts_changed


def test_silence_goodbye_and_return_are_status_changes_with_their_cause() -> None:
    registry, clock, seen = make((StatusChanged,))
    connection = registry.hello(hello())
    seen.clear()
    clock.advance(3.1)
    registry.sweep()
    clock.advance(5.0)
    registry.sweep()
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={}))
    registry.disconnect("n1", connection)
    assert [(e.old, e.new, e.cause) for e in seen] == [
        (NodeStatus.LIVE, NodeStatus.STALE, StatusCause.SILENCE),
        (NodeStatus.STALE, NodeStatus.OFFLINE, StatusCause.SILENCE),
        (NodeStatus.OFFLINE, NodeStatus.LIVE, StatusCause.MESSAGE),
        (NodeStatus.LIVE, NodeStatus.OFFLINE, StatusCause.GOODBYE),
    ]


def test_gpu_states_change_with_samples_status_and_late_samples() -> None:
    registry, clock, seen = make((GpuStateChanged, SampleLate))
    connection = registry.hello(hello())
    registry.delta(
        "n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0, "gpus": {"0": gpu(), "1": gpu()}})
    )
    assert sorted((e.gpu_index, e.old, e.new) for e in seen) == [
        ("0", None, GpuState.FREE),
        ("1", None, GpuState.FREE),
    ]
    seen.clear()
    busy = {"gpus": {"1": {"util_gpu_percent": 90.0}}, "sampled_at": 2.0}
    registry.delta("n1", connection, Delta(seq=2, ts=0.0, patch=busy))
    [event] = seen
    assert (event.node_id, event.gpu_index, event.old, event.new) == ("n1", "1", GpuState.FREE, GpuState.BUSY)
    assert event.gpu["util_gpu_percent"] == 90.0, "the event carries the GPU's sample"
    seen.clear()
    registry.delta("n1", connection, Delta(seq=3, ts=0.0, patch={"gpus": {"1": {"util_gpu_percent": 95.0}}}))
    assert seen == [], "still busy: nothing happened"
    for _ in range(4):  # heartbeats without samples: the GPUs' rows no longer show the present
        clock.advance(1.0)
        registry.delta("n1", connection, Delta(seq=4, ts=0.0, patch={}))
        registry.sweep()
    assert seen[0][:2] == ("n1", True), "late after 3 intervals without a new sample"
    assert {(e.gpu_index, e.new) for e in seen[1:]} == {
        ("0", GpuState.NOT_CURRENT),
        ("1", GpuState.NOT_CURRENT),
    }
    seen.clear()
    registry.delta(
        "n1", connection, Delta(seq=5, ts=0.0, patch={"sampled_at": 9.0, "gpus": {"0": {"error": "lost"}}})
    )
    assert seen[0] == SampleLate("n1", False, clock.monotonic())
    assert {(e.gpu_index, e.new) for e in seen[1:]} == {("0", GpuState.FAULT), ("1", GpuState.BUSY)}


def test_samples_and_removal() -> None:
    registry, clock, seen = make((SampleApplied, NodeRemoved))
    connection = registry.hello(hello())
    registry.delta(
        "n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0, "host": {"cpu_percent": 5.0}})
    )
    registry.delta("n1", connection, Delta(seq=2, ts=0.0, patch={"gpus": {"0": gpu()}}))
    registry.delta("n1", connection, Delta(seq=3, ts=0.0, patch={"gpus": {"0": {"util_gpu_percent": 9.0}}}))
    first, second, third = seen
    assert first == SampleApplied(
        "n1", first.state, True, frozenset(), True, False, False, False, clock.monotonic()
    )
    assert first.state == {"sampled_at": 1.0, "host": {"cpu_percent": 5.0}}, "the snapshot as merged then"
    assert (second.host, second.gpus, second.new_sample) == (False, frozenset({"0"}), False)
    assert second.gpu_set_changed and not third.gpu_set_changed, "a GPU appeared, then only changed"
    registry.disconnect("n1", connection)
    registry.remove("n1")
    assert seen[-1] == NodeRemoved("n1")


def test_per_sample_events_are_not_built_without_subscribers() -> None:
    registry, _, seen = make((StatusChanged,))
    connection = registry.hello(hello())
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0, "gpus": {"0": gpu()}}))
    assert not registry.events.wants(SampleApplied) and not registry.events.wants(GpuStateChanged)
    assert not registry.events.wants(GpuHealthChanged)
    assert registry._gpu_states == {}, "no GPU states kept for nobody"
    assert [type(e) for e in seen] == [StatusChanged]


def test_a_failing_subscriber_costs_the_others_nothing(caplog: Any) -> None:
    bus = EventBus()
    seen: list[Any] = []

    def broken(event: NodeRemoved) -> None:
        raise RuntimeError("a bug")

    bus.subscribe(NodeRemoved, broken)
    bus.subscribe(NodeRemoved, seen.append)
    bus.publish(NodeRemoved("n1"))
    assert seen == [NodeRemoved("n1")] and "handling NodeRemoved failed" in caplog.text


def test_a_hello_ends_a_late_spell() -> None:
    registry, clock, seen = make((SampleLate,))
    connection = registry.hello(hello())
    for _ in range(4):
        clock.advance(1.0)
        registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={}))
        registry.sweep()
    registry.hello(hello())
    assert [event.late for event in seen] == [True, False]


def test_samples_late_then_still_late_then_resumed() -> None:
    registry, clock, seen = make((SampleLate, SampleStillLate, SampleApplied))
    connection = registry.hello(hello())
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0}))
    sampled_at = clock.monotonic()
    seen.clear()
    for _ in range(5):
        clock.advance(1.0)
        registry.delta("n1", connection, Delta(seq=2, ts=0.0, patch={}))  # heartbeats publish nothing
        registry.sweep()
    assert seen == [
        SampleLate("n1", True, sampled_at + 3.0),
        SampleStillLate("n1", 4.0, sampled_at + 4.0),
        SampleStillLate("n1", 5.0, sampled_at + 5.0),
    ]
    seen.clear()
    registry.delta("n1", connection, Delta(seq=3, ts=0.0, patch={"sampled_at": 7.0}))
    late, applied = seen
    assert late == SampleLate("n1", False, clock.monotonic())
    assert applied.late_ended and applied.new_sample and not applied.came_live


def test_a_message_after_silence_publishes_its_status_change_with_the_merged_state() -> None:
    registry, clock, seen = make((StatusChanged, SampleApplied))
    connection = registry.hello(hello())
    clock.advance(3.1)
    registry.sweep()
    seen.clear()
    states: list[Any] = []
    registry.events.subscribe(StatusChanged, lambda event: states.append(dict(registry.nodes["n1"].state)))
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"host": {"cpu_percent": 5.0}}))
    live, applied = seen
    assert (live.old, live.new, live.cause) == (NodeStatus.STALE, NodeStatus.LIVE, StatusCause.MESSAGE)
    assert states == [{"host": {"cpu_percent": 5.0}}], "published once the delta is merged"
    assert applied.came_live and not applied.late_ended


def test_gpu_health_changes_are_published_with_their_findings() -> None:
    registry, clock, seen = make((GpuHealthChanged,))
    facts = [{"index": 0, "uuid": "GPU-aaa", "pcie_link_width_max_lanes": 16}, {"index": 1}]
    connection = registry.hello(hello(gpus=facts))
    first = {"sampled_at": 1.0, "gpus": {"0": gpu(pcie_link_width_lanes=16), "1": gpu(remap_pending=True)}}
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch=first))
    now = clock.monotonic()
    assert seen == [
        GpuHealthChanged("n1", "1", None, Level.OK, Level.WARNING, ("row remap pending: reset the GPU",), now)
    ], "a GPU first seen with a problem; a healthy one says nothing"
    seen.clear()
    registry.delta(
        "n1", connection, Delta(seq=2, ts=0.0, patch={"gpus": {"0": {"pcie_link_width_lanes": 8}}})
    )
    registry.delta("n1", connection, Delta(seq=3, ts=0.0, patch={"gpus": {"0": {"remap_failed": True}}}))
    assert [(e.gpu_index, e.gpu_uuid, e.old, e.new, e.findings) for e in seen] == [
        ("0", "GPU-aaa", Level.OK, Level.WARNING, ("PCIe x8 of x16",)),
        (
            "0",
            "GPU-aaa",
            Level.WARNING,
            Level.FAULT,
            ("row remap failed: replace the GPU (RMA)", "PCIe x8 of x16"),
        ),
    ], "the worst finding first; the link width is judged against the hello's maximum"
    seen.clear()
    registry.delta(
        "n1", connection, Delta(seq=4, ts=0.0, patch={"gpus": {"0": {"pcie_link_width_lanes": 16}}})
    )
    assert seen == [], "still a fault: nothing to say"
    registry.delta("n1", connection, Delta(seq=5, ts=0.0, patch={"gpus": {"0": {"remap_failed": False}}}))
    assert [(e.old, e.new, e.findings) for e in seen] == [(Level.FAULT, Level.OK, ())]


def test_gpu_health_counts_recent_xids_and_forgets_a_gpu_that_is_gone() -> None:
    registry, _, seen = make((GpuHealthChanged,))
    connection = registry.hello(hello())
    xid = {"code": 79, "epoch_s": 1.0}  # long ago by the clock: no longer shown
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"gpus": {"0": gpu(mem_used_bytes=0)}}))
    registry.delta("n1", connection, Delta(seq=2, ts=0.0, patch={"gpus": {"0": {"xid_events": [xid]}}}))
    assert seen == [] and registry.nodes["n1"].gpu_health == {}, "an old Xid is ok"
    fresh = {"code": 79, "epoch_s": registry._clock.wall()}
    registry.delta("n1", connection, Delta(seq=3, ts=0.0, patch={"gpus": {"0": {"xid_events": [fresh]}}}))
    [fault] = seen
    assert (fault.new, fault.findings[0]) == (Level.FAULT, "Xid 79: fell off the bus: drain the node")
    registry.delta("n1", connection, Delta(seq=4, ts=0.0, patch={"gpus": {"0": {"mem_used_bytes": 5}}}))
    registry.delta("n1", connection, Delta(seq=5, ts=0.0, patch={"gpus": {"0": None}}))
    assert len(seen) == 1 and registry.nodes["n1"].gpu_health == {}, "a GPU that is gone is forgotten"


def test_a_gpu_health_verdict_is_kept_on_the_node_until_its_xid_leaves_the_wall() -> None:
    """The rows read the registry's verdict: judged when a health field changes, and again
    once an Xid's time on the wall is up, at the next sample, whose GPU rows it then names."""
    registry, clock, seen = make((GpuHealthChanged, SampleApplied))
    connection = registry.hello(hello(gpus=[{"index": 0, "uuid": "GPU-a"}]))
    xid = {"code": 13, "epoch_s": clock.wall() - 10}
    registry.delta(
        "n1",
        connection,
        Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0, "gpus": {"0": gpu(xid_events=[xid])}}),
    )
    verdict = registry.nodes["n1"].gpu_health["0"]
    assert verdict.words == "Xid 13: graphics engine exception: restart the job"
    assert verdict.until_epoch_s == xid["epoch_s"] + XID_WARNING_SHOWN_S
    registry.delta(
        "n1",
        connection,
        Delta(seq=2, ts=0.0, patch={"sampled_at": 2.0, "gpus": {"0": {"temp_celsius": 50.0}}}),
    )
    assert registry.nodes["n1"].gpu_health["0"] is verdict, "a field no finding reads judges nothing"
    seen.clear()
    clock.advance(XID_WARNING_SHOWN_S - 10)
    registry.delta(
        "n1", connection, Delta(seq=3, ts=0.0, patch={"sampled_at": 3.0, "host": {"cpu_percent": 5.0}})
    )
    assert registry.nodes["n1"].gpu_health["0"] is verdict and seen[-1].gpus == frozenset(), "not yet"
    clock.advance(1)  # the next sample, whatever it holds (here a field no finding reads), judges again
    registry.delta(
        "n1",
        connection,
        Delta(seq=4, ts=0.0, patch={"sampled_at": 4.0, "gpus": {"0": {"temp_celsius": 51.0}}}),
    )
    assert registry.nodes["n1"].gpu_health == {}
    applied, changed = seen[-2:]
    assert isinstance(applied, SampleApplied) and applied.gpus == frozenset({"0"}), (
        "its row is rendered again"
    )
    assert isinstance(changed, GpuHealthChanged) and (changed.old, changed.new) == (Level.WARNING, Level.OK)


def test_a_busy_gpus_utilization_is_judged_only_for_a_slower_pcie_link() -> None:
    registry, _, seen = make((GpuHealthChanged,))
    connection = registry.hello(
        hello(gpus=[{"index": 0, "pcie_link_gen_max": 5}, {"index": 1, "pcie_link_gen_max": 5}])
    )
    first = {"0": gpu(util=10.0, pcie_link_gen=3), "1": gpu(util=10.0, pcie_link_gen=5)}
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0, "gpus": first}))
    busy = {"0": {"util_gpu_percent": 90.0}, "1": {"util_gpu_percent": 90.0}}
    registry.delta("n1", connection, Delta(seq=2, ts=0.0, patch={"sampled_at": 2.0, "gpus": busy}))
    assert [(e.gpu_index, e.new, e.findings) for e in seen] == [
        ("0", Level.WARNING, ("PCIe gen3 of gen5 under load",))
    ]
    assert set(registry.nodes["n1"].gpu_health) == {"0"}


def test_a_reconnect_judges_every_gpu_again_and_forgets_those_gone() -> None:
    registry, _, seen = make((GpuHealthChanged,))
    connection = registry.hello(hello())
    faulty = {"0": gpu(remap_failed=True), "1": gpu(remap_pending=True)}
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch={"sampled_at": 1.0, "gpus": faulty}))
    seen.clear()
    connection = registry.hello(hello())
    registry.delta(
        "n1",
        connection,
        Delta(seq=1, ts=0.0, patch={"sampled_at": 2.0, "gpus": {"0": gpu(remap_failed=True)}}),
    )
    assert seen == [], "still the same fault: no second 'fault started'"
    assert set(registry.nodes["n1"].gpu_health) == {"0"}, "GPU 1 is no longer reported"
