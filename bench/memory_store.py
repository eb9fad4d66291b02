"""The hub's memory: what counting costs on the event loop, what a flush costs on the store's
thread at 2,000 nodes, and how big the state file grows at full retention.

    python -m bench.memory_store [--nodes 2000] [--size-nodes 10] [--tiny]

1. Counting: simulated 8-GPU nodes (:mod:`bench.simnode`) send a minute of 1 Hz samples into
   a registry with and without usage accounting, history and the event log subscribed; the
   difference is the memory's cost per sample on the event loop.
2. Flushing: the batch those samples make at ``--nodes`` (one flush interval, 60 s) is taken
   (on the loop) and written to a state file (on the store's thread), twice: into a new file, and
   the next minute into the same file (the 15-minute and hourly rows then exist and are added to).
3. Size: ``--size-nodes`` nodes of 8 GPUs at full default retention (1-minute history 48 h,
   15-minute history 90 days, hourly usage 90 days, daily usage 731 days, 20 events per node per
   day for 90 days, one user and job on 60 % of the GPUs per hour), written with the hub's own
   writer, then its retention applied and the file vacuumed (a running hub reuses the pages it
   frees); the file size per node, and scaled to 500 nodes (every table grows linearly with nodes).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.figures import Figures
from bench.simnode import GPUS, SimNode
from hub.clock import ManualClock
from hub.domain.events import SampleApplied
from hub.domain.gpus import IdleRule
from hub.domain.nodes import Liveness
from hub.domain.usage import MemoryLimits
from hub.eventlog import EventLog, EventRow
from hub.registry import NodeRegistry
from hub.store import NodeStore
from hub.usage.accounting import UsageAccounting, UsageKey, usage_rows
from hub.usage.history import MINUTE_S, QUARTER_S, HistoryAggregator, SeriesKey, minute_rows
from hub.usage.store import MemoryBatch, prune, write_batch
from node_agent.protocol import Delta, decode

GIB = 1024**3
DAY_S = 86400
T0 = 1_796_600_000.0


class Lab:
    """A registry fed by simulated nodes, with some of the memory's subscribers."""

    def __init__(self, nodes: int, parts: Sequence[str] = ("accounting", "history", "events")) -> None:
        self.clock = ManualClock(mono_s=100.0, wall_s=T0)
        self.registry = NodeRegistry(self.clock)
        self.accounting = UsageAccounting(self.clock, IdleRule(), Liveness(), {})
        self.history = HistoryAggregator(self.clock)
        self.events = EventLog(self.clock)
        # the presenter takes every SampleApplied in a hub: the registry builds it either way
        self.registry.events.subscribe(SampleApplied, lambda event: None)
        for part in parts:
            getattr(self, part).subscribe(self.registry.events)
        self.sims = [SimNode(f"node{i:04}", seed=i) for i in range(nodes)]
        self.connections = [self.registry.hello(sim.hello()) for sim in self.sims]

    def minute(self) -> tuple[float, int]:
        """60 samples from every node, one second apart; returns (CPU seconds in registry.delta, samples)."""
        spent = 0.0
        count = 0
        for _ in range(60):
            self.clock.advance(1.0)
            deltas = []
            for sim in self.sims:
                delta = decode(sim.next_delta(self.clock.wall(), mark=False))
                assert isinstance(delta, Delta)
                deltas.append(delta)
            started = time.process_time()  # CPU time: other programs on the machine do not count
            for sim, connection, delta in zip(self.sims, self.connections, deltas, strict=True):
                self.registry.delta(sim.name, connection, delta)
            spent += time.process_time() - started
            count += len(deltas)
        return spent, count


