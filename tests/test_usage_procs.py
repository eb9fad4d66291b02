"""The hub's memory with real processes: a real hub, a real agent over a fake NVML that lists a
real process of this test's user. GPU-hours match the time the process was seen within 2 %, and
a hub killed with ``kill -9`` loses at most one flush interval and counts nothing twice after
its restart."""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests import fakes
from tests.procs import Hub, Proc, start_agent, start_hub, stop_cleanly

GIB = 1024**3
INTERVAL_S = 0.5
FLUSH_S = 2.0
USER = pwd.getpwuid(os.getuid()).pw_name
MEMORY_TOML = f"[memory]\nflush_every_s = {FLUSH_S}\n"


def holding_agent(hub: Hub, procs: list[Proc], pid: int) -> Proc:
    """A real agent, live, named gpu01, whose one A100 (80 % busy) is held by process ``pid``."""
    one_gpu = fakes.scenario(
        [fakes.gpu(0, "A100", util_gpu=80, compute_processes=[fakes.process(pid, 4 * GIB)])]
    )
    env = fakes.fake_env(fakes.write_scenario(hub.tmp / "scenario.json", one_gpu))
    agent = start_agent(hub, "gpu01", interval_s=INTERVAL_S, env=env)
    procs.append(agent)
    hub.wait_status("gpu01", "live")
    return agent


def stored(path: Path) -> tuple[float, float, float]:
    """The user's (GPU-seconds, busy GPU-seconds, GPU memory byte-seconds) in the file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT sum(gpu_seconds), sum(busy_gpu_seconds), sum(gpu_mem_byte_seconds) FROM usage_hourly WHERE user = ?",
            (USER,),
        ).fetchone()
    return (row[0] or 0.0, row[1] or 0.0, row[2] or 0.0)


def history_samples(path: Path) -> int:
    """Samples of GPU 0 in the 1-minute history."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(
            db.execute(
                "SELECT coalesce(sum(util_gpu_percent_n), 0) FROM history_gpu WHERE tier_s = 60"
            ).fetchone()[0]
        )


def hellos_and_goodbyes(path: Path) -> list[tuple[float, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [
            (at, summary)
            for at, summary in db.execute(
                "SELECT at_s, summary FROM events WHERE kind = 'status' ORDER BY at_s"
            )
        ]


def test_gpu_hours_from_a_real_agent_match_the_time_seen(
    tmp_path: Path, procs: list[Proc], sleeper: subprocess.Popen[bytes]
) -> None:
    hub = start_hub(procs, tmp_path, toml=MEMORY_TOML)
    agent = holding_agent(hub, procs, sleeper.pid)
    time.sleep(40.0)
    agent.stop()  # a goodbye: the node goes offline at once
    hub.wait_status("gpu01", "offline")
    stop_cleanly(hub)  # SIGTERM: the last flush
    path = tmp_path / "hub.sqlite3"
    (hello_at, hello), (goodbye_at, goodbye) = hellos_and_goodbyes(path)
    assert (hello, goodbye) == ("offline → live (hello)", "live → offline (goodbye)")
    # the first sample covers one interval from the hello; the last arrives at most one
    # interval before the goodbye
    expected_s = goodbye_at - hello_at
    gpu_s, busy_s, mem_byte_s = stored(path)
    assert gpu_s == pytest.approx(expected_s, rel=0.02)
    assert busy_s == pytest.approx(gpu_s)  # 80 % utilization: busy all along
    assert mem_byte_s == pytest.approx(gpu_s * 4 * GIB)


def test_a_hub_killed_loses_at_most_one_flush_and_counts_nothing_twice(
    tmp_path: Path, procs: list[Proc], sleeper: subprocess.Popen[bytes]
) -> None:
    path = tmp_path / "hub.sqlite3"
    first = start_hub(procs, tmp_path, toml=MEMORY_TOML)
    assert first.proc is not None
    holding_agent(first, procs, sleeper.pid)
    time.sleep(9.0)
    killed_at = time.time()
    first.proc.kill()  # SIGKILL: no last flush
    (hello1_at, _), *_ = hellos_and_goodbyes(path)
    counted_before = stored(path)[0]
    samples_before = history_samples(path)
    seen_s = killed_at - hello1_at
    assert seen_s - FLUSH_S - 2 * INTERVAL_S <= counted_before <= seen_s + INTERVAL_S
    assert (seen_s - FLUSH_S) / INTERVAL_S - 2 <= samples_before <= seen_s / INTERVAL_S + 2

    second = start_hub(procs, tmp_path, *first.args, port=first.port)  # the agent reconnects to it
    second.wait_status("gpu01", "live")
    time.sleep(6.0)
    stop_cleanly(second)
    stopped_at = time.time()
    events = hellos_and_goodbyes(path)
    hello2_at = [at for at, summary in events if summary.endswith("(hello)")][-1]
    assert events[-1][1] == "live → offline (hub stopping)"  # not the agent's goodbye
    counted_after = stored(path)[0]
    # the second hub counts from the agent's hello to it (one interval before, for the first
    # sample) until it stopped; never the time the first hub had counted
    added = counted_after - counted_before
    assert hello2_at > killed_at
    assert stopped_at - hello2_at - 2 * INTERVAL_S <= added <= stopped_at - hello2_at + INTERVAL_S
    # the history goes on from the same rows, and no sample is in it twice
    samples_added = history_samples(path) - samples_before
    assert (
        (stopped_at - hello2_at) / INTERVAL_S - 4
        <= samples_added
        <= (stopped_at - hello2_at) / INTERVAL_S + 2
    )
