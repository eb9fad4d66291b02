"""The peer, side by side: Debian's Prometheus scraping N simulated nodes at 1 s, then the hub
carrying the same N nodes for B viewers, in one run.

    python -m bench.peer_prometheus [--nodes 2000] [--viewers 50] [--prom-warmup 60 --prom-window 60]

The tool a lab would otherwise use for "all nodes, live" is Prometheus with node_exporter and
dcgm-exporter on every node. Here every node serves what those would: the fields the
simulated agents send (:mod:`bench.simnode`: a 64-core host, 8 GPUs, one process per busy GPU),
in the exposition format (:mod:`bench.exposition`, about 200 series a node), with new values
every second. They are precomputed files served by nginx (the cheapest server there is, so the
nodes' side costs next to nothing and is not counted): one file per simulated family of nodes
(as :mod:`bench.load_agents` replays 100 families under each agent's own name) and per step of
a ten-second loop, the step chosen by nginx from its clock's seconds, the family from the
scrape's ``?node=`` name. Prometheus (``/usr/bin/prometheus``, its own TSDB in a temporary
folder) scrapes each node as its own target (``instance`` = the node's name) every second.

Measured: Prometheus's CPU (its process only, % of one core) over ``--prom-window`` seconds
after ``--prom-warmup`` seconds of scraping, its RSS at the end (it grows as its head block
fills: the issue's reference figure was taken after 2 minutes) and the largest seen, the
targets up, the samples appended per second. Then :mod:`bench.hub_load`'s run of the hub with
the same nodes and viewers (no bare server), and the ratios hub / Prometheus for CPU and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.exposition import exposition, series_count
from bench.figures import Figures
from bench.hub_load import ALERT_RULES, MIB, Phase, add_load_arguments, make_tiny, report_hub, run_phase
from bench.simnode import SimNode
from bench.workers import Worker, free_port, get_json, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FAMILIES = 100  # as bench.load_agents: node n<k> behaves as family k % 100
STEPS = 10  # a node's values loop every ten seconds
APPENDED = 'prometheus_tsdb_head_samples_appended_total{type="float"}'
INTERVAL_P99 = 'prometheus_target_interval_length_seconds{interval="1s",quantile="0.99"}'
FAMILY_SEED = 1000  # bench.load_agents' families: seed * 1000 + k with its default seed 1


def write_exposition_files(root: Path, busy_fraction: float) -> int:
    """``root/s<step>/f<family>.prom`` for every family and step; returns series per node."""
    series = 0
    for family in range(FAMILIES):
        sim = SimNode(f"family{family}", FAMILY_SEED + family, busy_fraction)
        for step in range(STEPS):
            folder = root / f"s{step}"
            folder.mkdir(mode=0o755, exist_ok=True)
            text = exposition(sim.snapshot(1_700_000_000.0 + step, mark=False))
            (folder / f"f{family:02d}.prom").write_text(text)
            series = max(series, series_count(text))
    return series


def nginx_config(workdir: Path, files: Path, port: int) -> str:
    """nginx serving ``/metrics?node=n01234``: family 34's file of the current ten-second step."""
    return f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    open_file_cache max=4096 inactive=60s;
    open_file_cache_valid 3600s;
    types {{ }}
    default_type "text/plain; version=0.0.4";
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    map $time_iso8601 $step {{ "~(?<digit>[0-9])[-+][0-9][0-9]:[0-9][0-9]$" $digit; default 0; }}
    map $arg_node $family {{ "~(?<last>[0-9][0-9])$" $last; default 00; }}
    server {{
        listen 127.0.0.1:{port};
        root {files};
        location = /metrics {{ try_files /s$step/f$family.prom =404; }}
    }}
}}
"""


def prometheus_config(nodes: int, nginx_port: int) -> str:
    """One job, each node its own target: ``instance`` and the ``node`` parameter are its name."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1m"},
        "scrape_configs": [
            {
                "job_name": "nodes",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"n{i:05d}" for i in range(nodes)]}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_node"},
                    {"source_labels": ["__address__"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{nginx_port}"},
                ],
            }
        ],
    }
    return json.dumps(config, indent=1)  # JSON is YAML


def query(base: str, promql: str) -> float:
    """A PromQL expression's single value (NaN when it has none)."""
    answer = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), 10)
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else float("nan")


