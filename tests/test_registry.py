from __future__ import annotations

import typing

from hub.clock import ManualClock
from hub.domain.events import Event, NodeRestored
from hub.registry import Liveness, Naming, Node, NodeRegistry, NodeStatus
from hub.scene import NodeChange
from node_agent.protocol import Delta, Hello
from tests.rendered import Rendered


def make(interval_s: float = 1.0) -> tuple[NodeRegistry, ManualClock, int, Rendered]:
    clock = ManualClock()
    registry = NodeRegistry(clock, Liveness(stale_after_intervals=3, offline_after_intervals=8))
    rendered = Rendered(registry)
    connection = registry.hello(Hello(node="n1", agent_version="t", interval_s=interval_s))
    assert rendered.take() == [NodeChange("n1", card=True)]
    return registry, clock, connection, rendered


def beat(registry: NodeRegistry, connection: int, patch: dict | None = None) -> None:  # type: ignore[type-arg]
    registry.delta("n1", connection, Delta(seq=1, ts=0.0, patch=patch or {}))


def test_live_then_stale_then_offline_then_live_again() -> None:
    registry, clock, connection, rendered = make()
    node = registry.nodes["n1"]
    assert node.status is NodeStatus.LIVE
    clock.advance(2.9)
    registry.sweep()
    assert rendered.take() == [] and node.status is NodeStatus.LIVE
    clock.advance(0.2)  # 3.1 s of silence at a 1 s interval: late
    registry.sweep()
    [change] = rendered.take()
    assert change.card and node.status is NodeStatus.STALE
    registry.sweep()
    assert rendered.take() == [], "no repeated change while still stale"
    clock.advance(5.0)  # 8.1 s: gone
    registry.sweep()
    [change] = rendered.take()
    assert change.card and node.status is NodeStatus.OFFLINE
    beat(registry, connection)
    assert node.status is NodeStatus.LIVE
    assert rendered.take() == [NodeChange("n1", card=True)]


def test_heartbeats_keep_a_node_live() -> None:
    registry, clock, connection, rendered = make()
    for second in range(20):
        clock.advance(1.0)
        beat(registry, connection, {"sampled_at": float(second)})
        rendered.take()
        registry.sweep()
        assert rendered.take() == []
    assert registry.nodes["n1"].status is NodeStatus.LIVE


def test_offline_time_scales_with_the_interval_but_has_a_floor() -> None:
    registry, clock, _, _ = make(interval_s=0.1)
    clock.advance(2.9)
    registry.sweep()
    assert registry.nodes["n1"].status is NodeStatus.STALE
    clock.advance(0.2)
    registry.sweep()
    assert registry.nodes["n1"].status is NodeStatus.OFFLINE


def test_clean_disconnect_is_offline_at_once() -> None:
    registry, _, connection, rendered = make()
    registry.disconnect("n1", connection)
    assert rendered.take() == [NodeChange("n1", card=True)]
    assert registry.nodes["n1"].status is NodeStatus.OFFLINE


def test_newer_connection_owns_the_node() -> None:
    registry, _, old, rendered = make()
    new = registry.hello(Hello(node="n1", agent_version="t", interval_s=1.0))
    rendered.take()
    registry.delta("n1", old, Delta(1, 0.0, {"host": {"cpu_percent": 5.0}}))
    assert rendered.take() == [] and "host" not in registry.nodes["n1"].state
    registry.disconnect("n1", old)
    assert rendered.take() == [], "the old connection ending does not take the node offline"
    assert registry.nodes["n1"].status is NodeStatus.LIVE
    registry.delta("n1", new, Delta(1, 0.0, {"host": {"cpu_percent": 5.0}}))
    assert rendered.take() == [NodeChange("n1", host=True)]


def test_delta_changes_name_the_parts_to_render() -> None:
    registry, _, connection, rendered = make()
    registry.delta(
        "n1",
        connection,
        Delta(
            1,
            0.0,
            {
                "sampled_at": 1.0,
                "host": {"cpu_percent": 1.0},
                "gpus": {"0": {"util_gpu_percent": 1.0}, "1": {}},
            },
        ),
    )
    assert rendered.take() == [NodeChange("n1", card=True)], "new GPUs need the whole card"
    registry.delta("n1", connection, Delta(2, 0.0, {"gpus": {"1": {"util_gpu_percent": 50.0}}}))
    assert rendered.take() == [NodeChange("n1", gpus=frozenset({"1"}))]
    assert registry.nodes["n1"].state["gpus"]["1"] == {"util_gpu_percent": 50.0}
    assert registry.nodes["n1"].state["host"] == {"cpu_percent": 1.0}
    registry.delta("n1", connection, Delta(3, 0.0, {"gpus": {"1": None}}))
    assert rendered.take() == [NodeChange("n1", card=True)], "a GPU gone: the whole card"


