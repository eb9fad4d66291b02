"""The hub's memory with every feature on, in one process: what each feature holds at rest and
what a flush adds at its peak (#20.3: RSS ≤ 300 MiB at 2,000 x 50 with every feature).

    python -m bench.feature_memory [--nodes 2000] [--minutes 3] [--plain] [--trace] [--tiny]

The hub's own application (:func:`hub.app.create_app`, its lifespan and background tasks) is
fed by simulated agents replaying :class:`bench.simnode.Family` loops as
:mod:`bench.load_agents` does (100 families, every fourth in MIG mode), straight into the
registry (no sockets, no viewers: those cost the same with the features off). A manual clock
advances one second per round; the memory's flush runs every 60 simulated seconds, as in the
hub. With every feature (the default): a state file (usage accounting, history, the event
log), the ten alert rules of ``bench/alert_rules.toml`` and the MIG nodes; ``--plain``: none.

Prints RSS after start, after the agents' hellos, at rest after each minute, and the RSS
peak of each flush (sampled by a thread every 5 ms), with the hub's malloc settings
(:mod:`hub.memory`). ``--trace``: tracemalloc snapshots too (slow, and its own bookkeeping
adds to RSS): what the features hold at rest, and what the flush allocates at its peak,
grouped by file and line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.figures import Figures
from bench.simnode import Family, SimAgent
from hub.app import create_app
from hub.clock import ManualClock
from hub.memory import release_free_memory, tune_gc, tune_malloc
from hub.settings import load_settings
from node_agent.protocol import Delta, Hello, decode

MIB = 1024**2
ALERT_RULES = Path(__file__).with_name("alert_rules.toml")
FEATURES = ("state", "alerts", "mig")
FAMILIES = 100
MIG_EVERY = 4  # as bench.hub_load --all-features
T0 = 1_796_600_000.0


class PeakSampler:
    """The process's RSS every few milliseconds, on a thread: the peak between marks."""

    def __init__(self, every_s: float = 0.005) -> None:
        self._process = psutil.Process()
        self._every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def reset(self) -> int:
        """The peak since the last reset (the current RSS included)."""
        peak = max(self.peak, self._process.memory_info().rss)
        self.peak = 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def _never() -> None:
    await asyncio.Event().wait()


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def top(snapshot: tracemalloc.Snapshot, key: str, limit: int) -> list[str]:
    lines = []
    for stat in snapshot.statistics(key)[:limit]:
        frame = stat.traceback[0]
        where = frame.filename.replace(str(Path(__file__).parent.parent) + "/", "")
        where = where.split("site-packages/")[-1] + (f":{frame.lineno}" if key == "lineno" else "")
        lines.append(f"{stat.size / MIB:8.2f} MiB {stat.count:8d} blocks  {where}")
    return lines


async def run(args: argparse.Namespace, fig: Figures, folder: Path) -> None:
    argv = ["--state-db", str(folder / "state.sqlite3") if "state" in args.features else "none"]
    if "alerts" in args.features:
        argv += ["--config", str(ALERT_RULES)]
    settings = load_settings([*argv, "--log-level", "WARNING"], env={})
    clock = ManualClock(mono_s=100.0, wall_s=T0)
    families = {
        k: Family(1000 + k, 0.6, 1.0, mig="mig" in args.features and k % MIG_EVERY == 0)
        for k in range(min(FAMILIES, args.nodes))
    }
    sims = [SimAgent(f"n{i:05d}", families[i % FAMILIES]) for i in range(args.nodes)]
    sampler = PeakSampler()
    fig.add("rss_mib.before_app", rss() / MIB, "MiB (imports and the simulated agents)")
    if args.trace:
        tracemalloc.start(1)
    app = create_app(settings, clock)
    hub = app.state.hub
    memory = app.state.memory
    if memory is not None:
        # flushed below once a simulated minute, not on the wall clock
        memory.run = _never  # type: ignore[method-assign]
    async with app.router.lifespan_context(app):
        fig.add("rss_mib.started", rss() / MIB, "MiB (lifespan started)")
        connections = []
        for sim in sims:
            hello = decode(sim.hello_frame())
            assert isinstance(hello, Hello)
            connections.append(hub.registry.hello(hello, "10.0.0.1"))
        await asyncio.sleep(0)
        fig.add("rss_mib.hellos", rss() / MIB, "MiB (every agent's hello)")
        for minute in range(args.minutes):
            for _ in range(60):
                clock.advance(1.0)
                now = clock.wall()
                for sim, connection in zip(sims, connections, strict=True):
                    delta = decode(sim.next_frame(now))
                    assert isinstance(delta, Delta)
                    hub.registry.delta(sim.name, connection, delta)
                await asyncio.sleep(0)  # the fan-out's tick and the store's syncs
            gc.collect()
            release_free_memory()
            sampler.reset()
            fig.add(f"rss_mib.minute{minute + 1}_rest", rss() / MIB, "MiB (before the flush, trimmed)")
            if args.trace:
                traced = tracemalloc.get_traced_memory()[0]
                fig.add(
                    f"traced_mib.minute{minute + 1}_rest", traced / MIB, "MiB (allocated by the hub, alive)"
                )
            if args.trace and minute == args.minutes - 1:
                rest = tracemalloc.take_snapshot()
                for key in ("filename", "lineno"):
                    fig.note(f"held at rest, allocated since the app was made (tracemalloc, by {key}):")
                    for line in top(rest, key, args.top):
                        fig.note("  " + line)
                del rest
            if memory is not None:
                if args.trace and minute == args.minutes - 1:
                    tracemalloc.reset_peak()
                    before = tracemalloc.get_traced_memory()[0]
                rows = await memory.flush()
                peak = sampler.reset()
                fig.add(f"rss_mib.minute{minute + 1}_flush_peak", peak / MIB, f"MiB (flush of {rows:,} rows)")
                if args.trace and minute == args.minutes - 1:
                    fig.add(
                        "traced_flush_peak_mib",
                        (tracemalloc.get_traced_memory()[1] - before) / MIB,
                        "MiB traced above rest during the flush",
                    )
            gc.collect()
            release_free_memory()
            fig.add(f"rss_mib.minute{minute + 1}_after", rss() / MIB, "MiB (after the flush, trimmed)")
    sampler.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.feature_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=3, help="simulated minutes (one flush each)")
    parser.add_argument("--plain", action="store_true", help="every feature off (no state file, rules, MIG)")
    parser.add_argument(
        "--features",
        default=",".join(FEATURES),
        help=f"the features on, of {','.join(FEATURES)} (default: all)",
    )
    parser.add_argument("--trace", action="store_true", help="tracemalloc: what is held, by line")
    parser.add_argument("--top", type=int, default=25, help="lines of each tracemalloc listing")
    parser.add_argument("--tiny", action="store_true", help="20 nodes, 1 minute (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.nodes, args.minutes = 20, 1
    args.features = () if args.plain else tuple(f for f in args.features.split(",") if f)
    unknown = set(args.features) - set(FEATURES)
    if unknown:
        parser.error(f"unknown features: {', '.join(sorted(unknown))}")
    fig = Figures("feature_memory")
    fig.header(
        f"{args.nodes} simulated agents, features: {','.join(args.features) or 'none'}, "
        f"{args.minutes} simulated minutes, in one process"
    )
    tune_malloc()
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="sers-bench-rss-") as folder:
        asyncio.run(run(args, fig, Path(folder)))
    return fig.done()


if __name__ == "__main__":
    sys.exit(main())