def prepare(args: argparse.Namespace, nodes: int, log_dir: Path) -> tuple[Path, Path, int, int, int]:
    """The nodes' files and both configurations: (workdir, files, series per node, ports)."""
    workdir = Path(tempfile.mkdtemp(prefix="sers-prom-", dir=log_dir))
    # nginx's workers run as nobody when it is started as root: the files must be theirs to read
    files = Path(tempfile.mkdtemp(prefix="sers-prom-metrics-"))
    files.chmod(0o755)
    series_per_node = write_exposition_files(files, args.busy_fraction)
    nginx_port, prom_port = free_port(), free_port()
    (workdir / "nginx.conf").write_text(nginx_config(workdir, files, nginx_port))
    (workdir / "prometheus.yml").write_text(prometheus_config(nodes, nginx_port))
    return workdir, files, series_per_node, nginx_port, prom_port


async def run_prometheus(args: argparse.Namespace, nodes: int, log_dir: Path) -> dict[str, Any]:
    workdir, files, series_per_node, nginx_port, prom_port = prepare(args, nodes, log_dir)
    nginx = await Worker.start(
        "nginx",
        [
            NGINX,
            "-c",
            str(workdir / "nginx.conf"),
            "-p",
            str(workdir),
            "-e",
            str(workdir / "nginx-error.log"),
            "-g",
            "daemon off;",
        ],
        log_dir,
        jsonl=False,
    )
    prom: Worker | None = None
    base = f"http://127.0.0.1:{prom_port}"
    try:
        probe = f"http://127.0.0.1:{nginx_port}/metrics?node=n00007"
        await wait_for(lambda: _get_text(probe), 15, "nginx to serve the nodes")
        prom = await Worker.start(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            log_dir,
            jsonl=False,
        )
        started = time.monotonic()
        await wait_for(lambda: _get_text(base + "/-/ready"), 60, "prometheus to be ready")
        await wait_for(
            lambda: query(base, "count(up == 1)") >= nodes,
            60 + nodes / 50,
            f"prometheus to scrape {nodes} targets",
        )
        await asyncio.sleep(max(0.0, args.prom_warmup - (time.monotonic() - started)))
        appended0 = own_metrics(base)[APPENDED]
        cpu0, nginx0, t0 = prom.cpu_s(), tree_cpu_s(nginx), time.monotonic()
        rss_max = 0
        while time.monotonic() - t0 < args.prom_window:
            rss_max = max(rss_max, prom.rss_bytes())
            await asyncio.sleep(min(1.0, max(0.0, args.prom_window - (time.monotonic() - t0))))
        window_s = time.monotonic() - t0
        cpu_s, nginx_s = prom.cpu_s() - cpu0, tree_cpu_s(nginx) - nginx0
        rss_end = prom.rss_bytes()
        own = own_metrics(base)
        return {
            "series_per_node": series_per_node,
            "cpu_pct": 100 * cpu_s / window_s,
            "nginx_cpu_pct": 100 * nginx_s / window_s,
            "rss_end": rss_end,
            "rss_max": max(rss_max, rss_end),
            "run_s": time.monotonic() - started,
            "window_s": window_s,
            "targets_up": query(base, "count(up == 1)"),
            "head_series": own["prometheus_tsdb_head_series"],
            "samples_per_s": (own[APPENDED] - appended0) / window_s,
            "scrape_s_p99": query(base, "quantile(0.99, scrape_duration_seconds)"),
            "interval_p99": own.get(INTERVAL_P99, float("nan")),
        }
    finally:
        if prom is not None:
            await prom.stop()
        await nginx.stop()
        shutil.rmtree(workdir / "tsdb", ignore_errors=True)
        shutil.rmtree(files, ignore_errors=True)


def tree_cpu_s(worker: Worker) -> float:
    """CPU seconds of a process and its children (nginx's master does none of the serving)."""
    total = worker.cpu_s()
    for child in worker.ps.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += float(times.user + times.system)
    return total


def _get_text(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200 and response.read())