def counting(figures: Figures, nodes: int) -> None:
    """CPU per sample in registry.delta with each set of subscribers, the best of three runs."""
    sets: dict[str, tuple[str, ...]] = {
        "none": (),
        "accounting_and_history": ("accounting", "history"),
        "event_log": ("events",),
        "all": ("accounting", "history", "events"),
    }
    best: dict[str, float] = {}
    for _ in range(3):
        for label, parts in sets.items():
            lab = Lab(nodes, parts)
            lab.minute()  # warm-up: the first samples carry the whole state
            gc.collect()
            spent, count = lab.minute()
            best[label] = min(best.get(label, math.inf), spent / count)
    base = best.pop("none")
    figures.add("delta_us_without_memory", base * 1e6, "µs per 8-GPU sample in registry.delta")
    for label, cost in best.items():
        figures.add(f"extra_us.{label}", (cost - base) * 1e6, "µs per 8-GPU sample")
    total_us = (best["all"] - base) * 1e6
    figures.add(
        "counting_cpu_percent_2000_nodes", total_us * 2000 / 1e6 * 100, "% of one core at 1 Hz", digits=2
    )
    figures.note(
        "the event log subscribes to GpuHealthChanged, for which the registry judges the health of"
        " each GPU whose patch holds a health field (alerts subscribe to it too)"
    )


def flushing(figures: Figures, nodes: int, folder: Path) -> None:
    lab = Lab(nodes)
    lab.minute()
    lab.accounting.take(), lab.history.take(), lab.events.take()  # the warm-up minute's
    store = NodeStore(str(folder / "flush.sqlite3"))
    for label in ("new_file", "next_minute"):
        lab.minute()
        started = time.perf_counter()
        usage, minutes, events = lab.accounting.take(), lab.history.take(), lab.events.take()
        taken_s = time.perf_counter() - started
        started, started_cpu = time.perf_counter(), time.process_time()
        batch = MemoryBatch(usage_rows(usage), minute_rows(minutes), events)
        write_batch(store, batch)
        written_s, written_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
        figures.add(f"flush_rows.{label}", float(batch.rows()), f"rows at {nodes:,} nodes", digits=0)
        figures.add(f"flush_take_ms_on_loop.{label}", taken_s * 1e3, "ms per flush", digits=3)
        figures.add(f"flush_write_ms_store_thread.{label}", written_s * 1e3, "ms per flush")
        figures.add(
            f"flush_cpu_percent.{label}",
            (taken_s + written_cpu_s) / 60 * 100,
            "% of one core",
            digits=2,
        )
    # the 15-minute buckets of every node, made in the file from its 1-minute rows (once a
    # quarter, at the first flush after it ends)
    first = min(minute for _, minute in minutes)
    whole = (first - first % QUARTER_S, first - first % QUARTER_S + QUARTER_S)
    started, started_cpu = time.perf_counter(), time.process_time()
    write_batch(store, MemoryBatch(quarters={sim.name: whole for sim in lab.sims}))
    made_s, made_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    figures.add("quarter_make_ms_store_thread", made_s * 1e3, f"ms per quarter at {nodes:,} nodes")
    figures.add("quarter_make_cpu_percent", made_cpu_s / QUARTER_S * 100, "% of one core", digits=3)
    store.close()


