"""Each rule kind from the registry's real domain events (a real NodeRegistry on a fake clock),
with the filters (group, node globs, model, threshold) and what each message says."""

from __future__ import annotations

from typing import Any

from hub.alerts.conditions import Conditions
from hub.alerts.config import parse_alerts
from hub.alerts.engine import AlertEngine, Message, Status, Subject
from hub.clock import ManualClock
from hub.domain.events import IdleHeldChanged, SampleApplied
from hub.domain.gpus import GpuFreeRule
from hub.domain.nodes import Naming, Node, NodeStatus
from hub.registry import NodeRegistry
from node_agent.protocol import Delta, Hello
from tests.alert_receivers import TWO_A100_FREE_RULE

GIB = 1024**3
A100 = "NVIDIA A100-SXM4-40GB"
T4 = "Tesla T4"


class Lab:
    def __init__(self, rules: list[dict[str, Any]], users: dict[str, str] | None = None) -> None:
        self.clock = ManualClock()
        names = {"gpu01": Naming(group="A100 room"), "gpu02": Naming(group="A100 room")}
        self.registry = NodeRegistry(self.clock, names=names)
        self.registry.events.subscribe(SampleApplied, lambda e: None)  # the presenter's, in the hub
        for rule in rules:
            rule.setdefault("channels", ["chat"])
        config = parse_alerts(
            {
                "group_wait_s": 0,
                "channels": [{"name": "chat", "url": "json://127.0.0.1:1/"}],
                "rules": rules,
                "users": users or {},
            }
        )
        self.engine = AlertEngine(config, self.clock)
        self.conditions = Conditions(self.engine, config, names, GpuFreeRule(), self.clock)
        self.conditions.subscribe(self.registry.events)
        self.connections: dict[str, int] = {}
        self.seq = 0

    def hello(self, node: str, models: list[str], collector: str = "up") -> None:
        gpus = [{"index": i, "name": m, "uuid": f"GPU-{node}-{i}"} for i, m in enumerate(models)]
        hello = Hello(
            node=node,
            agent_version="t",
            interval_s=1.0,
            gpus=gpus,
            gpu_driver={"collector_state": collector, "error": "NVML: driver not loaded"},
        )
        self.connections[node] = self.registry.hello(hello)

    def delta(self, node: str, patch: dict[str, Any]) -> None:
        self.seq += 1
        self.clock.advance(1.0)
        patch = {"sampled_at": float(self.seq), **patch}
        self.registry.delta(node, self.connections[node], Delta(self.seq, 0.0, patch))

    def messages(self, seconds: float = 1.0) -> list[tuple[Status, list[str], str]]:
        out: list[Message] = []
        for _ in range(int(seconds * 2)):
            self.clock.advance(0.5)
            out += self.engine.tick()
        return [(m.status, [line.subject.key for line in m.lines], m.lines[0].text) for m in out]


def free_gpu(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "util_gpu_percent": 0.0,
        "mem_used_bytes": 0,
        "mem_total_bytes": 40 * GIB,
        "processes": [],
        "temp_celsius": 40.0,
    }


def busy_gpu(name: str) -> dict[str, Any]:
    return {
        **free_gpu(name),
        "util_gpu_percent": 90.0,
        "mem_used_bytes": 30 * GIB,
        "processes": [{"pid": 1, "user": "alice", "gpu_mem_bytes": 30 * GIB}],
    }


def test_node_offline_with_group_and_globs() -> None:
    lab = Lab([{"name": "down", "when": "node_offline", "group": "A100 room", "nodes": ["gpu0*"]}])
    for node in ("gpu01", "gpu02", "cpu01"):
        lab.hello(node, [])
    lab.registry.disconnect("gpu01", lab.connections["gpu01"])
    lab.registry.disconnect("cpu01", lab.connections["cpu01"])  # not in the group
    [(status, subjects, text)] = lab.messages()
    assert (status, subjects) == (Status.FIRING, ["gpu01"]) and text.startswith("gpu01 offline (last seen ")
    lab.hello("gpu01", [])
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.RESOLVED, ["gpu01"])]


def test_gpu_fault_from_health_and_from_a_lost_gpu() -> None:
    lab = Lab([{"name": "fault", "when": "gpu_fault", "model": "A100"}])
    lab.hello("gpu01", [A100, A100, T4])
    lab.delta("gpu01", {"gpus": {"0": free_gpu(A100), "1": free_gpu(A100), "2": free_gpu(T4)}})
    assert lab.messages() == []
    lab.delta(
        "gpu01",
        {"gpus": {"0": {"remap_failed": True}, "1": {"error": "GPU is lost"}, "2": {"error": "GPU is lost"}}},
    )  # 2 is a T4: not this rule's
    fired = lab.messages()
    assert [(s, sorted(k)) for s, k, _ in fired] == [(Status.FIRING, ["gpu01/0", "gpu01/1"])]
    lab.delta("gpu01", {"gpus": {"0": {"remap_failed": False}}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.RESOLVED, ["gpu01/0"])]


