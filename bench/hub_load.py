"""Hub load: N simulated agents at R Hz and B viewers against a real ``sers-hub`` process.

    python -m bench.hub_load [--nodes 2000[,3000,5000]] [--rate 1] [--viewers 50] [--shown 24] [--tiny]
                             [--alerts [FILE]] [--memory] [--all-features]

For each node count: start ``python -m hub --port P --state-db none`` (``--state-db FILE``: with the
hub's memory on: usage accounting, history, the event log); connect the agents
(:mod:`bench.load_agents`, real protocol, in ``--agent-procs`` processes) and then the viewers
(:mod:`bench.load_viewers`, real ``/ws/view`` WebSockets offering permessage-deflate like a
browser); let it run ``--warmup`` s; then hold a quiet gap (heartbeats only), let deltas flow for
``--duration`` s (the window), and hold another quiet gap while the last pushes arrive.

Prints, per node count: updates delivered / expected (host parts and GPU rows, every viewer),
latency from the agent's sample to a viewer's receipt (p50/p99/max, read back from the pushed
HTML, see :mod:`bench.simnode`), hub CPU (% of one core) and RSS, bytes/s per viewer, and the
load generator's own CPU. With ``--alerts`` the hub runs a second time right after, with the
alert rules of FILE (default :data:`ALERT_RULES`, ten rules), and its CPU is printed as a ratio
to the run without rules. ``--memory`` runs it again with a state file (usage accounting,
history, the event log; target ≤ 1.10x the CPU of the run without), ``--all-features`` with
every feature on: a state file, the ten alert rules (or FILE), and a quarter of the simulated
nodes A100s in MIG mode (target ≤ 1.15x the CPU of the run without, p99 ≤ 250 ms, RSS ≤ 300
MiB); idle-holder tracking is always on. With ``--shown K`` every viewer tells the hub it shows K cards (a
different K for each, :mod:`bench.load_viewers`), as the page does, and is expected to receive
exactly those nodes' updates: bytes/s per viewer then has a target (≤ 60 KB/s for 24 of 2,000
nodes). ``--against DIR`` runs the same load on the hub of another tree right after (its viewers
showing every node) and prints the CPU ratio. Then the same agents and viewers run against a
bare ``websockets`` broadcast server sending payloads of the same sizes on the same 10 Hz tick
(:mod:`bench.bare_broadcast`), and the hub's CPU per delivered update is printed as a ratio to
the bare server's CPU for the same bytes.

Everything shares this machine's cores, load generator included: read the figures with the
load generator's CPU next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import connect

from bench.figures import Figures
from bench.load_viewers import FULL_STATE_MORE
from bench.workers import REPO, Worker, free_port, get_json, wait_for

MIB = 1024**2
ALERT_RULES = Path(__file__).with_name("alert_rules.toml")
MIG_EVERY = 4  # --all-features: every fourth simulated family (a quarter of the nodes) in MIG mode
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


@dataclass
class Phase:
    """What one run (hub or bare server) measured."""

    server_cpu_s: float = 0.0
    server_wait_s: float = 0.0  # runnable, waiting for a CPU the machine gave to others
    server_rss_max: int = 0
    server_rss_end: int = 0
    duration_s: float = 0.0
    agents_cpu_s: float = 0.0
    viewers_cpu_s: float = 0.0
    driver_cpu_s: float = 0.0
    agents: dict[str, Any] = field(default_factory=dict)
    viewers: dict[str, Any] = field(default_factory=dict)
    connected: dict[str, Any] = field(default_factory=dict)
    count_window_s: float = 0.0

    @property
    def cpu_cores(self) -> float:
        """The server's CPU in the window, in cores (0.5: half of one)."""
        return self.server_cpu_s / self.duration_s if self.duration_s else 0.0


