"""µs and bytes per changed node for the fragments the hub actually pushes.

Drives the hub's own pieces in-process: a :class:`NodeRegistry` fed real encoded-then-decoded
hellos and deltas from simulated nodes (:mod:`bench.simnode`), and :class:`Scene.render_change`
called the way the fan-out calls it: each change as it arrives, right after its message is
decoded and merged, from the registry's events (:func:`hub.scene.subscribe_changes`). Rendering
is timed, and separately the merge with its events (``us_per_message_merge``).

    python -m bench.render [--nodes 200] [--rounds 20] [--parts] [--tiny]

``--parts`` also times each part of a change (history, host part, GPU rows, sparklines), each
call under its own timer: their sum is a little more than the total without ``--parts``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bench.figures import Figures
from bench.simnode import SimNode
from frontend.render import Renderer
from hub.clock import ManualClock
from hub.registry import NodeRegistry
from hub.scene import NodeChange, Scene, subscribe_changes
from hub.settings import GpuFreeRule
from node_agent.protocol import Delta, Hello, decode

T = TypeVar("T")


class PartTimedScene(Scene):
    """The hub's scene with a timer around each part of a change: seconds per part."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part_s: dict[str, float] = {}

    def _timed(self, part: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = call()
        self.part_s[part] = self.part_s.get(part, 0.0) + time.perf_counter() - started
        return result

    def _record(self, node: Any) -> bool:
        return self._timed("history", lambda: super(PartTimedScene, self)._record(node))

    def _render_host(self, node: Any) -> str:
        return self._timed("host", lambda: super(PartTimedScene, self)._render_host(node))

    def _render_gpu(self, *args: Any) -> str:
        return self._timed("gpu_rows", lambda: super(PartTimedScene, self)._render_gpu(*args))

    def _render_cpu_spark(self, node_id: str) -> str:
        return self._timed("sparklines", lambda: super(PartTimedScene, self)._render_cpu_spark(node_id))

    def _render_gpu_spark(self, node_id: str, index: str) -> str:
        return self._timed(
            "sparklines", lambda: super(PartTimedScene, self)._render_gpu_spark(node_id, index)
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=40, help="samples per node (40: every sparkline group closes once)"
    )
    parser.add_argument("--busy-fraction", type=float, default=0.6, help="share of GPUs that are busy")
    parser.add_argument("--parts", action="store_true", help="also time each part of a change")
    parser.add_argument("--tiny", action="store_true", help="a few nodes and rounds (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.nodes, args.rounds = 5, 3

    fig = Figures("render", judge=not args.tiny)
    fig.header(
        f"{args.nodes} nodes x 8 GPUs ({args.busy_fraction:.0%} busy), {args.rounds} samples each; "
        "Scene.render_change per changed node"
    )
    clock = ManualClock()
    registry = NodeRegistry(clock)
    scene = (PartTimedScene if args.parts else Scene)(registry, Renderer(), GpuFreeRule(), clock.wall)
    sims = [SimNode(f"gpu{i:04d}", seed=i, busy_fraction=args.busy_fraction) for i in range(args.nodes)]
    changes: list[NodeChange] = []  # what the fan-out would render, from the registry's events
    subscribe_changes(registry.events, changes.append)
    connections: dict[str, int] = {}
    card_us: list[float] = []
    card_bytes: list[int] = []
    for sim in sims:
        hello = decode(sim.hello_frame())
        assert isinstance(hello, Hello)
        connections[sim.name] = registry.hello(hello, "10.0.0.1")
        first = decode(sim.next_delta(clock.wall()))
        assert isinstance(first, Delta)
        changes.clear()
        registry.delta(sim.name, connections[sim.name], first)
        [change] = changes
        assert change.card
        started = time.perf_counter()
        out = scene.render_change(change)
        card_us.append((time.perf_counter() - started) * 1e6)
        card_bytes.append(sum(len(html.encode()) for html in out.values()))

    per_node_us: list[float] = []
    merge_us: list[float] = []
    per_node_bytes: list[int] = []
    host_bytes: list[int] = []
    gpu_bytes: list[int] = []
    fragments = 0
    if isinstance(scene, PartTimedScene):
        scene.part_s.clear()  # the whole cards above are not changes
    for _ in range(args.rounds):
        clock.advance(1.0)
        # the agents' side first (simulating and encoding), then the hub's, per message as the
        # hub does it: decode, merge, render the change at once
        frames = [(sim.name, sim.next_delta(clock.wall())) for sim in sims]
        for name, frame in frames:
            delta = decode(frame)
            assert isinstance(delta, Delta)
            changes.clear()
            started = time.perf_counter()
            registry.delta(name, connections[name], delta)
            merge_us.append((time.perf_counter() - started) * 1e6)
            [change] = changes
            started = time.perf_counter()
            out = scene.render_change(change)
            per_node_us.append((time.perf_counter() - started) * 1e6)
            sizes = {element: len(html.encode()) for element, html in out.items()}
            per_node_bytes.append(sum(sizes.values()))
            fragments += len(sizes)
            for element, size in sizes.items():
                (host_bytes if element.startswith("host-") else gpu_bytes).append(size)

    busy = sum(sim.busy_gpus for sim in sims) / len(sims)
    fig.note(f"{busy:.1f} busy GPUs per node on average; idle GPU rows are never re-rendered or sent")
    mean_us = statistics.fmean(per_node_us)
    mean_bytes = statistics.fmean(per_node_bytes)
    fig.add("us_per_changed_node", mean_us, "µs", target="≤ 100 µs", ok=mean_us <= 100)
    fig.add("us_per_changed_node_p99", _quantile(per_node_us, 0.99), "µs")
    fig.add("bytes_per_changed_node", mean_bytes, "B", target="≤ 1536 B", ok=mean_bytes <= 1536, digits=0)
    fig.add("fragments_per_changed_node", fragments / len(per_node_us), "", digits=2)
    fig.add("host_fragment_bytes", statistics.fmean(host_bytes), "B", digits=0)
    if gpu_bytes:
        fig.add("gpu_row_bytes", statistics.fmean(gpu_bytes), "B", digits=0)
    fig.add("us_per_message_merge", statistics.fmean(merge_us), "µs")
    fig.add("us_per_fragment", sum(per_node_us) / max(fragments, 1), "µs")
    fig.add("us_per_whole_card", statistics.fmean(card_us), "µs")
    fig.add("bytes_per_whole_card", statistics.fmean(card_bytes), "B", digits=0)
    if isinstance(scene, PartTimedScene):
        for part, seconds in sorted(scene.part_s.items(), key=lambda item: -item[1]):
            fig.add(f"part_us_per_changed_node.{part}", seconds * 1e6 / len(per_node_us), "µs")
    return fig.done()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    raise SystemExit(main())
