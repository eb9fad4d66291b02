"""What the alert rules, the memory and MIG nodes add to the hub's CPU per agent message, A/B in one process.

The hub's message path, in-process: simulated agents' real frames (:mod:`bench.simnode`,
replayed as ``bench.load_agents`` does) are decoded and merged into a :class:`NodeRegistry` with
every subscriber the hub has (:func:`hub.app.build_state`: the idle-holder tracker, the scene
rendering each change for the fan-out, whose tick runs every 200 messages), and, per variant,
the ten alert rules of ``bench/alert_rules.toml`` (:class:`AlertService`), the memory's
counting (:class:`MemorySync`: usage accounting, history and the event log, each taking what it
counted once a simulated minute as the flush does; writing is on the store's thread and not
timed) and a quarter of the nodes A100s in MIG mode (two slices each, as
``bench.hub_load --all-features``). One viewer of every node that takes each tick's batch at
once, no sockets: what is left is the Python work each message costs, which is what the features add
to. Each variant's lab gets the same nodes; rounds (one message from every node) alternate
between the variants so the machine's noise falls on all alike. Prints the CPU time per
message (the median round) of each variant and what each feature adds; ``--parts`` also times
each event subscriber, and decoding.

    python -m bench.feature_cost [--nodes 2000] [--rounds 24] [--parts] [--tiny]

The collector runs with the hub's thresholds (:func:`hub.memory.tune_gc`), so its cost falls
where it would in the hub; ``--no-gc`` turns it off while timing, for steadier figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.figures import Figures
from bench.simnode import Family, SimAgent
from hub.alerts.delivery import Delivery
from hub.alerts.service import AlertService
from hub.app import build_state
from hub.clock import ManualClock
from hub.fanout import Viewer
from hub.memory import tune_gc
from hub.scene import ViewFilter
from hub.settings import load_settings
from hub.store import StoreSync
from hub.usage.sync import MemorySync
from node_agent.protocol import decode

ALERT_RULES = Path(__file__).with_name("alert_rules.toml")
MIG_EVERY = 4  # as bench.hub_load --all-features: every fourth family in MIG mode
FAMILIES = 100  # as bench.load_agents
FLUSH_EVERY = 200  # messages between two fan-out ticks (2,000 a second, 10 ticks)
VARIANTS = {  # name -> (the ten alert rules, every K-th family in MIG mode, the memory)
    "plain": (False, 0, False),
    "alerts": (True, 0, False),
    "mig": (False, MIG_EVERY, False),
    "memory": (False, 0, True),
    "all": (True, MIG_EVERY, True),
}


class Lab:
    """One hub's message path fed ``nodes`` simulated agents."""

    def __init__(self, nodes: int, alerts: bool, mig_every: int, memory: bool) -> None:
        self.clock = ManualClock()
        settings = load_settings(["--config", str(ALERT_RULES)] if alerts else [], env={})
        self.state = build_state(settings, self.clock)
        self.memory = None
        if memory:  # counting as in the hub; the store is never opened (writing is on its thread)
            self.memory = MemorySync(
                StoreSync(os.devnull, self.state.registry, settings.names),
                os.devnull,
                self.state.registry,
                self.clock,
                settings.memory,
                settings.idle_holders,
                settings.liveness,
                settings.names,
            )
        self.alerts = None
        if alerts:  # evaluated as in the hub; nothing fires, so nothing is delivered
            self.alerts = AlertService(
                settings.alerts,
                self.state.registry.events,
                settings.names,
                settings.gpu_free,
                self.clock,
                delivery=Delivery(),
            )
        families = {
            k: Family(1000 + k, 0.6, 1.0, mig=mig_every > 0 and k % mig_every == 0)
            for k in range(min(FAMILIES, nodes))
        }
        self.agents = [SimAgent(f"n{i:05d}", families[i % len(families)], start=i) for i in range(nodes)]
        # a wall of every node, taking each tick's batch at once: every change renders, as in
        # the hub with viewers (with none, the scene defers them: Scene.defer)
        self.viewer = Viewer(_discard, ViewFilter(), 10.0)
        self.state.fanout.add_viewer(self.viewer)
        self.connections = {}
        for agent in self.agents:
            hello = decode(agent.hello_frame())
            self.connections[agent.name] = self.state.registry.hello(hello, "10.0.0.1")  # type: ignore[arg-type]
        self.round_us(gc_off=True)  # the first full samples: whole cards, not changes

    def round_us(self, gc_off: bool, parts: dict[str, float] | None = None) -> float:
        """One message from every agent: CPU µs per message (decode, merge, every subscriber,
        the fan-out's ticks, for a viewer of every node). ``parts``: seconds spent decoding are added under "decode"."""
        self.clock.advance(1.0)
        frames = [(agent.name, agent.next_frame(self.clock.wall())) for agent in self.agents]
        registry, fanout, connections = self.state.registry, self.state.fanout, self.connections
        if gc_off:
            gc.collect()
            gc.disable()
        clock = time.process_time  # CPU time: another process on the machine does not count
        decode_s = 0.0
        started = clock()
        for count, (name, text) in enumerate(frames, 1):
            if parts is not None:
                before = clock()
                delta = decode(text)
                decode_s += clock() - before
            else:
                delta = decode(text)
            registry.delta(name, connections[name], delta, len(text))  # type: ignore[arg-type]
            if count % FLUSH_EVERY == 0:
                fanout.flush()
                self.viewer.start_with(())
        fanout.flush()
        self.viewer.start_with(())
        if self.alerts is not None:
            self.alerts.tick()
        memory = self.memory
        if memory is not None and self.clock.wall() % 60 < 1:  # the flush's swap, each minute
            memory.accounting.take(), memory.history.take(), memory.events.take()
        elapsed = clock() - started
        if gc_off:
            gc.enable()
        if parts is not None:
            parts["decode"] += decode_s
        return elapsed / len(frames) * 1e6

    def time_subscribers(self, parts: dict[str, float]) -> None:
        """Wraps every event handler with a timer adding its CPU seconds to ``parts``."""
        handlers: dict[type, list[Callable[[Any], None]]] = self.state.registry.events._handlers
        for kind, subscribed in handlers.items():
            for i, handler in enumerate(subscribed):
                name = f"{kind.__name__} > {getattr(handler, '__qualname__', repr(handler))}"
                subscribed[i] = _timed(handler, name, parts)