def _sum_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for key in ("sent", "deltas_in_window", "host_expected", "gpu_expected", "skipped_ticks", "closed"):
        total[key] = sum(r[key] for r in reports)
    total["send_lag_p99_ms"] = max((r["send_lag_ms"]["p99"] or 0.0) for r in reports)
    total["per_node"] = [entry for r in reports for entry in r["per_node"]]  # agents start at n00000
    return total


def expected_updates(agents: dict[str, Any], viewer: dict[str, Any]) -> int:
    """Host parts and GPU rows a viewer should receive: every node's, or those it shows."""
    if viewer.get("shown") is None:
        return int(agents["host_expected"] + agents["gpu_expected"])
    per_node = agents["per_node"]
    return sum(per_node[i][0] * (1 + per_node[i][1]) for i in viewer["shown"] if i < len(per_node))


async def _sleep_until(epoch_s: float) -> None:
    delay = epoch_s - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def late_viewer(url: str, origin: str) -> dict[str, float]:
    """One more viewer joining the loaded hub: how big its full state is (all its parts), how
    long it takes."""
    started = time.monotonic()
    async with connect(url, origin=origin, max_size=None, open_timeout=60) as ws:  # type: ignore[arg-type]
        first = await asyncio.wait_for(ws.recv(decode=False), 120)
        more = FULL_STATE_MORE.match(first)
        size = len(first)
        for _ in range(int(more[1]) if more else 0):
            size += len(await asyncio.wait_for(ws.recv(decode=False), 120))
        return {"bytes": size, "s": time.monotonic() - started}


