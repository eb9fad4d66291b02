"""The rule kinds beyond ``node_offline`` end to end: a real hub, real agent processes over the fake
NVML (changed mid-run through its ``live_reload``), real deliveries through Apprise to a local
webhook server. Each rule: exactly one firing message, then one resolved message.

- ``gpu_warning`` (a HW thermal slowdown) and ``gpu_temp_above``, from one agent's GPU 0;
- ``disk_used_above`` and ``mem_used_above`` from the agent's real host sampling: the disk is a
  real tmpfs the test fills and empties, and memory is the agent's real read of ``/proc/meminfo``,
  over which the test binds a file of its own in the agent's private mount namespace (the agent
  has no other way in, and is not changed for the test). Both need root, and skip without it;
- ``gpu_idle_held``, delivered to the holder's own URL from ``[alerts.users]``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fakes
from tests.alert_receivers import WebhookReceiver, alerts_toml, settle
from tests.fakes import GIB
from tests.procs import Hub, Proc, spawn, start_agent, start_hub, wait_until
from tests.test_hardening_faults import write_atomically

GROUP_WAIT_S = 1
FOR_S = 2
USER = pwd.getpwuid(os.getuid()).pw_name


def with_rules(tmp_path: Path, procs: list[Proc], channels: dict[str, str], *rules: dict[str, Any]) -> Hub:
    """A real hub whose ``rules`` (each waiting FOR_S unless it says otherwise) send to ``channels``."""
    toml = alerts_toml(channels, [{"for_s": FOR_S, **rule} for rule in rules], GROUP_WAIT_S)
    return start_hub(procs, tmp_path, toml=toml)


def titles(webhooks: WebhookReceiver, path: str) -> list[str]:
    return [str(body.get("title")) for body in webhooks.on(path)]


def wait_titles(webhooks: WebhookReceiver, path: str, count: int, timeout_s: float = 30) -> list[str]:
    """The titles on ``path`` once ``count`` came, after a pause in which any extra one would."""
    wait_until(lambda: len(webhooks.on(path)) >= count, timeout_s, what=f"{count} message(s) on {path}")
    settle(GROUP_WAIT_S + FOR_S + 1)
    return titles(webhooks, path)


def test_gpu_warning_and_gpu_temp_above_from_a_real_agent_fire_once_and_resolve_once(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver
) -> None:
    hub = with_rules(
        tmp_path,
        procs,
        {"warn": webhooks.url("/warn"), "hot": webhooks.url("/hot")},
        {"name": "GPU warning", "when": "gpu_warning", "channels": ["warn"]},
        {"name": "GPU hot", "when": "gpu_temp_above", "threshold": 85, "channels": ["hot"]},
    )
    path = tmp_path / "nvml.json"

    def gpus(hot: bool) -> dict[str, Any]:
        # GPU 0 throttled by a HW thermal slowdown (0x40) at 91 °C; GPU 1 fine all along
        gpu0 = fakes.gpu(0, clocks_event_reasons=0x40 if hot else 0, temp_celsius=91 if hot else 60)
        return fakes.scenario([gpu0, fakes.gpu(1)], live_reload=True)

    write_atomically(path, gpus(hot=True))
    procs.append(start_agent(hub, "gpu01", env=fakes.fake_env(path)))
    hub.wait_status("gpu01", "live")
    assert wait_titles(webhooks, "/warn", 1) == ["[FIRING] GPU warning: gpu01/0"]
    [warning] = webhooks.on("/warn")
    assert warning["message"] == "gpu01 GPU 0: HW thermal slowdown"
    assert wait_titles(webhooks, "/hot", 1) == ["[FIRING] GPU hot: gpu01/0"]
    [hot] = webhooks.on("/hot")
    assert hot["message"] == "gpu01 GPU 0 at 91 °C (above 85)"

    write_atomically(path, gpus(hot=False))  # cooled down
    assert wait_titles(webhooks, "/warn", 2) == [
        "[FIRING] GPU warning: gpu01/0",
        "[RESOLVED] GPU warning: gpu01/0",
    ]
    assert wait_titles(webhooks, "/hot", 2) == ["[FIRING] GPU hot: gpu01/0", "[RESOLVED] GPU hot: gpu01/0"]


# ---------------------------------------------------------------------- host disk and memory
def meminfo_text(real: str, total_kb: int, available_kb: int) -> bytes:
    """``/proc/meminfo`` as the kernel wrote it, with MemTotal and MemAvailable replaced by
    fixed-width numbers: every version has the same length, so it is rewritten in place in one
    write and the agent never reads a half-written file."""
    lines = []
    for line in real.splitlines():
        if line.startswith("MemTotal:"):
            line = f"MemTotal:       {total_kb:012d} kB"
        elif line.startswith("MemAvailable:"):
            line = f"MemAvailable:   {available_kb:012d} kB"
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def write_in_place(path: Path, data: bytes) -> None:
    """Over the same inode (a bind mount holds the inode, not the name)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, 0) == len(data)
    finally:
        os.close(fd)


