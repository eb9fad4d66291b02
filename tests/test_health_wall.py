"""GPU health from NVML (the fake) to the wall, the node page, the API and ``/metrics``: real
hub, real agents over the fake NVML scenarios of issue #16."""

from __future__ import annotations

import html
import shutil
import subprocess
import urllib.request
from typing import Any

from tests import fakes
from tests.procs import Hub, Proc, start_agent, wait_until
from tests.test_metrics import samples, scrape, value


def start_fake_gpu_agent(hub: Hub, name: str, scenario: dict[str, Any]) -> Proc:
    path = fakes.write_scenario(hub.tmp / f"{name}-nvml.json", scenario)
    return start_agent(hub, name, interval_s=0.5, env=fakes.fake_env(path, base={}))


def page(hub: Hub, path: str) -> str:
    with urllib.request.urlopen(hub.url + path, timeout=10) as response:
        return html.unescape(response.read().decode())


def test_health_flows_from_nvml_to_the_wall_page_api_and_metrics(
    hub: Hub, procs: list[Proc], two_sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pids = [child.pid for child in two_sleepers]
    procs.append(start_fake_gpu_agent(hub, "mem", fakes.memory_faults()))
    procs.append(start_fake_gpu_agent(hub, "slow", fakes.slowdowns_and_links()))
    procs.append(start_fake_gpu_agent(hub, "xid", fakes.xid_79_after_registration(after_s=1.0)))
    procs.append(start_fake_gpu_agent(hub, "mig", fakes.a100_mig(pids)))
    for name in ("mem", "slow", "xid", "mig"):
        hub.wait_status(name, "live")
    wait_until(lambda: hub.nodes()["xid"]["state"]["gpus"]["1"].get("xid_count") == 1, what="the Xid 79")

    # the API: the fields as the agent sent them
    xid_gpu = hub.nodes()["xid"]["state"]["gpus"]["1"]
    assert xid_gpu["xid_last_code"] == 79 and [e["code"] for e in xid_gpu["xid_events"]] == [79]

    # the wall: a badge in words on the row; the top bar counts warnings and faults apart
    wall = page(hub, "/")
    assert "⛔ Xid 79: fell off the bus: drain the node" in wall
    assert "⛔ row remap failed: replace the GPU (RMA)" in wall
    assert "⚠ row remap pending: reset the GPU" in wall
    assert "⚠ PCIe x8 of x16" in wall
    assert "⚠ SW thermal slowdown" in wall and "⚠ HW slowdown" in wall
    assert "⚠ NVLink 3 down" in wall and "⚠ page retirement pending: reset the GPU" in wall
    assert "⛔ 2 GPUs failing" in wall  # Xid 79, remap failure
    assert "⚠ 6 GPU warnings" in wall  # remap pending, 2 slowdowns, PCIe, NVLink, page retirement
    assert "MIG 2g.10gb 0/1" in html.unescape(wall.replace("<b>", "").replace("</b>", ""))

    # the node page: every finding, the Xid history, the MIG slices with their processes
    node = page(hub, "/node/xid")
    assert "Xid errors (1 since the agent started)" in node and "whole GPU" in node
    slow = page(hub, "/node/slow")
    assert "⚠ SW thermal slowdown" in slow and "⚠ HW thermal slowdown" in slow
    mig = page(hub, "/node/mig")
    assert "MIG slices (2)" in mig and "3g.20gb" in mig and "2g.10gb" in mig
    # the profiles the GPU offers, from its hello
    assert (
        "MIG profiles offered" in mig
        and "1g.5gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb, 1g.5gb+me, 1g.10gb" in mig
    )
    assert mig.count("● busy") >= 2 and " sleep (" in mig

    # /metrics: the families, labelled by MIG uuid for the slices; promtool finds nothing
    found = samples(scrape(hub)[0])
    assert value(found, "sers_gpu_xid_last_code", node="xid", gpu="1") == 79.0
    assert value(found, "sers_gpu_xid_errors", node="xid", gpu="1") == 1.0
    assert value(found, "sers_gpu_health", node="xid", gpu="1") == 2.0
    assert value(found, "sers_gpu_remap_pending", node="mem", gpu="1") == 1.0
    assert value(found, "sers_gpu_remap_failed", node="mem", gpu="2") == 1.0
    assert value(found, "sers_gpu_pcie_link_width_lanes", node="slow", gpu="2") == 8.0
    assert value(found, "sers_gpu_clocks_event_reason", node="slow", gpu="0", reason="hw_thermal") == 1.0
    assert value(found, "sers_gpu_nvlink_up", node="slow", gpu="3", link="3") == 0.0
    assert value(found, "sers_gpu_nvlink_errors", node="slow", gpu="3", link="3", kind="crc_flit") == 7.0
    slice_uuids = [s["uuid"] for s in hub.nodes()["mig"]["state"]["gpus"]["0"]["mig_slices"]]
    for uuid in slice_uuids:
        assert value(found, "sers_mig_processes", node="mig", mig_uuid=uuid) == 1.0
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=scrape(hub)[0],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