async def run_phase(
    args: argparse.Namespace,
    nodes: int,
    log_dir: Path,
    *,
    bare_sizes: Path | None = None,
    py_spy_out: Path | None = None,
    alerts_config: Path | None = None,
    state_db: str | None = None,
    mig_every: int = 0,
    label: str = "",
) -> Phase:
    """One run; ``state_db``, ``alerts_config`` and ``mig_every`` (every K-th simulated family in
    MIG mode) turn features on for this run only."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ws_base = f"ws://127.0.0.1:{port}"
    label = label or ("bare" if bare_sizes else "hub-alerts" if alerts_config else "hub")
    if bare_sizes:
        argv = [sys.executable, "-m", "bench.bare_broadcast", "--port", str(port), "--sizes", str(bare_sizes)]
    else:
        argv = [
            sys.executable,
            "-m",
            "hub",
            "--port",
            str(port),
            "--state-db",
            state_db or args.state_db,
            "--log-level",
            "WARNING",
            *(["--config", str(alerts_config)] if alerts_config else []),
        ]
    env = None
    cwd = None
    if args.hub_path and not bare_sizes:
        env = {"PYTHONPATH": os.pathsep.join([*args.hub_path, str(REPO)])}
        cwd = Path(args.hub_path[0])  # else `python -m hub` finds this tree's hub first
    server = await Worker.start(f"{label}-{nodes}", argv, log_dir, env=env, jsonl=False, cwd=cwd)
    workers: list[Worker] = []
    phase = Phase()
    try:
        await wait_for(lambda: get_json(base + "/healthz", 1), 30, f"{label} to answer /healthz")
        # Viewers first, as wall displays that stay connected: each gets a small first picture,
        # then every node arrives as a pushed card. A viewer joining a loaded hub (the full
        # state) is measured on its own below.
        viewers = await Worker.start(
            f"{label}-{nodes}-viewers",
            [
                sys.executable,
                "-m",
                "bench.load_viewers",
                "--url",
                ws_base + "/ws/view",
                "--viewers",
                str(args.viewers),
                "--probes",
                str(min(args.probes, args.viewers)),
                "--origin",
                base,
                "--shown",
                str(args.shown),
                "--nodes",
                str(nodes),
            ],
            log_dir,
        )
        workers.append(viewers)
        event = await viewers.event("connected", 60 + args.viewers)
        if event["failed"] or event["got_full_state"] < event["n"]:
            raise RuntimeError(f"viewers: {event}")
        phase.connected.update(event)
        procs = max(1, min(args.agent_procs or math.ceil(nodes / 2500), nodes))
        per = math.ceil(nodes / procs)
        agents: list[Worker] = []
        for k in range(procs):
            count = min(per, nodes - k * per)
            agents.append(
                await Worker.start(
                    f"{label}-{nodes}-agents{k}",
                    [
                        sys.executable,
                        "-m",
                        "bench.load_agents",
                        "--url",
                        ws_base + "/ws/agent",
                        "--nodes",
                        str(count),
                        "--first",
                        str(k * per),
                        "--rate",
                        str(args.rate),
                        "--busy-fraction",
                        str(args.busy_fraction),
                        "--mig-every",
                        str(mig_every),
                    ],
                    log_dir,
                )
            )
        workers.extend(agents)
        connect_timeout = 60 + nodes / 20
        for agent in agents:
            event = await agent.event("connected", connect_timeout)
            if event["failed"]:
                raise RuntimeError(f"{event['failed']} agents failed to connect: {event['first_failures']}")
            phase.connected.setdefault("agent_connect_s", []).append(event["connect_s"])
        await wait_for(
            lambda: get_json(base + "/healthz", 5)["nodes"] >= nodes,
            60 + nodes / 20,
            f"{label} to list {nodes} nodes",
        )
        await asyncio.sleep(args.warmup / 2)
        if not bare_sizes:
            phase.connected["late_viewer"] = await late_viewer(ws_base + "/ws/view", base)
        await asyncio.sleep(args.warmup / 2)

        gap_s = min(args.gap, 2.5 / args.rate)  # under 3 intervals: no "sample late" warnings
        quiet_from = time.time() + 0.3
        start = quiet_from + gap_s
        end = start + args.duration
        count_from = quiet_from + gap_s / 2
        count_to = end + args.drain
        for agent in agents:
            await agent.send(cmd="window", quiet_from=quiet_from, start=start, end=end)
        await viewers.send(cmd="window", count_from=count_from, count_to=count_to, start=start, end=end)
        me = psutil.Process()

        def driver_cpu() -> float:
            t = me.cpu_times()
            return float(t.user + t.system)

        await _sleep_until(start)
        cpu0 = (server.cpu_s(), sum(a.cpu_s() for a in agents), viewers.cpu_s(), driver_cpu())
        wait0 = server.runqueue_wait_s()
        spy = None
        if py_spy_out is not None and PY_SPY:
            spy = await asyncio.create_subprocess_exec(
                PY_SPY,
                "record",
                "-p",
                str(server.proc.pid),
                "-d",
                str(int(args.duration)),
                "-r",
                "100",
                "--nonblocking",  # never pauses the hub to sample it
                "-f",
                "raw",
                "-o",
                str(py_spy_out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        t0 = time.monotonic()
        while time.time() < end:
            phase.server_rss_max = max(phase.server_rss_max, server.rss_bytes())
            await asyncio.sleep(min(0.5, max(0.0, end - time.time())))
        cpu1 = (server.cpu_s(), sum(a.cpu_s() for a in agents), viewers.cpu_s(), driver_cpu())
        phase.server_wait_s = server.runqueue_wait_s() - wait0
        phase.duration_s = time.monotonic() - t0
        phase.server_rss_end = server.rss_bytes()
        phase.server_rss_max = max(phase.server_rss_max, phase.server_rss_end)
        phase.server_cpu_s, phase.agents_cpu_s, phase.viewers_cpu_s, phase.driver_cpu_s = (
            b - a for a, b in zip(cpu0, cpu1, strict=True)
        )
        await _sleep_until(count_to + 0.2)
        phase.count_window_s = count_to - count_from
        reports = []
        for agent in agents:
            await agent.send(cmd="report")
            reports.append(await agent.event("report", 30))
        phase.agents = _sum_reports(reports)
        await viewers.send(cmd="report")
        phase.viewers = await viewers.event("report", 60)
        if spy is not None:
            await asyncio.wait_for(spy.wait(), 30)
        return phase
    finally:
        for worker in reversed(workers):
            await worker.stop()
        await server.stop()


def report_hub(fig: Figures, args: argparse.Namespace, nodes: int, hub: Phase) -> tuple[float, float]:
    """Prints the hub run's figures; returns (delivered updates, payload bytes per update)."""
    tag = f"n{nodes}"
    a, v = hub.agents, hub.viewers
    viewers = v["viewers"]
    delivered = [t["host"] + t["gpu"] for t in viewers]
    expected = [expected_updates(a, t) for t in viewers]
    ratios = [d / e if e else 0.0 for d, e in zip(delivered, expected, strict=True)]
    closed = sum(1 for t in viewers if t["closed"])
    cards = sum(t["cards"] for t in viewers)
    fig.note(
        f"{nodes} agents at {args.rate:g} Hz, {args.viewers} viewers, {args.duration:g} s window: "
        f"{a['deltas_in_window']} deltas ({a['host_expected']} host parts + {a['gpu_expected']} GPU rows "
        f"expected per viewer showing every node); "
        + (f"each viewer shows {args.shown} nodes; " if args.shown else "")
        + f"agents connected in {max(hub.connected['agent_connect_s']):.1f} s; "
        f"negotiated extensions: {hub.connected['extensions']}"
    )
    late = hub.connected.get("late_viewer")
    if late:
        fig.add(f"{tag}.full_state_bytes", late["bytes"] / MIB, "MiB (a viewer joining)", digits=2)
        fig.add(f"{tag}.full_state_time", 1000 * late["s"], "ms (a viewer joining)", digits=0)
    achieved = a["deltas_in_window"] / (nodes * args.rate * hub.duration_s) if hub.duration_s else 0.0
    fig.add(f"{tag}.agent_rate_achieved", 100 * achieved, "% of N x R", digits=1)
    if ratios:
        worst = min(ratios)
        fig.add(
            f"{tag}.delivered_min", 100 * worst, "% of expected", target="100%", ok=worst >= 0.9995, digits=2
        )
        fig.add(f"{tag}.delivered_mean", 100 * statistics.fmean(ratios), "%", digits=2)
    probes = [t for t in viewers if t["probe"]]
    sparks = sum(t["sparks"] for t in probes) / max(len(probes), 1)
    fig.note(
        f"per viewer in the window: {sparks:.0f} sparkline pushes (not counted as updates), "
        f"{cards / max(len(viewers), 1):.1f} whole cards; {closed} viewers closed by the hub"
    )
    lat = v["latency_ms"]
    if lat["count"]:
        fig.add(f"{tag}.latency_p50", lat["p50"], "ms", digits=0)
        fig.add(f"{tag}.latency_p99", lat["p99"], "ms", target="≤ 250 ms", ok=lat["p99"] <= 250, digits=0)
        fig.add(f"{tag}.latency_max", lat["max"], "ms", digits=0)
    cpu_pct = 100 * hub.server_cpu_s / hub.duration_s
    fig.add(f"{tag}.hub_cpu", cpu_pct, "% of one core", target="≤ 70%", ok=cpu_pct <= 70)
    fig.add(f"{tag}.hub_cpu_wait", 100 * hub.server_wait_s / hub.duration_s, "% (runnable, no CPU free)")
    rss = hub.server_rss_max / MIB
    fig.add(f"{tag}.hub_rss_max", rss, "MiB", target="≤ 200 MiB", ok=rss <= 200)
    if viewers:
        bytes_per_s = statistics.fmean(t["bytes_in_measure"] for t in viewers) / hub.duration_s
        if args.shown:
            fig.add(
                f"{tag}.bytes_per_s_per_viewer",
                bytes_per_s / 1000,
                f"KB/s (showing {args.shown} of {nodes} nodes)",
                target="≤ 60 KB/s",
                ok=bytes_per_s <= 60_000,
            )
        else:
            fig.add(f"{tag}.bytes_per_s_per_viewer", bytes_per_s / 1024, "KiB/s", digits=0)
    fig.add(f"{tag}.loadgen_agents_cpu", 100 * hub.agents_cpu_s / hub.duration_s, "% of one core")
    fig.add(f"{tag}.loadgen_viewers_cpu", 100 * hub.viewers_cpu_s / hub.duration_s, "% of one core")
    fig.add(f"{tag}.agent_send_lag_p99", a["send_lag_p99_ms"], "ms", digits=0)
    if a["deltas_in_window"]:
        per_message = 1e6 * hub.server_cpu_s / a["deltas_in_window"]
        fig.add(f"{tag}.hub_cpu_per_agent_message", per_message, "µs (fan-out included)", digits=0)
    total_delivered = float(sum(delivered))
    total_bytes = float(sum(t["bytes_in_window"] for t in viewers))
    if total_delivered:
        fig.add(
            f"{tag}.hub_cpu_per_delivered_update", 1e6 * hub.server_cpu_s / total_delivered, "µs", digits=2
        )
    return total_delivered, (total_bytes / total_delivered if total_delivered else 0.0)


