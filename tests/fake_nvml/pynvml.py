"""A small fake of nvidia-ml-py's ``pynvml``: only what ``node_agent.gpu`` calls.

The scenario is JSON named by ``SERS_FAKE_NVML`` (read when this module is imported), so it
works in-process and in subprocesses started with ``PYTHONPATH=tests/fake_nvml``. Shape::

    {"import_error": false,            # true: importing this module raises ImportError
     "init_error": null,               # "LibraryNotFound" | "DriverNotLoaded" | ...
     "legacy": false,                  # old bindings: bytes strings, ...ThrottleReasons only
     "driver_version": "550.54.15", "cuda_driver_version": 12040, "nvml_version": "12.550.54.15",
     "gpus": [{"name": ..., "uuid": ..., "pci_bus_id": ..., "mem_total_bytes": ...,
               "mem_used_bytes": ..., "util_gpu": ..., "util_mem": ..., "temp_celsius": ...,
               "fan_percent": ..., "power_mw": ..., "power_limit_mw": ..., "clock_sm_mhz": ...,
               "clock_mem_mhz": ..., "pstate": ..., "enc_util": ..., "dec_util": ...,
               "clocks_event_reasons": ..., "ecc_uncorrected": ..., "mig_mode": [cur, pending],
               "compute_processes": [{"pid": ..., "used_gpu_memory": ...}],
               "graphics_processes": [...],
               "errors": {"nvmlDeviceGetFanSpeed": "NotSupported", "*": "GpuIsLost"},
               # health (each null or absent: NotSupported)
               "ecc_corrected": ..., "ecc_aggregate_corrected": ..., "ecc_aggregate_uncorrected": ...,
               "retired_pages": {"single_bit": n, "double_bit": n, "pending": 0 | 1},
               "remapped_rows": [corrected, uncorrected, pending, failure],
               "pcie_gen": ..., "pcie_gen_max": ..., "pcie_width": ..., "pcie_width_max": ...,
               "pcie_tx_kb_per_s": ..., "pcie_rx_kb_per_s": ..., "pcie_replay": ...,
               "nvlinks": [{"state": 1, "replay": 0, "recovery": 0, "crc_flit": 0, "crc_data": 0}],
               "events_supported": true,      # false: nvmlDeviceRegisterEvents is NotSupported
               "xid_events": [{"after_s": 3.0, "code": 79,   # delivered after_s after registering
                               "gpu_instance_id": 0xFFFFFFFF, "compute_instance_id": 0xFFFFFFFF}],
               "gi_profiles": [{"profile": 0, "id": 19, "name": "MIG 1g.5gb", "slices": 1,
                                "instances": 7, "memory_mb": 4864}],   # MIG profiles offered
               "mig_devices": [{"slot": 0, "name": "... MIG 3g.20gb", "uuid": "MIG-...",
                                "gpu_instance_id": 1, "compute_instance_id": 0,
                                "mem_total_bytes": ..., "mem_used_bytes": ...,
                                "compute_processes": [...]}]}]}

``errors`` maps an NVML function name (``"*"``: every per-GPU function) to the name of the
``NVMLError_<name>`` it raises. Tests may change a GPU's dict in place between samples.

For changes mid-run in a subprocess (hardening tests): with ``"live_reload": true`` the file is
read again whenever it changes (write it atomically: temp file, then rename) and every GPU's
dict is updated in place; the number of GPUs must stay the same. ``nvmlInit`` reads it too, so
an ``init_error`` taken out of the file lets the next init succeed. A GPU's ``"hang": [fn, ...]``
makes those per-GPU functions block, like a stuck driver, until the file no longer lists them.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, NoReturn

# --------------------------------------------------------------------------- constants
NVML_SUCCESS = 0
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_PSTATE_UNKNOWN = 32
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_AGGREGATE_ECC = 1
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_MAX_LINKS = 36
NVML_NVLINK_ERROR_DL_REPLAY = 0
NVML_NVLINK_ERROR_DL_RECOVERY = 1
NVML_NVLINK_ERROR_DL_CRC_FLIT = 2
NVML_NVLINK_ERROR_DL_CRC_DATA = 3
NVML_MAX_MIG_DEVICES = 7  # per GPU on an A100 or H100
NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12
NVML_DEVICE_NAME_V2_BUFFER_SIZE = 96
nvmlEventTypeXidCriticalError = 0x8

_ERROR_CODES = {
    "Uninitialized": (1, "Uninitialized"),
    "InvalidArgument": (2, "Invalid Argument"),
    "NotSupported": (3, "Not Supported"),
    "NoPermission": (4, "Insufficient Permissions"),
    "NotFound": (6, "Not Found"),
    "DriverNotLoaded": (9, "Driver Not Loaded"),
    "Timeout": (10, "Timeout"),
    "LibraryNotFound": (12, "NVML Shared Library Not Found"),
    "FunctionNotFound": (13, "Function Not Found"),
    "GpuIsLost": (15, "GPU is lost"),
    "ResetRequired": (16, "GPU requires restart"),
    "LibRmVersionMismatch": (18, "RM has detected an NVML/RM version mismatch."),
    "Unknown": (999, "Unknown Error"),
}


# --------------------------------------------------------------------------- errors
class NVMLError(Exception):
    """Like the real one: ``NVMLError(code)`` builds the matching subclass."""

    _by_code: dict[int, type[NVMLError]] = {}
    _text: dict[int, str] = {}

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, NVMLError)
        return Exception.__new__(cls)

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return NVMLError._text.get(self.value, f"NVML Error with code {self.value}")


class NVMLLibraryMismatchError(Exception):
    pass


def _define_errors() -> None:
    for name, (code, text) in _ERROR_CODES.items():
        cls = type(f"NVMLError_{name}", (NVMLError,), {})
        globals()[cls.__name__] = cls
        globals()[f"NVML_ERROR_{name.upper()}"] = code
        NVMLError._by_code[code] = cls
        NVMLError._text[code] = text


_define_errors()
NVMLError_NotSupported: type[NVMLError]  # defined above, named here for readers
NVMLError_GpuIsLost: type[NVMLError]
NVMLError_LibraryNotFound: type[NVMLError]
NVMLError_DriverNotLoaded: type[NVMLError]


def _raise(name: str) -> NoReturn:
    raise NVMLError(_ERROR_CODES[name][0])


# --------------------------------------------------------------------------- scenario
def _load() -> dict[str, Any]:
    if not _scenario_path:
        return {"gpus": []}
    with open(_scenario_path, encoding="utf-8") as f:
        scenario: dict[str, Any] = json.load(f)
    return scenario


_scenario_path = os.environ.get("SERS_FAKE_NVML")  # in-process it is unset once loaded
_scenario = _load()
_scenario_mtime_ns = os.stat(_scenario_path).st_mtime_ns if _scenario_path else 0


def _reload_if_changed() -> None:
    """``live_reload``: takes in a changed scenario file, keeping every dict's identity."""
    global _scenario_mtime_ns
    if not (_scenario.get("live_reload") and _scenario_path):
        return
    mtime_ns = os.stat(_scenario_path).st_mtime_ns
    if mtime_ns == _scenario_mtime_ns:
        return
    try:
        fresh = _load()
    except ValueError:  # caught mid-write: try again at the next call
        return
    _scenario_mtime_ns = mtime_ns
    for old, new in zip(_scenario.get("gpus", []), fresh.get("gpus", []), strict=False):
        old.clear()
        old.update(new)
    for key in [k for k in _scenario if k not in fresh and k != "gpus"]:
        del _scenario[key]
    _scenario.update({k: v for k, v in fresh.items() if k != "gpus"})


