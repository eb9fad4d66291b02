"""Every benchmark runs once at a tiny size, so none of them rots (no assertions on speed).

Each runs as ``python -m bench.<name> --tiny`` in its own process, against real processes (a
real hub, real agent processes or simulated agents speaking the real protocol, real WebSocket
viewers), and must print its figure lines. The load test must also account for every update it
sent: that checks the benchmark's own counting end to end, and the hub's delivery.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import REPO, base_env


def run_bench(name: str, timeout_s: float, *options: str) -> dict[str, str]:
    """Runs one benchmark at tiny size; returns its figures (name -> value text)."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--tiny", *options],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    figures = dict(re.findall(rf"^figure {name} (\S+) = (.+?)\s*(?:\[|$)", done.stdout, re.MULTILINE))
    assert figures, output
    return figures


def number(text: str) -> float:
    return float(text.split()[0].replace(",", ""))


def test_attribution_cost_prints_what_the_fields_add_per_sample() -> None:
    figures = run_bench("attribution_cost", 60)
    assert number(figures["us_per_sample_without_attribution"]) > 0
    assert number(figures["us_per_sample_with_attribution"]) > 0
    assert "attribution_us_per_sample" in figures


def test_idle_holders_prints_the_trackers_cost_per_message() -> None:
    figures = run_bench("idle_holders", 60)
    assert number(figures["us_per_message_merge_without_tracker"]) > 0
    assert number(figures["us_per_message_merge_with_tracker"]) > 0
    assert "tracker_us_per_message" in figures


def test_feature_cost_prints_what_alert_rules_memory_and_mig_nodes_add_per_message() -> None:
    figures = run_bench("feature_cost", 120, "--parts")
    for variant in ("plain", "alerts", "mig", "memory", "all"):
        assert number(figures[f"us_per_message.{variant}"]) > 0, figures
    assert {"added_us_per_message.alerts", "added_us_per_message.mig", "ratio.all"} <= figures.keys()
    assert "part_us_per_message.memory.SampleApplied>UsageAccounting.sample" in figures, figures
    parts = [name for name in figures if name.startswith("part_us_per_message.")]
    assert "part_us_per_message.alerts.SampleApplied>Conditions.sample_applied" in parts, parts
    assert "part_us_per_message.plain.decode" in parts and not any(
        ".plain.SampleApplied>Cond" in p for p in parts
    )


def test_viewer_burst_prints_the_hubs_rss_while_slow_viewers_join() -> None:
    figures = run_bench("viewer_burst", 120)
    assert number(figures["rss_highest_mib"]) >= number(figures["rss_before_mib"]) > 0
    assert "rss_added_per_viewer_mib" in figures


def test_feature_memory_prints_rss_at_rest_and_flush_peaks() -> None:
    figures = run_bench("feature_memory", 120, "--trace", "--top", "3")
    assert number(figures["rss_mib.minute1_rest"]) > number(figures["rss_mib.before_app"]) > 0
    assert number(figures["rss_mib.minute1_flush_peak"]) > 0  # a state file: the memory flushed
    assert number(figures["traced_mib.minute1_rest"]) > 0


def test_render_prints_cost_per_changed_node_and_its_parts() -> None:
    figures = run_bench("render", 60, "--parts")
    for name in ("us_per_changed_node", "bytes_per_changed_node", "host_fragment_bytes", "us_per_whole_card"):
        assert name in figures, figures
    assert number(figures["bytes_per_changed_node"]) > 0
    assert number(figures["host_fragment_bytes"]) > 0
    parts = {name: number(value) for name, value in figures.items() if name.startswith("part_")}
    for part in ("history", "host", "gpu_rows"):  # sparklines only once a bucket group closes
        assert parts[f"part_us_per_changed_node.{part}"] > 0, figures
    # the parts are timed inside the changes (whole cards at the start are not changes)
    assert sum(parts.values()) < number(figures["us_per_changed_node"]), figures


@pytest.mark.timeout(180)
def test_hub_load_delivers_every_update_and_compares_with_bare_websockets() -> None:
    figures = run_bench("hub_load", 150)
    for name in (
        "n5.delivered_min",
        "n5.latency_p50",
        "n5.latency_p99",
        "n5.hub_cpu",
        "n5.hub_rss_max",
        "n5.bytes_per_s_per_viewer",
        "n5.loadgen_agents_cpu",
        "n5.loadgen_viewers_cpu",
        "n5.bare_cpu",
        "n5.hub_vs_bare_cpu_per_update",
    ):
        assert name in figures, figures
    # every host part and GPU row the simulated agents changed reached both viewers, no more
    assert number(figures["n5.delivered_min"]) == 100.0, figures
    assert number(figures["n5.delivered_mean"]) == 100.0, figures
    assert number(figures["n5.bytes_per_s_per_viewer"]) > 0
    assert 0 < number(figures["n5.hub_rss_max"]) < 4096


