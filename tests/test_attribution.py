"""A GPU process's container, pod and Slurm job from its cgroup: the parser over every shape
(and garbage), and the agent over a prepared proc tree for shapes this machine can't make for
real (Kubernetes, CRI-O, containerd; cgroup v1 and v2 files side by side). Real processes in
real cgroups: tests/test_attribution_cgroups.py."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.attribution import NONE, Attribution, AttributionReader, parse_cgroup
from node_agent.gpu import UNSEEN_MARGIN_BYTES, GpuCollector, _RawProcess, unseen_mem_bytes
from node_agent.procinfo import ProcessResolver
from node_agent.protocol import MAX_STRING_CHARS, SLURM_JOB_ID, GpuProcess, check_patch, to_wire
from tests import fakes

GIB = 1024**3
ID = "4f2a" + "0123456789abcdef" * 3 + "0123456789ab"  # 64 hex digits
ID2 = "b" * 64
POD_UID = "6a3c8e0e-1f2d-4c5b-9a8e-7d6c5b4a3f21"


# --------------------------------------------------------------------------- the parser
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Docker, systemd driver (cgroup v2), and cgroupfs driver (v1 and v2)
        (f"0::/system.slice/docker-{ID}.scope\n", Attribution(ID, "docker")),
        (f"12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n", Attribution(ID, "docker")),
        (f"0::/docker/{ID}\n", Attribution(ID, "docker")),
        # read from an agent in its own cgroup namespace (Docker's default on v2): relative to it
        (f"0::/../../system.slice/docker-{ID}.scope\n", Attribution(ID, "docker")),
        # Podman: systemd (root and rootless) and cgroupfs
        (f"0::/machine.slice/libpod-{ID}.scope/container\n", Attribution(ID, "podman")),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n",
            Attribution(ID, "podman"),
        ),
        (f"0::/libpod_parent/libpod-{ID}\n", Attribution(ID, "podman")),
        # Kubernetes: containerd and CRI-O with the systemd driver, and the cgroupfs driver
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD_UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n",
            Attribution(ID, "containerd", pod_uid=POD_UID),
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{ID}.scope\n",
            Attribution(ID, "cri-o", pod_uid=POD_UID),
        ),
        (
            f"11:memory:/kubepods/besteffort/pod{POD_UID}/{ID}\n",
            Attribution(ID, None, pod_uid=POD_UID),
        ),
        # Slurm: v1 (task under the step), and v2 under slurmstepd.scope
        (
            "7:devices:/slurm/uid_1000/job_81234/step_0/task_0\n4:memory:/slurm/uid_1000/job_81234/step_0\n",
            Attribution(slurm_job_id=81234, slurm_step="0"),
        ),
        (
            "0::/system.slice/slurmstepd.scope/job_81234/step_batch/user/task_0\n",
            Attribution(slurm_job_id=81234, slurm_step="batch"),
        ),
        ("0::/system.slice/slurmstepd.scope/job_5\n", Attribution(slurm_job_id=5)),
        (
            "4:memory:/slurm_node07/uid_1000/job_6/step_extern\n",
            Attribution(slurm_job_id=6, slurm_step="extern"),
        ),
        # hybrid v1 + v2: the container from the first line that names one, the v2 line first
        (f"1:name=systemd:/docker/{ID2}\n0::/system.slice/docker-{ID}.scope\n", Attribution(ID, "docker")),
        # a container's id and runtime from the same line, never mixed across lines
        (
            f"0::/kubepods/besteffort/pod{POD_UID}/{ID}\n3:pids:/system.slice/docker-{ID2}.scope\n",
            Attribution(ID, None, pod_uid=POD_UID),
        ),
        (
            "0::/slurm/uid_0/job_7\n4:memory:/slurm/uid_0/job_8/step_1\n",
            Attribution(slurm_job_id=7),
        ),
        # bare processes: nothing
        ("0::/user.slice/user-1000.slice/session-3.scope\n", NONE),
        ("0::/\n", NONE),
        ("12:pids:/\n1:name=systemd:/init.scope\n0::/init.scope\n", NONE),
    ],
)
def test_cgroup_shapes(text: str, expected: Attribution) -> None:
    assert parse_cgroup(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n\n",
        "no colons at all",
        "0:/docker/" + ID,  # two fields only
        "0::docker/" + ID,  # not an absolute path
        "0::/conmon/libpod-conmon-" + ID + ".scope",  # Podman's monitor, not the container
        "0::/system.slice/crio-conmon-" + ID + ".scope",
        "0::/system.slice/docker-" + ID[:-1] + ".scope",  # 63 hex digits
        "0::/system.slice/docker-" + ID.upper() + ".scope",  # the runtimes write lower case
        "0::/system.slice/docker-" + ID + ".scope.bak",
        "0::/docker/" + ID + "x",
        "0::/job_12/step_0",  # a job_ directory outside any Slurm tree
        "0::/slurm/uid_0/job_99999999999/step_0",  # past Slurm's 32-bit job ids
        "0::/slurm/uid_0/job_4294967296/step_0",
        "0::/" + "a/" * 5000,
        "0::/system.slice/\x00\x1b[31m<script>alert(1)</script>.scope",
        "\udcff\udcfe:::::/docker/",
    ],
)
def test_garbage_gives_nothing(text: str) -> None:
    assert parse_cgroup(text) == NONE


def test_a_kubepods_id_needs_the_kubepods_tree() -> None:
    assert parse_cgroup(f"0::/random/{ID}\n") == NONE
    assert parse_cgroup(f"0::/kubepods/{ID}\n") == Attribution(ID)


def test_hostile_step_is_not_taken_whole() -> None:
    # a step name is letters, digits and ._- (Slurm's are numbers, batch, extern, interactive)
    assert parse_cgroup("0::/slurm/uid_1/job_7/step_<b>\n") == Attribution(slurm_job_id=7)


# --------------------------------------------------------------------------- a prepared proc tree
def write_process(proc_root: Path, pid: int, cgroup: str, *, uid: int, comm: str = "train") -> None:
    """What the agent reads of one process: status, stat, comm, cmdline, cgroup."""
    directory = proc_root / str(pid)
    directory.mkdir(parents=True)
    (directory / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    # fields from the state on: starttime (22nd of proc(5)) is 360000 ticks after boot
    fields = ["S"] + ["0"] * 10 + ["500", "250"] + ["0"] * 6 + ["360000", "0", "1000"]
    (directory / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (directory / "comm").write_text(comm + "\n")
    (directory / "cmdline").write_bytes(f"python\0{comm}.py\0".encode())
    (directory / "cgroup").write_text(cgroup)


BOOT_EPOCH_S = 1_780_000_000


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(f"cpu  1 2 3 4\nintr 0\nbtime {BOOT_EPOCH_S}\nprocesses 9\n")
    return tmp_path


def docker_config(docker_root: Path, container_id: str, name: str) -> None:
    directory = docker_root / "containers" / container_id
    directory.mkdir(parents=True)
    config = {"ID": container_id, "Name": "/" + name, "Config": {"Env": ["HF_TOKEN=secret"]}}
    (directory / "config.v2.json").write_text(json.dumps(config))


@pytest.fixture
def collect(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Samples a collector whose fake NVML lists ``pids`` on GPU 0, with everything read from
    the prepared tree."""
    made: list[GpuCollector] = []

    def sample(pids: list[int]) -> list[GpuProcess]:
        scenario = fakes.scenario([fakes.gpu(0, compute_processes=[fakes.process(p, GIB) for p in pids])])
        fake: ModuleType = fakes.load_fake_pynvml(fakes.write_scenario(tmp_path / "scenario.json", scenario))
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        reader = AttributionReader(
            proc_root=tree / "proc",
            docker_root=tree / "docker",
            podman_root=tree / "podman",
            pod_log_dir=tree / "pods",
        )
        collector = GpuCollector(
            sysfs_root=tmp_path / "no-sysfs", proc_root=tree / "proc", attribution=reader
        )
        made.append(collector)
        wire = collector.sample_wire()
        assert check_patch({"gpus": wire})["gpus"] == wire  # what the hub accepts
        return collector.sample()["0"].processes or []

    yield sample
    for collector in made:
        collector.close()