def report_bare(
    fig: Figures, nodes: int, hub: Phase, bare: Phase, hub_delivered: float, bytes_per_update: float
) -> None:
    tag = f"n{nodes}"
    bare_bytes = float(sum(t["bytes_in_measure"] for t in bare.viewers["viewers"]))
    hub_bytes = float(sum(t["bytes_in_measure"] for t in hub.viewers["viewers"]))
    fig.add(f"{tag}.bare_cpu", 100 * bare.server_cpu_s / bare.duration_s, "% of one core")
    fig.add(f"{tag}.bare_bytes_vs_hub", 100 * bare_bytes / hub_bytes if hub_bytes else 0.0, "%")
    if not (bare_bytes and bytes_per_update and hub_delivered and bare.server_cpu_s):
        # tiny runs: CPU time below the kernel's clock tick (10 ms) reads as zero
        fig.note("bare comparison undefined: no bytes delivered or no CPU time measured")
        fig.add(f"{tag}.hub_vs_bare_cpu_per_update", math.nan, "x", digits=2)
        return
    bare_updates = bare_bytes / bytes_per_update
    bare_us = 1e6 * bare.server_cpu_s / bare_updates
    hub_us = 1e6 * hub.server_cpu_s / hub_delivered
    fig.add(f"{tag}.bare_cpu_per_update", bare_us, "µs", digits=2)
    ratio = hub_us / bare_us
    fig.add(f"{tag}.hub_vs_bare_cpu_per_update", ratio, "x", target="≤ 1.5x", ok=ratio <= 1.5, digits=2)