if _scenario.get("import_error"):
    raise ImportError("No module named 'pynvml' (fake: scenario import_error)")

_initialised = 0
calls: dict[str, int] = {}  # per-function call counts, for tests


class _Handle:
    """A GPU's handle, or a MIG device's: then ``gpu`` is the slice's dict and ``parent`` the
    GPU's handle."""

    __slots__ = ("gpu", "index", "parent")

    def __init__(self, index: int, gpu: dict[str, Any], parent: _Handle | None = None) -> None:
        self.index = index
        self.gpu = gpu
        self.parent = parent


class c_nvmlEventData_t(ctypes.Structure):
    """The real structure's fields; ``device`` holds the fake's handle object."""

    _fields_ = [
        ("device", ctypes.py_object),
        ("eventType", ctypes.c_ulonglong),
        ("eventData", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class c_nvmlGpuInstanceProfileInfo_v2_t(ctypes.Structure):
    """The real structure's fields (what ``nvmlDeviceGetGpuInstanceProfileInfo`` returns)."""

    _fields_ = [
        ("version", ctypes.c_uint),
        ("id", ctypes.c_uint),
        ("isP2pSupported", ctypes.c_uint),
        ("sliceCount", ctypes.c_uint),
        ("instanceCount", ctypes.c_uint),
        ("multiprocessorCount", ctypes.c_uint),
        ("copyEngineCount", ctypes.c_uint),
        ("decoderCount", ctypes.c_uint),
        ("encoderCount", ctypes.c_uint),
        ("jpegCount", ctypes.c_uint),
        ("ofaCount", ctypes.c_uint),
        ("memorySizeMB", ctypes.c_ulonglong),
        ("name", ctypes.c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE),
    ]


class _EventSet:
    """Registered handles, when each was registered, and the events already delivered."""

    def __init__(self) -> None:
        self.registered: list[tuple[_Handle, float]] = []
        self.delivered: set[tuple[int, int]] = set()
        self.freed = False
        self.lock = threading.Lock()


def _text(value: str) -> str | bytes:
    return value.encode() if _scenario.get("legacy") else value


def _gpu(handle: _Handle, fn: str) -> dict[str, Any]:
    calls[fn] = calls.get(fn, 0) + 1
    if not _initialised:
        _raise("Uninitialized")
    _reload_if_changed()
    gpu = handle.gpu
    while fn in (gpu.get("hang") or ()):  # a stuck driver call, until the scenario lets go
        time.sleep(0.05)
        _reload_if_changed()
    errors = gpu.get("errors")
    if errors:
        error = errors.get(fn) or errors.get("*")
        if error:
            _raise(error)
    return gpu


def _value(handle: _Handle, fn: str, key: str) -> Any:
    value = _gpu(handle, fn).get(key)
    if value is None:
        _raise("NotSupported")
    return value


# --------------------------------------------------------------------------- system
def nvmlInit() -> None:
    global _initialised
    _reload_if_changed()
    error = _scenario.get("init_error")
    if error:
        _raise(error)
    _initialised += 1


def nvmlShutdown() -> None:
    global _initialised
    if not _initialised:
        _raise("Uninitialized")
    _initialised -= 1


def _system(key: str) -> Any:
    if not _initialised:
        _raise("Uninitialized")
    value = _scenario.get(key)
    if value is None:
        _raise("NotSupported")
    return value


def nvmlSystemGetDriverVersion() -> str | bytes:
    return _text(_system("driver_version"))


def nvmlSystemGetNVMLVersion() -> str | bytes:
    return _text(_system("nvml_version"))


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_system("cuda_driver_version"))


def nvmlDeviceGetCount() -> int:
    if not _initialised:
        _raise("Uninitialized")
    return len(_scenario.get("gpus", []))


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    gpus = _scenario.get("gpus", [])
    if not 0 <= index < len(gpus):
        _raise("InvalidArgument")
    handle = _Handle(index, gpus[index])
    _gpu(handle, "nvmlDeviceGetHandleByIndex")
    return handle


# --------------------------------------------------------------------------- static facts
def nvmlDeviceGetName(handle: _Handle) -> str | bytes:
    return _text(_value(handle, "nvmlDeviceGetName", "name"))


def nvmlDeviceGetUUID(handle: _Handle) -> str | bytes:
    return _text(_value(handle, "nvmlDeviceGetUUID", "uuid"))


def nvmlDeviceGetPciInfo(handle: _Handle) -> SimpleNamespace:
    bus_id = _value(handle, "nvmlDeviceGetPciInfo", "pci_bus_id")
    return SimpleNamespace(busId=_text(bus_id), busIdLegacy=_text(bus_id[-12:]))


def nvmlDeviceGetMigMode(handle: _Handle) -> list[int]:
    return list(_value(handle, "nvmlDeviceGetMigMode", "mig_mode"))


def nvmlDeviceGetGpuInstanceProfileInfo(
    device: _Handle, profile: int, version: int = 2
) -> c_nvmlGpuInstanceProfileInfo_v2_t:
    """Like the real one (version 2): the GPU instance profile at ``profile`` (an index into
    NVML's table: NVML_GPU_INSTANCE_PROFILE_1_SLICE...), NotSupported for one the GPU doesn't
    offer (or a GPU without ``gi_profiles``), InvalidArgument past the table."""
    gpu = _gpu(device, "nvmlDeviceGetGpuInstanceProfileInfo")
    if not 0 <= profile < NVML_GPU_INSTANCE_PROFILE_COUNT or version != 2:
        _raise("InvalidArgument")
    offered = {p["profile"]: p for p in gpu.get("gi_profiles") or ()} if device.parent is None else {}
    found = offered.get(profile)
    if found is None:
        _raise("NotSupported")
    return c_nvmlGpuInstanceProfileInfo_v2_t(
        version=0x02000098,
        id=found["id"],
        sliceCount=found["slices"],
        instanceCount=found["instances"],
        memorySizeMB=found["memory_mb"],
        name=found["name"].encode(),
    )


def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetEnforcedPowerLimit", "power_limit_mw"))


# --------------------------------------------------------------------------- samples
def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None) -> SimpleNamespace:
    gpu = _gpu(handle, "nvmlDeviceGetMemoryInfo")
    total, used = gpu.get("mem_total_bytes"), gpu.get("mem_used_bytes")
    if total is None or used is None:
        _raise("NotSupported")
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> SimpleNamespace:
    gpu = _gpu(handle, "nvmlDeviceGetUtilizationRates")
    if gpu.get("util_gpu") is None or gpu.get("util_mem") is None:
        _raise("NotSupported")
    return SimpleNamespace(gpu=gpu["util_gpu"], memory=gpu["util_mem"])


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    if sensor != NVML_TEMPERATURE_GPU:
        _raise("InvalidArgument")
    return int(_value(handle, "nvmlDeviceGetTemperature", "temp_celsius"))