def test_prepared_tree_every_runtime(tree: Path, collect: Any) -> None:
    proc = tree / "proc"
    pod_dir = tree / "pods" / f"research_bert-finetune-7d9f_{POD_UID}"
    pod_dir.mkdir(parents=True)
    (tree / "pods" / "not-a-pod-dir").mkdir()
    docker_config(tree / "docker", ID, "alice-llama")
    (tree / "podman" / "overlay-containers").mkdir(parents=True)
    (tree / "podman" / "overlay-containers" / "containers.json").write_text(
        json.dumps([{"id": ID2, "names": ["bob-sd"], "image": "x"}])
    )
    under_underscores = POD_UID.replace("-", "_")
    cgroups = {
        4_000_001: f"0::/system.slice/docker-{ID}.scope\n",
        4_000_002: f"0::/machine.slice/libpod-{ID2}.scope/container\n",
        4_000_003: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
        f"{under_underscores}.slice/cri-containerd-{'c' * 64}.scope\n",
        4_000_004: f"0::/kubepods.slice/kubepods-pod{'1' * 8}_{'2' * 4}_{'3' * 4}_{'4' * 4}_{'5' * 12}.slice"
        f"/crio-{'d' * 64}.scope\n",
        4_000_005: "12:pids:/slurm/uid_0/job_81234/step_3\n11:memory:/slurm/uid_0/job_81234/step_3/task_0\n",
        4_000_006: "0::/user.slice/user-0.slice/session-1.scope\n",
    }
    for pid, cgroup in cgroups.items():
        write_process(proc, pid, cgroup, uid=os.getuid())
    by_pid = {p.pid: p for p in collect(list(cgroups))}
    started = BOOT_EPOCH_S + 360000 / os.sysconf("SC_CLK_TCK")
    assert all(p.started_epoch_s == pytest.approx(started) for p in by_pid.values())
    assert all(p.command == "train" and p.user is not None for p in by_pid.values())
    docker = by_pid[4_000_001]
    assert (docker.container_id, docker.container_runtime, docker.container_name) == (
        ID,
        "docker",
        "alice-llama",
    )
    podman = by_pid[4_000_002]
    assert (podman.container_runtime, podman.container_name) == ("podman", "bob-sd")
    pod = by_pid[4_000_003]
    assert (pod.container_runtime, pod.pod_uid, pod.pod_namespace, pod.pod_name) == (
        "containerd",
        POD_UID,
        "research",
        "bert-finetune-7d9f",
    )
    assert pod.container_name is None  # containerd keeps names behind its socket
    crio = by_pid[4_000_004]  # its pod's log directory isn't there: the uid only
    assert (crio.container_runtime, crio.pod_uid, crio.pod_name) == (
        "cri-o",
        "11111111-2222-3333-4444-555555555555",
        None,
    )
    slurm = by_pid[4_000_005]
    assert (slurm.slurm_job_id, slurm.slurm_step, slurm.container_id) == (81234, "3", None)
    bare = by_pid[4_000_006]
    assert (bare.container_id, bare.slurm_job_id, bare.pod_uid) == (None, None, None)


