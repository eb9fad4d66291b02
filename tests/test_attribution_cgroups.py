"""Real processes in real cgroups shaped like Docker's, Podman's and Slurm's: a child is moved
into the cgroup, the fake NVML lists its pid, and the agent's record must name the container
or job. Needs root and a writable cgroup hierarchy (v2, or v1 ``pids``); skipped otherwise."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from node_agent.attribution import AttributionReader
from node_agent.gpu import GpuCollector
from node_agent.protocol import GpuProcess, check_patch
from tests import fakes
from tests.procs import Hub, Proc, start_agent, wait_for_exec, wait_until

GIB = 1024**3


def _hierarchies() -> dict[str, Path]:
    """The mounted hierarchies this test can use: ``v2`` (cgroup2) and ``v1`` (the pids controller)."""
    found: dict[str, Path] = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2":
            found.setdefault("v2", Path(fields[1]))
        elif fields[2] == "cgroup" and "pids" in fields[3].split(","):
            found.setdefault("v1", Path(fields[1]))
    return found


HIERARCHIES = _hierarchies()


def _writable(root: Path) -> str | None:
    """Why cgroups can't be made under ``root``, or ``None`` if they can."""
    probe = root / f"sers-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a cgroup under {root}: {exc}"
    probe.rmdir()
    return None


def need(version: str) -> Path:
    root = HIERARCHIES.get(version)
    if root is None:
        pytest.skip(f"no cgroup {version} hierarchy mounted")
    reason = _writable(root)
    if reason is not None:
        pytest.skip(reason)
    return root