def own_metrics(base: str) -> dict[str, float]:
    """Prometheus's own ``/metrics`` (it does not scrape itself here): series text -> value."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def main_async(args: argparse.Namespace) -> int:
    fig = Figures("peer_prometheus", judge=not args.tiny)
    nodes = args.nodes[0]
    fig.header(
        f"Prometheus scraping {nodes} simulated nodes at 1 s, then the hub with the same nodes at "
        f"{args.rate:g} Hz x {args.viewers} viewers; load generators on the same machine"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="sers-bench-peer-"))
    fig.note(f"logs: {log_dir}")
    prom = await run_prometheus(args, nodes, log_dir)
    tag = f"n{nodes}"
    fig.note(
        f"Prometheus: {prom['series_per_node']} series per node, measured {prom['window_s']:.0f} s "
        f"after {prom['run_s'] - prom['window_s']:.0f} s of scraping; nginx serving the nodes used "
        f"{prom['nginx_cpu_pct']:.1f}% of one core (not counted)"
    )
    fig.add(f"{tag}.prometheus_targets_up", prom["targets_up"], "targets", digits=0)
    fig.add(f"{tag}.prometheus_head_series", prom["head_series"], "series", digits=0)
    fig.add(f"{tag}.prometheus_samples_per_s", prom["samples_per_s"], "samples/s", digits=0)
    fig.add(f"{tag}.prometheus_scrape_p99", 1000 * prom["scrape_s_p99"], "ms", digits=0)
    fig.add(f"{tag}.prometheus_interval_p99", prom["interval_p99"], "s between scrapes", digits=2)
    fig.add(f"{tag}.prometheus_cpu", prom["cpu_pct"], "% of one core")
    fig.add(f"{tag}.prometheus_rss_end", prom["rss_end"] / MIB, "MiB", digits=0)
    fig.add(f"{tag}.prometheus_rss_max", prom["rss_max"] / MIB, "MiB", digits=0)
    args.nodes = [nodes]
    try:
        hub = await run_phase(args, nodes, log_dir)
    except (TimeoutError, RuntimeError) as exc:
        fig.note(f"{tag}: the hub's run broke down before its window: {exc}")
        fig.missed.append(tag)
        return fig.done()
    report_hub(fig, args, nodes, hub)
    add_ratios(fig, tag, hub, prom)
    if args.all_features:
        await all_features(fig, args, nodes, log_dir, prom)
    return fig.done()


async def all_features(
    fig: Figures, args: argparse.Namespace, nodes: int, log_dir: Path, prom: dict[str, Any]
) -> None:
    """The hub again, right after, with the features of the other issues on that apply to the
    same nodes: a state file (usage, history, event log) and the ten alert rules; idle holders
    are always on. (MIG slices are left out here: Prometheus scrapes the same H100 nodes.)"""
    tag = f"n{nodes}.all_features"
    try:
        hub = await run_phase(
            args,
            nodes,
            log_dir,
            state_db=str(log_dir / f"features-{nodes}.sqlite3"),
            alerts_config=ALERT_RULES,
            label="hub-all-features",
        )
    except (TimeoutError, RuntimeError) as exc:
        fig.note(f"{tag}: the hub's run broke down before its window: {exc}")
        fig.missed.append(tag)
        return
    hub_cpu = 100 * hub.server_cpu_s / hub.duration_s
    fig.add(f"{tag}.hub_cpu", hub_cpu, "% of one core")
    fig.add(f"{tag}.hub_cpu_wait", 100 * hub.server_wait_s / hub.duration_s, "% (runnable, no CPU free)")
    fig.add(f"{tag}.hub_rss_max", hub.server_rss_max / MIB, "MiB")
    lat = hub.viewers["latency_ms"]
    if lat["count"]:
        fig.add(f"{tag}.latency_p99", lat["p99"], "ms", digits=0)
    add_ratios(fig, tag, hub, prom)


def add_ratios(fig: Figures, tag: str, hub: Phase, prom: dict[str, Any]) -> None:
    """The hub's CPU and memory as ratios of Prometheus's, with #20's targets."""
    hub_cpu = 100 * hub.server_cpu_s / hub.duration_s
    cpu_ratio = hub_cpu / prom["cpu_pct"] if prom["cpu_pct"] else float("nan")
    rss_ratio = hub.server_rss_max / prom["rss_end"] if prom["rss_end"] else float("nan")
    fig.add(f"{tag}.hub_vs_prometheus_cpu", cpu_ratio, "x", target="≤ 0.6x", ok=cpu_ratio <= 0.6, digits=2)
    fig.add(
        f"{tag}.hub_vs_prometheus_rss",
        rss_ratio,
        "x (hub max / Prometheus at the end)",
        target="≤ 0.15x",
        ok=rss_ratio <= 0.15,
        digits=3,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer_prometheus", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=lambda text: [int(text)], default=[2000], help="simulated nodes")
    add_load_arguments(parser)
    parser.add_argument(
        "--prom-warmup", type=float, default=60.0, help="seconds of scraping before measuring"
    )
    parser.add_argument("--prom-window", type=float, default=60.0, help="seconds of Prometheus measured")
    parser.add_argument(
        "--all-features",
        action="store_true",
        help="then the hub again with a state file and the ten alert rules, and its ratios",
    )
    parser.add_argument("--tiny", action="store_true", help="5 nodes, 2 viewers, short windows (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        make_tiny(args)
        args.prom_warmup, args.prom_window = 3.0, 3.0
    for tool in (PROMETHEUS, NGINX):
        if not Path(tool).exists():
            print(f"== bench.peer_prometheus: {tool} not found (Debian: prometheus, nginx-light), skipped")
            return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