def test_unreadable_parts_are_null_never_a_broken_sample(tree: Path, collect: Any) -> None:
    proc = tree / "proc"
    write_process(proc, 4_000_010, f"0::/system.slice/docker-{ID}.scope\n", uid=os.getuid())
    (proc / "4000010" / "cgroup").unlink()  # hidden
    write_process(proc, 4_000_011, f"0::/system.slice/docker-{ID2}.scope\n", uid=os.getuid())
    broken = tree / "docker" / "containers" / ID2
    broken.mkdir(parents=True)
    (broken / "config.v2.json").write_text('{"Name": ')  # torn write
    write_process(proc, 4_000_012, "0::/docker/" + "e" * 64 + "\n", uid=os.getuid())
    (tree / "docker" / "containers" / ("e" * 64)).mkdir(parents=True)
    (tree / "docker" / "containers" / ("e" * 64) / "config.v2.json").write_text('{"Name": 42}')
    (proc / "stat").write_text("cpu 1 2 3\n")  # no btime
    by_pid = {p.pid: p for p in collect([4_000_010, 4_000_011, 4_000_012, 4_000_013])}
    assert by_pid[4_000_010].container_id is None and by_pid[4_000_010].command == "train"
    assert (by_pid[4_000_011].container_id, by_pid[4_000_011].container_name) == (ID2, None)
    assert by_pid[4_000_012].container_name is None
    assert by_pid[4_000_013] == GpuProcess(pid=4_000_013, gpu_mem_bytes=GIB)  # no such process
    assert all(p.started_epoch_s is None for p in by_pid.values())


