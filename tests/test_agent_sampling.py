"""The agent's sampling plumbing, in-process: /proc readers and parsers, and the sampling thread."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from node_agent import host
from node_agent import sampler as sampler_module
from node_agent.periodic import Periodic
from node_agent.procfs import ProcFile
from node_agent.procinfo import parse_pid_stat
from node_agent.protocol import Snapshot
from node_agent.sampler import SampleSource


# --------------------------------------------------------------------------- ProcFile
def test_proc_file_reads_the_current_content_every_time(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    path.write_bytes(b"one\n")
    file = ProcFile(str(path))
    assert file.read() == b"one\n"
    path.write_bytes(b"two, longer\n")  # same inode, rewritten
    assert file.read() == b"two, longer\n"
    file.close()


def test_proc_file_reads_a_large_file_whole(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "big").write_bytes(data)
    assert ProcFile(str(tmp_path / "big"), keep_open=False).read() == data


def test_proc_file_read_whole_in_one_read_still_reads_a_large_file_whole(tmp_path: Path) -> None:
    data = os.urandom(100_000)  # larger than one read: a full read is not the end
    (tmp_path / "big").write_bytes(data)
    assert ProcFile(str(tmp_path / "big"), whole_in_one_read=True).read() == data
    stat = ProcFile("/proc/self/stat", whole_in_one_read=True)
    text = stat.read()
    assert text.startswith(f"{os.getpid()} (".encode()) and text.endswith(b"\n")
    stat.close()


def test_proc_file_sees_proc_change() -> None:
    stat = ProcFile("/proc/self/stat")
    first = parse_pid_stat(stat.read())
    deadline = time.thread_time() + 0.05
    while time.thread_time() < deadline:  # burn some CPU
        pass
    second = parse_pid_stat(stat.read())
    assert second.started_ticks == first.started_ticks
    assert second.cpu_ticks > first.cpu_ticks
    stat.close()


def test_a_kept_pid_file_fails_once_its_process_is_gone() -> None:
    child = subprocess.Popen(["sleep", "30"])
    stat = ProcFile(f"/proc/{child.pid}/stat")
    assert parse_pid_stat(stat.read()).started_ticks > 0
    child.kill()
    child.wait()  # reaped: the pid may now be reused, the open file still names the old process
    with pytest.raises(OSError):
        stat.read()


def test_pid_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    fields = ["S", "1"] + ["0"] * 9 + ["150", "50"] + ["0"] * 6 + ["4242", "1000", "25"]
    text = b"1234 (a) b) (c) " + " ".join(fields).encode() + b" 0 0\n"
    stat = parse_pid_stat(text)
    assert (stat.started_ticks, stat.cpu_ticks) == (4242, 200)
    assert stat.rss_bytes == 25 * os.sysconf("SC_PAGE_SIZE")


def test_pid_stat_matches_psutil() -> None:
    me = psutil.Process()
    stat = parse_pid_stat(Path("/proc/self/stat").read_bytes())
    ticks = os.sysconf("SC_CLK_TCK")
    assert stat.started_ticks / ticks + psutil.boot_time() == pytest.approx(me.create_time(), abs=0.05)
    assert abs(stat.rss_bytes - me.memory_info().rss) < 4 << 20


# --------------------------------------------------------------------------- host parsers
PROC_STAT = b"""cpu  300 0 100 600 0 0 0 0 0 0
cpu0 200 0 50 200 50 0 0 0 0 0
cpu1 100 0 50 400 0 0 0 0 10 0
intr 12345 0 0
ctxt 999
"""


def test_core_percents_count_busy_against_all_time() -> None:
    before = host.core_ticks(PROC_STAT)
    assert before == [(250, 500), (150, 550)]
    after = host.core_ticks(
        PROC_STAT.replace(b"cpu0 200 0 50 200 50", b"cpu0 260 0 60 230 50").replace(
            b"cpu1 100 0 50 400 0 0 0 0 10", b"cpu1 100 0 50 500 0 0 0 0 90"
        )
    )
    # cpu0: 70 busy of 100; cpu1: idle only (guest time is already inside user)
    assert host.core_percents(before, after) == [70.0, 0.0]
    assert host.core_percents(before, before) == [0.0, 0.0]
    assert host.core_ticks(None) == []


def test_core_percents_agree_with_psutil() -> None:
    stat = ProcFile("/proc/stat")
    psutil.cpu_percent(percpu=True)
    before = host.core_ticks(stat.read())
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # keep one core busy
        pass
    ours = host.core_percents(before, host.core_ticks(stat.read()))
    theirs = psutil.cpu_percent(percpu=True)
    assert len(ours) == len(theirs) == os.cpu_count()
    assert sum(ours) == pytest.approx(sum(theirs), abs=15)


def test_disk_counters_agree_with_diskstats(tmp_path: Path) -> None:
    ours = host.DiskCounters().read()
    theirs = host.disk_bytes(Path("/proc/diskstats").read_bytes(), host.physical_disks())
    if theirs is None:
        assert ours is None
    else:  # I/O between the two reads only adds
        assert ours is not None and ours[0] >= theirs[0] - (1 << 20) and ours[1] >= theirs[1] - (1 << 20)


def test_disk_counters_read_each_disk_then_diskstats_past_the_limit(tmp_path: Path) -> None:
    """A few disks: each one's sysfs stat file; more than PER_DISK_FILES_MAX: /proc/diskstats."""
    sys_block = tmp_path / "block"
    names = [f"sd{chr(ord('a') + k)}" for k in range(host.PER_DISK_FILES_MAX + 1)]
    for k, name in enumerate(names):
        (sys_block / name / "device").mkdir(parents=True)
        (sys_block / name / "stat").write_text(f"  1 0 {10 + k} 0 2 0 {20 + k} 0 0 0 0 0 0 0 0 0 0\n")
    (sys_block / "loop0").mkdir()  # no device: not a physical disk
    diskstats = tmp_path / "diskstats"
    diskstats.write_text("".join(f"8 {k} {n} 1 0 100 0 2 0 200 0 0 0 0\n" for k, n in enumerate(names)))

    many = host.DiskCounters(str(sys_block), str(diskstats))
    assert many.read() == (5 * 100 * 512, 5 * 200 * 512)
    (sys_block / names[-1] / "device").rmdir()
    per_disk = host.DiskCounters(str(sys_block), str(diskstats))
    assert per_disk.read() == (sum(10 + k for k in range(4)) * 512, sum(20 + k for k in range(4)) * 512)
    (sys_block / names[0] / "stat").write_text("")  # a disk that can't be read: the others count
    assert per_disk.read() == (sum(10 + k for k in range(1, 4)) * 512, sum(20 + k for k in range(1, 4)) * 512)
    assert host.DiskCounters(str(tmp_path / "none"), str(diskstats)).read() is None