async def main_async(args: argparse.Namespace) -> int:
    fig = Figures("hub_load", judge=not args.tiny)
    fig.header(
        f"agents at {args.rate:g} Hz x {args.viewers} viewers against a real sers-hub "
        f"(node counts {args.nodes}); load generator on the same machine"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="sers-bench-"))
    fig.note(f"logs: {log_dir}")
    for nodes in args.nodes:
        spy = Path(args.py_spy) / f"hub-{nodes}.collapsed.txt" if args.py_spy else None
        try:
            hub = await run_phase(args, nodes, log_dir, py_spy_out=spy)
        except (TimeoutError, RuntimeError) as exc:  # the hub could not even take the load
            fig.note(f"n{nodes}: the run broke down before its window: {exc}")
            fig.missed.append(f"n{nodes}")
            break
        delivered, bytes_per_update = report_hub(fig, args, nodes, hub)
        if spy is not None:
            fig.note(f"py-spy profile of the hub: {spy}")
        if args.alerts:
            with_rules = await run_phase(args, nodes, log_dir, alerts_config=Path(args.alerts))
            report_alerts(fig, nodes, hub, with_rules)
        if args.memory:
            pairs = await variant_pairs(
                args,
                nodes,
                log_dir,
                hub,
                state_db=str(log_dir / f"memory-{nodes}.sqlite3"),
                label="hub-memory",
            )
            report_variant(fig, nodes, "memory", pairs, max_cpu_ratio=1.10)
        if args.all_features:
            pairs = await variant_pairs(
                args,
                nodes,
                log_dir,
                hub,
                state_db=str(log_dir / f"features-{nodes}.sqlite3"),
                alerts_config=Path(args.alerts or ALERT_RULES),
                mig_every=MIG_EVERY,
                label="hub-all-features",
                py_spy_out=spy.with_name(f"hub-{nodes}-all-features.collapsed.txt") if spy else None,
            )
            report_variant(fig, nodes, "all_features", pairs, max_cpu_ratio=1.15, max_rss_mib=300)
        if args.against:
            await compare_against(fig, args, nodes, log_dir, hub)
        if args.bare:
            sizes = log_dir / f"sizes-{nodes}.json"
            sizes.write_text(json.dumps(per_tick(hub.viewers["payload_sizes"], round(hub.duration_s * 10))))
            bare = await run_phase(args, nodes, log_dir, bare_sizes=sizes)
            report_bare(fig, nodes, hub, bare, delivered, bytes_per_update)
    return fig.done()