def test_hostile_names_are_cut_to_the_string_limit(tree: Path, collect: Any) -> None:
    hostile = '<img src=x onerror=alert(1)>"&' * 40
    docker_config(tree / "docker", ID, hostile)
    write_process(tree / "proc", 4_000_020, f"0::/system.slice/docker-{ID}.scope\n", uid=os.getuid())
    (proc,) = collect([4_000_020])
    assert proc.container_name == hostile[:MAX_STRING_CHARS]


def test_cgroup_is_read_once_per_process(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_process(tree / "proc", 4_000_030, "0::/slurm/uid_0/job_1/step_0\n", uid=os.getuid())
    reader = AttributionReader(proc_root=tree / "proc")
    reads: list[int] = []
    original = AttributionReader.read

    def counting(self: AttributionReader, pid: int) -> Attribution:
        reads.append(pid)
        return original(self, pid)

    monkeypatch.setattr(AttributionReader, "read", counting)
    resolver = ProcessResolver(proc_root=tree / "proc", attribution=reader)
    for _ in range(5):
        info = resolver.resolve([4_000_030])[4_000_030]
        assert info.attribution.slurm_job_id == 1
    assert reads == [4_000_030]
    # the same pid, a new process (another start time): read again
    stat = tree / "proc" / "4000030" / "stat"
    stat.write_text(stat.read_text().replace(" 360000 ", " 360001 "))
    (tree / "proc" / "4000030" / "cgroup").write_text("0::/slurm/uid_0/job_2/step_0\n")
    assert resolver.resolve([4_000_030])[4_000_030].attribution.slurm_job_id == 2
    assert reads == [4_000_030, 4_000_030]


def test_started_epoch_of_a_real_process_matches_psutil() -> None:
    me = os.getpid()
    info = ProcessResolver().resolve([me])[me]
    assert info.started_epoch_s == pytest.approx(psutil.Process(me).create_time(), abs=0.05)


# --------------------------------------------------------------------------- unseen memory
def test_unseen_memory_past_the_margin() -> None:
    raw = [_RawProcess(1, 10 * GIB)]
    total = 80 * GIB
    margin = UNSEEN_MARGIN_BYTES + 0.01 * total
    assert unseen_mem_bytes(10 * GIB + int(margin), total, raw) == 0  # the driver's reservation
    assert unseen_mem_bytes(22 * GIB, total, raw) == 12 * GIB
    assert unseen_mem_bytes(12 * GIB, total, []) == 12 * GIB  # memory used, no process visible
    assert unseen_mem_bytes(GIB // 2, total, []) == 0  # an idle card
    assert unseen_mem_bytes(22 * GIB, total, [_RawProcess(1, None)]) is None  # MIG: per-process unknown
    assert unseen_mem_bytes(None, total, raw) is None
    assert unseen_mem_bytes(22 * GIB, total, None) is None


def test_unseen_memory_on_the_wire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the agent in a container without --pid=host: NVML lists no process, 12 GiB are used
    gpu = fakes.gpu(0, mem_used_bytes=12 * GIB, compute_processes=[])
    fake = fakes.load_fake_pynvml(fakes.write_scenario(tmp_path / "s.json", fakes.scenario([gpu])))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    collector = GpuCollector(sysfs_root=tmp_path / "no-sysfs")
    try:
        wire = collector.sample_wire()
        assert wire["0"]["unseen_mem_bytes"] == 12 * GIB
        assert to_wire(collector.sample()["0"])["unseen_mem_bytes"] == 12 * GIB
        assert check_patch({"gpus": wire})["gpus"]["0"]["unseen_mem_bytes"] == 12 * GIB
    finally:
        collector.close()


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from("0123456789abcdef:/_-.slurmjobstepdockerlibpodkubepods\n\x00é"), max_size=400
    )
)
def test_any_text_parses_to_an_attribution_within_the_wire_limits(text: str) -> None:
    found = parse_cgroup(text)
    assert isinstance(found, Attribution)
    for value in found:
        assert (
            value is None
            or (isinstance(value, str) and len(value) <= MAX_STRING_CHARS)
            or (isinstance(value, int) and 0 <= value <= SLURM_JOB_ID.high)
        )
