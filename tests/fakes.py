"""Fake NVML at the ``pynvml`` boundary: scenario builders and ways to use them.

A scenario is a JSON-ready dict read by ``tests/fake_nvml/pynvml.py`` (see its docstring).
In-process: :func:`load_fake_pynvml` and put the module in ``sys.modules["pynvml"]``.
Subprocess: :func:`write_scenario` then run with ``env=fake_env(path)``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_NVML_DIR = REPO_ROOT / "tests" / "fake_nvml"
ENV_VAR = "SERS_FAKE_NVML"

GIB = 1024**3
# Pids are below the kernel's pid_max, which is at most 2**22: these never exist.
MISSING_PIDS = (4_194_304 + 11, 4_194_304 + 12)

MODELS: dict[str, dict[str, Any]] = {
    "H100": {
        "name": "NVIDIA H100 80GB HBM3",
        "mem_total_bytes": 80 * GIB,
        "power_limit_mw": 700_000,
    },
    "A100": {
        "name": "NVIDIA A100-SXM4-40GB",
        "mem_total_bytes": 40 * GIB,
        "power_limit_mw": 400_000,
    },
    "RTX4090": {
        "name": "NVIDIA GeForce RTX 4090",
        "mem_total_bytes": 24 * GIB,
        "power_limit_mw": 450_000,
    },
    "T4": {"name": "Tesla T4", "mem_total_bytes": 15 * GIB, "power_limit_mw": 70_000},
}


def gpu(index: int, model: str = "H100", **overrides: Any) -> dict[str, Any]:
    """One GPU with every field supported; ``overrides`` replace fields (``None``: unsupported)."""
    facts = MODELS[model]
    entry: dict[str, Any] = {
        "name": facts["name"],
        "uuid": f"GPU-{index:08x}-1111-2222-3333-{index:012x}",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "mem_total_bytes": facts["mem_total_bytes"],
        "mem_used_bytes": (index + 1) * GIB,
        "util_gpu": 10 * index % 100,
        "util_mem": 5 * index % 100,
        "temp_celsius": 40 + index,
        "fan_percent": 30 + index,
        "power_mw": 100_000 + 1_000 * index,
        "power_limit_mw": facts["power_limit_mw"],
        "clock_sm_mhz": 1980,
        "clock_mem_mhz": 2619,
        "pstate": 0,
        "enc_util": 0,
        "dec_util": 0,
        "clocks_event_reasons": 0,
        "ecc_uncorrected": 0,
        "mig_mode": [0, 0],
        "compute_processes": [],
        "graphics_processes": [],
        "errors": {},
    }
    entry.update(overrides)
    return entry


def scenario(gpus: Iterable[dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A whole scenario: driver facts plus ``gpus``; ``top`` overrides (e.g. ``legacy=True``)."""
    data: dict[str, Any] = {
        "driver_version": "550.54.15",
        "cuda_driver_version": 12040,
        "nvml_version": "12.550.54.15",
        "gpus": list(gpus),
    }
    data.update(top)
    return data


def process(pid: int, used_gpu_memory: int | None) -> dict[str, Any]:
    return {"pid": pid, "used_gpu_memory": used_gpu_memory}


# --------------------------------------------------------------------------- scenarios
def eight_gpus(pids: Iterable[int] = ()) -> dict[str, Any]:
    """An 8x H100 node; the k-th pid runs on GPU k % 8 with (k + 1) GiB of GPU memory."""
    gpus = [gpu(i, "H100") for i in range(8)]
    for k, pid in enumerate(pids):
        gpus[k % 8]["compute_processes"].append(process(pid, (k + 1) * GIB))
    return scenario(gpus)


def mixed_models() -> dict[str, Any]:
    """Four different models; GPU 1 busy and throttled, GPU 2 with MIG on, GPU 3 hot."""
    return scenario(
        [
            gpu(0, "H100"),
            gpu(1, "A100", util_gpu=97, clocks_event_reasons=0x4 | 0x20, ecc_uncorrected=2),
            gpu(2, "A100", mig_mode=[1, 1]),
            gpu(3, "RTX4090", temp_celsius=88, clocks_event_reasons=0x1),
        ]
    )


def unsupported_fields() -> dict[str, Any]:
    """GPU 0 supports only memory, name and uuid; GPU 1 raises NoPermission/FunctionNotFound."""
    bare = gpu(
        0,
        "T4",
        util_gpu=None,
        util_mem=None,
        temp_celsius=None,
        fan_percent=None,
        power_mw=None,
        power_limit_mw=None,
        clock_sm_mhz=None,
        clock_mem_mhz=None,
        pstate=None,
        enc_util=None,
        dec_util=None,
        clocks_event_reasons=None,
        ecc_uncorrected=None,
        mig_mode=None,
        pci_bus_id=None,
        errors={
            "nvmlDeviceGetComputeRunningProcesses": "NotSupported",
            "nvmlDeviceGetGraphicsRunningProcesses": "NotSupported",
        },
    )
    restricted = gpu(
        1,
        "A100",
        errors={
            "nvmlDeviceGetPowerUsage": "NoPermission",
            "nvmlDeviceGetTotalEccErrors": "FunctionNotFound",
        },
    )
    return scenario([bare, restricted], cuda_driver_version=None, nvml_version=None)