async def variant_pairs(
    args: argparse.Namespace, nodes: int, log_dir: Path, hub: Phase, **variant: Any
) -> list[tuple[Phase, Phase]]:
    """The hub run just before (``hub``) and the hub with ``variant``'s options, then ``--repeat``
    - 1 more pairs, the two alternating: (without, with) per pair. The machine's noise moves one
    run by 5-15 %, so a ratio is only worth its median over pairs."""
    pairs = [(hub, await run_phase(args, nodes, log_dir, **variant))]
    variant.pop("py_spy_out", None)
    first_db = variant.get("state_db")
    for k in range(2, args.repeat + 1):
        without = await run_phase(args, nodes, log_dir)
        if first_db:  # each run starts from a new file, as the first did
            variant["state_db"] = str(Path(first_db).with_suffix(f".{k}.sqlite3"))
        pairs.append((without, await run_phase(args, nodes, log_dir, **variant)))
    return pairs


def _cpu_ratio(pair: tuple[Phase, Phase]) -> float:
    without, with_them = pair
    return with_them.cpu_cores / without.cpu_cores if without.cpu_cores else math.inf


def _summary(phase: Phase) -> str:
    """One run in a line: CPU, p99, the highest RSS and the whole cards a viewer got again."""
    lat = phase.viewers["latency_ms"]
    p99 = f"p99 {lat['p99']:.0f} ms, " if lat["count"] else ""
    viewers = phase.viewers["viewers"]
    cards = sum(t["cards"] for t in viewers) / max(len(viewers), 1)  # a full state again: every card
    return (
        f"{100 * phase.cpu_cores:.1f} % of one core, {p99}"
        f"RSS {phase.server_rss_max / MIB:.0f} MiB, {cards:.0f} whole cards a viewer"
    )


