"""The idle-holder tracker's cost per agent message (:mod:`hub.domain.idle`), A/B in one process.

Two registries with the presenter's subscription, one also with the tracker, are fed the same
simulated nodes' deltas (:mod:`bench.simnode`, same seeds), round by round, interleaved, so the
machine's noise falls on both alike. Prints the merge's µs per message (the registry's
``delta`` with every subscriber) for each, and the difference.

    python -m bench.idle_holders [--nodes 200] [--rounds 40] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from bench.figures import Figures
from bench.simnode import SimNode
from hub.clock import ManualClock
from hub.domain.idle import IdleHolders
from hub.registry import NodeRegistry
from hub.scene import subscribe_changes
from node_agent.protocol import Delta, Hello, decode


class Lab:
    def __init__(self, nodes: int, tracked: bool) -> None:
        self.clock = ManualClock()
        self.registry = NodeRegistry(self.clock)
        subscribe_changes(self.registry.events, lambda change: None)  # the presenter always listens
        if tracked:
            IdleHolders(self.registry.events, self.clock)
        self.sims = [SimNode(f"gpu{i:04d}", seed=i) for i in range(nodes)]
        self.connections = {}
        for sim in self.sims:
            hello = decode(sim.hello_frame())
            assert isinstance(hello, Hello)
            self.connections[sim.name] = self.registry.hello(hello)

    def round_us(self) -> float:
        """One delta from every node: µs per message."""
        self.clock.advance(1.0)
        deltas = []
        for sim in self.sims:
            delta = decode(sim.next_delta(self.clock.wall()))
            assert isinstance(delta, Delta)
            deltas.append((sim.name, delta))
        started = time.perf_counter()
        for name, delta in deltas:
            self.registry.delta(name, self.connections[name], delta)
        return (time.perf_counter() - started) / len(deltas) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_holders", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tiny", action="store_true", help="a few nodes and rounds (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.nodes, args.rounds = 5, 4
    fig = Figures("idle_holders", judge=not args.tiny)
    fig.header(
        f"{args.nodes} nodes x 8 GPUs, {args.rounds} rounds; registry.delta with and without the tracker"
    )
    labs = {False: Lab(args.nodes, tracked=False), True: Lab(args.nodes, tracked=True)}
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for tracked, lab in labs.items():
            rounds[tracked].append(lab.round_us())
    warm = max(1, args.rounds // 8)  # the first rounds fill caches and histories
    without = statistics.median(rounds[False][warm:])
    with_tracker = statistics.median(rounds[True][warm:])
    fig.add("us_per_message_merge_without_tracker", without, "µs")
    fig.add("us_per_message_merge_with_tracker", with_tracker, "µs")
    fig.add("tracker_us_per_message", with_tracker - without, "µs")
    fig.add("tracker_share_of_merge", 100 * (with_tracker - without) / without, "%", digits=1)
    return fig.done()


if __name__ == "__main__":
    raise SystemExit(main())
