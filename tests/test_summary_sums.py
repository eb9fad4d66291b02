"""The summary bar adds per-node sums that the scene keeps as rows render (and patches when only
a GPU's memory moved): after any run of changes they must equal the sums made afresh from every
GPU row's tally. Random samples through a real registry and scene: GPUs turning free, busy and
lost, memory moving, MIG slices coming and going, GPUs leaving, nodes going offline."""

from __future__ import annotations

import random
from typing import Any

from frontend.render import Renderer
from frontend.viewmodels import node_tally, summary_view
from hub.clock import ManualClock
from hub.registry import NodeRegistry
from hub.scene import Scene, ViewFilter
from hub.settings import GpuFreeRule
from node_agent.protocol import Delta, Hello
from tests.rendered import Rendered

GIB = 1024**3


def random_gpu(rng: random.Random) -> dict[str, Any]:
    busy = rng.random() < 0.6
    gpu: dict[str, Any] = {
        "name": rng.choice(["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]),
        "util_gpu_percent": float(rng.randint(40, 100) if busy else rng.randint(0, 3)),
        "mem_used_bytes": rng.randint(1, 79) * GIB if busy else 0,
        "mem_total_bytes": 80 * GIB,
        "processes": [{"pid": 7, "user": rng.choice(["ann", "bo"]), "gpu_mem_bytes": GIB}] if busy else [],
        "error": "GPU is lost" if rng.random() < 0.05 else None,
    }
    if rng.random() < 0.2:
        gpu["mig_slices"] = [
            {"uuid": f"MIG-{k}", "profile": rng.choice(["3g.40gb", "1g.10gb"]), "processes": []}
            for k in range(rng.randint(1, 3))
        ]
    return gpu


def test_the_bars_sums_equal_sums_made_afresh_after_random_changes() -> None:
    rng = random.Random(20261207)
    clock = ManualClock()
    registry = NodeRegistry(clock)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    changes = Rendered(registry)
    connections = {}
    for k in range(12):
        name = f"n{k}"
        connections[name] = registry.hello(Hello(node=name, agent_version="t", interval_s=1.0))
        gpus = {str(i): random_gpu(rng) for i in range(rng.randint(0, 4))}
        registry.delta(name, connections[name], Delta(1, 0.0, {"sampled_at": clock.wall(), "gpus": gpus}))
    seq = 2
    for _ in range(300):
        clock.advance(0.1)
        name = rng.choice(sorted(connections))
        node = registry.nodes[name]
        roll = rng.random()
        if roll < 0.05 and node.connection:
            registry.disconnect(name, connections[name])
        elif roll < 0.1:
            connections[name] = registry.hello(Hello(node=name, agent_version="t", interval_s=1.0))
        else:
            gpus: dict[str, Any] = {}
            for index in [*(node.state.get("gpus") or {}), str(rng.randint(0, 5))]:
                if rng.random() < 0.1:
                    gpus[index] = None  # the GPU is gone
                elif rng.random() < 0.5:
                    gpus[index] = {"mem_used_bytes": rng.randint(0, 79) * GIB}  # only memory moves
                else:
                    gpus[index] = random_gpu(rng)
            seq += 1
            registry.delta(
                name, connections[name], Delta(seq, 0.0, {"sampled_at": clock.wall(), "gpus": gpus})
            )
        for change in changes.take():
            scene.render_change(change)
        kept = scene.summary_view(ViewFilter())
        afresh = summary_view(
            (node.status, node_tally(scene._rendered[node.node_id].tallies.values()), node.group)
            for node in registry.nodes.values()
            if node.node_id in scene._rendered
        )
        assert kept == afresh
    assert kept.gpus_total and kept.gpus_free and kept.slices, "the run covered free GPUs and slices"