def test_disk_stat_bytes_parse() -> None:
    line = b"  111842    12280  8683506  2101890   225209   103007 14738712   134875        0\n"
    assert host.disk_stat_bytes(line) == (8683506 * 512, 14738712 * 512)
    assert host.disk_stat_bytes(b"") is None and host.disk_stat_bytes(None) is None


NET_DEV_HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
)


def write_net_dev(tmp_path: Path, counters: dict[str, tuple[int, int]]) -> None:
    """A fake ``/proc/net/dev`` at ``tmp_path/dev`` with ``counters`` (received, sent)."""
    lines = (f"{n:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n" for n, (rx, tx) in counters.items())
    (tmp_path / "dev").write_text(NET_DEV_HEADER + "".join(lines))


def make_net(
    tmp_path: Path, counters: dict[str, tuple[int, int]], physical: tuple[str, ...]
) -> host.NetCounters:
    """:class:`~node_agent.host.NetCounters` over a fake ``/proc/net/dev`` and a fake
    ``/sys/class/net`` where only ``physical`` have a ``device``."""
    write_net_dev(tmp_path, counters)
    for name in counters:
        (tmp_path / "net" / name).mkdir(parents=True, exist_ok=True)
    for name in physical:
        (tmp_path / "net" / name / "device").mkdir(exist_ok=True)
    return host.NetCounters(str(tmp_path / "net"), str(tmp_path / "dev"))


def grow(tmp_path: Path, counters: dict[str, tuple[int, int]]) -> None:
    """Every interface moves 1000 bytes in and 10 out."""
    for name, (rx, tx) in counters.items():
        counters[name] = (rx + 1000, tx + 10)
    write_net_dev(tmp_path, counters)