def test_gpu_warning_says_the_finding() -> None:
    lab = Lab([{"name": "warn", "when": "gpu_warning"}])
    lab.hello("gpu01", [A100])
    lab.delta("gpu01", {"gpus": {"0": free_gpu(A100)}})
    lab.delta("gpu01", {"gpus": {"0": {"remap_pending": True}}})
    [(status, subjects, text)] = lab.messages()
    assert (status, subjects) == (Status.FIRING, ["gpu01/0"]) and "row remap pending" in text


def test_thresholds_for_gpu_temperature_disk_and_memory() -> None:
    lab = Lab(
        [
            {"name": "hot", "when": "gpu_temp_above", "threshold": 85},
            {"name": "disk", "when": "disk_used_above", "threshold": 90},
            {"name": "mem", "when": "mem_used_above", "threshold": 95},
        ]
    )
    lab.hello("gpu01", [A100])
    host = {
        "mem_used_bytes": 10,
        "mem_total_bytes": 100,
        "disks": [{"mount": "/", "used_bytes": 50, "total_bytes": 100}],
    }
    lab.delta("gpu01", {"host": host, "gpus": {"0": free_gpu(A100)}})
    assert lab.messages() == []
    lab.delta(
        "gpu01",
        {
            "host": {"mem_used_bytes": 99, "disks": [{"mount": "/", "used_bytes": 95, "total_bytes": 100}]},
            "gpus": {"0": {"temp_celsius": 91.0}},
        },
    )
    fired = {k[0]: t for _, k, t in lab.messages()}
    assert fired == {
        "gpu01:mem": "gpu01 memory 99% used (above 95%)",
        "gpu01:/": "gpu01 disk / 95% used (above 90%)",
        "gpu01/0": "gpu01 GPU 0 at 91 °C (above 85)",
    }
    lab.delta("gpu01", {"gpus": {"0": {"temp_celsius": 80.0}}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.RESOLVED, ["gpu01/0"])]


def test_gpus_free_fires_once_when_enough_of_a_model_are_free_in_the_group() -> None:
    lab = Lab([dict(TWO_A100_FREE_RULE)], users={"bob": "mailto://bob@lab.example"})
    lab.hello("gpu01", [A100, A100])
    lab.hello("gpu02", [A100, T4])
    lab.hello("cpu01", [A100])  # not in the group
    lab.delta("gpu01", {"gpus": {"0": busy_gpu(A100), "1": free_gpu(A100)}})
    lab.delta("gpu02", {"gpus": {"0": busy_gpu(A100), "1": free_gpu(T4)}})
    lab.delta("cpu01", {"gpus": {"0": free_gpu(A100)}})
    assert lab.messages() == []
    lab.delta("gpu02", {"gpus": {"0": free_gpu(A100)}})
    [(status, _, text)] = lab.messages()
    assert status is Status.FIRING and text == "2 A100 GPUs free in A100 room: gpu01, gpu02"
    assert lab.engine.firing()[0].rule.users == ("bob",)
    lab.delta("gpu01", {"gpus": {"0": free_gpu(A100)}})  # 3 free: still the same alert
    lab.delta("gpu02", {"gpus": {"0": busy_gpu(A100)}})
    lab.delta("gpu01", {"gpus": {"0": busy_gpu(A100), "1": busy_gpu(A100)}})  # taken: no resolved
    assert lab.messages() == []
    lab.delta("gpu01", {"gpus": {"0": free_gpu(A100), "1": free_gpu(A100)}})  # free again: again once
    assert [s for s, _, _ in lab.messages()] == [Status.FIRING]


def test_gpus_free_counts_mig_slices_of_a_profile() -> None:
    lab = Lab([{"name": "slices", "when": "gpus_free", "mig_profile": "3g.20gb", "min_free": 2}])
    lab.hello("gpu01", [A100])
    slice_free = {"profile": "3g.20gb", "mem_used_bytes": 0, "mem_total_bytes": 20 * GIB, "processes": []}
    slice_busy = {**slice_free, "processes": [{"pid": 1, "user": "a"}], "mem_used_bytes": 10 * GIB}
    lab.delta("gpu01", {"gpus": {"0": {**busy_gpu(A100), "mig_slices": [slice_free, slice_busy]}}})
    assert lab.messages() == []
    lab.delta("gpu01", {"gpus": {"0": {"mig_slices": [slice_free, slice_free]}}})
    [(status, _, text)] = lab.messages()
    assert status is Status.FIRING and text == "2 MIG 3g.20gb slices free: gpu01"


