"""What the agent costs a node: CPU per sample and RSS of a real ``sers-agent`` at 1 Hz, side
by side (same window, same machine) with Prometheus ``node_exporter`` scraped at 1 Hz on
loopback and Glances refreshing every second, where those are installed.

    python -m bench.agent_cost [--duration 60] [--tiny]

The agent streams to a real hub started for the run. Its GPUs are 8 fake H100s: the fake NVML
of ``tests/fake_nvml`` (scenario ``tests.fakes.eight_gpus``, some of them running this
benchmark's and the hub's processes, so per-process lookups happen) put first on the agent's
``PYTHONPATH``. Real NVML calls into the driver cost more; the host part is real psutil.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.figures import Figures
from bench.workers import REPO, child_env, free_port, get_json, wait_until

MIB = 1024**2
FAKE_NVML_DIR = REPO / "tests" / "fake_nvml"


@dataclass
class Peer:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ps: psutil.Process
    cpu0: float = 0.0
    cpu1: float = 0.0
    rss_max: int = 0

    def cpu_s(self) -> float:
        """CPU seconds of all its threads, to the nanosecond (Linux schedstat); psutil's
        clock-tick (10 ms) figure elsewhere."""
        try:
            return sum(
                int((task / "schedstat").read_text().split()[0]) / 1e9
                for task in Path(f"/proc/{self.popen.pid}/task").iterdir()
            )
        except (OSError, IndexError, ValueError):
            times = self.ps.cpu_times()
            return float(times.user + times.system)

    def rss(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-5:])


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> Peer:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=log_dir
        )
    return Peer(name, popen, log_path, psutil.Process(popen.pid))


def stop(peer: Peer) -> None:
    if peer.popen.poll() is None:
        peer.popen.terminate()
        try:
            peer.popen.wait(10)
        except subprocess.TimeoutExpired:
            peer.popen.kill()
            peer.popen.wait(10)


def fake_gpu_env(log_dir: Path, pids: Sequence[int], mig: bool = False) -> dict[str, str] | None:
    """Environment that gives the agent 8 fake H100s (``mig``: 8 A100s, 4 of them in MIG mode
    with 8 slices in all), or None when the fake is not there."""
    try:
        from tests.fakes import eight_gpus, eight_gpus_with_mig, fake_env, write_scenario
    except ImportError:
        return None
    if not (FAKE_NVML_DIR / "pynvml.py").exists():
        return None
    name, data = (
        ("eight_gpus_with_mig", eight_gpus_with_mig(pids)) if mig else ("eight_gpus", eight_gpus(pids))
    )
    scenario = write_scenario(log_dir / f"{name}.json", data)
    return fake_env(scenario, child_env())


class Scraper(threading.Thread):
    """GETs ``url`` once a second (this thread's CPU is the benchmark's, not the exporter's)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.scrapes = 0
        self.bytes = 0
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.bytes += len(response.read())
                self.scrapes += 1
            except OSError:
                self.errors += 1
            next_at += 1.0
            self.halt.wait(max(0.0, next_at - time.monotonic()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=1.0, help="agent interval = scrape period")
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="measure the agent alone")
    parser.add_argument("--tiny", action="store_true", help="a 3 s window (seconds in all)")
    parser.add_argument("--mig", action="store_true", help="8 A100s with 8 MIG slices instead of 8 H100s")
    args = parser.parse_args(argv)
    if args.tiny:
        args.duration, args.warmup = 3.0, 3.0

    fig = Figures("agent_cost", judge=not args.tiny)
    fig.header(
        f"sers-agent at {1 / args.interval:g} Hz vs node_exporter and Glances, {args.duration:g} s window"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="sers-agent-cost-"))
    fig.note(f"logs: {log_dir}")
    port = free_port()
    hub = spawn(
        "hub",
        [sys.executable, "-m", "hub", "--port", str(port), "--state-db", "none", "--log-level", "WARNING"],
        log_dir,
        child_env(),
    )
    peers: list[Peer] = []
    scraper: Scraper | None = None
    try:
        if not wait_until(lambda: get_json(f"http://127.0.0.1:{port}/healthz", 1), 30):
            raise RuntimeError(f"hub did not start:\n{hub.log_tail()}")
        env = fake_gpu_env(log_dir, [os.getpid(), hub.popen.pid], mig=args.mig)
        if env is None:
            fig.note("GPUs: fake NVML not found (tests/fake_nvml): the agent runs with no GPUs")
            env = child_env()
        else:
            fig.note(
                "GPUs: 8 FAKE A100s, 8 MIG slices (tests/fake_nvml, scenario eight_gpus_with_mig), not real NVML"
                if args.mig
                else "GPUs: 8 FAKE H100s (tests/fake_nvml, scenario eight_gpus), not real NVML"
            )
        agent = spawn(
            "sers-agent",
            [
                sys.executable,
                "-m",
                "node_agent",
                "--hub",
                f"http://127.0.0.1:{port}",
                "--name",
                "bench-agent",
                "--interval",
                str(args.interval),
            ],
            log_dir,
            env,
        )
        peers.append(agent)
        if args.peers:
            exporter_bin = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
            if exporter_bin:
                exporter_port = free_port()
                exporter = spawn(
                    "node_exporter",
                    [exporter_bin, f"--web.listen-address=127.0.0.1:{exporter_port}"],
                    log_dir,
                )
                if wait_until(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{exporter_port}/metrics", timeout=2), 15
                ):
                    peers.append(exporter)
                    scraper = Scraper(f"http://127.0.0.1:{exporter_port}/metrics")
                    scraper.start()
                else:
                    fig.note(f"node_exporter did not start, skipped: {exporter.log_tail()}")
                    stop(exporter)
            else:
                fig.note("node_exporter not installed (Debian prometheus-node-exporter), skipped")
            glances_bin = shutil.which("glances")
            if glances_bin:
                glances = spawn(
                    "glances",
                    [
                        glances_bin,
                        "-q",
                        "-t",
                        str(args.interval),
                        "--export",
                        "csv",
                        "--export-csv-file",
                        str(log_dir / "glances.csv"),
                    ],
                    log_dir,
                )
                peers.append(glances)
            else:
                fig.note("Glances not installed (Debian glances), skipped")

        def agent_listed() -> bool:
            nodes = get_json(f"http://127.0.0.1:{port}/api/v1/nodes", 2)["nodes"]
            return any(n["id"] == "bench-agent" and n["status"] == "live" for n in nodes)

        if not wait_until(agent_listed, 30):
            raise RuntimeError(f"the agent did not reach the hub:\n{agent.log_tail()}")
        time.sleep(args.warmup)
        running = [p for p in peers if p.alive()]
        for peer in peers:
            if not peer.alive():
                fig.note(f"{peer.name} exited early, skipped: {peer.log_tail()}")
        for peer in running:
            peer.cpu0 = peer.cpu_s()
        scrapes0 = scraper.scrapes if scraper else 0
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            for peer in running:
                peer.rss_max = max(peer.rss_max, peer.rss())
            time.sleep(min(1.0, max(0.0, args.duration - (time.monotonic() - started))))
        elapsed = time.monotonic() - started
        for peer in running:
            peer.cpu1 = peer.cpu_s()
            peer.rss_max = max(peer.rss_max, peer.rss())
        scrapes = (scraper.scrapes - scrapes0) if scraper else 0
    finally:
        if scraper is not None:
            scraper.halt.set()
        for peer in peers:
            stop(peer)
        stop(hub)

    samples = elapsed / args.interval
    by_name = {p.name: p for p in running}
    agent_ms = 1000 * (agent.cpu1 - agent.cpu0) / samples
    fig.add("agent_cpu_per_sample", agent_ms, "ms", target="≤ 1 ms", ok=agent_ms <= 1.0, digits=3)
    fig.add("agent_cpu", 100 * (agent.cpu1 - agent.cpu0) / elapsed, "% of one core", digits=2)
    agent_rss = agent.rss_max / MIB
    fig.add("agent_rss", agent_rss, "MiB", target="≤ 35 MiB", ok=agent_rss <= 35)
    exporter_peer = by_name.get("node_exporter")
    if exporter_peer is not None and scrapes:
        exporter_ms = 1000 * (exporter_peer.cpu1 - exporter_peer.cpu0) / scrapes
        fig.add("node_exporter_cpu_per_scrape", exporter_ms, "ms", digits=3)
        fig.add("node_exporter_rss", exporter_peer.rss_max / MIB, "MiB")
        ratio = agent_ms / exporter_ms if exporter_ms else float("inf")
        fig.add("agent_vs_node_exporter_cpu", ratio, "x", target="< 1x", ok=ratio < 1, digits=2)
        if scraper is not None:
            size_kib = scraper.bytes / max(scraper.scrapes, 1) / 1024
            fig.note(f"node_exporter: {scrapes} scrapes of {size_kib:.0f} KiB on loopback")
    glances_peer = by_name.get("glances")
    if glances_peer is not None:
        glances_ms = 1000 * (glances_peer.cpu1 - glances_peer.cpu0) / samples
        fig.add("glances_cpu_per_refresh", glances_ms, "ms", digits=3)
        fig.add("glances_rss", glances_peer.rss_max / MIB, "MiB")
        fig.add("agent_vs_glances_cpu", agent_ms / glances_ms if glances_ms else float("inf"), "x", digits=3)
    return fig.done()


if __name__ == "__main__":
    raise SystemExit(main())
