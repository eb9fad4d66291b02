"""The host collector: psutil facts about this machine. Blocking; the sampler runs it off-loop."""

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
        psutil.cpu_percent(percpu=True)  # prime the counters: the first real sample is a delta
        self._last_time = time.monotonic()
        self._last_disk = psutil.disk_io_counters()
        self._last_net = psutil.net_io_counters()

    def static(self) -> HostStatic:
        return HostStatic(
            hostname=platform.node() or None,
            os_name=_os_name(),
            kernel=platform.release() or None,
            cpu_model=_cpu_model(),
            cpu_cores_logical=psutil.cpu_count(logical=True),
            cpu_cores_physical=psutil.cpu_count(logical=False),
            mem_total_bytes=psutil.virtual_memory().total,
            boot_time_epoch_s=psutil.boot_time(),
        )

    def sample(self) -> HostSample:
        now = time.monotonic()
        elapsed_s = max(now - self._last_time, 1e-6)
        self._last_time = now
        per_core = psutil.cpu_percent(percpu=True)
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        load_1m, load_5m, load_15m = os.getloadavg()
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        disk_read = disk_write = net_rx = net_tx = None
        if disk is not None and self._last_disk is not None:
            disk_read = max(disk.read_bytes - self._last_disk.read_bytes, 0) / elapsed_s
            disk_write = max(disk.write_bytes - self._last_disk.write_bytes, 0) / elapsed_s
        if net is not None and self._last_net is not None:
            net_rx = max(net.bytes_recv - self._last_net.bytes_recv, 0) / elapsed_s
            net_tx = max(net.bytes_sent - self._last_net.bytes_sent, 0) / elapsed_s
        self._last_disk, self._last_net = disk, net
        return HostSample(
            cpu_percent=round(sum(per_core) / len(per_core), 1) if per_core else None,
            cpu_percent_per_core=[round(p, 1) for p in per_core],
            load_avg_1m=round(load_1m, 2),
            load_avg_5m=round(load_5m, 2),
            load_avg_15m=round(load_15m, 2),
            mem_total_bytes=mem.total,
            mem_used_bytes=mem.total - mem.available,
            mem_available_bytes=mem.available,
            swap_total_bytes=swap.total,
            swap_used_bytes=swap.used,
            disks=self._disks(),
            disk_read_bytes_per_s=_rounded(disk_read),
            disk_write_bytes_per_s=_rounded(disk_write),
            net_rx_bytes_per_s=_rounded(net_rx),
            net_tx_bytes_per_s=_rounded(net_tx),
            uptime_s=round(time.time() - psutil.boot_time()),
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
