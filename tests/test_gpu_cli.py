"""``python -m node_agent --once --json`` in a subprocess, over the fake pynvml."""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from node_agent import protocol
from tests import fakes
from tests.fakes import GIB, MISSING_PIDS

MY_USER = pwd.getpwuid(os.getuid()).pw_name


def run_once(tmp_path: Path, scenario: dict[str, Any], *args: str) -> dict[str, Any]:
    """Runs the agent once with ``scenario`` and returns its JSON document, checked by the
    hub's own decoder (the hello) and patch checker (the snapshot)."""
    path = fakes.write_scenario(tmp_path / "scenario.json", scenario)
    env = {k: v for k, v in fakes.fake_env(path).items() if not k.startswith("SERS_")}
    env[fakes.ENV_VAR] = str(path)
    result = subprocess.run(
        [sys.executable, "-m", "node_agent", "--once", "--json", "--name", "cli-test", *args],
        cwd=fakes.REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    document: dict[str, Any] = orjson.loads(result.stdout)
    document["stderr"] = result.stderr.decode()
    hello = protocol.decode(orjson.dumps({"type": "hello", **document["hello"]}))
    assert isinstance(hello, protocol.Hello) and hello.node == "cli-test"
    snapshot = document["snapshot"]
    assert protocol.check_patch(snapshot)["gpus"] == snapshot["gpus"]
    return document


def test_mixed_models(tmp_path: Path) -> None:
    doc = run_once(tmp_path, fakes.mixed_models())
    hello, gpus = doc["hello"], doc["snapshot"]["gpus"]
    assert hello["gpu_driver"] == {
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "nvml_version": "12.550.54.15",
        "error": None,
        "collector_state": "up",
    }
    assert [g["name"] for g in hello["gpus"]] == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA GeForce RTX 4090",
    ]
    assert [g["mig_mode"] for g in hello["gpus"]] == ["disabled", "disabled", "enabled", "disabled"]
    assert hello["gpus"][0]["power_limit_watts"] == 700.0
    assert list(gpus) == ["0", "1", "2", "3"]
    assert gpus["0"]["mem_total_bytes"] == 80 * GIB and gpus["0"]["mem_used_bytes"] == GIB
    assert gpus["1"]["util_gpu_percent"] == 97.0
    assert gpus["1"]["throttle_reasons"] == ["sw_power_cap", "sw_thermal"]
    assert gpus["1"]["ecc_volatile_uncorrected"] == 2
    assert gpus["3"]["temp_celsius"] == 88.0 and gpus["3"]["throttle_reasons"] == ["gpu_idle"]
    assert all(g["error"] is None and g["processes"] == [] for g in gpus.values())
    assert {g["uuid"] for g in gpus.values()} == {g["uuid"] for g in hello["gpus"]}


def test_eight_gpus(tmp_path: Path) -> None:
    doc = run_once(tmp_path, fakes.eight_gpus(pids=MISSING_PIDS))
    gpus = doc["snapshot"]["gpus"]
    assert list(gpus) == [str(i) for i in range(8)]
    assert len(doc["hello"]["gpus"]) == 8
    unknown = {f.name: None for f in dataclasses.fields(protocol.GpuProcess)}  # a pid not seen here
    assert gpus["0"]["processes"] == [{**unknown, "pid": MISSING_PIDS[0], "gpu_mem_bytes": GIB}]
    assert gpus["1"]["processes"][0]["pid"] == MISSING_PIDS[1]
    assert gpus["7"]["processes"] == []


def test_unsupported_fields(tmp_path: Path) -> None:
    doc = run_once(tmp_path, fakes.unsupported_fields())
    driver, gpus = doc["hello"]["gpu_driver"], doc["snapshot"]["gpus"]
    assert driver["cuda_driver_version"] is None and driver["nvml_version"] is None
    bare = gpus["0"]
    known = {"index", "uuid", "name", "mem_used_bytes", "mem_total_bytes"}
    assert {k for k, v in bare.items() if v is not None} == known
    assert bare["processes"] is None
    assert doc["hello"]["gpus"][0]["power_limit_watts"] is None
    assert gpus["1"]["power_draw_watts"] is None and gpus["1"]["ecc_volatile_uncorrected"] is None
    assert gpus["1"]["temp_celsius"] == 41.0 and gpus["1"]["error"] is None


