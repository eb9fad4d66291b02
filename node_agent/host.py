"""The host collector: facts about this machine from psutil and ``/proc``. Blocking; the
sampler runs it off-loop.

Every sample reads CPU, memory, swap, disk and network counters straight from ``/proc`` and
sysfs (one file each, kept open: :class:`~node_agent.procfs.ProcFile`): psutil reads the same
files but opens them every time and does more work per call (``cpu_percent`` builds a named tuple
per core, ``disk_io_counters`` re-checks ``/sys/block`` for every device, ``swap_memory`` also
reads ``/proc/vmstat``), and every sample counts on a node. psutil is left the static facts and
the logged-in users, which are counted again only when ``utmp`` changes.

Two values change more slowly than the sample comes and are read less often, each with its
own :class:`~node_agent.periodic.Periodic`: the load averages every :data:`LOAD_AVG_EVERY_S`
(the kernel recomputes them only that often) and filesystem usage every
:data:`DISK_USAGE_EVERY_S`; in between, a sample repeats the last reading. The logged-in users
are counted again only when ``utmp`` changes (:class:`UserCount`). Disk I/O comes from each disk's own sysfs ``stat`` file (:class:`DiskCounters`), network I/O from the physical interfaces only
(:class:`NetCounters`).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import psutil

from node_agent.periodic import Periodic
from node_agent.procfs import ProcFile
from node_agent.protocol import DiskUsage, HostSample, HostStatic

UTMP_PATH = "/var/run/utmp"  # where glibc (and so psutil.users) reads the logged-in users

# Read less often than every sample (module docstring): a user sees no difference.
LOAD_AVG_EVERY_S = 5.0  # the kernel recomputes the load averages every 5 s (LOAD_FREQ)
DISK_USAGE_EVERY_S = 10.0  # filesystems fill over minutes
NET_INTERFACES_EVERY_S = 60.0  # NICs are rarely added; looking in sysfs every sample costs


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _os_name() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME") or platform.system()
    except OSError:
        return platform.system() or None


class HostCollector:
    """Samples CPU, memory, disks, network and load. Rates are computed between samples."""

    def __init__(self, mounts: tuple[str, ...] = ("/",), sys_class_net: str = "/sys/class/net") -> None:
        self._mounts = mounts
        self._boot_time_epoch_s = psutil.boot_time()
        self._stat = ProcFile("/proc/stat", whole_in_one_read=True)
        self._meminfo = ProcFile("/proc/meminfo", whole_in_one_read=True)
        self._loadavg = ProcFile("/proc/loadavg", whole_in_one_read=True)
        self._net_counters = NetCounters(sys_class_net)
        self._disk_counters = DiskCounters()  # disks found once: one added later counts after a restart
        self._load_avg = Periodic(self._read_load_averages, LOAD_AVG_EVERY_S)
        self._disk_usage = Periodic(self._disks, DISK_USAGE_EVERY_S)
        self._users = UserCount()  # counted again only when utmp changes
        # the first real sample is a delta over these
        self._last_time = time.monotonic()
        self._last_cpu = core_ticks(_read(self._stat))
        self._last_disk = self._disk_counters.read()
        self._net_counters.moved(self._last_time)

    def static(self) -> HostStatic:
        return HostStatic(
            hostname=platform.node() or None,
            os_name=_os_name(),
            kernel=platform.release() or None,
            cpu_model=_cpu_model(),
            cpu_cores_logical=psutil.cpu_count(logical=True),
            cpu_cores_physical=psutil.cpu_count(logical=False),
            mem_total_bytes=psutil.virtual_memory().total,
            boot_time_epoch_s=self._boot_time_epoch_s,
        )

    def sample(self) -> HostSample:
        wire = self.sample_wire()
        return HostSample(**{**wire, "disks": [DiskUsage(**disk) for disk in wire["disks"]]})

    def sample_wire(self) -> dict[str, Any]:
        """:meth:`sample` in the wire shape, as ``to_wire`` would make it, but built directly
        (the sampler's path, every second)."""
        now = time.monotonic()
        elapsed_s = max(now - self._last_time, 1e-6)
        self._last_time = now
        cpu = core_ticks(_read(self._stat))
        per_core = core_percents(self._last_cpu, cpu)
        self._last_cpu = cpu
        mem = meminfo_bytes(_read(self._meminfo))
        load = self._load_avg.get(now)
        disk = self._disk_counters.read()
        net = self._net_counters.moved(now)
        mem_total, mem_available = mem.get(b"MemTotal"), mem.get(b"MemAvailable")
        swap_total, swap_free = mem.get(b"SwapTotal"), mem.get(b"SwapFree")
        disk_read = disk_write = net_rx = net_tx = None
        if disk is not None and self._last_disk is not None:
            disk_read = max(disk[0] - self._last_disk[0], 0) / elapsed_s
            disk_write = max(disk[1] - self._last_disk[1], 0) / elapsed_s
        if net is not None:
            net_rx, net_tx = net[0] / elapsed_s, net[1] / elapsed_s
        self._last_disk = disk
        return {
            "cpu_percent": round(sum(per_core) / len(per_core), 1) if per_core else None,
            "cpu_percent_per_core": per_core,
            "load_avg_1m": load[0],
            "load_avg_5m": load[1],
            "load_avg_15m": load[2],
            "mem_total_bytes": mem_total,
            "mem_used_bytes": _difference(mem_total, mem_available),
            "mem_available_bytes": mem_available,
            "swap_total_bytes": swap_total,
            "swap_used_bytes": _difference(swap_total, swap_free),
            "disks": self._disk_usage.get(now),
            "disk_read_bytes_per_s": _rounded(disk_read),
            "disk_write_bytes_per_s": _rounded(disk_write),
            "net_rx_bytes_per_s": _rounded(net_rx),
            "net_tx_bytes_per_s": _rounded(net_tx),
            "uptime_s": round(time.time() - self._boot_time_epoch_s),
            "users_count": self._users.count(),
        }

    def _read_load_averages(self) -> tuple[float | None, float | None, float | None]:
        return load_averages(_read(self._loadavg))

    def _disks(self) -> list[dict[str, Any]]:
        """Wire :class:`DiskUsage` dicts, one per mount (unknown sizes for a bad mount). The
        samples share the list until it is read again: nobody may change it."""
        disks: list[dict[str, Any]] = []
        for mount in self._mounts:
            try:
                fs = os.statvfs(mount)
            except OSError:
                disks.append({"mount": mount, "total_bytes": None, "used_bytes": None})
                continue
            total, free_bytes = fs.f_blocks * fs.f_frsize, fs.f_bfree * fs.f_frsize
            disks.append({"mount": mount, "total_bytes": total, "used_bytes": total - free_bytes})
        return disks


class UserCount:
    """How many users are logged in (``psutil.users``), counted again only when ``utmp``
    changes: the logins change a few times a day, the sample comes every second."""

    def __init__(self, utmp_path: str = UTMP_PATH) -> None:
        self._utmp_path = utmp_path
        self._seen: tuple[int, int, int] | None = None
        self._count: int | None = None

    def count(self) -> int:
        try:
            st = os.stat(self._utmp_path)
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            seen = None  # no utmp: psutil finds no users either, but ask once
        if self._count is None or seen != self._seen:
            self._count = len(psutil.users())
            self._seen = seen
        return self._count


def _read(file: ProcFile) -> bytes | None:
    try:
        return file.read()
    except OSError:
        return None


def _rounded(rate: float | None) -> float | None:
    return None if rate is None else float(round(rate))


def _difference(total: int | None, part: int | None) -> int | None:
    return None if total is None or part is None else total - part


_MEMINFO_NAMES = (b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree")
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the disk's own sector size


def meminfo_bytes(text: bytes | None) -> dict[bytes, int]:
    """The memory and swap lines of ``/proc/meminfo`` (``text``), in bytes, by name
    (``b"MemTotal"``); a line that isn't there (or no text at all) is missing from the result.

    Finds the four lines instead of splitting all fifty-odd."""
    out: dict[bytes, int] = {}
    text = b"\n" + (text or b"")
    for name in _MEMINFO_NAMES:
        start = text.find(b"\n" + name + b":")
        if start < 0:
            continue
        start += len(name) + 2
        end = text.find(b"\n", start)
        value = text[start : end if end >= 0 else len(text)].split()  # "   1000 kB"
        out[name] = int(value[0]) * (1024 if value[-1] == b"kB" else 1)
    return out


def load_averages(text: bytes | None) -> tuple[float | None, float | None, float | None]:
    """The 1, 5 and 15 minute load averages from ``/proc/loadavg`` (``text``)."""
    fields = (text or b"").split()
    if len(fields) < 3:
        return None, None, None
    return round(float(fields[0]), 2), round(float(fields[1]), 2), round(float(fields[2]), 2)


CoreTicks = list[tuple[int, int]]
"""Per core: (busy, total) clock ticks since boot."""


def core_ticks(text: bytes | None) -> CoreTicks:
    """Busy and total clock ticks of every core, from ``/proc/stat`` (``text``).

    Busy is user + nice + system + irq + softirq + steal; total adds idle and iowait (guest
    time is already inside user and nice): psutil's and htop's definitions.
    """
    if not text:
        return []
    # The per-core lines come right after the first, which sums all cores; what follows them
    # ("intr", one number per interrupt: most of the file on a big server) is not split at all.
    end = text.find(b"\nintr ")
    out = []
    for line in text[: end if end >= 0 else len(text)].split(b"\n")[1:]:
        if not line.startswith(b"cpu"):
            break
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
        busy = user + nice + system + irq + softirq + steal
        out.append((busy, busy + idle + iowait))
    return out


def core_percents(before: CoreTicks, after: CoreTicks) -> list[float]:
    """Busy % of each core between two :func:`core_ticks` readings, rounded to 0.1."""
    out = []
    for (busy0, total0), (busy1, total1) in zip(before, after, strict=False):
        busy, total = max(busy1 - busy0, 0), max(total1 - total0, 0)
        out.append(round(min(100.0 * busy / total, 100.0), 1) if total else 0.0)
    return out


# Up to this many disks, each disk's own sysfs ``stat`` file is read; past it, /proc/diskstats.
PER_DISK_FILES_MAX = 4


def physical_disk_dirs(sys_block: str = "/sys/block") -> list[str]:
    """Names (as in ``/sys/block``) of the whole disks backed by a device: partitions are not in
    ``/sys/block``, and loop, device-mapper, md and zram devices have no ``device`` link, so no
    byte is counted twice (dm-0 over sda) or counted without touching a disk."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return []
    return sorted(n for n in names if os.path.exists(f"{sys_block}/{n}/device"))


def physical_disks(sys_block: str = "/sys/block") -> frozenset[str]:
    """:func:`physical_disk_dirs` as named in ``/proc/diskstats``."""
    # sysfs writes "/" in a device name as "!" (cciss!c0d0 is cciss/c0d0 in diskstats)
    return frozenset(n.replace("!", "/") for n in physical_disk_dirs(sys_block))


class DiskCounters:
    """Bytes read and written since boot, summed over the physical disks found when made.

    With a few disks, each disk's ``/sys/block/<disk>/stat`` (one line; the kernel sums that
    disk's per-CPU counters only). With more, one ``/proc/diskstats``, which holds every
    partition, loop and device-mapper device too, each summed over all CPUs: about twice the
    CPU of one disk's file here, so the per-disk files win up to :data:`PER_DISK_FILES_MAX`.
    """

    def __init__(self, sys_block: str = "/sys/block", diskstats: str = "/proc/diskstats") -> None:
        dirs = physical_disk_dirs(sys_block)
        self._disk_files = [
            ProcFile(f"{sys_block}/{name}/stat", whole_in_one_read=True)
            for name in (dirs if len(dirs) <= PER_DISK_FILES_MAX else ())
        ]
        self._diskstats = None if self._disk_files else ProcFile(diskstats)
        self._names = frozenset(n.replace("!", "/") for n in dirs)

    def read(self) -> tuple[int, int] | None:
        """``(read, written)`` bytes since boot; ``None`` when unknown (no disk, or none readable)."""
        if self._diskstats is not None:
            return disk_bytes(_read(self._diskstats), self._names)
        read_bytes = written_bytes = 0
        known = False
        for file in self._disk_files:
            counts = disk_stat_bytes(_read(file))
            if counts is not None:
                read_bytes += counts[0]
                written_bytes += counts[1]
                known = True
        return (read_bytes, written_bytes) if known else None


def disk_stat_bytes(text: bytes | None) -> tuple[int, int] | None:
    """Bytes read and written since boot by one disk, from its ``/sys/block/<disk>/stat``
    (``text``: the fields of a ``/proc/diskstats`` line after the name); ``None`` when unknown."""
    fields = (text or b"").split()
    if len(fields) < 7:
        return None
    return int(fields[2]) * SECTOR_BYTES, int(fields[6]) * SECTOR_BYTES


def disk_bytes(text: bytes | None, disks: frozenset[str]) -> tuple[int, int] | None:
    """Bytes read and written since boot, summed over ``disks``, from ``/proc/diskstats``
    (``text``); ``None`` when unknown."""
    if not disks or text is None:
        return None
    read_sectors = written_sectors = 0
    for line in text.decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[2] in disks:
            read_sectors += int(fields[5])
            written_sectors += int(fields[9])
    return read_sectors * SECTOR_BYTES, written_sectors * SECTOR_BYTES


def net_interfaces(text: bytes | None) -> list[bytes]:
    """The interface names in ``/proc/net/dev`` (``text``)."""
    return [line.partition(b":")[0].strip() for line in (text or b"").splitlines()[2:] if b":" in line]


def counted_interfaces(text: bytes | None, sys_class_net: str = "/sys/class/net") -> frozenset[bytes]:
    """The interfaces of ``/proc/net/dev`` (``text``) whose bytes are counted: the physical ones,
    those with a ``device`` entry in ``sys_class_net``. A bond's members are, the bond isn't, nor
    are VLANs, bridges, veths and loopback, so no byte is counted twice. When none is (the
    agent's own network namespace in a container, where eth0 is a veth, or no sysfs): every
    interface but loopback."""
    names = net_interfaces(text)
    physical = frozenset(n for n in names if os.path.exists(f"{sys_class_net}/{os.fsdecode(n)}/device"))
    return physical or frozenset(n for n in names if n != b"lo")


class NetCounters:
    """Bytes moved over the :func:`counted_interfaces`, which are looked for again every
    :data:`NET_INTERFACES_EVERY_S` (a new NIC counts from then on), not every sample."""

    def __init__(self, sys_class_net: str = "/sys/class/net", net_dev: str = "/proc/net/dev") -> None:
        self._sys_class_net = sys_class_net
        self._net_dev = ProcFile(net_dev)
        self._interfaces = Periodic(self._find_interfaces, NET_INTERFACES_EVERY_S)
        self._last: tuple[frozenset[bytes], tuple[int, int] | None] | None = None

    def moved(self, now_s: float) -> tuple[int, int] | None:
        """Bytes ``(received, sent)`` since the previous call (``now_s``: ``time.monotonic()``);
        ``None`` the first time, when unknown, and when the counted interfaces changed (sums
        over different interfaces don't compare)."""
        interfaces = self._interfaces.get(now_s)
        totals = net_bytes(_read(self._net_dev), interfaces)
        last, self._last = self._last, (interfaces, totals)
        if totals is None or last is None or last[1] is None or last[0] != interfaces:
            return None
        return max(totals[0] - last[1][0], 0), max(totals[1] - last[1][1], 0)

    def _find_interfaces(self) -> frozenset[bytes]:
        return counted_interfaces(_read(self._net_dev), self._sys_class_net)


def net_bytes(text: bytes | None, interfaces: frozenset[bytes]) -> tuple[int, int] | None:
    """Bytes received and sent since boot, summed over ``interfaces``, from ``/proc/net/dev``
    (``text``); ``None`` when unknown."""
    if text is None:
        return None
    received = sent = 0
    for line in text.splitlines()[2:]:  # two header lines
        name, _, counters = line.partition(b":")
        fields = counters.split()
        if len(fields) >= 9 and name.strip() in interfaces:
            received += int(fields[0])
            sent += int(fields[8])
    return received, sent
