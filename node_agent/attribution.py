"""What a GPU process belongs to: its container (and Kubernetes pod) or Slurm job, from
``/proc/<pid>/cgroup``.

A process's cgroup path says where its runtime put it; no daemon socket is asked:

* Docker ``…/docker-<id>.scope`` (systemd driver) or ``/docker/<id>`` (cgroupfs driver); the
  name from ``<docker root>/containers/<id>/config.v2.json``, where that directory is mounted.
* Podman ``…/libpod-<id>.scope`` or ``/libpod_parent/libpod-<id>``; the name from
  ``<podman root>/overlay-containers/containers.json``.
* containerd ``…/cri-containerd-<id>.scope``, CRI-O ``…/crio-<id>.scope``; under ``kubepods``
  the pod's uid (``pod<uid>`` or ``kubepods-…-pod<uid_with_underscores>.slice``), and its
  namespace and name from the kubelet's log directory ``/var/log/pods/<namespace>_<name>_<uid>``.
* Slurm ``/slurm/uid_<uid>/job_<id>/step_<step>`` (cgroup v1) or
  ``/system.slice/slurmstepd.scope/job_<id>/step_<step>`` (v2): the job id and step; the job's
  name and user from ``scontrol``, asked in the background (:mod:`node_agent.slurm`).

cgroup v1 files have a line per hierarchy, v2 one ``0::`` line; the v2 line is looked at first,
then the v1 lines in order, and the container, the pod and the job are each taken from the first
line that names one. Anything
that can't be read or doesn't match is ``None``. Called once per new process (the resolver
caches the answer by pid and start time), never per sample.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from node_agent.protocol import MAX_STRING_CHARS, SLURM_JOB_ID
from node_agent.slurm import SlurmJobs

# /proc/<pid>/cgroup is a line per hierarchy (a dozen on cgroup v1); more is not a cgroup file.
CGROUP_FILE_MAX_BYTES = 64 * 1024
# A container's config.v2.json holds its environment and labels: tens of KiB, rarely more.
CONFIG_FILE_MAX_BYTES = 4 * 1024 * 1024
# Names remembered (containers, pods); past this the memory is cleared: a node runs far fewer
# at once, and a cleared name costs one read at its next new process.
NAMES_KEPT_MAX = 4096

_ID = r"[0-9a-f]{64}"
# systemd-driver scopes; the conmon scopes (libpod-conmon-…, crio-conmon-…) hold the runtime's
# monitor, not the container's processes, and don't match (the id must follow the prefix).
_SCOPE = re.compile(rf"(docker|libpod|cri-containerd|crio)-({_ID})\.scope")
_RUNTIME_OF_SCOPE = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o"}
_BARE_ID = re.compile(_ID)
_LIBPOD_CGROUPFS = re.compile(rf"libpod-({_ID})")
# pod<uid> (cgroupfs), kubepods-pod<uid>.slice (Guaranteed) or kubepods-<qos>-pod<uid>.slice
# (systemd: the uid's dashes written as underscores)
_POD_UID = re.compile(
    r"(?:kubepods-(?:[a-z]+-)?)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?"
)
_SLURM_JOB = re.compile(r"job_([0-9]{1,10})")
_SLURM_STEP = re.compile(r"step_([A-Za-z0-9_.-]{1,64})")
# /var/log/pods/<namespace>_<name>_<uid>: namespaces and pod names hold no "_" (DNS names).
_POD_LOG_DIR = re.compile(r"([a-z0-9.-]+)_([a-z0-9.-]+)_([0-9a-f-]{36})")


class Attribution(NamedTuple):
    """Where one process runs; ``None``: not in one, or not known."""

    container_id: str | None = None
    container_runtime: str | None = None  # docker, podman, containerd, cri-o
    container_name: str | None = None
    pod_uid: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None
    slurm_job_id: int | None = None
    slurm_step: str | None = None
    slurm_job_name: str | None = None  # from scontrol, once it answered
    slurm_job_user: str | None = None


NONE = Attribution()


def _cgroup_paths(text: str) -> list[str]:
    """The cgroup paths of a ``/proc/<pid>/cgroup`` text, the v2 (``0::``) one first."""
    v2: list[str] = []
    v1: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        (v2 if parts[0] == "0" and parts[1] == "" else v1).append(parts[2])
    return v2 + v1


def _parse_path(path: str) -> Attribution:
    container_id = runtime = pod_uid = step = None
    job_id: int | None = None
    parts = path.split("/")
    in_kubepods = any(p.startswith("kubepods") for p in parts)
    # /slurm, /slurm_<node> (several slurmd on one host), /system.slice/slurmstepd.scope
    in_slurm = any(p.startswith("slurm") for p in parts)
    previous = ""
    for part in parts:
        if container_id is None:
            if scope := _SCOPE.fullmatch(part):
                runtime, container_id = _RUNTIME_OF_SCOPE[scope.group(1)], scope.group(2)
            elif previous == "docker" and _BARE_ID.fullmatch(part):
                runtime, container_id = "docker", part
            elif previous == "libpod_parent" and (libpod := _LIBPOD_CGROUPFS.fullmatch(part)):
                runtime, container_id = "podman", libpod.group(1)
            elif in_kubepods and _BARE_ID.fullmatch(part):  # cgroupfs driver: the runtime isn't named
                container_id = part
        if in_kubepods and pod_uid is None and (pod := _POD_UID.fullmatch(part)):
            pod_uid = pod.group(1).replace("_", "-")
        if in_slurm:
            if (
                job_id is None
                and (job := _SLURM_JOB.fullmatch(part))
                and int(job.group(1)) <= SLURM_JOB_ID.high
            ):
                job_id = int(job.group(1))
            elif job_id is not None and step is None and (step_match := _SLURM_STEP.fullmatch(part)):
                step = step_match.group(1)
        previous = part
    return Attribution(container_id, runtime, None, pod_uid, None, None, job_id, step)


def parse_cgroup(text: str) -> Attribution:
    """The container, pod uid and Slurm job named by a ``/proc/<pid>/cgroup`` text (names and
    pod namespace are not in it: :class:`AttributionReader` adds them)."""
    found = NONE
    for path in _cgroup_paths(text):
        parsed = _parse_path(path)
        if parsed == NONE:
            continue
        # a container's id and runtime, and a job's id and step, come from one line together
        if found.container_id is None and parsed.container_id is not None:
            found = found._replace(
                container_id=parsed.container_id, container_runtime=parsed.container_runtime
            )
        if found.pod_uid is None and parsed.pod_uid is not None:
            found = found._replace(pod_uid=parsed.pod_uid)
        if found.slurm_job_id is None and parsed.slurm_job_id is not None:
            found = found._replace(slurm_job_id=parsed.slurm_job_id, slurm_step=parsed.slurm_step)
    return found


def _clamp(text: Any) -> str | None:
    return text[:MAX_STRING_CHARS] if isinstance(text, str) and text else None


def _read_bounded(path: Path, max_bytes: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        return None
    return data if len(data) <= max_bytes else None


class AttributionReader:
    """Reads a pid's attribution under ``proc_root``; container names from ``docker_root`` and
    ``podman_root``, pod names from ``pod_log_dir`` (each optional: missing means no names)."""

    def __init__(
        self,
        *,
        proc_root: Path = Path("/proc"),
        docker_root: Path = Path("/var/lib/docker"),
        podman_root: Path = Path("/var/lib/containers/storage"),
        pod_log_dir: Path = Path("/var/log/pods"),
        slurm_jobs: SlurmJobs | None = None,
    ) -> None:
        self._proc_root = proc_root
        self._slurm_jobs = slurm_jobs if slurm_jobs is not None and slurm_jobs.enabled else None
        self._docker_root = docker_root
        self._podman_root = podman_root
        self._pod_log_dir = pod_log_dir
        # found names only: a container or pod not found yet may appear later (its state written
        # after its first process started), and a miss costs one read per new process, not sample
        self._container_names: dict[str, str] = {}
        self._pods: dict[str, tuple[str, str]] = {}

    def read(self, pid: int) -> Attribution:
        raw = _read_bounded(self._proc_root / str(pid) / "cgroup", CGROUP_FILE_MAX_BYTES)
        if raw is None:
            return NONE
        found = parse_cgroup(raw.decode("utf-8", "replace"))
        if found.container_id is not None:
            found = found._replace(
                container_name=self._container_name(found.container_id, found.container_runtime)
            )
        if found.pod_uid is not None and (pod := self._pod(found.pod_uid)) is not None:
            found = found._replace(pod_namespace=pod[0], pod_name=pod[1])
        return self.with_job(found)

    def with_job(self, found: Attribution) -> Attribution:
        """``found`` with its Slurm job's name and user, once ``scontrol`` has answered (until
        then, and without ``scontrol``, ``found`` itself): a dict lookup, never a wait."""
        jobs = self._slurm_jobs
        if jobs is None or found.slurm_job_id is None or found.slurm_job_user is not None:
            return found
        facts = jobs.lookup(found.slurm_job_id)
        if facts is None:
            return found
        return found._replace(slurm_job_name=facts[0], slurm_job_user=facts[1])

    @property
    def waits_for_jobs(self) -> bool:
        """Whether job names can still arrive (``scontrol`` is there)."""
        return self._slurm_jobs is not None

    def close(self) -> None:
        if self._slurm_jobs is not None:
            self._slurm_jobs.close()

    def _container_name(self, container_id: str, runtime: str | None) -> str | None:
        name = self._container_names.get(container_id)
        if name is None:
            if runtime == "docker":
                name = self._docker_name(container_id)
            elif runtime == "podman":
                name = self._podman_name(container_id)
            if name is not None:
                if len(self._container_names) >= NAMES_KEPT_MAX:
                    self._container_names.clear()
                self._container_names[container_id] = name
        return name

    def _docker_name(self, container_id: str) -> str | None:
        raw = _read_bounded(
            self._docker_root / "containers" / container_id / "config.v2.json", CONFIG_FILE_MAX_BYTES
        )
        try:
            config = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        name = config.get("Name") if isinstance(config, dict) else None
        return _clamp(name.lstrip("/")) if isinstance(name, str) else None

    def _podman_name(self, container_id: str) -> str | None:
        path = self._podman_root / "overlay-containers" / "containers.json"
        raw = _read_bounded(path, CONFIG_FILE_MAX_BYTES)
        try:
            containers = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        for entry in containers if isinstance(containers, list) else ():
            if isinstance(entry, dict) and entry.get("id") == container_id:
                names = entry.get("names")
                return _clamp(names[0]) if isinstance(names, list) and names else None
        return None

    def _pod(self, pod_uid: str) -> tuple[str, str] | None:
        pod = self._pods.get(pod_uid)
        if pod is not None:
            return pod
        try:
            entries = os.listdir(self._pod_log_dir)
        except OSError:
            return None
        for entry in entries:
            match = _POD_LOG_DIR.fullmatch(entry)
            if match and match.group(3) == pod_uid:
                if len(self._pods) >= NAMES_KEPT_MAX:
                    self._pods.clear()
                pod = self._pods[pod_uid] = (match.group(1), match.group(2))
                return pod
        return None