def full_retention(figures: Figures, nodes: int, folder: Path) -> None:
    limits = MemoryLimits()
    rng = random.Random(7)
    path = folder / "size.sqlite3"
    store = NodeStore(str(path))
    users = [f"user{i:03}" for i in range(40)]
    now = T0 - T0 % 3600
    node_ids = [f"gpu{i:03}.cluster.lab" for i in range(nodes)]
    rows = 0

    def agg(value: float, count: int) -> list[float]:
        return [value * count, float(count), value * 1.2]

    started = time.perf_counter()
    hours = int(limits.usage_daily_keep_d * 24)
    for h in range(hours, 0, -1):
        hour = now - h * 3600
        day = hour - hour % DAY_S
        batch = MemoryBatch()
        for n, node in enumerate(node_ids):
            for gpu in range(GPUS):
                if rng.random() < 0.6:  # busy GPUs: one user and job an hour
                    user = users[(n + gpu + int(day // DAY_S)) % len(users)]
                    job = f"slurm:{1_000_000 + int(day // DAY_S) * 97 + gpu}"
                    key = UsageKey(hour, day, user, node, "NVIDIA H100 80GB HBM3", "vision", job)
                    held = 3600.0 * rng.uniform(0.8, 1.0)
                    batch.usage[key] = [held, held * 0.7, held * 0.1, held * 40 * GIB]
            if h <= limits.history_15m_keep_d * 24:
                for quarter in range(4):
                    start = int(hour + quarter * QUARTER_S)
                    batch.history[SeriesKey(node, QUARTER_S, start, None)] = [
                        *agg(30.0, 900),
                        *agg(200 * GIB, 900),
                        *agg(1e8, 900),
                        *agg(1e8, 900),
                    ]
                    for gpu in range(GPUS):
                        batch.history[SeriesKey(node, QUARTER_S, start, str(gpu))] = [
                            *agg(rng.uniform(0, 100), 900),
                            *agg(rng.uniform(0, 80) * GIB, 900),
                            *agg(60.0, 900),
                            *agg(400.0, 900),
                        ]
            if h <= limits.history_1m_keep_h:
                for minute in range(60):
                    start = int(hour + minute * MINUTE_S)
                    batch.history[SeriesKey(node, MINUTE_S, start, None)] = [
                        *agg(30.0, 60),
                        *agg(200 * GIB, 60),
                        *agg(1e8, 60),
                        *agg(1e8, 60),
                    ]
                    for gpu in range(GPUS):
                        batch.history[SeriesKey(node, MINUTE_S, start, str(gpu))] = [
                            *agg(rng.uniform(0, 100), 60),
                            *agg(rng.uniform(0, 80) * GIB, 60),
                            *agg(60.0, 60),
                            *agg(400.0, 60),
                        ]
            if h <= limits.events_keep_d * 24 and rng.random() < 20 / 24:
                batch.events.append(
                    EventRow(
                        hour + 60,
                        node,
                        "idle_held_start",
                        "3",
                        "GPU 3: idle-held by user007",
                        {"users": ["user007"]},
                    )
                )
        write_batch(store, batch)
        rows += batch.rows()
    dropped = prune(store, limits, now)  # the hub's own retention: hours past 90 days go
    store.connection.execute("VACUUM")  # the live rows only: a running hub reuses freed pages
    store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size = os.path.getsize(path)
    figures.note(
        f"wrote {rows:,} rows in {time.perf_counter() - started:.0f} s, {dropped:,} past retention dropped"
    )
    figures.add(
        f"file_mib_full_retention_{nodes}_nodes", size / 1024**2, f"MiB ({nodes} nodes x {GPUS} GPUs)"
    )
    figures.add("file_mib_per_node", size / nodes / 1024**2, f"MiB per node of {GPUS} GPUs", digits=2)
    figures.add(
        "file_gib_500_nodes", size / nodes * 500 / 1024**3, f"GiB (500 nodes x {GPUS} GPUs, scaled)", digits=2
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_store", description=__doc__)
    parser.add_argument("--nodes", type=int, default=2000, help="nodes for the flush cost")
    parser.add_argument(
        "--size-nodes", type=int, default=10, help="nodes written at full retention (0: skip)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: only checks that it works")
    args = parser.parse_args(argv)
    figures = Figures("memory_store", judge=not args.tiny)
    figures.header("counting, flushing and the state file's size")
    if args.tiny:
        args.nodes, args.size_nodes = 20, 1
    with tempfile.TemporaryDirectory(prefix="sers-bench-memory-") as folder:
        counting(figures, min(args.nodes, 200))
        flushing(figures, args.nodes, Path(folder))
        if args.tiny or args.size_nodes < 1:
            figures.note("full retention skipped")
        else:
            full_retention(figures, args.size_nodes, Path(folder))
    return figures.done()


if __name__ == "__main__":
    sys.exit(main())