def report_variant(
    fig: Figures,
    nodes: int,
    name: str,
    pairs: list[tuple[Phase, Phase]],
    *,
    max_cpu_ratio: float,
    max_rss_mib: float | None = None,
) -> None:
    """The hub with some features on against the run just before without them, same load, in
    ``pairs`` of (without, with): the CPU ratio of each pair, and of the median pair its CPU,
    delivery and p99 (the highest RSS of all)."""
    tag = f"n{nodes}.{name}"
    ranked = sorted(pairs, key=_cpu_ratio)
    hub, variant = ranked[len(ranked) // 2]
    if len(pairs) > 1:
        cpu_ratios = [_cpu_ratio(pair) for pair in pairs]
        fig.note(
            f"{name}: {len(pairs)} pairs, the hub without and with them alternating; CPU ratios in order "
            + ", ".join(f"{r:.3f}x" for r in cpu_ratios)
            + f" (mean {statistics.fmean(cpu_ratios):.3f}x); the figures below are the median pair's"
        )
        for k, (off, on) in enumerate(pairs, 1):
            fig.note(f"  pair {k}: without {_summary(off)}; with {_summary(on)}")
    fig.add(f"{tag}.hub_cpu", 100 * variant.cpu_cores, "% of one core")
    fig.add(
        f"{tag}.hub_cpu_wait", 100 * variant.server_wait_s / variant.duration_s, "% (runnable, no CPU free)"
    )
    ratio = _cpu_ratio((hub, variant))
    fig.add(
        f"{tag}.cpu_ratio",
        ratio,
        "x the hub without them",
        target=f"≤ {max_cpu_ratio:.2f}x",
        ok=ratio <= max_cpu_ratio,
        digits=3,
    )
    a, viewers = variant.agents, variant.viewers["viewers"]
    if a["deltas_in_window"]:
        per_message = 1e6 * variant.server_cpu_s / a["deltas_in_window"]
        fig.add(f"{tag}.hub_cpu_per_agent_message", per_message, "µs (fan-out included)", digits=0)
    if viewers:  # what the features add to the bytes every viewer gets
        bytes_per_s = statistics.fmean(t["bytes_in_measure"] for t in viewers) / variant.duration_s
        fig.add(f"{tag}.bytes_per_s_per_viewer", bytes_per_s / 1024, "KiB/s", digits=0)
    expected = [expected_updates(a, t) for t in viewers]
    ratios = [(t["host"] + t["gpu"]) / e if e else 0.0 for t, e in zip(viewers, expected, strict=True)]
    if ratios:
        worst = min(ratios)
        fig.add(
            f"{tag}.delivered_min", 100 * worst, "% of expected", target="100%", ok=worst >= 0.9995, digits=2
        )
    lat = variant.viewers["latency_ms"]
    if lat["count"]:
        fig.add(f"{tag}.latency_p99", lat["p99"], "ms", target="≤ 250 ms", ok=lat["p99"] <= 250, digits=0)
    rss = max(phase.server_rss_max for _, phase in pairs) / MIB
    if max_rss_mib is None:
        fig.add(f"{tag}.hub_rss_max", rss, "MiB")
    else:
        fig.add(f"{tag}.hub_rss_max", rss, "MiB", target=f"≤ {max_rss_mib:g} MiB", ok=rss <= max_rss_mib)


def report_alerts(fig: Figures, nodes: int, hub: Phase, with_rules: Phase) -> None:
    """The hub's CPU with alert rules against the run just before without them (same load)."""
    tag = f"n{nodes}"
    without = hub.server_cpu_s / hub.duration_s
    with_alerts = with_rules.server_cpu_s / with_rules.duration_s
    fig.add(f"{tag}.hub_cpu_with_alert_rules", 100 * with_alerts, "% of a core", digits=1)
    ratio = with_alerts / without if without else math.inf
    fig.add(f"{tag}.alert_rules_cpu_ratio", ratio, "x", target="≤ 1.05x", ok=ratio <= 1.05, digits=3)


async def compare_against(
    fig: Figures, args: argparse.Namespace, nodes: int, log_dir: Path, hub: Phase
) -> None:
    """The same load on the hub of another tree (``--against DIR``), right after: its CPU, and
    this hub's as a ratio of it. Its viewers show every node (an older hub knows no shown sets):
    with ``--shown`` that compares the hub as browsers now use it with the hub as they did."""
    other = argparse.Namespace(**{**vars(args), "hub_path": [args.against], "shown": 0})
    try:
        before = await run_phase(other, nodes, log_dir)
    except (TimeoutError, RuntimeError) as exc:
        fig.note(f"n{nodes}: the run against {args.against} broke down: {exc}")
        return
    tag = f"n{nodes}"
    cpu = 100 * hub.server_cpu_s / hub.duration_s
    cpu_before = 100 * before.server_cpu_s / before.duration_s
    fig.note(f"the same load on the hub in {args.against}, right after, its viewers showing every node:")
    fig.add(f"{tag}.against_hub_cpu", cpu_before, "% of one core")
    fig.add(
        f"{tag}.against_hub_cpu_wait",
        100 * before.server_wait_s / before.duration_s,
        "% (runnable, no CPU free)",
    )
    viewers = before.viewers["viewers"]
    if viewers:
        bytes_per_s = statistics.fmean(t["bytes_in_measure"] for t in viewers) / before.duration_s
        fig.add(f"{tag}.against_bytes_per_s_per_viewer", bytes_per_s / 1024, "KiB/s", digits=0)
    ratio = cpu / cpu_before if cpu_before else math.nan
    # back-to-back runs of one tree on this machine differ by about 5%
    fig.add(
        f"{tag}.hub_cpu_vs_against", ratio, "x", target="≤ 1.05x (does not rise)", ok=ratio <= 1.05, digits=2
    )


def per_tick(sizes: list[int], ticks: int) -> list[int]:
    """The hub's payload sizes spread over ``ticks`` ticks: a tick with nothing to send is 0."""
    if len(sizes) >= ticks or not sizes:
        return sizes or [0]
    out = [0] * ticks
    for k, size in enumerate(sizes):
        out[k * ticks // len(sizes)] = size
    return out


def _counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the hub's run (agents, viewers, windows), shared with the peer benchmarks."""
    parser.add_argument(
        "--state-db",
        default="none",
        metavar="FILE",
        help="the hub's state file: with one, usage accounting, history and the event log run (default: none)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="deltas per second per agent")
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--probes", type=int, default=4, help="viewers that measure latency")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait for late pushes")
    parser.add_argument("--gap", type=float, default=2.0, help="quiet seconds around the window")
    parser.add_argument("--busy-fraction", type=float, default=0.6, help="share of GPUs that are busy")
    parser.add_argument("--agent-procs", type=int, default=0, help="agent processes (0: one per 2,500)")
    parser.add_argument(
        "--shown",
        type=int,
        default=0,
        help="cards each viewer tells the hub it shows (0: it shows every node)",
    )
    parser.add_argument(
        "--hub-path",
        action="append",
        metavar="DIR",
        help="put DIR first on the hub's PYTHONPATH (try a changed copy of the hub), repeatable",
    )


def make_tiny(args: argparse.Namespace) -> None:
    """``--tiny``: 5 agents, 2 viewers, 3 s windows (seconds in all)."""
    args.nodes, args.viewers, args.probes = [5], 2, 1
    args.duration, args.warmup, args.drain, args.gap = 3.0, 1.0, 1.0, 1.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hub_load", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=_counts, default=[2000], help="node counts, e.g. 2000,3000,5000")
    add_load_arguments(parser)
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare-server run")
    parser.add_argument(
        "--alerts",
        nargs="?",
        const=str(ALERT_RULES),
        metavar="FILE",
        help="run the hub again with the alert rules of FILE (default: ten rules) and compare its CPU",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="run the hub again with a state file (usage accounting, history, event log) and compare its CPU",
    )
    parser.add_argument(
        "--all-features",
        action="store_true",
        help="run the hub again with every feature on (a state file, the alert rules of --alerts or "
        "the ten default ones, MIG slices on a quarter of the nodes) and compare its CPU, p99 and RSS",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of runs (without, with) for --memory and --all-features, alternating; the "
        "ratio is the median pair's",
    )
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="record a py-spy profile of the hub (and of the --all-features hub) into DIR",
    )
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="then run the same load on the hub of the tree in DIR (e.g. a `git worktree` of the commit "
        "before a change) and print this hub's CPU as a ratio of it",
    )
    parser.add_argument("--tiny", action="store_true", help="5 agents, 2 viewers, 3 s (seconds in all)")
    args = parser.parse_args(argv)
    if args.tiny:
        make_tiny(args)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