@pytest.mark.parametrize(
    ("physical", "counted"),
    [
        # a bond of two NICs, a VLAN on it, docker's bridge and a veth: each byte once, on the NICs
        (("eno1", "eno2"), 2),
        # a container's own namespace (eth0 a veth) or no sysfs: everything but loopback
        ((), 6),
    ],
)
def test_net_counters_count_physical_interfaces_else_all_but_loopback(
    tmp_path: Path, physical: tuple[str, ...], counted: int
) -> None:
    names = ["lo", "eno1", "eno2", "bond0", "bond0.100", "docker0", "veth1a2b"]
    counters = {name: (10**9, 10**6) for name in names}
    net = make_net(tmp_path, counters, physical)
    assert net.moved(0.0) is None  # nothing to compare with yet
    grow(tmp_path, counters)
    assert net.moved(1.0) == (counted * 1000, counted * 10)


def test_net_bytes_sum_only_the_given_interfaces() -> None:
    text = (
        NET_DEV_HEADER + "    lo: 5 1 0 0 0 0 0 0 6 1 0 0 0 0 0 0\n  eth0: 7 1 0 0 0 0 0 0 8 1 0 0 0 0 0 0\n"
    ).encode()
    assert host.net_bytes(text, frozenset({b"eth0"})) == (7, 8)
    assert host.net_bytes(text, frozenset({b"eth0", b"lo"})) == (12, 14)
    assert host.net_bytes(None, frozenset({b"eth0"})) is None
    assert host.counted_interfaces(text, "/does-not-exist") == frozenset({b"eth0"})


def test_net_counters_look_for_interfaces_only_every_so_often(tmp_path: Path) -> None:
    """A NIC that shows up counts after the next look, once; the sample in which the set
    changes has no rate (its sum and the previous one are over different interfaces)."""
    counters = {"lo": (0, 0), "eno1": (5000, 50)}
    net = make_net(tmp_path, counters, ("eno1",))
    net.moved(0.0)
    counters["eno2"] = (10**9, 10**6)  # hot-plugged, with traffic before it is first seen
    (tmp_path / "net" / "eno2" / "device").mkdir(parents=True)
    grow(tmp_path, counters)
    assert net.moved(1.0) == (1000, 10)  # eno2 not looked for yet
    grow(tmp_path, counters)
    assert net.moved(host.NET_INTERFACES_EVERY_S) is None  # looked again: eno2 counts from now
    grow(tmp_path, counters)
    assert net.moved(host.NET_INTERFACES_EVERY_S + 1.0) == (2000, 20)


def test_periodic_reads_again_only_once_its_period_has_passed() -> None:
    reads: list[int] = []

    def read() -> int:
        reads.append(1)
        return len(reads)

    value = Periodic(read, period_s=5.0)
    assert [value.get(t) for t in (100.0, 101.0, 104.9, 105.0, 106.0, 200.0)] == [1, 1, 1, 2, 2, 3]


def test_load_averages_and_meminfo_parse() -> None:
    assert host.load_averages(b"0.52 1.10 2.333 2/345 6789\n") == (0.52, 1.1, 2.33)
    assert host.load_averages(None) == (None, None, None)
    meminfo = b"MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    500 kB\nSwapTotal:  0 kB\n"
    assert host.meminfo_bytes(meminfo) == {b"MemTotal": 1024000, b"MemAvailable": 512000, b"SwapTotal": 0}
    assert host.meminfo_bytes(b"MemFree: 1 kB\nSwapFree:   7 kB") == {b"SwapFree": 7168}  # no last \n
    assert host.meminfo_bytes(None) == {}


def test_users_are_counted_again_only_when_utmp_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def users() -> list[Any]:
        calls.append(1)
        return [object()] * len(calls)

    monkeypatch.setattr(host.psutil, "users", users)
    utmp = tmp_path / "utmp"
    count = host.UserCount(str(utmp))
    assert (count.count(), count.count()) == (1, 1)  # no utmp: asked once
    utmp.write_bytes(b"x" * 384)
    assert (count.count(), count.count()) == (2, 2)
    utmp.write_bytes(b"x" * 768)
    assert count.count() == 3
    assert len(calls) == 3


