from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from node_agent.host import HostCollector
from node_agent.protocol import check_patch, make_patch, to_wire


def test_static_facts_describe_this_machine() -> None:
    static = HostCollector().static()
    assert static.cpu_cores_logical == os.cpu_count()
    assert static.mem_total_bytes == psutil.virtual_memory().total
    assert static.boot_time_epoch_s is not None and static.boot_time_epoch_s < time.time()
    assert static.hostname


def test_sample_has_sane_numbers() -> None:
    collector = HostCollector(("/", "/does-not-exist"))
    time.sleep(0.2)
    sample = collector.sample()
    assert sample.cpu_percent is not None and 0.0 <= sample.cpu_percent <= 100.0
    assert sample.cpu_percent_per_core is not None and len(sample.cpu_percent_per_core) == os.cpu_count()
    assert sample.mem_total_bytes and 0 < (sample.mem_used_bytes or 0) <= sample.mem_total_bytes
    assert sample.load_avg_1m is not None and sample.load_avg_1m >= 0
    assert sample.disks is not None
    root, missing = sample.disks
    assert root.mount == "/" and root.total_bytes and 0 < (root.used_bytes or 0) <= root.total_bytes
    assert missing.mount == "/does-not-exist" and missing.total_bytes is None, (
        "a bad mount is unknown, not an error"
    )
    for rate in (sample.net_rx_bytes_per_s, sample.net_tx_bytes_per_s, sample.disk_read_bytes_per_s):
        assert rate is None or rate >= 0
    assert sample.uptime_s is not None and sample.uptime_s > 0


def test_network_rate_reflects_traffic(tmp_path: Path) -> None:
    (tmp_path / "lo" / "device").mkdir(parents=True)  # loopback as the only physical interface
    collector = HostCollector(sys_class_net=str(tmp_path))
    sent = 0
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        while time.monotonic() - start < 0.3:
            sent += sock.sendto(b"x" * 1400, ("127.0.0.1", 9))
    sample = collector.sample()
    assert sample.net_tx_bytes_per_s is not None and sample.net_tx_bytes_per_s > 0


def test_sample_passes_the_wire_checks() -> None:
    sample = to_wire(HostCollector().sample())
    patch = make_patch({}, {"host": sample})
    assert check_patch(patch) == patch


def test_wire_sample_is_the_typed_sample_on_the_wire() -> None:
    collector = HostCollector(("/", "/does-not-exist"))
    wire = collector.sample_wire()
    typed = to_wire(collector.sample())
    assert list(wire) == list(typed)  # same fields, same order
    assert (
        wire["disks"][1]
        == typed["disks"][1]
        == {"mount": "/does-not-exist", "total_bytes": None, "used_bytes": None}
    )
    assert wire["mem_total_bytes"] == typed["mem_total_bytes"]