def test_one_gpu_lost(tmp_path: Path) -> None:
    doc = run_once(tmp_path, fakes.one_gpu_lost())
    gpus = doc["snapshot"]["gpus"]
    assert list(gpus) == ["0", "1", "2"]
    assert gpus["1"]["error"] == "GPU is lost"
    assert gpus["1"]["util_gpu_percent"] is None
    assert gpus["0"]["error"] is None and gpus["0"]["mem_used_bytes"] == GIB
    assert gpus["2"]["error"] is None and gpus["2"]["temp_celsius"] == 42.0
    assert [g["index"] for g in doc["hello"]["gpus"]] == [0, 1, 2]


def test_unknown_pids(tmp_path: Path) -> None:
    doc = run_once(tmp_path, fakes.unknown_pids())
    procs = doc["snapshot"]["gpus"]["0"]["processes"]
    assert [(p["pid"], p["gpu_mem_bytes"], p["user"], p["command"]) for p in procs] == [
        (MISSING_PIDS[0], 3 * GIB, None, None),
        (MISSING_PIDS[1], None, None, None),
    ]


def test_real_pids(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    doc = run_once(tmp_path, fakes.real_pids([sleeper.pid]))
    gpus = doc["snapshot"]["gpus"]
    (proc,) = gpus["0"]["processes"]
    assert proc["pid"] == sleeper.pid
    assert proc["user"] == MY_USER
    assert proc["command"] == "sleep"
    assert proc["gpu_mem_bytes"] == GIB
    assert proc["host_mem_bytes"] > 0
    (graphics,) = gpus["1"]["processes"]
    assert (graphics["pid"], graphics["user"], graphics["command"]) == (sleeper.pid, MY_USER, "sleep")


def test_full_cmdline_redacted(tmp_path: Path) -> None:
    code = "import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, "--password", "hunter2", "HF_TOKEN=hf_abc"])
    try:
        doc = run_once(tmp_path, fakes.real_pids([child.pid]), "--full-cmdline")
    finally:
        child.kill()
        child.wait()
    (proc,) = doc["snapshot"]["gpus"]["0"]["processes"]
    assert proc["user"] == MY_USER
    assert proc["command"] == f"{sys.executable} -c {code} --password *** HF_TOKEN=***"


def test_legacy_bindings(tmp_path: Path) -> None:
    doc = run_once(tmp_path, fakes.legacy_bindings())
    assert doc["hello"]["gpus"][0]["name"] == "NVIDIA A100-SXM4-40GB"
    assert doc["hello"]["gpu_driver"]["driver_version"] == "550.54.15"
    assert doc["snapshot"]["gpus"]["0"]["throttle_reasons"] == ["hw_slowdown"]


@pytest.mark.parametrize(
    ("scenario", "reason", "gpus_on_bus", "state"),
    [
        (fakes.no_library(), "NVML library not found", 0, "absent"),
        (fakes.driver_not_loaded(), "NVIDIA driver not loaded", 2, "down"),
        (fakes.no_pynvml(), "nvidia-ml-py (pynvml) is not installed", 0, "absent"),
        (fakes.no_pynvml(), "nvidia-ml-py (pynvml) is not installed", 1, "down"),
    ],
)
def test_no_gpus_available(
    tmp_path: Path, scenario: dict[str, Any], reason: str, gpus_on_bus: int, state: str
) -> None:
    """``--sysfs-root`` names the sysfs whose PCI bus tells a broken GPU server from a CPU-only node."""
    sysfs = fakes.gpu_server_sysfs(tmp_path / "sys", gpus_on_bus)
    doc = run_once(tmp_path, scenario, "--sysfs-root", str(sysfs))
    assert doc["hello"]["gpu_driver"]["collector_state"] == state
    assert reason in doc["hello"]["gpu_driver"]["error"]
    assert doc["hello"]["gpus"] == []
    assert doc["snapshot"]["gpus"] == {}
    assert doc["snapshot"]["host"]["mem_total_bytes"] > 0  # the host still reports
    assert doc["stderr"].count(reason) == 1  # logged once, as a warning
    assert "WARNING" in doc["stderr"]


def test_plain_once_says_the_gpu_collector_is_down(tmp_path: Path) -> None:
    path = fakes.write_scenario(tmp_path / "scenario.json", fakes.driver_not_loaded())
    env = {k: v for k, v in fakes.fake_env(path).items() if not k.startswith("SERS_")}
    env[fakes.ENV_VAR] = str(path)
    sysfs = fakes.gpu_server_sysfs(tmp_path / "sys", 2)
    result = subprocess.run(
        [sys.executable, "-m", "node_agent", "--once", "--name", "cli-test", "--sysfs-root", str(sysfs)],
        cwd=fakes.REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
        text=True,
    )
    assert result.stdout.splitlines()[1] == "  GPU collector down: NVIDIA driver not loaded"