@contextmanager
def process_in_cgroup(root: Path, relative: str) -> Iterator[subprocess.Popen[bytes]]:
    """A ``sleep`` moved into ``root/relative`` (made as needed); afterwards the process is
    killed and the directories this made removed, deepest first."""
    made: list[Path] = []
    target = root
    for part in relative.split("/"):
        target = target / part
        if not target.exists():
            target.mkdir()
            made.append(target)
    child = subprocess.Popen(["sleep", "60"])
    try:
        (target / "cgroup.procs").write_text(str(child.pid))
        wait_for_exec(child)
        assert "/" + relative in Path(f"/proc/{child.pid}/cgroup").read_text()
        yield child
    finally:
        child.kill()
        child.wait()
        for directory in reversed(made):
            directory.rmdir()


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The agent's record of ``pid``, with Docker's state read from ``tmp_path/docker``."""
    made: list[GpuCollector] = []

    def sample(pid: int) -> GpuProcess:
        scenario = fakes.real_pids([pid])
        fake = fakes.load_fake_pynvml(fakes.write_scenario(tmp_path / "scenario.json", scenario))
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        reader = AttributionReader(docker_root=tmp_path / "docker", podman_root=tmp_path / "podman")
        collector = GpuCollector(sysfs_root=tmp_path / "no-sysfs", attribution=reader)
        made.append(collector)
        wire = collector.sample_wire()
        assert check_patch({"gpus": wire})["gpus"] == wire
        (proc,) = collector.sample()["0"].processes or []
        assert proc.pid == pid and proc.user is not None and proc.command == "sleep"
        assert proc.started_epoch_s is not None and abs(proc.started_epoch_s - time.time()) < 30
        return proc

    yield sample
    for collector in made:
        collector.close()


def write_docker_config(docker_root: Path, container_id: str, name: str) -> None:
    directory = docker_root / "containers" / container_id
    directory.mkdir(parents=True)
    (directory / "config.v2.json").write_text(json.dumps({"ID": container_id, "Name": "/" + name}))


def test_docker_systemd_scope_v2(tmp_path: Path, record: Any) -> None:
    root = need("v2")
    container_id = secrets.token_hex(32)
    write_docker_config(tmp_path / "docker", container_id, "alice-llama")
    with process_in_cgroup(root, f"system.slice/docker-{container_id}.scope") as child:
        proc = record(child.pid)
    assert (proc.container_id, proc.container_runtime, proc.container_name) == (
        container_id,
        "docker",
        "alice-llama",
    )
    assert proc.slurm_job_id is None


def test_docker_cgroupfs_v1(tmp_path: Path, record: Any) -> None:
    root = need("v1")
    container_id = secrets.token_hex(32)
    with process_in_cgroup(root, f"docker/{container_id}") as child:
        proc = record(child.pid)
    # no config.v2.json mounted: the id, not the name
    assert (proc.container_id, proc.container_runtime, proc.container_name) == (container_id, "docker", None)


def test_podman_scope_v2(tmp_path: Path, record: Any) -> None:
    root = need("v2")
    container_id = secrets.token_hex(32)
    storage = tmp_path / "podman" / "overlay-containers"
    storage.mkdir(parents=True)
    (storage / "containers.json").write_text(json.dumps([{"id": container_id, "names": ["bob-sd"]}]))
    with process_in_cgroup(root, f"machine.slice/libpod-{container_id}.scope/container") as child:
        proc = record(child.pid)
    assert (proc.container_id, proc.container_runtime, proc.container_name) == (
        container_id,
        "podman",
        "bob-sd",
    )


def test_slurm_step_v2(record: Any) -> None:
    root = need("v2")
    job_id = 81_000 + secrets.randbelow(1000)
    with process_in_cgroup(root, f"system.slice/slurmstepd.scope/job_{job_id}/step_batch") as child:
        proc = record(child.pid)
    assert (proc.slurm_job_id, proc.slurm_step, proc.container_id) == (job_id, "batch", None)


def test_slurm_step_v1(record: Any) -> None:
    root = need("v1")
    job_id = 82_000 + secrets.randbelow(1000)
    with process_in_cgroup(root, f"slurm/uid_{os.getuid()}/job_{job_id}/step_0") as child:
        proc = record(child.pid)
    assert (proc.slurm_job_id, proc.slurm_step) == (job_id, "0")


def test_bare_process_has_no_attribution(record: Any, sleeper: subprocess.Popen[bytes]) -> None:
    proc = record(sleeper.pid)
    assert (proc.container_id, proc.pod_uid, proc.slurm_job_id) == (None, None, None)


def test_agent_cli_names_the_container(tmp_path: Path) -> None:
    """The whole agent (``--once --json``), its Docker state given by flag and its proc root by
    variable, as a deployment sets them."""
    root = need("v2")
    container_id = secrets.token_hex(32)
    write_docker_config(tmp_path / "docker", container_id, "carol-vllm")
    with process_in_cgroup(root, f"system.slice/docker-{container_id}.scope") as child:
        path = fakes.write_scenario(tmp_path / "scenario.json", fakes.real_pids([child.pid]))
        env = {k: v for k, v in fakes.fake_env(path).items() if not k.startswith("SERS_")}
        env[fakes.ENV_VAR] = str(path)
        env["SERS_PROC_ROOT"] = "/proc"
        args = ["--once", "--json", "--name", "cgroup-test", "--docker-root", str(tmp_path / "docker")]
        result = subprocess.run(
            [sys.executable, "-m", "node_agent", *args],
            cwd=fakes.REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    gpus = orjson.loads(result.stdout)["snapshot"]["gpus"]
    (proc,) = gpus["0"]["processes"]
    assert (proc["pid"], proc["container_id"], proc["container_name"]) == (
        child.pid,
        container_id,
        "carol-vllm",
    )
    assert proc["container_runtime"] == "docker" and proc["started_epoch_s"] > 0


def test_card_and_node_page_show_the_container_and_age(tmp_path: Path, hub: Hub, procs: list[Proc]) -> None:
    """Done means: a process started in a Docker container shows its container, age and user
    on the card and the node page of a real hub fed by a real agent."""
    root = need("v2")
    container_id = secrets.token_hex(32)
    write_docker_config(tmp_path / "docker", container_id, "carol-vllm")
    with process_in_cgroup(root, f"system.slice/docker-{container_id}.scope") as child:
        env = fakes.fake_env(fakes.write_scenario(tmp_path / "agent.json", fakes.real_pids([child.pid])))
        procs.append(start_agent(hub, "attributed", "--docker-root", str(tmp_path / "docker"), env=env))
        hub.wait_status("attributed", "live")

        def shown() -> str | None:
            with urllib.request.urlopen(f"{hub.url}/node/attributed", timeout=5) as response:
                page = response.read().decode()
            return page if "docker carol-vllm" in page else None

        page = wait_until(shown, 15, what="the container on the node page")
        with urllib.request.urlopen(hub.url + "/", timeout=5) as response:
            wall = response.read().decode()
    user = pwd.getpwuid(os.getuid()).pw_name
    assert f"{user} (carol-vllm)" in wall, "the card names the user's container"
    row = page[page.index("docker carol-vllm") :]
    age = row[row.index("<td") : row.index("</td>", row.index("<td") + 1)]
    assert re.search(r">\d+ s$", age), f"a process started seconds ago: {age!r}"