def test_hung_collector_shows_as_sample_late_while_heartbeats_flow() -> None:
    registry, clock, connection, _ = make()
    beat(registry, connection, {"sampled_at": 1.0, "host": {"cpu_percent": 1.0}})
    for _ in range(4):
        clock.advance(1.0)
        beat(registry, connection)  # heartbeats only
        registry.sweep()
    node = registry.nodes["n1"]
    assert node.status is NodeStatus.LIVE and node.sample_late
    beat(registry, connection, {"sampled_at": 2.0})
    assert not node.sample_late


def test_a_node_turning_sample_late_and_back_gets_its_whole_card_rendered() -> None:
    """Its GPU rows stop (and start again) showing what is true now, not only its host line."""
    registry, clock, connection, rendered = make()
    beat(registry, connection, {"sampled_at": 1.0, "gpus": {"0": {"util_gpu_percent": 0.0}}})
    rendered.take()
    changes = []
    for _ in range(5):
        clock.advance(1.0)
        beat(registry, connection)  # heartbeats only
        registry.sweep()
        changes += rendered.take()
    node = registry.nodes["n1"]
    assert node.sample_late and not node.reporting
    assert changes == [
        NodeChange("n1", card=True),
        NodeChange("n1", host=True),
        NodeChange("n1", host=True),
    ], "the card once, then the host line's age"
    registry.delta("n1", connection, Delta(seq=2, ts=0.0, patch={"sampled_at": 6.0}))
    assert rendered.take() == [NodeChange("n1", card=True)] and node.reporting


def test_a_stale_node_coming_back_is_rendered_once_whole() -> None:
    """A message after silence: one whole card, with the message's data, whether it carries a
    sample or is a heartbeat."""
    for patch in ({"sampled_at": 9.0, "host": {"cpu_percent": 7.0}}, {}):
        registry, clock, connection, rendered = make()
        clock.advance(3.1)
        registry.sweep()
        assert registry.nodes["n1"].status is NodeStatus.STALE
        rendered.take()
        beat(registry, connection, patch)
        assert rendered.take() == [NodeChange("n1", card=True)]
        assert registry.nodes["n1"].status is NodeStatus.LIVE


def test_names_map_by_node_name_or_address() -> None:
    clock = ManualClock()
    registry = NodeRegistry(clock, names={"n1": Naming("GPU One", "A100"), "10.0.0.7": Naming(group="H100")})
    registry.hello(Hello(node="n1", agent_version="t", interval_s=1.0))
    registry.hello(Hello(node="n2", agent_version="t", interval_s=1.0), address="10.0.0.7")
    registry.hello(Hello(node="a0", agent_version="t", interval_s=1.0))
    assert registry.nodes["n1"].display_name == "GPU One" and registry.nodes["n1"].group == "A100"
    assert registry.nodes["n2"].display_name == "n2" and registry.nodes["n2"].group == "H100"
    assert [n.node_id for n in registry.ordered()] == ["n1", "n2", "a0"], "grouped first, by group then name"


def test_a_remembered_node_has_been_silent_since_it_was_last_seen() -> None:
    clock = ManualClock()
    registry = NodeRegistry(clock)
    clock.advance(100_000.0)  # the hub's machine has been up a while
    remembered = Node("old", "old", None, status=NodeStatus.OFFLINE, last_seen_wall=clock.wall() - 7200)
    published: list[object] = []
    for kind in typing.get_args(Event):
        registry.events.subscribe(kind, published.append)
    registry.restore(remembered)
    assert round(registry.silent_s(registry.nodes["old"])) == 7200, "not the hub machine's uptime"
    # nothing happened to the node: no StatusChanged (the event log, usage and the liveness log
    # count none), only the NodeRestored alerts judge it by
    assert published == [NodeRestored("old", None, None, clock.wall() - 7200)]