async def _discard(payload: bytes) -> None:
    pass


def _timed(handler: Callable[[Any], None], name: str, parts: dict[str, float]) -> Callable[[Any], None]:
    def timed(event: Any) -> None:
        started = time.process_time()
        handler(event)
        parts[name] += time.process_time() - started

    return timed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feature_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=24, help="messages per node and variant")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--parts", action="store_true", help="also time each event subscriber and decoding")
    parser.add_argument("--no-gc", action="store_true", help="no garbage collection while timing")
    parser.add_argument("--tiny", action="store_true", help="a few nodes and rounds (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.nodes, args.rounds = 8, 3
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or "plain" not in names:
        parser.error(f"variants: 'plain' and any of {', '.join(VARIANTS)} (not {', '.join(unknown)})")
    tune_gc()
    fig = Figures("feature_cost", judge=not args.tiny)
    fig.header(
        f"{args.nodes} nodes x 8 GPUs, {args.rounds} rounds per variant, alternating; decode + "
        f"NodeRegistry.delta with every subscriber + fan-out ticks, CPU time per message"
    )
    fig.note(
        f"alerts: the ten rules of {ALERT_RULES.name}; mig: every {MIG_EVERY}th simulated family "
        "(a quarter of the nodes) A100s in MIG mode, two slices each"
    )
    labs = {name: Lab(args.nodes, *VARIANTS[name]) for name in names}
    parts: dict[str, dict[str, float]] = {name: defaultdict(float) for name in names}
    if args.parts:
        for name, lab in labs.items():
            lab.time_subscribers(parts[name])
    rounds: dict[str, list[float]] = {name: [] for name in names}
    for done in range(args.rounds):
        # each round in another order: the lab that runs first after another pays for its
        # caches, which the one after it may find warm
        for name in names[done % len(names) :] + names[: done % len(names)]:
            rounds[name].append(labs[name].round_us(args.no_gc, parts[name] if args.parts else None))
    warm = max(1, args.rounds // 8)  # the first rounds fill caches and histories
    for name in names:
        fig.add(f"us_per_message.{name}", statistics.median(rounds[name][warm:]), "µs")
    plain = rounds["plain"][warm:]
    for name in names:
        if name != "plain":
            # the median of the rounds' differences: a slow phase of the machine falls on both
            added = statistics.median(a - b for a, b in zip(rounds[name][warm:], plain, strict=True))
            fig.add(f"added_us_per_message.{name}", added, "µs")
            fig.add(f"ratio.{name}", 1 + added / statistics.median(plain), "x", digits=3)
    if args.parts:
        messages = args.nodes * args.rounds
        for name in names:
            for part, seconds in sorted(parts[name].items(), key=lambda item: -item[1]):
                fig.add(f"part_us_per_message.{name}.{_figure_name(part)}", seconds / messages * 1e6, "µs")
    return fig.done()


def _figure_name(part: str) -> str:
    """A subscriber's name as one greppable word: ``SampleApplied>Conditions.sample_applied``."""
    return part.replace(" ", "").replace(".<locals>", "")


if __name__ == "__main__":
    raise SystemExit(main())