def test_gpu_collector_down_from_the_hello() -> None:
    lab = Lab([{"name": "collector", "when": "gpu_collector_down"}])
    lab.hello("gpu01", [], collector="down")
    [(status, subjects, text)] = lab.messages()
    assert (status, subjects, text) == (
        Status.FIRING,
        ["gpu01"],
        "gpu01: GPU collector down (NVML: driver not loaded)",
    )
    lab.hello("gpu01", [A100], collector="up")
    assert [s for s, _, _ in lab.messages()] == [Status.RESOLVED]


def test_gpu_idle_held_goes_to_the_holder_and_counts_for_s_from_the_idle_start() -> None:
    lab = Lab(
        [{"name": "idle 2h", "when": "gpu_idle_held", "for_s": 7200, "channels": []}],
        users={"alice": "mailto://alice@lab.example"},
    )
    lab.hello("gpu01", [A100])
    now = lab.clock.wall()
    holders = ({"user": "alice", "pid": 7}, {"user": "mallory", "pid": 8})
    # the tracker publishes when the GPU has been idle-held its minimum (30 min here)
    lab.registry.events.publish(IdleHeldChanged("gpu01", "0", None, True, now - 1800, holders, now))
    assert lab.messages(60) == []
    lab.clock.advance(5400 - 61)
    [(status, subjects, text)] = lab.messages(2)
    assert (status, subjects) == (Status.FIRING, ["gpu01/0"])
    assert text.startswith("gpu01 GPU 0 held idle by alice, mallory since ")
    [alert] = lab.engine.firing()
    assert alert.users == ("alice",)  # mallory has no URL in [alerts.users]
    lab.registry.events.publish(IdleHeldChanged("gpu01", "0", None, False, now - 1800, holders, now))
    assert [s for s, _, _ in lab.messages()] == [Status.RESOLVED]


def test_a_removed_node_ends_its_alerts_silently() -> None:
    lab = Lab([{"name": "down", "when": "node_offline"}])
    lab.hello("gpu01", [])
    lab.registry.disconnect("gpu01", lab.connections["gpu01"])
    assert len(lab.messages()) == 1
    lab.registry.remove("gpu01")
    assert lab.messages() == [] and lab.engine.firing() == []


def test_a_restored_gpus_free_alert_resolves_when_too_few_are_free_and_fires_again_later() -> None:
    lab = Lab([{"name": "2 A100 free", "when": "gpus_free", "model": "A100", "min_free": 2}])
    rule = lab.engine.rules["2 A100 free"]
    subject = Subject("A100 GPUs in the lab")
    assert lab.engine.restore(rule.name, subject, "2 A100 GPUs free", 0.0, True)
    lab.conditions.adopt_restored(rule.name, subject)
    lab.hello("gpu01", [A100, A100])
    lab.delta("gpu01", {"gpus": {"0": busy_gpu(A100), "1": free_gpu(A100)}})
    assert lab.messages() == [] and lab.engine.firing() == []  # ended, silently (no send_resolved)
    lab.delta("gpu01", {"gpus": {"0": free_gpu(A100)}})
    assert [s for s, _, _ in lab.messages()] == [Status.FIRING]


def restore(lab: Lab, node: str, silent_s: float, group: str | None = None) -> None:
    """The node as the store brings it back after a restart: offline, last seen ``silent_s`` ago."""
    hello = Hello(node=node, agent_version="t", interval_s=1.0)
    lab.registry.restore(
        Node(
            node,
            node,
            group,
            hello=hello,
            status=NodeStatus.OFFLINE,
            last_seen_wall=lab.clock.wall() - silent_s,
        )
    )


def test_a_node_restored_offline_fires_once_for_s_after_it_was_last_seen_and_resolves() -> None:
    lab = Lab([{"name": "down", "when": "node_offline", "for_s": 600, "group": "A100 room"}])
    restore(lab, "gpu01", 500, group="A100 room")  # went silent 500 s before the hub came back
    restore(lab, "gpu02", 7200, group="A100 room")  # long gone: its for_s is over already
    restore(lab, "cpu01", 7200)  # not in the rule's group
    [(status, subjects, text)] = lab.messages()
    assert (status, subjects) == (Status.FIRING, ["gpu02"]) and text.startswith("gpu02 offline (last seen ")
    assert lab.messages(95) == []  # gpu01: 596 s since it was last seen
    assert [(s, k) for s, k, _ in lab.messages(10)] == [(Status.FIRING, ["gpu01"])]
    assert lab.messages(600) == []
    lab.hello("gpu01", [])
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.RESOLVED, ["gpu01"])]