def one_gpu_lost() -> dict[str, Any]:
    """Three GPUs; GPU 1 is lost (every call raises NVMLError_GpuIsLost)."""
    return scenario([gpu(0), gpu(1, errors={"*": "GpuIsLost"}), gpu(2)])


def unknown_pids() -> dict[str, Any]:
    """Processes whose pids don't exist here (e.g. an agent container without --pid=host)."""
    procs = [process(MISSING_PIDS[0], 3 * GIB), process(MISSING_PIDS[1], None)]
    return scenario([gpu(0, compute_processes=procs)])


def real_pids(pids: Iterable[int]) -> dict[str, Any]:
    """Two GPUs; every pid runs on GPU 0 (compute) and the first also on GPU 1 (graphics)."""
    pids = list(pids)
    compute = [process(pid, (k + 1) * GIB) for k, pid in enumerate(pids)]
    graphics = [process(pids[0], 256 * 1024**2)] if pids else []
    return scenario([gpu(0, compute_processes=compute), gpu(1, graphics_processes=graphics)])


def no_library() -> dict[str, Any]:
    return scenario([], init_error="LibraryNotFound")


def driver_not_loaded() -> dict[str, Any]:
    return scenario([], init_error="DriverNotLoaded")


def no_pynvml() -> dict[str, Any]:
    """Importing ``pynvml`` fails, as on a machine without nvidia-ml-py."""
    return scenario([], import_error=True)


def legacy_bindings() -> dict[str, Any]:
    """Old nvidia-ml-py: strings are bytes, only ``...ClocksThrottleReasons`` exists."""
    return scenario([gpu(0, "A100", clocks_event_reasons=0x8)], legacy=True)


def library_mismatch() -> dict[str, Any]:
    """libnvidia-ml and the loaded kernel module are of different driver versions (a driver
    upgraded without a reboot)."""
    return scenario([], init_error="LibRmVersionMismatch")


# --------------------------------------------------------------------------- sysfs
# (vendor, class) of PCI functions a GPU server's bus lists besides its GPUs
INTEL_HOST_BRIDGE = ("0x8086", "0x060000")
NVIDIA_GPU_AUDIO = ("0x10de", "0x040300")  # a graphics card's HDMI audio function
NVIDIA_3D_CONTROLLER = ("0x10de", "0x030200")  # data-centre GPUs (H100, A100)
NVIDIA_VGA_CONTROLLER = ("0x10de", "0x030000")  # cards with a display output (RTX 4090)


def fake_sysfs(root: Path, functions: Iterable[tuple[str, str]]) -> Path:
    """A sysfs tree under ``root`` whose PCI bus lists ``functions`` ((vendor, class) as the
    kernel writes them, e.g. ``("0x10de", "0x030200")``), each with the two files the agent
    reads. Returns ``root``, for ``--sysfs-root``."""
    devices = root / "bus" / "pci" / "devices"
    devices.mkdir(parents=True)
    for slot, (vendor, pci_class) in enumerate(functions):
        device = devices / f"0000:{slot + 1:02x}:00.0"
        device.mkdir()
        (device / "vendor").write_text(vendor + "\n")
        (device / "class").write_text(pci_class + "\n")
    return root


def gpu_server_sysfs(root: Path, gpus: int) -> Path:
    """A GPU server's bus: a host bridge, and ``gpus`` NVIDIA 3D controllers each with an audio
    function (which is no GPU)."""
    return fake_sysfs(root, [INTEL_HOST_BRIDGE, *[NVIDIA_3D_CONTROLLER, NVIDIA_GPU_AUDIO] * gpus])


def cpu_only_sysfs(root: Path) -> Path:
    """A CPU-only node's bus: no NVIDIA function at all."""
    return fake_sysfs(root, [INTEL_HOST_BRIDGE, ("0x8086", "0x010802"), ("0x14e4", "0x020000")])


# --------------------------------------------------------------------------- plumbing
def write_scenario(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def fake_env(scenario_path: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess whose ``import pynvml`` gets the fake."""
    env = dict(os.environ if base is None else base)
    python_path = [str(FAKE_NVML_DIR), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env[ENV_VAR] = str(scenario_path)
    return env


def load_fake_pynvml(scenario_path: Path) -> ModuleType:
    """A fresh copy of the fake module with ``scenario_path`` loaded (not put in sys.modules).

    Raises ImportError for an ``import_error`` scenario, like a missing nvidia-ml-py.
    """
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(scenario_path)
    try:
        spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML_DIR / "pynvml.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        if previous is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = previous