@pytest.fixture
def scratch_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs, mounted for the test."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare: mounts a tmpfs and binds /proc/meminfo for the agent")
    mount = tmp_path / "scratch"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_used_above_and_mem_used_above_from_a_real_agents_host_sampling(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver, scratch_disk: Path
) -> None:
    hub = with_rules(
        tmp_path,
        procs,
        {"disk": webhooks.url("/disk"), "mem": webhooks.url("/mem")},
        {"name": "disk full", "when": "disk_used_above", "threshold": 50, "channels": ["disk"]},
        {"name": "memory", "when": "mem_used_above", "threshold": 90, "channels": ["mem"]},
    )
    real = Path("/proc/meminfo").read_text()
    total_kb = 64 * 1024 * 1024
    meminfo = tmp_path / "meminfo"
    meminfo.write_bytes(meminfo_text(real, total_kb, total_kb // 2))  # half used
    filler = scratch_disk / "filler"
    filler.write_bytes(b"\x01" * (12 * 1024 * 1024))  # 12 of 16 MiB: 75 % used
    agent = [sys.executable, "-m", "node_agent", "--hub", hub.url, "--name", "box1", "--interval", "0.5"]
    agent += ["--mount", str(scratch_disk)]
    # the agent in a mount namespace of its own, where /proc/meminfo is the test's file
    script = f'mount --bind "{meminfo}" /proc/meminfo && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *agent]
    procs.append(
        spawn(
            argv,
            tmp_path / "agent-box1.log",
            fakes.fake_env(fakes.write_scenario(tmp_path / "nvml.json", fakes.scenario([]))),
        )
    )
    hub.wait_status("box1", "live")
    # the disk is read every 10 s by the agent
    assert wait_titles(webhooks, "/disk", 1, timeout_s=40) == [f"[FIRING] disk full: box1:{scratch_disk}"]
    [disk] = webhooks.on("/disk")
    assert disk["message"] == f"box1 disk {scratch_disk} 75% used (above 50%)"
    assert titles(webhooks, "/mem") == []  # 50 % used

    write_in_place(meminfo, meminfo_text(real, total_kb, total_kb // 20))  # 95 % used
    assert wait_titles(webhooks, "/mem", 1) == ["[FIRING] memory: box1:mem"]
    [mem] = webhooks.on("/mem")
    assert mem["message"] == "box1 memory 95% used (above 90%)"

    filler.unlink()
    write_in_place(meminfo, meminfo_text(real, total_kb, total_kb // 2))
    assert wait_titles(webhooks, "/mem", 2) == ["[FIRING] memory: box1:mem", "[RESOLVED] memory: box1:mem"]
    assert wait_titles(webhooks, "/disk", 2, timeout_s=40) == [
        f"[FIRING] disk full: box1:{scratch_disk}",
        f"[RESOLVED] disk full: box1:{scratch_disk}",
    ]


# ---------------------------------------------------------------------- idle-held, to the holder
def test_gpu_idle_held_goes_to_the_holders_own_url_once_and_resolves_when_busy(
    tmp_path: Path, procs: list[Proc], webhooks: WebhookReceiver, sleeper: subprocess.Popen[bytes]
) -> None:
    idle_rule = {"name": "idle-held", "when": "gpu_idle_held", "for_s": 3}
    users = {USER: webhooks.url("/holder"), "someone-else": webhooks.url("/else")}
    toml = alerts_toml({}, [idle_rule], GROUP_WAIT_S, users=users)
    hub = start_hub(procs, tmp_path, toml="[idle_holders]\nmax_util_percent = 5\nmin_idle_s = 1\n" + toml)
    path = tmp_path / "nvml.json"

    def gpus(util_0: int) -> dict[str, Any]:
        held = [fakes.process(sleeper.pid, 4 * GIB)]  # a real process of this test's user
        return fakes.scenario([fakes.gpu(0, util_gpu=util_0, compute_processes=held)], live_reload=True)

    write_atomically(path, gpus(util_0=0))
    procs.append(start_agent(hub, "gpu07", env=fakes.fake_env(path)))
    hub.wait_status("gpu07", "live")
    assert wait_titles(webhooks, "/holder", 1) == ["[FIRING] idle-held: gpu07/0"]
    [told] = webhooks.on("/holder")
    assert told["message"].startswith(f"gpu07 GPU 0 held idle by {USER} since ")
    write_atomically(path, gpus(util_0=90))  # the holder got to work
    assert wait_titles(webhooks, "/holder", 2) == [
        "[FIRING] idle-held: gpu07/0",
        "[RESOLVED] idle-held: gpu07/0",
    ]
    assert webhooks.on("/else") == []  # only the holder is told