def test_a_restored_node_whose_alert_fired_before_the_restart_is_not_told_again() -> None:
    lab = Lab([{"name": "down", "when": "node_offline", "for_s": 60}])
    lab.conditions.hold_restored()  # as the hub does until the state file's alerts are back
    restore(lab, "gpu01", 3600)
    restore(lab, "gpu02", 30)  # went silent just before the restart, back before it was judged
    lab.hello("gpu02", [])
    assert lab.engine.restore(
        "down", Subject("gpu01", "gpu01"), "gpu01 offline", lab.clock.wall() - 3540, True
    )
    lab.conditions.judge_restored()
    assert lab.messages(120) == [] and [a.subject.key for a in lab.engine.firing()] == ["gpu01"]
    restore(lab, "gpu03", 3600)  # restored once judging is on (a state file opened late): at once
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.FIRING, ["gpu03"])]
    lab.hello("gpu01", [])  # back: the alert from before the restart resolves, once
    assert [(s, k) for s, k, _ in lab.messages(60)] == [(Status.RESOLVED, ["gpu01"])]


def test_a_disk_list_unchanged_between_samples_keeps_its_verdict_until_it_changes() -> None:
    lab = Lab([{"name": "disk", "when": "disk_used_above", "threshold": 90}])
    lab.hello("gpu01", [A100])
    full = [{"mount": "/", "used_bytes": 95, "total_bytes": 100}]
    lab.delta("gpu01", {"host": {"mem_used_bytes": 1, "mem_total_bytes": 100, "disks": full}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.FIRING, ["gpu01:/"])]
    for used in (2, 3, 4):  # the host changes, its disks do not: judged once, still firing
        lab.delta("gpu01", {"host": {"mem_used_bytes": used}})
    assert lab.messages() == []
    lab.delta("gpu01", {"host": {"disks": [{"mount": "/", "used_bytes": 50, "total_bytes": 100}]}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.RESOLVED, ["gpu01:/"])]
    lab.hello("gpu01", [A100])  # a reconnect judges the disks again
    lab.delta("gpu01", {"host": {"disks": full}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.FIRING, ["gpu01:/"])]


def test_temperature_rules_of_other_models_and_nodes_do_not_lower_what_a_gpu_is_held_to() -> None:
    """Each GPU is held to the rules that apply to it, while samples under every threshold of
    the node's rules are passed over (the fast path) and those above are judged rule by rule."""
    lab = Lab(
        [
            {"name": "hot A100", "when": "gpu_temp_above", "threshold": 80, "model": "A100"},
            {"name": "hot", "when": "gpu_temp_above", "threshold": 90},
            {"name": "hot rack 2", "when": "gpu_temp_above", "threshold": 50, "nodes": ["gpu02"]},
        ]
    )
    lab.hello("gpu01", [A100, T4])
    lab.delta("gpu01", {"gpus": {"0": free_gpu(A100), "1": free_gpu(T4)}})
    lab.delta("gpu01", {"gpus": {"0": {"temp_celsius": 70.0}, "1": {"temp_celsius": 85.0}}})
    assert lab.messages() == []  # the T4 is under 90; rack 2's 50 is not gpu01's
    lab.delta("gpu01", {"gpus": {"0": {"temp_celsius": 85.0}}})
    assert [(s, r, k) for s, k, r in lab.messages()] == [
        (Status.FIRING, "gpu01 GPU 0 at 85 °C (above 80)", ["gpu01/0"])
    ]
    # with a condition holding, the node's other GPUs are judged by each rule as before
    lab.delta("gpu01", {"gpus": {"1": {"temp_celsius": 95.0}}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.FIRING, ["gpu01/1"])]
    lab.delta("gpu01", {"gpus": {"0": {"temp_celsius": 60.0}, "1": {"temp_celsius": 60.0}}})
    resolved = sorted((s, key) for s, keys, _ in lab.messages() for key in keys)
    assert resolved == [(Status.RESOLVED, "gpu01/0"), (Status.RESOLVED, "gpu01/1")]
    # none holds again: a GPU crossing a threshold still fires
    lab.delta("gpu01", {"gpus": {"1": {"temp_celsius": 91.0}}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.FIRING, ["gpu01/1"])]


def test_removing_a_node_keeps_the_alerts_of_a_node_whose_name_starts_with_its_own() -> None:
    lab = Lab([{"name": "hot", "when": "gpu_temp_above", "threshold": 85}])
    for node in ("gpu1", "gpu10"):
        lab.hello(node, [A100])
        lab.delta(node, {"gpus": {"0": {**free_gpu(A100), "temp_celsius": 90.0}}})
    assert [(s, sorted(k)) for s, k, _ in lab.messages()] == [(Status.FIRING, ["gpu1/0", "gpu10/0"])]
    lab.registry.remove("gpu1")
    lab.delta("gpu10", {"gpus": {"0": {"temp_celsius": 60.0}}})
    assert [(s, k) for s, k, _ in lab.messages()] == [(Status.RESOLVED, ["gpu10/0"])]
    assert lab.engine.firing() == []
