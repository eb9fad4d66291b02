"""The host collector: facts about this machine from psutil and ``/proc``. Blocking; the
sampler runs it off-loop.

Memory, swap, disk and network counters are read straight from ``/proc`` (one file each): psutil
reads the same files but does more work per call (``disk_io_counters`` re-checks ``/sys/block``
for every device, ``swap_memory`` also reads ``/proc/vmstat``), and every sample counts on a node.
"""

from __future__ import annotations

import os
import platform
import time

import psutil

from node_agent.protocol import DiskUsage, HostSample, HostStatic


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

    def __init__(self, mounts: tuple[str, ...] = ("/",)) -> None:
        self._mounts = mounts
        self._boot_time_epoch_s = psutil.boot_time()
        self._physical_disks = physical_disks()  # found once: a disk added later counts after a restart
        psutil.cpu_percent(percpu=True)  # prime the counters: the first real sample is a delta
        self._last_time = time.monotonic()
        self._last_disk = disk_bytes(self._physical_disks)
        self._last_net = net_bytes()

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
        now = time.monotonic()
        elapsed_s = max(now - self._last_time, 1e-6)
        self._last_time = now
        per_core = psutil.cpu_percent(percpu=True)
        mem = meminfo_bytes()
        load_1m, load_5m, load_15m = os.getloadavg()
        disk = disk_bytes(self._physical_disks)
        net = net_bytes()
        mem_total, mem_available = mem.get(b"MemTotal"), mem.get(b"MemAvailable")
        swap_total, swap_free = mem.get(b"SwapTotal"), mem.get(b"SwapFree")
        disk_read = disk_write = net_rx = net_tx = None
        if disk is not None and self._last_disk is not None:
            disk_read = max(disk[0] - self._last_disk[0], 0) / elapsed_s
            disk_write = max(disk[1] - self._last_disk[1], 0) / elapsed_s
        if net is not None and self._last_net is not None:
            net_rx = max(net[0] - self._last_net[0], 0) / elapsed_s
            net_tx = max(net[1] - self._last_net[1], 0) / elapsed_s
        self._last_disk, self._last_net = disk, net
        return HostSample(
            cpu_percent=round(sum(per_core) / len(per_core), 1) if per_core else None,
            cpu_percent_per_core=[round(p, 1) for p in per_core],
            load_avg_1m=round(load_1m, 2),
            load_avg_5m=round(load_5m, 2),
            load_avg_15m=round(load_15m, 2),
            mem_total_bytes=mem_total,
            mem_used_bytes=_difference(mem_total, mem_available),
            mem_available_bytes=mem_available,
            swap_total_bytes=swap_total,
            swap_used_bytes=_difference(swap_total, swap_free),
            disks=self._disks(),
            disk_read_bytes_per_s=_rounded(disk_read),
            disk_write_bytes_per_s=_rounded(disk_write),
            net_rx_bytes_per_s=_rounded(net_rx),
            net_tx_bytes_per_s=_rounded(net_tx),
            uptime_s=round(time.time() - self._boot_time_epoch_s),
            users_count=len(psutil.users()),
        )

    def _disks(self) -> list[DiskUsage]:
        disks = []
        for mount in self._mounts:
            try:
                usage = psutil.disk_usage(mount)
            except OSError:
                disks.append(DiskUsage(mount=mount))
                continue
            disks.append(DiskUsage(mount=mount, total_bytes=usage.total, used_bytes=usage.used))
        return disks


def _rounded(rate: float | None) -> float | None:
    return None if rate is None else float(round(rate))


def _difference(total: int | None, part: int | None) -> int | None:
    return None if total is None or part is None else total - part


_MEMINFO_NAMES = frozenset({b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree"})
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the disk's own sector size


def meminfo_bytes(path: str = "/proc/meminfo") -> dict[bytes, int]:
    """The memory and swap lines of ``/proc/meminfo``, in bytes, by name (``b"MemTotal"``);
    a line that isn't there (or a file that can't be read) is missing from the result."""
    try:
        with open(path, "rb") as meminfo:
            text = meminfo.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        if name in _MEMINFO_NAMES:
            value = rest.split()
            out[name] = int(value[0]) * (1024 if value[-1] == b"kB" else 1)
    return out


def physical_disks(sys_block: str = "/sys/block") -> frozenset[str]:
    """Names (as in ``/proc/diskstats``) of the whole disks backed by a device: partitions are
    not in ``/sys/block``, and loop, device-mapper, md and zram devices have no ``device`` link,
    so no byte is counted twice (dm-0 over sda) or counted without touching a disk."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return frozenset()
    # sysfs writes "/" in a device name as "!" (cciss!c0d0 is cciss/c0d0 in diskstats)
    return frozenset(n.replace("!", "/") for n in names if os.path.exists(f"{sys_block}/{n}/device"))


def disk_bytes(disks: frozenset[str], path: str = "/proc/diskstats") -> tuple[int, int] | None:
    """Bytes read and written since boot, summed over ``disks``; ``None`` when unknown."""
    if not disks:
        return None
    try:
        with open(path, "rb") as diskstats:
            lines = diskstats.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    read_sectors = written_sectors = 0
    for line in lines:
        fields = line.split()
        if len(fields) >= 10 and fields[2] in disks:
            read_sectors += int(fields[5])
            written_sectors += int(fields[9])
    return read_sectors * SECTOR_BYTES, written_sectors * SECTOR_BYTES


def net_bytes(path: str = "/proc/net/dev") -> tuple[int, int] | None:
    """Bytes received and sent since boot, summed over every interface of this network
    namespace (loopback included, like psutil); ``None`` when unknown."""
    try:
        with open(path, "rb") as netdev:
            lines = netdev.read().splitlines()[2:]  # two header lines
    except OSError:
        return None
    received = sent = 0
    for line in lines:
        fields = line.partition(b":")[2].split()
        if len(fields) >= 9:
            received += int(fields[0])
            sent += int(fields[8])
    return received, sent
