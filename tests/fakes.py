"""Fake NVML at the ``pynvml`` boundary: scenario builders and ways to use them.

A scenario is a JSON-ready dict read by ``tests/fake_nvml/pynvml.py`` (see its docstring).
In-process: :func:`load_fake_pynvml` and put the module in ``sys.modules["pynvml"]``.
Subprocess: :func:`write_scenario` then run with ``env=fake_env(path)``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from node_agent.gpu import GpuCollector

MakeCollector = Callable[..., tuple[GpuCollector, ModuleType]]  # the make_collector fixture

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_NVML_DIR = REPO_ROOT / "tests" / "fake_nvml"
ENV_VAR = "SERS_FAKE_NVML"

GIB = 1024**3
# Pids are below the kernel's pid_max, which is at most 2**22: these never exist.
MISSING_PIDS = (4_194_304 + 11, 4_194_304 + 12)

# pcie_gen: the model's PCIe generation; nvlinks: its NVLink links; memory health: "remap" (row
# remapping, Ampere and later), "retire" (page retirement, before Ampere), or None (no ECC).
MODELS: dict[str, dict[str, Any]] = {
    "H100": {
        "name": "NVIDIA H100 80GB HBM3",
        "mem_total_bytes": 80 * GIB,
        "power_limit_mw": 700_000,
        "pcie_gen": 5,
        "nvlinks": 18,
        "memory_health": "remap",
    },
    "A100": {
        "name": "NVIDIA A100-SXM4-40GB",
        "mem_total_bytes": 40 * GIB,
        "power_limit_mw": 400_000,
        "pcie_gen": 4,
        "nvlinks": 12,
        "memory_health": "remap",
    },
    "RTX4090": {
        "name": "NVIDIA GeForce RTX 4090",
        "mem_total_bytes": 24 * GIB,
        "power_limit_mw": 450_000,
        "pcie_gen": 4,
        "nvlinks": 0,
        "memory_health": None,
    },
    "T4": {
        "name": "Tesla T4",
        "mem_total_bytes": 15 * GIB,
        "power_limit_mw": 70_000,
        "pcie_gen": 3,
        "nvlinks": 0,
        "memory_health": "retire",
    },
}

NO_INSTANCE = 0xFFFFFFFF  # an event's instance ids on a GPU not in MIG mode


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
        "ecc_corrected": 0,
        "ecc_aggregate_corrected": 0,
        "ecc_aggregate_uncorrected": 0,
        "retired_pages": {"single_bit": 0, "double_bit": 0, "pending": 0}
        if facts["memory_health"] == "retire"
        else None,
        "remapped_rows": [0, 0, 0, 0] if facts["memory_health"] == "remap" else None,
        "pcie_gen": facts["pcie_gen"],
        "pcie_gen_max": facts["pcie_gen"],
        "pcie_width": 16,
        "pcie_width_max": 16,
        "pcie_tx_kb_per_s": 1000 * index,
        "pcie_rx_kb_per_s": 2000 * index,
        "pcie_replay": 0,
        "nvlinks": [nvlink() for _ in range(facts["nvlinks"])] or None,
        "events_supported": True,
        "xid_events": [],
        "gi_profiles": GI_PROFILES.get(model),  # MIG profiles offered
    }
    if facts["memory_health"] is None:
        entry.update(ecc_uncorrected=None, ecc_corrected=None)
        entry.update(ecc_aggregate_corrected=None, ecc_aggregate_uncorrected=None)
    entry.update(overrides)
    return entry


def nvlink(state: int = 1, **errors: int) -> dict[str, Any]:
    """One NVLink link: state 1 (up) or 0, and its error counters (replay, recovery, ...)."""
    return {"state": state, "replay": 0, "recovery": 0, "crc_flit": 0, "crc_data": 0, **errors}


def xid(
    code: int,
    after_s: float = 0.0,
    gpu_instance_id: int = NO_INSTANCE,
    compute_instance_id: int = NO_INSTANCE,
) -> dict[str, Any]:
    """An Xid event delivered ``after_s`` after its GPU was registered for events."""
    return {
        "code": code,
        "after_s": after_s,
        "gpu_instance_id": gpu_instance_id,
        "compute_instance_id": compute_instance_id,
    }


# A100 40GB MIG profiles: (name, GPU instance profile's memory)
A100_MIG_PROFILES = {"1g.5gb": 5 * GIB, "2g.10gb": 10 * GIB, "3g.20gb": 20 * GIB, "7g.40gb": 40 * GIB}


def gi_profile(
    profile: int, profile_id: int, name: str, slices: int, instances: int, memory_mb: int
) -> dict[str, Any]:
    """A GPU instance profile NVML's table offers at index ``profile`` (``id``: the profile id
    nvidia-smi shows)."""
    return {
        "profile": profile,
        "id": profile_id,
        "name": f"MIG {name}",
        "slices": slices,
        "instances": instances,
        "memory_mb": memory_mb,
    }


# An A100 40GB's GPU instance profiles (nvidia-smi mig -lgip), by their index in NVML's table
A100_GI_PROFILES = [
    gi_profile(0, 19, "1g.5gb", 1, 7, 4864),
    gi_profile(1, 14, "2g.10gb", 2, 3, 9856),
    gi_profile(2, 9, "3g.20gb", 3, 2, 19968),
    gi_profile(3, 5, "4g.20gb", 4, 1, 19968),
    gi_profile(4, 0, "7g.40gb", 7, 1, 40192),
    gi_profile(7, 20, "1g.5gb+me", 1, 1, 4864),
    gi_profile(9, 15, "1g.10gb", 1, 4, 9856),
]
GI_PROFILES = {"A100": A100_GI_PROFILES}


def mig_device(
    parent: int, slot: int, profile: str, gpu_instance_id: int, pids: Iterable[int] = (), model: str = "A100"
) -> dict[str, Any]:
    """A MIG instance of GPU ``parent`` in MIG slot ``slot``; each pid uses 1 GiB of it."""
    pids = list(pids)
    return {
        "slot": slot,
        "name": f"{MODELS[model]['name']} MIG {profile}",
        "uuid": f"MIG-{parent:08x}-{slot:04x}-4444-5555-{gpu_instance_id:012x}",
        "gpu_instance_id": gpu_instance_id,
        "compute_instance_id": 0,
        "mem_total_bytes": A100_MIG_PROFILES[profile] - 256 * 1024**2,
        "mem_used_bytes": len(pids) * GIB,
        "util_gpu": None,  # NVML gives no utilization per MIG instance
        "util_mem": None,
        "compute_processes": [process(pid, GIB) for pid in pids],
    }


# Every health field a GPU may not support: all None, and Xid events can't be registered.
NO_HEALTH = {
    "ecc_uncorrected": None,
    "ecc_corrected": None,
    "ecc_aggregate_corrected": None,
    "ecc_aggregate_uncorrected": None,
    "retired_pages": None,
    "remapped_rows": None,
    "pcie_gen": None,
    "pcie_gen_max": None,
    "pcie_width": None,
    "pcie_width_max": None,
    "pcie_tx_kb_per_s": None,
    "pcie_rx_kb_per_s": None,
    "pcie_replay": None,
    "nvlinks": None,
    "events_supported": False,
    "mig_mode": None,
}


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


def eight_gpus_with_mig(pids: Iterable[int] = ()) -> dict[str, Any]:
    """An 8x A100 node, GPUs 0 to 3 in MIG mode with two slices each (3g.20gb and 2g.10gb: 8
    slices); the k-th pid runs on slice k % 8, or on GPU 4 + k % 4 once the slices have one each."""
    pids = list(pids)
    gpus = []
    for index in range(8):
        if index < 4:
            mine = pids[2 * index : 2 * index + 2]
            slices = [
                mig_device(index, 0, "3g.20gb", 1, mine[:1]),
                mig_device(index, 3, "2g.10gb", 5, mine[1:2]),
            ]
            procs = [process(pid, GIB) for pid in mine]
            gpus.append(
                gpu(
                    index,
                    "A100",
                    mig_mode=[1, 1],
                    util_gpu=None,
                    util_mem=None,
                    mig_devices=slices,
                    compute_processes=procs,
                )
            )
        else:
            procs = [process(pid, GIB) for pid in pids[8 + index - 4 :: 4]]
            gpus.append(gpu(index, "A100", compute_processes=procs))
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
        **NO_HEALTH,
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


def xid_79_after_registration(after_s: float = 2.0) -> dict[str, Any]:
    """Two H100s; GPU 1 falls off the bus (Xid 79) ``after_s`` after it was registered."""
    return scenario([gpu(0), gpu(1, xid_events=[xid(79, after_s)])])


def a100_mig(pids: Iterable[int] = (), xids: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """An A100 in MIG mode with two slices of different profiles: 3g.20gb (GPU instance 1) runs
    the first pid, 2g.10gb (GPU instance 5) the second; ``xids`` are delivered to the GPU."""
    pids = list(pids)
    slices = [
        mig_device(0, 0, "3g.20gb", 1, pids[:1]),
        mig_device(0, 3, "2g.10gb", 5, pids[1:2]),
    ]
    everything = [process(pid, GIB) for pid in pids[:2]]
    return scenario(
        [
            gpu(
                0,
                "A100",
                mig_mode=[1, 1],
                util_gpu=None,  # NVML: not supported on a GPU in MIG mode
                util_mem=None,
                mig_devices=slices,
                compute_processes=everything,
                xid_events=list(xids),
            )
        ]
    )


def memory_faults() -> dict[str, Any]:
    """Four A100s: healthy; a row remap pending (a reset remaps it); a remap failure (no spare
    row left); ECC errors (tests raise them between samples)."""
    return scenario(
        [
            gpu(0, "A100"),
            gpu(1, "A100", remapped_rows=[0, 1, 1, 0], ecc_uncorrected=1, ecc_aggregate_uncorrected=1),
            gpu(2, "A100", remapped_rows=[2, 5, 0, 1], ecc_aggregate_uncorrected=5),
            gpu(3, "A100", ecc_corrected=10, ecc_aggregate_corrected=10),
        ]
    )


def slowdowns_and_links() -> dict[str, Any]:
    """H100s: HW thermal and SW thermal slowdown; power brake (HW slowdown too); a PCIe link at
    x8 of x16 under load; an NVLink link down with CRC errors; a T4 with a page pending retirement."""
    links = [nvlink() for _ in range(18)]
    links[3] = nvlink(state=0, crc_flit=7)
    return scenario(
        [
            gpu(0, clocks_event_reasons=0x40 | 0x20),
            gpu(1, clocks_event_reasons=0x80 | 0x8),
            gpu(2, pcie_width=8, util_gpu=90),
            gpu(3, nvlinks=links, clocks_event_reasons=0x1 | 0x4),
            gpu(4, "T4", retired_pages={"single_bit": 2, "double_bit": 1, "pending": 1}),
        ]
    )


def no_health_support() -> dict[str, Any]:
    """A GPU that supports none of the health fields, Xid events included."""
    return scenario([gpu(0, "T4", **NO_HEALTH)])


def events_unsupported() -> dict[str, Any]:
    """Two H100s whose driver can't register Xid events (everything else is there)."""
    return scenario([gpu(0, events_supported=False), gpu(1, events_supported=False)])


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