@pytest.mark.timeout(120)
def test_hub_load_with_viewers_that_show_some_nodes_delivers_exactly_theirs() -> None:
    figures = run_bench("hub_load", 100, "--shown", "2", "--no-bare")
    # each viewer told the hub it shows 2 of the 5 nodes: it got all of their updates and no other
    # node's (more would read as over 100%)
    assert number(figures["n5.delivered_min"]) == 100.0, figures
    assert number(figures["n5.delivered_mean"]) == 100.0, figures
    assert "showing 2 of 5 nodes" in figures["n5.bytes_per_s_per_viewer"], figures


def test_agent_cost_measures_a_real_agent_and_the_installed_peers() -> None:
    figures = run_bench("agent_cost", 90)
    assert "agent_cpu_per_sample" in figures, figures
    assert 0 < number(figures["agent_rss"]) < 4096
    if shutil.which("prometheus-node-exporter") or shutil.which("node_exporter"):
        assert "agent_vs_node_exporter_cpu" in figures, figures
    if shutil.which("glances"):
        assert "glances_cpu_per_refresh" in figures, figures


def test_browser_load_runs_when_present() -> None:
    if not (REPO / "bench" / "browser_load.py").exists():
        pytest.skip("bench/browser_load.py is not written yet")
    figures = run_bench("browser_load", 110)
    # counted in the page itself: what the hub sent the cards it shows (all 5 fit the screen)
    assert number(figures["bytes_per_s_per_browser"]) > 0, figures
    assert "bytes_per_s_showing_every_node" in figures, figures


@pytest.mark.timeout(200)
def test_peer_prometheus_scrapes_every_node_then_runs_the_hub() -> None:
    if not (shutil.which("prometheus") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())):
        pytest.skip("needs Debian's prometheus and nginx (.ci/run installs them)")
    figures = run_bench("peer_prometheus", 170, "--all-features")
    assert number(figures["n5.prometheus_targets_up"]) == 5, "Prometheus scraped every simulated node"
    # about 200 series a node (a 64-core host, 8 GPUs and their processes) plus up and scrape_*
    assert 5 * 150 < number(figures["n5.prometheus_head_series"]) < 5 * 300, figures
    assert number(figures["n5.prometheus_samples_per_s"]) > 0
    assert 0 < number(figures["n5.prometheus_rss_end"]) < 4096
    assert number(figures["n5.delivered_min"]) == 100.0, "the hub's run beside it delivered everything"
    for name in ("n5.hub_vs_prometheus_cpu", "n5.hub_vs_prometheus_rss"):
        assert name in figures, figures
        assert f"n5.all_features.{name[3:]}" in figures, figures  # the hub with its features on


@pytest.mark.timeout(180)
def test_hub_load_compares_the_hub_with_and_without_alert_rules() -> None:
    figures = run_bench("hub_load", 150, "--alerts", "--no-bare")
    assert number(figures["n5.hub_cpu_with_alert_rules"]) > 0
    assert number(figures["n5.alert_rules_cpu_ratio"]) > 0


@pytest.mark.timeout(240)
def test_hub_load_compares_the_hub_with_its_memory_and_with_every_feature_on() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.hub_load",
            "--tiny",
            "--memory",
            "--all-features",
            "--no-bare",
            "--repeat",
            "2",
        ],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = dict(re.findall(r"^figure hub_load (\S+) = (.+?)\s*(?:\[|$)", done.stdout, re.MULTILINE))
    for variant in ("memory", "all_features"):
        assert number(figures[f"n5.{variant}.cpu_ratio"]) > 0, figures
        assert number(figures[f"n5.{variant}.delivered_min"]) == 100.0, figures
        assert f"n5.{variant}.hub_rss_max" in figures
        # two pairs each, alternating: both ratios named, the figures the median pair's
        assert re.search(rf"{variant}: 2 pairs, .* ratios in order [0-9.]+x, [0-9.]+x \(mean", done.stdout)
    assert (
        len(
            re.findall(
                r"pair 2: without [0-9.]+ % of one core, .*RSS [0-9]+ MiB, [0-9]+ whole cards a viewer; with ",
                done.stdout,
            )
        )
        == 2
    )
    # the runs with a state file counted usage; with every feature on, node n00000 is a MIG node
    logs = Path(re.search(r"logs: (\S+)", done.stdout)[1])  # type: ignore[index]
    models = {}
    for name in ("memory", "features"):
        with sqlite3.connect(logs / f"{name}-5.sqlite3") as db:
            models[name] = {row[0] for row in db.execute("SELECT DISTINCT model FROM usage_hourly")}
    assert models == {
        "memory": {"NVIDIA H100 80GB HBM3"},
        "features": {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"},
    }