# --------------------------------------------------------------------------- SampleSource
class CountingSampler:
    """Stands in for :class:`Sampler`: snapshots count up; ``hang`` blocks the next one."""

    def __init__(self) -> None:
        self.taken = 0
        self.hang = threading.Event()
        self.release = threading.Event()
        self.threads: set[str] = set()

    def snapshot(self) -> Snapshot:
        self.threads.add(threading.current_thread().name)
        if self.hang.is_set():
            self.release.wait()
        self.taken += 1
        return {"sampled_at": float(self.taken)}

    def next_sample(self, previous: Snapshot | None) -> tuple[Snapshot, dict[str, Any] | None]:
        """:meth:`Sampler.next_sample`'s contract: the snapshot and its patch against ``previous``."""
        snapshot = self.snapshot()
        return snapshot, None if previous is None else sampler_module.make_patch(previous, snapshot)


async def _newest(source: SampleSource, version: int, timeout_s: float) -> int:
    await source.wait_newer(version, timeout_s)
    return source.version


def test_sample_source_publishes_from_its_thread_and_heartbeats_wait_out_a_hang() -> None:
    sampler = CountingSampler()
    source = SampleSource(sampler, interval_s=0.02)  # type: ignore[arg-type]

    async def scenario() -> None:
        runner = asyncio.create_task(source.run())
        version = await _newest(source, 0, 2.0)
        assert version >= 1 and source.latest is not None
        assert await _newest(source, version, 2.0) > version
        assert sampler.threads == {"sers-sampler"}  # never on the event loop's thread

        sampler.hang.set()  # the collector hangs: the loop goes on, waits time out
        await asyncio.sleep(0.1)
        stuck = source.version
        started = time.monotonic()
        assert await _newest(source, stuck, 0.1) == stuck
        assert 0.09 <= time.monotonic() - started < 1.0
        sampler.release.set()
        sampler.hang.clear()
        assert await _newest(source, stuck, 2.0) > stuck

        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await asyncio.sleep(0.1)  # the thread stops at its next tick
        taken = sampler.taken
        await asyncio.sleep(0.1)
        assert sampler.taken == taken

    asyncio.run(scenario())


def test_sample_source_skips_missed_ticks_after_a_slow_sample() -> None:
    sampler = CountingSampler()
    source = SampleSource(sampler, interval_s=0.02)  # type: ignore[arg-type]

    async def scenario() -> None:
        runner = asyncio.create_task(source.run())
        await _newest(source, 0, 2.0)
        sampler.hang.set()
        await asyncio.sleep(0.3)  # 15 ticks missed
        taken = sampler.taken
        sampler.hang.clear()
        sampler.release.set()
        await asyncio.sleep(0.1)
        assert sampler.taken - taken <= 7  # no burst of the missed ticks
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())


class ChangingSampler(CountingSampler):
    def snapshot(self) -> Snapshot:
        self.taken += 1
        return {"sampled_at": float(self.taken), "host": {"cpu_percent": 1.0, "users_count": self.taken}}


def test_patch_since_the_previous_snapshot_is_made_on_the_sampling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sampler = ChangingSampler()
    source = SampleSource(sampler, interval_s=0.02)  # type: ignore[arg-type]
    made_on: list[str] = []
    real_make_patch = sampler_module.make_patch

    def make_patch(old: Any, new: Any) -> Any:
        made_on.append(threading.current_thread().name)
        return real_make_patch(old, new)

    monkeypatch.setattr(sampler_module, "make_patch", make_patch)

    async def scenario() -> None:
        runner = asyncio.create_task(source.run())
        first = await _newest(source, 0, 2.0)
        sent = source.latest
        assert sent is not None
        assert source.patch_since({}) == sent  # no snapshot before: the whole one, made here
        assert made_on[-1] == threading.current_thread().name
        await _newest(source, first, 2.0)
        latest = source.latest
        assert latest is not None
        made_on.clear()
        here = threading.current_thread().name
        patch = source.patch_since(sent)
        if source.latest is latest and source.version == first + 1:  # sent is the one just before
            assert here not in made_on, "made on the sampling thread, not on the loop's"
        assert patch == real_make_patch(sent, latest)
        assert patch["host"] == {"users_count": latest["host"]["users_count"]}
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())