def nvmlDeviceGetFanSpeed(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetFanSpeed", "fan_percent"))


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetPowerUsage", "power_mw"))


def nvmlDeviceGetClockInfo(handle: _Handle, clock_type: int) -> int:
    key = {NVML_CLOCK_SM: "clock_sm_mhz", NVML_CLOCK_MEM: "clock_mem_mhz"}.get(clock_type)
    if key is None:
        _raise("InvalidArgument")
    return int(_value(handle, "nvmlDeviceGetClockInfo", str(key)))


def nvmlDeviceGetPerformanceState(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetPerformanceState", "pstate"))


def nvmlDeviceGetEncoderUtilization(handle: _Handle) -> list[int]:
    return [int(_value(handle, "nvmlDeviceGetEncoderUtilization", "enc_util")), 167000]


def nvmlDeviceGetDecoderUtilization(handle: _Handle) -> list[int]:
    return [int(_value(handle, "nvmlDeviceGetDecoderUtilization", "dec_util")), 167000]


def nvmlDeviceGetCurrentClocksEventReasons(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetCurrentClocksEventReasons", "clocks_event_reasons"))


def nvmlDeviceGetCurrentClocksThrottleReasons(handle: _Handle) -> int:
    fn = "nvmlDeviceGetCurrentClocksThrottleReasons"
    return int(_value(handle, fn, "clocks_event_reasons"))


if _scenario.get("legacy"):  # bindings older than 12.535 only know the "throttle" name
    del nvmlDeviceGetCurrentClocksEventReasons


_ECC_KEYS = {
    (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC): "ecc_uncorrected",
    (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC): "ecc_corrected",
    (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_AGGREGATE_ECC): "ecc_aggregate_uncorrected",
    (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_AGGREGATE_ECC): "ecc_aggregate_corrected",
}


def nvmlDeviceGetTotalEccErrors(handle: _Handle, errorType: int, counterType: int) -> int:
    key = _ECC_KEYS.get((errorType, counterType))
    if key is None:
        _raise("InvalidArgument")
    return int(_value(handle, "nvmlDeviceGetTotalEccErrors", key))


# --------------------------------------------------------------------------- health
def nvmlDeviceGetRetiredPages(device: _Handle, sourceFilter: int) -> list[int]:
    pages = _value(device, "nvmlDeviceGetRetiredPages", "retired_pages")
    key = {
        NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: "single_bit",
        NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: "double_bit",
    }.get(sourceFilter)
    if key is None:
        _raise("InvalidArgument")
    return [0x1000 * (k + 1) for k in range(int(pages[key]))]  # page addresses


def nvmlDeviceGetRetiredPagesPendingStatus(device: _Handle) -> int:
    return int(_value(device, "nvmlDeviceGetRetiredPagesPendingStatus", "retired_pages")["pending"])


def nvmlDeviceGetRemappedRows(device: _Handle) -> tuple[int, int, int, int]:
    corrected, uncorrected, pending, failure = _value(device, "nvmlDeviceGetRemappedRows", "remapped_rows")
    return (int(corrected), int(uncorrected), int(pending), int(failure))


def nvmlDeviceGetCurrPcieLinkGeneration(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetCurrPcieLinkGeneration", "pcie_gen"))


def nvmlDeviceGetMaxPcieLinkGeneration(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetMaxPcieLinkGeneration", "pcie_gen_max"))


def nvmlDeviceGetCurrPcieLinkWidth(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetCurrPcieLinkWidth", "pcie_width"))


def nvmlDeviceGetMaxPcieLinkWidth(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetMaxPcieLinkWidth", "pcie_width_max"))


def nvmlDeviceGetPcieThroughput(device: _Handle, counter: int) -> int:
    """KB/s over the last 20 ms, as NVML measures it."""
    key = {NVML_PCIE_UTIL_TX_BYTES: "pcie_tx_kb_per_s", NVML_PCIE_UTIL_RX_BYTES: "pcie_rx_kb_per_s"}.get(
        counter
    )
    if key is None:
        _raise("InvalidArgument")
    return int(_value(device, "nvmlDeviceGetPcieThroughput", key))


def nvmlDeviceGetPcieReplayCounter(handle: _Handle) -> int:
    return int(_value(handle, "nvmlDeviceGetPcieReplayCounter", "pcie_replay"))


def _nvlink(device: _Handle, fn: str, link: int) -> dict[str, Any]:
    links = _value(device, fn, "nvlinks")
    if not 0 <= link < len(links):
        _raise("InvalidArgument")  # what NVML says for a link the GPU doesn't have
    entry: dict[str, Any] = links[link]
    return entry


def nvmlDeviceGetNvLinkState(device: _Handle, link: int) -> int:
    return int(_nvlink(device, "nvmlDeviceGetNvLinkState", link)["state"])


def nvmlDeviceGetNvLinkErrorCounter(device: _Handle, link: int, counter: int) -> int:
    key = {
        NVML_NVLINK_ERROR_DL_REPLAY: "replay",
        NVML_NVLINK_ERROR_DL_RECOVERY: "recovery",
        NVML_NVLINK_ERROR_DL_CRC_FLIT: "crc_flit",
        NVML_NVLINK_ERROR_DL_CRC_DATA: "crc_data",
    }.get(counter)
    if key is None:
        _raise("InvalidArgument")
    return int(_nvlink(device, "nvmlDeviceGetNvLinkErrorCounter", link)[key])


def nvmlDeviceGetIndex(handle: _Handle) -> int:
    _gpu(handle, "nvmlDeviceGetIndex")
    if handle.parent is not None:
        _raise("InvalidArgument")
    return handle.index


# --------------------------------------------------------------------------- MIG
def nvmlDeviceGetMaxMigDeviceCount(device: _Handle) -> int:
    gpu = _gpu(device, "nvmlDeviceGetMaxMigDeviceCount")
    if device.parent is not None or "mig_devices" not in gpu:
        _raise("NotSupported")
    return NVML_MAX_MIG_DEVICES


def nvmlDeviceGetMigDeviceHandleByIndex(device: _Handle, index: int) -> _Handle:
    gpu = _gpu(device, "nvmlDeviceGetMigDeviceHandleByIndex")
    if not 0 <= index < NVML_MAX_MIG_DEVICES:
        _raise("InvalidArgument")
    if not (gpu.get("mig_mode") or [0])[0]:
        _raise("NotSupported")  # MIG mode off
    for mig in gpu.get("mig_devices") or ():
        if mig["slot"] == index:
            return _Handle(index, mig, parent=device)
    _raise("NotFound")


def nvmlDeviceGetGpuInstanceId(device: _Handle) -> int:
    if device.parent is None:
        _raise("InvalidArgument")
    return int(_value(device, "nvmlDeviceGetGpuInstanceId", "gpu_instance_id"))


def nvmlDeviceGetComputeInstanceId(device: _Handle) -> int:
    if device.parent is None:
        _raise("InvalidArgument")
    return int(_value(device, "nvmlDeviceGetComputeInstanceId", "compute_instance_id"))


# --------------------------------------------------------------------------- events
def nvmlEventSetCreate() -> _EventSet:
    if not _initialised:
        _raise("Uninitialized")
    return _EventSet()


def nvmlDeviceRegisterEvents(handle: _Handle, eventTypes: int, eventSet: _EventSet) -> None:
    gpu = _gpu(handle, "nvmlDeviceRegisterEvents")
    if not gpu.get("events_supported", True):
        _raise("NotSupported")
    with eventSet.lock:
        eventSet.registered.append((handle, time.monotonic()))


def _due_event(event_set: _EventSet, now: float) -> tuple[float, Any] | None:
    """The earliest undelivered event (when due, and what), over every registered GPU."""
    earliest: tuple[float, Any] | None = None
    for handle, registered_at in event_set.registered:
        for number, event in enumerate(handle.gpu.get("xid_events") or ()):
            if (handle.index, number) in event_set.delivered:
                continue
            due = registered_at + float(event.get("after_s", 0.0))
            if earliest is None or due < earliest[0]:
                earliest = (due, (handle, number, event))
    return earliest


def nvmlEventSetWait_v2(eventSet: _EventSet, timeoutms: int) -> c_nvmlEventData_t:
    """Like the real one: blocks up to ``timeoutms``; raises NVMLError_Timeout when none came."""
    calls["nvmlEventSetWait_v2"] = calls.get("nvmlEventSetWait_v2", 0) + 1
    if eventSet.freed or not _initialised:
        _raise("Uninitialized")
    deadline = time.monotonic() + timeoutms / 1000.0
    while True:
        _reload_if_changed()
        now = time.monotonic()
        with eventSet.lock:
            found = _due_event(eventSet, now)
            if found is not None and found[0] <= now:
                handle, number, event = found[1]
                eventSet.delivered.add((handle.index, number))
                return c_nvmlEventData_t(
                    handle,
                    nvmlEventTypeXidCriticalError,
                    int(event["code"]),
                    int(event.get("gpu_instance_id", 0xFFFFFFFF)),
                    int(event.get("compute_instance_id", 0xFFFFFFFF)),
                )
        if now >= deadline:
            _raise("Timeout")
        wake = deadline if found is None else min(deadline, found[0])
        if _scenario.get("live_reload"):  # an event may be written into the file meanwhile
            wake = min(wake, now + 0.05)
        time.sleep(max(0.0, wake - now))


def nvmlEventSetFree(eventSet: _EventSet) -> None:
    eventSet.freed = True


def _processes(handle: _Handle, fn: str, key: str) -> list[SimpleNamespace]:
    gpu = _gpu(handle, fn)
    return [
        SimpleNamespace(
            pid=p["pid"],
            usedGpuMemory=p.get("used_gpu_memory"),
            gpuInstanceId=0xFFFFFFFF,
            computeInstanceId=0xFFFFFFFF,
        )
        for p in gpu.get(key, ())
    ]


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[SimpleNamespace]:
    return _processes(handle, "nvmlDeviceGetComputeRunningProcesses", "compute_processes")


def nvmlDeviceGetGraphicsRunningProcesses(handle: _Handle) -> list[SimpleNamespace]:
    return _processes(handle, "nvmlDeviceGetGraphicsRunningProcesses", "graphics_processes")
