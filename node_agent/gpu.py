"""The GPU collector: NVML through nvidia-ml-py (``pynvml``). The only module that imports it.

NVML is initialised once, and handles and static facts are fetched once. While starting it fails
(an agent started at boot before the NVIDIA driver loaded) it is tried again every
:data:`NVML_RETRY_EVERY_S` seconds; when every GPU has failed for that long (a driver reload
mid-run) it is shut down and started again. :attr:`GpuCollector.static_generation` counts the
times the static facts changed (a new hello is due). Each sample reads only the values that
change; those that change rarely are read only every :data:`SLOW_FIELDS_EVERY_S` seconds: the
enforced power limit (an admin or a power capping policy sets it) and the memory and link health
(ECC counts, retired pages, remapped rows, the PCIe link, its replays and throughput; a hardware
fault shows within that time), NVLink every :data:`NVLINK_EVERY_S`, and which MIG instances a GPU has.

Xid errors arrive as NVML events, on a thread of their own (:class:`_XidWatcher`) that blocks in
``nvmlEventSetWait_v2`` and never delays a sample; each sample copies what it recorded.

One policy, :meth:`_Nvml.query`, decides what an NVML error means: a field the GPU doesn't
support (or we may not read) is ``None``; a lost GPU, or any other NVML error on a required call,
turns that GPU's sample into an error entry while the other GPUs still report. A machine without
the library or driver gets no GPUs and a :class:`GpuDriver` that says why, and whether the GPU
collector is down or the machine simply has no NVIDIA GPU (:func:`collector_state_after`): a GPU
server whose driver failed to load must not look like a CPU-only node.

Blocking (talks to the driver): the sampler calls it from its worker thread.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from node_agent.attribution import Attribution, AttributionReader
from node_agent.periodic import Periodic
from node_agent.procinfo import UNKNOWN, ProcessResolver, ProcInfo
from node_agent.protocol import (
    GPU_COLLECTOR_ABSENT,
    GPU_COLLECTOR_DOWN,
    GPU_COLLECTOR_UP,
    MAX_MIG_SLICES,
    MAX_OBJECT_LIST,
    MAX_XID_EVENTS,
    GpuDriver,
    GpuProcess,
    GpuSample,
    GpuStatic,
    MigSlice,
    XidEvent,
    nulls_for_out_of_bounds,
    to_wire,
)

# Clocks event ("throttle") reason bits, stable across NVML versions (nvml.h).
THROTTLE_REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)

# The power limit and the memory and link health are read again this often (a change shows
# within it). NVML measures PCIe throughput over 20 ms per call: read every sample, that would
# hold each sample of 8 GPUs for a third of a second.
SLOW_FIELDS_EVERY_S = 10.0
# NVLink state and error counters: up to 18 links of 5 calls per GPU, and they change rarely.
NVLINK_EVERY_S = 60.0
# The Xid thread waits this long for an event per call. Each wait that ends empty wakes the
# thread (about 0.1 ms of CPU in a VM): 5 s keeps that to 0.02 ms a second. An NVML restart
# waits for the thread to leave NVML (up to this long); an exiting agent waits only
# XID_CLOSE_WAIT_S and shuts NVML down under it (NVML is thread-safe: the wait then fails, and
# the thread, told to stop, ends).
XID_WAIT_MS = 5000
XID_CLOSE_WAIT_S = 0.2
# After an unexpected error of the event wait, the Xid thread waits this long before the next.
XID_RETRY_S = 5.0

# While NVML is down it is tried again this often: a driver loaded (or installed) after the agent
# started shows within it, and a failed nvmlInit costs about a millisecond.
NVML_RETRY_EVERY_S = 60.0

# How much more memory NVML may say is used than the listed processes hold before the rest is
# reported as held by an unseen process. NVML's memory info counts the driver's reservation as
# used (a few hundred MiB on an idle A100 or H100, growing with the card's memory), and a
# process's figure can lag its allocations by a sample: 1 GiB plus 1 % of the total keeps an
# idle card at 0 and still shows any real model (an 80 GiB card: above 1.8 GiB).
UNSEEN_MARGIN_BYTES = 1024**3
UNSEEN_MARGIN_RATIO = 0.01

# NVIDIA's PCI vendor id, and the PCI class of display controllers (0x0300 VGA, 0x0302 3D): a
# GPU's function, as opposed to the audio function of a graphics card (0x0403) or an NVSwitch.
NVIDIA_PCI_VENDOR = 0x10DE
PCI_CLASS_DISPLAY = 0x03

# (field, NVML function or None where the bindings lack it, arguments) per sampled call
SampleCalls = tuple[tuple[str, Callable[..., Any] | None, tuple[Any, ...]], ...]

# nvml.h values, used when the bindings lack the named constant.
_TEMPERATURE_GPU = 0
_CLOCK_SM = 1
_CLOCK_MEM = 2
_ECC_UNCORRECTED = 1
_ECC_VOLATILE = 0
_MIG_ENABLE = 1
_GPU_INSTANCE_PROFILE_COUNT = 0x12  # NVML_GPU_INSTANCE_PROFILE_COUNT (nvml.h, R570)
_PSTATE_UNKNOWN = 32
_ECC_CORRECTED = 0
_ECC_AGGREGATE = 1
_RETIRED_SINGLE_BIT = 0  # NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
_RETIRED_DOUBLE_BIT = 1
_PCIE_TX = 0
_PCIE_RX = 1
_XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
_NVLINK_MAX_LINKS = 36
_NVLINK_ERRORS = (0, 1, 2, 3)  # DL replay, DL recovery, DL CRC flit, DL CRC data
_FEATURE_ENABLED = 1
_NO_INSTANCE = 0xFFFFFFFF  # an event's instance ids on a GPU not in MIG mode

_UNSUPPORTED_ERRORS = (
    "NVMLError_NotSupported",
    "NVMLError_NoPermission",
    "NVMLError_FunctionNotFound",
)


class _Never(Exception):
    """Stands in for an NVML error class that these bindings don't define."""


class GpuLost(Exception):
    """A GPU stopped answering (or failed a required call); ``reason`` goes on the wire."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_throttle_reasons(mask: int) -> list[str]:
    """Short names of the bits set in an NVML clocks event reasons mask."""
    return [name for bit, name in THROTTLE_REASON_BITS if mask & bit]


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version integer (``12040``) as ``"12.4"``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def nvidia_gpus_on_pci_bus(sysfs_root: Path) -> int | None:
    """How many NVIDIA GPUs the PCI bus lists under ``sysfs_root`` (``/sys``), driver loaded or
    not; ``None`` when the bus can't be read, or lists no device at all (a container or sandbox
    that hides it): then nothing can be told from it."""
    devices = sysfs_root / "bus" / "pci" / "devices"
    try:
        entries = list(devices.iterdir())
    except OSError:
        return None
    if not entries:
        return None
    found = 0
    for entry in entries:
        try:
            vendor = int((entry / "vendor").read_text(), 16)
            pci_class = int((entry / "class").read_text(), 16)  # 0xCCSSPP: class, subclass, prog-if
        except (OSError, ValueError):
            continue
        if vendor == NVIDIA_PCI_VENDOR and pci_class >> 16 == PCI_CLASS_DISPLAY:
            found += 1
    return found


def collector_state_after(init_error: Exception, nvidia_gpus: int | None) -> str:
    """The GPU collector's state when NVML failed to start with ``init_error``, given the
    NVIDIA GPUs seen on the PCI bus (``None``: the bus can't be read).

    NVIDIA GPUs on the bus: ``down``, whatever failed. None on a readable bus: ``absent``, a
    CPU-only node (even with the driver's packages installed: there is nothing to monitor).
    An unreadable bus: ``absent`` only when NVML itself is missing (no nvidia-ml-py, no
    libnvidia-ml); NVML installed but failing (driver not loaded, library and driver mismatched,
    no permission) says the machine is meant to have GPUs: ``down``."""
    if nvidia_gpus:
        return GPU_COLLECTOR_DOWN
    if nvidia_gpus == 0:
        return GPU_COLLECTOR_ABSENT
    nvml_missing = (
        isinstance(init_error, ImportError) or type(init_error).__name__ == "NVMLError_LibraryNotFound"
    )
    return GPU_COLLECTOR_ABSENT if nvml_missing else GPU_COLLECTOR_DOWN


def _text(value: Any) -> str | None:
    """NVML strings are ``bytes`` in older bindings."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000.0


class _Nvml:
    """The bound ``pynvml`` module, the names resolved once, and the one error policy."""

    def __init__(self, module: ModuleType, log: logging.Logger) -> None:
        self.m = module
        self._log = log
        self.error = getattr(module, "NVMLError", _Never)
        self.lost = getattr(module, "NVMLError_GpuIsLost", _Never)
        names = (getattr(module, n, _Never) for n in _UNSUPPORTED_ERRORS)
        mismatch = getattr(module, "NVMLLibraryMismatchError", _Never)  # unversioned fn missing
        self.unsupported: tuple[type[BaseException], ...] = (*names, mismatch)
        self._warned: set[tuple[int, str]] = set()
        # Optional functions: new names first, the older bindings' names as fallback.
        self.cuda_version = self._fn("nvmlSystemGetCudaDriverVersion")
        self.nvml_version = self._fn("nvmlSystemGetNVMLVersion")
        self.pci_info = self._fn("nvmlDeviceGetPciInfo")
        self.mig_mode = self._fn("nvmlDeviceGetMigMode")
        self.gpu_instance_profile_info = self._fn("nvmlDeviceGetGpuInstanceProfileInfo")
        self.power_limit = self._fn("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit")
        self.throttle = self._fn(
            "nvmlDeviceGetCurrentClocksEventReasons",  # nvidia-ml-py >= 12.535
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        )
        self.timeout = getattr(module, "NVMLError_Timeout", _Never)
        # a link or MIG slot the GPU doesn't have
        self.absent: tuple[type[BaseException], ...] = (
            getattr(module, "NVMLError_InvalidArgument", _Never),
            getattr(module, "NVMLError_NotFound", _Never),
        )
        self.pcie_gen = self._fn("nvmlDeviceGetCurrPcieLinkGeneration")
        self.pcie_width = self._fn("nvmlDeviceGetCurrPcieLinkWidth")
        self.pcie_gen_max = self._fn("nvmlDeviceGetMaxPcieLinkGeneration")
        self.pcie_width_max = self._fn("nvmlDeviceGetMaxPcieLinkWidth")
        self.pcie_throughput = self._fn("nvmlDeviceGetPcieThroughput")
        self.pcie_replay = self._fn("nvmlDeviceGetPcieReplayCounter")
        self.remapped_rows = self._fn("nvmlDeviceGetRemappedRows")
        self.retired_pages = self._fn("nvmlDeviceGetRetiredPages")
        self.retired_pending = self._fn("nvmlDeviceGetRetiredPagesPendingStatus")
        self.nvlink_state = self._fn("nvmlDeviceGetNvLinkState")
        self.nvlink_errors = self._fn("nvmlDeviceGetNvLinkErrorCounter")
        self.mig_count = self._fn("nvmlDeviceGetMaxMigDeviceCount")
        self.mig_handle = self._fn("nvmlDeviceGetMigDeviceHandleByIndex")
        self.gpu_instance_id = self._fn("nvmlDeviceGetGpuInstanceId")
        self.compute_instance_id = self._fn("nvmlDeviceGetComputeInstanceId")
        self.device_index = self._fn("nvmlDeviceGetIndex")
        self.event_set_create = self._fn("nvmlEventSetCreate")
        self.register_events = self._fn("nvmlDeviceRegisterEvents")
        self.event_wait = self._fn("nvmlEventSetWait_v2", "nvmlEventSetWait")
        self.event_set_free = self._fn("nvmlEventSetFree")
        self.temp_gpu = self._const("NVML_TEMPERATURE_GPU", _TEMPERATURE_GPU)
        self.clock_sm = self._const("NVML_CLOCK_SM", _CLOCK_SM)
        self.clock_mem = self._const("NVML_CLOCK_MEM", _CLOCK_MEM)
        self.ecc_uncorrected = self._const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", _ECC_UNCORRECTED)
        self.ecc_volatile = self._const("NVML_VOLATILE_ECC", _ECC_VOLATILE)
        self.mig_enable = self._const("NVML_DEVICE_MIG_ENABLE", _MIG_ENABLE)
        self.gpu_instance_profiles = self._const(
            "NVML_GPU_INSTANCE_PROFILE_COUNT", _GPU_INSTANCE_PROFILE_COUNT
        )
        self.ecc_corrected = self._const("NVML_MEMORY_ERROR_TYPE_CORRECTED", _ECC_CORRECTED)
        self.ecc_aggregate = self._const("NVML_AGGREGATE_ECC", _ECC_AGGREGATE)
        self.retired_single_bit = self._const(
            "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", _RETIRED_SINGLE_BIT
        )
        self.retired_double_bit = self._const(
            "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", _RETIRED_DOUBLE_BIT
        )
        self.pcie_tx = self._const("NVML_PCIE_UTIL_TX_BYTES", _PCIE_TX)
        self.pcie_rx = self._const("NVML_PCIE_UTIL_RX_BYTES", _PCIE_RX)
        self.xid_event = self._const("nvmlEventTypeXidCriticalError", _XID_EVENT)
        self.nvlink_max_links = self._const("NVML_NVLINK_MAX_LINKS", _NVLINK_MAX_LINKS)
        self.feature_enabled = self._const("NVML_FEATURE_ENABLED", _FEATURE_ENABLED)

    def _const(self, name: str, default: int) -> int:
        value = getattr(self.m, name, default)
        return value if isinstance(value, int) else default

    def _fn(self, *names: str) -> Callable[..., Any] | None:
        for name in names:
            function = getattr(self.m, name, None)
            if function is not None:
                return function
        return None

    def query(
        self, gpu: _Gpu, key: str, fn: Callable[..., Any] | None, *args: Any, required: bool = False
    ) -> Any:
        """Calls ``fn(*args)`` for ``gpu``'s field ``key``; the value, or ``None`` if unsupported.

        Unsupported fields are remembered and not asked again. A lost GPU raises
        :class:`GpuLost`; so does any other NVML error on a ``required`` call, while on an
        optional one it is logged once and the field is ``None``.
        """
        if fn is None or key in gpu.unsupported:
            return None
        try:
            return fn(*args)
        except self.unsupported:
            gpu.unsupported.add(key)
            return None
        except self.lost:
            raise GpuLost("GPU is lost") from None
        except self.error as exc:
            if required:
                raise GpuLost(f"NVML error: {exc}") from None
            self.warn_once(gpu, key, exc)
            return None

    def warn_once(self, gpu: _Gpu, key: str, exc: BaseException) -> None:
        """Logs an unexpected NVML error reading ``gpu``'s field ``key``, the first time."""
        if (gpu.index, key) not in self._warned:
            self._warned.add((gpu.index, key))
            where = f"GPU {gpu.index}" if gpu.index >= 0 else "NVML"
            self._log.warning("%s: reading %s failed: NVML error: %s", where, key, exc)


@dataclass(slots=True)
class _Gpu:
    index: int
    key: str = ""  # str(index): the GPU's key on the wire
    handle: Any = None
    static: GpuStatic = field(default_factory=GpuStatic)
    error: str | None = None  # set when the GPU failed while its static facts were read
    unsupported: set[str] = field(default_factory=set)
    # the fields read every SLOW_FIELDS_EVERY_S (NVLINK_EVERY_S), set once the handle is known
    power_limit_watts: Periodic[float | None] | None = None
    health: Periodic[dict[str, Any]] | None = None
    nvlink: Periodic[dict[str, Any]] | None = None
    mig_devices: Periodic[list[_MigDevice]] | None = None  # on a GPU in MIG mode
    # (GPU instance id, compute instance id) -> MIG uuid, for the Xid thread (replaced whole)
    mig_uuids: dict[tuple[int, int], str] = field(default_factory=dict)
    # the slow fields as last put together (see GpuCollector._slow_fields), and their parts
    slow_parts: tuple[Any, ...] = ()
    slow_fields: dict[str, Any] = field(default_factory=dict)
    # until then, and while no Xid event is recorded, slow_fields stand as they are
    slow_due_at_s: float = float("-inf")
    slow_xid_changes: int = -1

    def failed(self, reason: str) -> GpuSample:
        return GpuSample(index=self.index, uuid=self.static.uuid, name=self.static.name, error=reason)


class _RawProcess(NamedTuple):
    pid: int
    gpu_mem_bytes: int | None


class _MigDevice(NamedTuple):
    """A MIG instance's handle and the facts that stay while it exists."""

    handle: Any
    uuid: str | None
    profile: str | None
    gpu_instance_id: int | None
    compute_instance_id: int | None


def _succeeds(fn: Callable[..., Any]) -> Callable[..., bool]:
    """``fn`` (which returns nothing) returning ``True``: under the policy, ``None`` then says
    that it failed."""

    def call(*args: Any) -> bool:
        fn(*args)
        return True

    return call


def gpu_instance_profile(name: str | None) -> str | None:
    """A GPU instance profile's name as NVML gives it, ``"MIG 3g.40gb"``, as the slices are
    named: ``"3g.40gb"``; ``None`` for none."""
    if not name:
        return None
    return name.strip().removeprefix("MIG ").strip() or None


def mig_profile(device_name: str | None) -> str | None:
    """The MIG profile from a MIG device's name: ``"NVIDIA A100-SXM4-40GB MIG 3g.20gb"`` gives
    ``"3g.20gb"``; ``None`` when the name says none."""
    if not device_name or " MIG " not in device_name:
        return None
    return device_name.rsplit(" MIG ", 1)[1].strip() or None


class _XidLog:
    """Xid events per GPU index since the agent started: the Xid thread adds, samples read.
    Survives NVML restarts (counts are since the agent started)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[int] = set()  # GPUs whose events are registered
        self._count: dict[int, int] = {}
        self._events: dict[int, deque[dict[str, Any]]] = {}
        self._wire: dict[int, tuple[int, int | None, float | None, list[dict[str, Any]]]] = {}
        # grows with every change to what fields() says: a sample that sees the same number
        # needs no fields() (read without the lock: an int is read whole)
        self.changes = 0

    def watch(self, indices: set[int]) -> None:
        with self._lock:
            self._watched = set(indices)
            self.changes += 1

    def add(self, index: int, event: dict[str, Any]) -> None:
        with self._lock:
            self.changes += 1
            self._count[index] = self._count.get(index, 0) + 1
            self._events.setdefault(index, deque(maxlen=MAX_XID_EVENTS)).append(event)
            self._wire.pop(index, None)

    def fields(self, index: int) -> tuple[int, int | None, float | None, list[dict[str, Any]]] | None:
        """(count, last code, last epoch s, newest events) for a watched GPU; ``None`` when its
        events can't be had. The same list object until an event arrives."""
        with self._lock:
            if index not in self._watched:
                return None
            wire = self._wire.get(index)
            if wire is None:
                events = list(self._events.get(index, ()))
                last = events[-1] if events else None
                wire = (
                    self._count.get(index, 0),
                    None if last is None else last["code"],
                    None if last is None else last["epoch_s"],
                    events,
                )
                self._wire[index] = wire
            return wire


class _XidWatcher:
    """Registers each GPU for critical Xid events and waits for them on a thread of its own.

    The thread blocks in NVML (``nvmlEventSetWait_v2``, ``XID_WAIT_MS`` at a time; ctypes lets
    go of the GIL), so it costs nothing while no event comes. :meth:`stop` ends it within one
    wait, before NVML is shut down."""

    def __init__(self, nvml: _Nvml, log: logging.Logger, on_event: Callable[[Any], None]) -> None:
        self._nvml = nvml
        self._log = log
        self._on_event = on_event
        self._stop = threading.Event()
        self._set: Any = None
        self._thread: threading.Thread | None = None

    def start(self, gpus: list[_Gpu]) -> set[int]:
        """Registers the GPUs (those that can't be: unsupported, or failed, are left out) and
        starts the thread; returns the indices registered."""
        nvml = self._nvml
        probe = _Gpu(index=-1)
        self._set = nvml.query(probe, "event_set", nvml.event_set_create)
        if self._set is None or nvml.register_events is None or nvml.event_wait is None:
            return set()
        register = _succeeds(nvml.register_events)
        registered = set()
        for gpu in gpus:
            if gpu.handle is None:
                continue
            try:
                if nvml.query(gpu, "xid_events", register, gpu.handle, nvml.xid_event, self._set):
                    registered.add(gpu.index)
            except GpuLost:
                continue
        if not registered:
            self._free()
            return registered
        self._thread = threading.Thread(target=self._run, name="sers-xid-events", daemon=True)
        self._thread.start()
        return registered

    def _run(self) -> None:
        nvml, wait, event_set = self._nvml, self._nvml.event_wait, self._set
        assert wait is not None
        warned = False
        while not self._stop.is_set():
            try:
                data = wait(event_set, XID_WAIT_MS)
            except nvml.timeout:
                continue
            except Exception as exc:  # NVML trouble (a lost GPU, a driver going away): wait, retry
                if self._stop.is_set():
                    break  # NVML was shut down under the wait
                if not warned:
                    warned = True
                    self._log.warning("waiting for Xid events failed: %s", exc)
                self._stop.wait(XID_RETRY_S)
                continue
            if int(data.eventType) & nvml.xid_event:
                try:
                    self._on_event(data)
                except Exception:  # a bug: this event is lost, the watching goes on
                    self._log.exception("recording an Xid event failed")

    def stop(self, join_s: float) -> bool:
        """Asks the thread to stop and waits up to ``join_s`` for it; whether it ended (then
        the event set is freed; else the thread still waits inside NVML)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(join_s)
            if thread.is_alive():
                return False
        self._free()
        return True

    def _free(self) -> None:
        event_set, self._set = self._set, None
        if event_set is None or self._nvml.event_set_free is None:
            return
        try:
            self._nvml.event_set_free(event_set)
        except Exception as exc:
            self._log.debug("nvmlEventSetFree failed: %s", exc)


class GpuCollector:
    """NVIDIA GPUs through NVML. Never raises for a missing library or driver: then
    :meth:`driver` says why and :meth:`sample` returns ``{}``, and :meth:`sample` tries NVML
    again every ``retry_every_s`` (not without ``pynvml``: that needs a restart anyway).
    ``sysfs_root`` is where sysfs is mounted: its PCI bus tells a GPU server whose NVML fails
    from a CPU-only node."""

    @property
    def fields_checked_when_read(self) -> frozenset[str]:
        return FIELDS_CHECKED_WHEN_READ

    def __init__(
        self,
        *,
        full_cmdline: bool = False,
        log: logging.Logger | None = None,
        retry_every_s: float = NVML_RETRY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        sysfs_root: Path = Path("/sys"),
        proc_root: Path = Path("/proc"),
        attribution: AttributionReader | None = None,
    ) -> None:
        self._log = log or logging.getLogger(__name__)
        self._sysfs_root = sysfs_root
        self._lock = threading.Lock()
        self._procs = ProcessResolver(full_cmdline=full_cmdline, proc_root=proc_root, attribution=attribution)
        self._nvml: _Nvml | None = None
        self._gpus: list[_Gpu] = []
        self._xids = _XidLog()
        self._out_of_bounds: set[str] = set()  # slow fields already warned about
        self._xid_watcher: _XidWatcher | None = None
        self._driver = GpuDriver()
        self._retry_every_s = retry_every_s
        self._clock = clock
        self._retry_at_s: float | None = None  # None: no retry due (NVML is up, closed, or no pynvml)
        self._all_failed_since_s: float | None = None  # when every GPU began to fail, by _clock
        self._stops = 0  # NVML stops since a GPU last answered: repeats log at DEBUG
        self.static_generation = 0  # counts changes of driver() and static(): a new hello is due
        self._shown_driver: GpuDriver | None = None  # None until the first start was tried
        self._try_start()
        # what driver() and static() last answered (a hello): a restart that brings back the
        # same facts bumps static_generation only if the error in between may have been shown
        self._shown_driver, self._shown_static = self._driver, self._static()

    # ----------------------------------------------------------------- lifecycle
    def _try_start(self) -> bool:
        """Starts NVML; on failure says why once (repeats only at DEBUG) and sets the next retry."""
        failed_before = self._driver.error
        try:
            self._start()
        except Exception as exc:  # no pynvml, no libnvidia-ml, no driver, or NVML failed
            self._shutdown()
            reason = self._describe_init_error(exc)
            on_bus = nvidia_gpus_on_pci_bus(self._sysfs_root)
            state = collector_state_after(exc, on_bus)
            self._driver, self._gpus = GpuDriver(error=reason, collector_state=state), []
            level = logging.DEBUG if reason == failed_before else logging.WARNING
            seen = f" ({on_bus} NVIDIA GPU(s) on the PCI bus)" if on_bus else ""
            self._log.log(level, "GPU monitoring disabled: %s%s", reason, seen)
            if self._shown_driver is not None and self._driver != self._shown_driver:
                self.static_generation += 1  # NVML went down mid-run: the hub must hear why
            retry = not isinstance(exc, ImportError)  # pynvml can't appear without a restart
            self._retry_at_s = self._clock() + self._retry_every_s if retry else None
            return False
        self._retry_at_s = None
        if failed_before is not None:
            changed = (self._driver, self._static()) != (self._shown_driver, self._shown_static)
            if changed:
                self.static_generation += 1
            self._log.log(
                logging.DEBUG if self._stops > 1 and not changed else logging.INFO,
                "GPU monitoring enabled after a retry: %d GPU(s), driver %s",
                len(self._gpus),
                self._driver.driver_version,
            )
        return True

    def _start(self) -> None:
        import pynvml  # lazily: machines without nvidia-ml-py still run

        nvml = _Nvml(pynvml, self._log)
        pynvml.nvmlInit()
        self._nvml = nvml
        driver = self._read_driver(nvml)
        count = pynvml.nvmlDeviceGetCount()
        gpus = [self._read_static(nvml, index) for index in range(count)]
        self._driver, self._gpus = driver, gpus  # both at once, when all is read
        watcher = _XidWatcher(nvml, self._log, self._record_xid)
        self._xids.watch(watcher.start(gpus))
        self._xid_watcher = watcher

    def _record_xid(self, data: Any) -> None:
        """An Xid event from the watcher's thread: to its GPU and, in MIG mode, its slice."""
        nvml = self._nvml
        if nvml is None or nvml.device_index is None:
            return
        index = int(nvml.device_index(data.device))
        gpu = next((g for g in self._gpus if g.index == index), None)
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        uuids = {} if gpu is None or gi == _NO_INSTANCE else gpu.mig_uuids
        event: dict[str, Any] = {  # a wire XidEvent
            "code": int(data.eventData),
            "epoch_s": round(time.time(), 3),
            # the compute instance's slice, else the first slice of the GPU instance
            "mig_uuid": uuids.get((gi, ci)) or next((u for (g, _), u in uuids.items() if g == gi), None),
            "gpu_instance_id": None if gi == _NO_INSTANCE else gi,
            "compute_instance_id": None if ci == _NO_INSTANCE else ci,
        }
        where = event.get("mig_uuid") or event.get("gpu_instance_id")
        self._log.warning("GPU %d: Xid %d%s", index, event["code"], "" if where is None else f" on {where}")
        self._xids.add(index, event)

    @staticmethod
    def _describe_init_error(exc: Exception) -> str:
        if isinstance(exc, ImportError):
            return "nvidia-ml-py (pynvml) is not installed"
        kind = type(exc).__name__
        if kind == "NVMLError_LibraryNotFound":
            return "NVML library not found (libnvidia-ml.so.1): no NVIDIA driver installed?"
        if kind == "NVMLError_DriverNotLoaded":
            return "NVIDIA driver not loaded"
        if kind == "NVMLError_LibRmVersionMismatch":
            return "NVIDIA driver and NVML library versions differ (driver upgraded without a reboot?)"
        if kind == "NVMLError_NoPermission":
            return "no permission to use NVML (/dev/nvidia*)"
        if kind.startswith("NVMLError"):
            return f"NVML init failed: {exc}"
        return f"NVML init failed: {kind}: {exc}"

    def _shutdown(self, xid_join_s: float = XID_WAIT_MS / 1000.0 + 0.5) -> None:
        watcher, self._xid_watcher = self._xid_watcher, None
        if watcher is not None and not watcher.stop(xid_join_s):
            self._log.debug("shutting NVML down while the Xid thread waits in it")
        nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        try:
            nvml.m.nvmlShutdown()
        except Exception as exc:
            self._log.debug("nvmlShutdown failed: %s", exc)

    def _stop_unanswered(self, reason: str) -> None:
        """Every GPU has failed for ``retry_every_s``: shuts NVML down; the next sample starts it."""
        self._stops += 1
        self._log.log(
            logging.WARNING if self._stops == 1 else logging.DEBUG,
            "every GPU failed for %.0f s (%s): restarting NVML",
            self._retry_every_s,
            reason,
        )
        self._shutdown()
        stopped = GpuDriver(error=f"NVML stopped answering: {reason}", collector_state=GPU_COLLECTOR_DOWN)
        self._driver, self._gpus = stopped, []
        self._all_failed_since_s = None
        self._retry_at_s = self._clock()

    def close(self) -> None:
        with self._lock:
            self._retry_at_s = None
            self._shutdown(XID_CLOSE_WAIT_S)  # the agent is exiting: no wait for the Xid thread
            self._procs.close()

    # ----------------------------------------------------------------- static facts
    def _read_driver(self, nvml: _Nvml) -> GpuDriver:
        probe = _Gpu(index=-1)  # the policy's bookkeeping for system-wide fields
        m = nvml.m
        cuda = nvml.query(probe, "cuda", nvml.cuda_version)
        return GpuDriver(
            driver_version=_text(nvml.query(probe, "driver", m.nvmlSystemGetDriverVersion)),
            cuda_driver_version=cuda_version_text(cuda) if isinstance(cuda, int) else None,
            nvml_version=_text(nvml.query(probe, "nvml", nvml.nvml_version)),
            collector_state=GPU_COLLECTOR_UP,
        )

    def _read_static(self, nvml: _Nvml, index: int) -> _Gpu:
        gpu = _Gpu(index=index, key=str(index), static=GpuStatic(index=index))
        m = nvml.m
        try:
            handle = nvml.query(gpu, "handle", m.nvmlDeviceGetHandleByIndex, index, required=True)
            if handle is None:
                raise GpuLost("GPU handle not available")
            gpu.handle = handle
            gpu.power_limit_watts = Periodic(
                lambda: _watts(self._power_limit_mw(nvml, gpu)), SLOW_FIELDS_EVERY_S
            )
            gpu.health = Periodic(lambda: _read_health(nvml, gpu), SLOW_FIELDS_EVERY_S)
            gpu.nvlink = Periodic(lambda: _read_nvlink(nvml, gpu), NVLINK_EVERY_S)
            name = _text(nvml.query(gpu, "name", m.nvmlDeviceGetName, handle, required=True))
            uuid = _text(nvml.query(gpu, "uuid", m.nvmlDeviceGetUUID, handle, required=True))
            gpu.static = GpuStatic(index=index, uuid=uuid, name=name)
            memory = nvml.query(gpu, "memory", m.nvmlDeviceGetMemoryInfo, handle, required=True)
            pci = nvml.query(gpu, "pci", nvml.pci_info, handle)
            mig = nvml.query(gpu, "mig", nvml.mig_mode, handle)
            gpu.static = GpuStatic(
                index=index,
                uuid=uuid,
                name=name,
                mem_total_bytes=None if memory is None else int(memory.total),
                power_limit_watts=gpu.power_limit_watts.get(self._clock()),
                pci_bus_id=None if pci is None else _text(pci.busId),
                mig_mode=None if mig is None else _mig_mode_text(mig[0], nvml.mig_enable),
                mig_profiles=None if mig is None else self._read_mig_profiles(nvml, gpu),
                pcie_link_gen_max=_int(nvml.query(gpu, "pcie_gen_max", nvml.pcie_gen_max, handle)),
                pcie_link_width_max_lanes=_int(
                    nvml.query(gpu, "pcie_width_max", nvml.pcie_width_max, handle)
                ),
            )
            if gpu.static.mig_mode == "enabled":
                gpu.mig_devices = Periodic(lambda: self._read_mig_devices(nvml, gpu), SLOW_FIELDS_EVERY_S)
                gpu.mig_devices.get(self._clock())  # the slices known before the first Xid
        except GpuLost as exc:
            gpu.error = exc.reason
            self._log.log(
                logging.DEBUG if self._stops > 1 else logging.WARNING, "GPU %d: %s", index, exc.reason
            )
        return gpu

    @staticmethod
    def _power_limit_mw(nvml: _Nvml, gpu: _Gpu) -> int | None:
        return _int(nvml.query(gpu, "power_limit", nvml.power_limit, gpu.handle))

    @staticmethod
    def _read_mig_profiles(nvml: _Nvml, gpu: _Gpu) -> list[str] | None:
        """The MIG GPU instance profiles a MIG-capable GPU offers, by name (``1g.10gb``), in the
        order of NVML's profile table; ``None`` when it names none or can't be asked. Each
        profile is asked on its own: one this GPU doesn't offer (NotSupported) or this driver
        doesn't know (InvalidArgument) is left out, the others still count."""
        read = nvml.gpu_instance_profile_info
        if read is None:
            return None
        names: list[str] = []
        for profile in range(nvml.gpu_instance_profiles):
            try:
                info = read(gpu.handle, profile)  # version 2: with the profile's name
            except (*nvml.unsupported, *nvml.absent):
                continue
            except nvml.lost:
                raise GpuLost("GPU is lost") from None
            except nvml.error as exc:
                nvml.warn_once(gpu, "mig_profiles", exc)
                return None
            name = gpu_instance_profile(_text(getattr(info, "name", None)))
            if name is not None and name not in names:
                names.append(name)
        return names or None

    @staticmethod
    def _read_mig_devices(nvml: _Nvml, gpu: _Gpu) -> list[_MigDevice]:
        """The GPU's MIG instances (read again every SLOW_FIELDS_EVERY_S: an admin may make or
        destroy instances while the agent runs)."""
        slots = _int(nvml.query(gpu, "mig_count", nvml.mig_count, gpu.handle)) or 0
        devices = []
        for slot in range(slots):
            try:
                handle = nvml.mig_handle(gpu.handle, slot) if nvml.mig_handle is not None else None
            except nvml.absent:
                continue  # no instance in this slot
            except nvml.unsupported:
                break  # MIG mode turned off
            except nvml.lost:
                raise GpuLost("GPU is lost") from None
            if handle is None:
                break
            m = nvml.m
            devices.append(
                _MigDevice(
                    handle=handle,
                    uuid=_text(nvml.query(gpu, "mig_uuid", m.nvmlDeviceGetUUID, handle)),
                    profile=mig_profile(_text(nvml.query(gpu, "mig_name", m.nvmlDeviceGetName, handle))),
                    gpu_instance_id=_int(nvml.query(gpu, "mig_gi", nvml.gpu_instance_id, handle)),
                    compute_instance_id=_int(nvml.query(gpu, "mig_ci", nvml.compute_instance_id, handle)),
                )
            )
            if len(devices) == MAX_MIG_SLICES:
                break
        gpu.mig_uuids = {
            (d.gpu_instance_id, d.compute_instance_id): d.uuid
            for d in devices
            if d.uuid is not None and d.gpu_instance_id is not None and d.compute_instance_id is not None
        }
        return devices

    def driver(self) -> GpuDriver:
        self._shown_driver = driver = self._driver
        return driver

    def static(self) -> list[GpuStatic]:
        self._shown_static = static = self._static()
        return static

    def _static(self) -> list[GpuStatic]:
        return [gpu.static for gpu in self._gpus]

    # ----------------------------------------------------------------- sampling
    def sample(self) -> dict[str, GpuSample]:
        """One sample per GPU, keyed by ``str(index)``; a failed GPU gets an error entry."""
        return {index: _typed(wire) for index, wire in self.sample_wire().items()}

    def sample_wire(self) -> dict[str, dict[str, Any]]:
        """:meth:`sample` in the wire shape, as ``to_wire`` would make it, but built directly:
        the sampler calls this every second, and making the dataclasses only to take them apart
        again cost about 80 µs a sample with 8 GPUs (at 1 Hz, with cold caches)."""
        with self._lock:
            now_s = self._clock()
            nvml = self._nvml
            if nvml is None:
                if self._retry_at_s is None or now_s < self._retry_at_s or not self._try_start():
                    return {}
                nvml = self._nvml
                assert nvml is not None
            failed: dict[int, GpuSample] = {}
            readings: dict[int, _GpuReading] = {}
            for gpu in self._gpus:
                try:
                    if gpu.error is not None:
                        raise GpuLost(gpu.error)
                    readings[gpu.index] = self._read_gpu(nvml, gpu, now_s)
                except GpuLost as exc:
                    failed[gpu.index] = gpu.failed(exc.reason)
                except Exception as exc:  # a bug or a binding surprise: only this GPU fails
                    self._log.exception("GPU %d: sampling failed", gpu.index)
                    failed[gpu.index] = gpu.failed(f"collector error: {type(exc).__name__}")
            pids = {p.pid for r in readings.values() for p in r.processes or ()}
            pids.update(p.pid for r in readings.values() for _, procs in r.slices for p in procs or ())
            infos = self._resolve(pids)
            out: dict[str, dict[str, Any]] = {}
            for gpu in self._gpus:
                if gpu.index in failed:
                    out[gpu.key] = to_wire(failed[gpu.index])
                else:
                    reading = readings[gpu.index]
                    fields = reading.fields
                    fields["processes"] = _gpu_processes(reading.processes, infos)
                    fields["unseen_mem_bytes"] = unseen_mem_bytes(
                        fields["mem_used_bytes"], fields["mem_total_bytes"], reading.processes
                    )
                    fields["error"] = None
                    if gpu.mig_devices is not None:
                        fields["mig_slices"] = [
                            {**slice_fields, "processes": _gpu_processes(procs, infos)}
                            for slice_fields, procs in reading.slices
                        ]
                    out[gpu.key] = fields
            self._note_failures(failed, now_s)
            return out

    def _note_failures(self, failed: dict[int, GpuSample], now_s: float) -> None:
        """Stops NVML once every GPU has failed for ``retry_every_s`` (see :meth:`_stop_unanswered`)."""
        if not failed or len(failed) < len(self._gpus):
            self._all_failed_since_s, self._stops = None, 0
            return
        if self._all_failed_since_s is None:
            self._all_failed_since_s = now_s
        elif now_s - self._all_failed_since_s >= self._retry_every_s:
            self._stop_unanswered(next(iter(failed.values())).error or "no answer")

    def _resolve(self, pids: set[int]) -> dict[int, ProcInfo]:
        try:
            return self._procs.resolve(pids)
        except Exception:  # never lose the GPU sample over a process lookup
            self._log.exception("resolving GPU process owners failed")
            return {}

    def _read_gpu(self, nvml: _Nvml, gpu: _Gpu, now_s: float) -> _GpuReading:
        """One GPU's sampled fields, in the wire shape, and its processes.

        The NVML calls are first made directly (:func:`_call_directly`); only if one of them
        raises are they all made again, each under the error policy (:func:`_call_by_policy`),
        which says what the error means. Once the unsupported fields are known (and no longer
        asked), nothing raises, and the 104 calls of a sample with 8 GPUs skip the policy's
        Python-level wrapper, which cost more than a fake NVML call itself."""
        try:
            raw = _call_directly(nvml, gpu)
        except Exception:
            raw = _call_by_policy(nvml, gpu)
        # a GPU without a handle has an error and is not read
        assert gpu.power_limit_watts is not None and gpu.health is not None and gpu.nvlink is not None
        util, memory, pstate, reasons = raw.util, raw.memory, raw.pstate, raw.reasons
        slow = self._slow_fields(gpu, now_s)
        fields: dict[str, Any] = {
            "index": gpu.index,
            "uuid": gpu.static.uuid,
            "name": gpu.static.name,
            "util_gpu_percent": None if util is None else float(util.gpu),
            "util_mem_percent": None if util is None else float(util.memory),
            "mem_used_bytes": None if memory is None else int(memory.used),
            "mem_total_bytes": None if memory is None else int(memory.total),
            "temp_celsius": _float(raw.temp),
            "fan_percent": _float(raw.fan),
            "power_draw_watts": _watts(raw.power_mw),
            "power_limit_watts": slow["power_limit_watts"],  # in GpuSample's order; and below
            "clock_sm_mhz": _int(raw.clock_sm),
            "clock_mem_mhz": _int(raw.clock_mem),
            "pstate": None if pstate is None or pstate == _PSTATE_UNKNOWN else int(pstate),
            "enc_util_percent": None if raw.enc is None else float(raw.enc[0]),
            "dec_util_percent": None if raw.dec is None else float(raw.dec[0]),
            "throttle_reasons": None if reasons is None else decode_throttle_reasons(reasons),
            **slow,
        }
        fields["mig_slices"] = None  # filled in with the slices' processes
        slices = [] if gpu.mig_devices is None else _read_slices(nvml, gpu, gpu.mig_devices.get(now_s))
        return _GpuReading(fields, _merged_processes(raw.compute_procs, raw.graphics_procs), slices)

    def _slow_fields(self, gpu: _Gpu, now_s: float) -> dict[str, Any]:
        """The fields read every SLOW_FIELDS_EVERY_S or NVLINK_EVERY_S, and the Xid fields (new
        when an event comes), in one dict held to the protocol's bounds when one of its parts
        was read again; between, the same dict (the sampler does not check
        :data:`FIELDS_CHECKED_WHEN_READ` again, and its diff passes the same objects by)."""
        xid_changes = self._xids.changes  # before fields(): an event after it is seen next time
        if now_s < gpu.slow_due_at_s and xid_changes == gpu.slow_xid_changes:
            return gpu.slow_fields  # most samples: nothing due, no Xid since
        assert gpu.power_limit_watts is not None and gpu.health is not None and gpu.nvlink is not None
        parts = (
            gpu.power_limit_watts.get(now_s),
            gpu.health.get(now_s),
            gpu.nvlink.get(now_s),
            self._xids.fields(gpu.index) or _NO_XIDS,
        )
        gpu.slow_xid_changes = xid_changes
        gpu.slow_due_at_s = min(gpu.power_limit_watts.due_at_s, gpu.health.due_at_s, gpu.nvlink.due_at_s)
        if len(parts) == len(gpu.slow_parts) and all(
            a is b for a, b in zip(parts, gpu.slow_parts, strict=True)
        ):
            return gpu.slow_fields
        power_limit, health, nvlink, (xid_count, xid_last_code, xid_last_epoch_s, xid_events) = parts
        slow = {
            "power_limit_watts": power_limit,
            **health,
            **nvlink,
            "xid_count": xid_count,
            "xid_last_code": xid_last_code,
            "xid_last_epoch_s": xid_last_epoch_s,
            "xid_events": xid_events,
        }
        nulled: list[str] = []
        slow = nulls_for_out_of_bounds(slow, GpuSample, f"gpus.{gpu.key}", nulled)
        for path in nulled:
            if path not in self._out_of_bounds:
                self._out_of_bounds.add(path)
                self._log.warning("%s: a reading outside the protocol's bounds; sent as unknown", path)
        gpu.slow_parts, gpu.slow_fields = parts, slow
        return slow


_NO_XIDS = (None, None, None, None)  # a GPU whose Xid events can't be had


class _GpuReading(NamedTuple):
    fields: dict[str, Any]  # the wire fields but processes and MIG slices
    processes: list[_RawProcess] | None
    slices: list[tuple[dict[str, Any], list[_RawProcess] | None]]  # MIG slices' fields, processes


def _read_slices(
    nvml: _Nvml, gpu: _Gpu, devices: list[_MigDevice]
) -> list[tuple[dict[str, Any], list[_RawProcess] | None]]:
    """Each MIG instance's fields (but processes) and processes, through the policy: a slice
    destroyed since the last look reads as unknown until the next look."""
    m, query = nvml.m, nvml.query
    out = []
    for device in devices:
        memory = query(gpu, "mig_memory", m.nvmlDeviceGetMemoryInfo, device.handle)
        util = query(gpu, "mig_util", m.nvmlDeviceGetUtilizationRates, device.handle)
        procs = query(gpu, "mig_procs", m.nvmlDeviceGetComputeRunningProcesses, device.handle)
        fields = {
            "uuid": device.uuid,
            "profile": device.profile,
            "gpu_instance_id": device.gpu_instance_id,
            "compute_instance_id": device.compute_instance_id,
            "mem_used_bytes": None if memory is None else int(memory.used),
            "mem_total_bytes": None if memory is None else int(memory.total),
            "util_gpu_percent": None if util is None else float(util.gpu),
        }
        out.append((fields, _merged_processes(procs, None)))
    return out


def _read_health(nvml: _Nvml, gpu: _Gpu) -> dict[str, Any]:
    """The slowly changing memory and link health fields, in the wire shape."""
    query, handle, m = nvml.query, gpu.handle, nvml.m
    ecc = m.nvmlDeviceGetTotalEccErrors
    uncorrected, corrected = nvml.ecc_uncorrected, nvml.ecc_corrected
    volatile, aggregate = nvml.ecc_volatile, nvml.ecc_aggregate
    single = query(gpu, "retired_pages", nvml.retired_pages, handle, nvml.retired_single_bit)
    double = query(gpu, "retired_pages", nvml.retired_pages, handle, nvml.retired_double_bit)
    retired_pending = query(gpu, "retired_pending", nvml.retired_pending, handle)
    remap = query(gpu, "remapped_rows", nvml.remapped_rows, handle)
    rx_kb = query(gpu, "pcie_throughput", nvml.pcie_throughput, handle, nvml.pcie_rx)
    tx_kb = query(gpu, "pcie_throughput", nvml.pcie_throughput, handle, nvml.pcie_tx)
    return {  # each ECC count a key of its own: a GPU may count volatile errors but not aggregate
        # the link as it runs now (a GPU lowers its generation when idle: shown within the period)
        "pcie_link_gen": _int(query(gpu, "pcie_gen", nvml.pcie_gen, handle)),
        "pcie_link_width_lanes": _int(query(gpu, "pcie_width", nvml.pcie_width, handle)),
        "ecc_volatile_uncorrected": _int(query(gpu, "ecc_vu", ecc, handle, uncorrected, volatile)),
        "ecc_volatile_corrected": _int(query(gpu, "ecc_vc", ecc, handle, corrected, volatile)),
        "ecc_aggregate_uncorrected": _int(query(gpu, "ecc_au", ecc, handle, uncorrected, aggregate)),
        "ecc_aggregate_corrected": _int(query(gpu, "ecc_ac", ecc, handle, corrected, aggregate)),
        "retired_pages_single_bit": None if single is None else len(single),
        "retired_pages_double_bit": None if double is None else len(double),
        "retired_pages_pending": None if retired_pending is None else bool(retired_pending),
        "remapped_rows_corrected": None if remap is None else int(remap[0]),
        "remapped_rows_uncorrected": None if remap is None else int(remap[1]),
        "remap_pending": None if remap is None else bool(remap[2]),
        "remap_failed": None if remap is None else bool(remap[3]),
        "pcie_rx_bytes_per_s": None if rx_kb is None else float(rx_kb) * 1024.0,  # NVML: KB/s
        "pcie_tx_bytes_per_s": None if tx_kb is None else float(tx_kb) * 1024.0,
        "pcie_replay_count": _int(query(gpu, "pcie_replay", nvml.pcie_replay, handle)),
    }


_NVLINK_FIELDS = (
    "nvlink_replay_count",
    "nvlink_recovery_count",
    "nvlink_crc_flit_count",
    "nvlink_crc_data_count",
)
_HEALTH_FIELDS = (  # what _read_health returns
    "pcie_link_gen",
    "pcie_link_width_lanes",
    "ecc_volatile_uncorrected",
    "ecc_volatile_corrected",
    "ecc_aggregate_uncorrected",
    "ecc_aggregate_corrected",
    "retired_pages_single_bit",
    "retired_pages_double_bit",
    "retired_pages_pending",
    "remapped_rows_corrected",
    "remapped_rows_uncorrected",
    "remap_pending",
    "remap_failed",
    "pcie_rx_bytes_per_s",
    "pcie_tx_bytes_per_s",
    "pcie_replay_count",
)
# The GPU sample fields the collector holds to the protocol's bounds when it reads them (every
# SLOW_FIELDS_EVERY_S or so): the sampler's check of every sample leaves them out.
FIELDS_CHECKED_WHEN_READ = frozenset(
    {
        "power_limit_watts",
        *_HEALTH_FIELDS,
        "nvlink_active",
        *_NVLINK_FIELDS,
        "xid_count",
        "xid_last_code",
        "xid_last_epoch_s",
        "xid_events",
    }
)


def _read_nvlink(nvml: _Nvml, gpu: _Gpu) -> dict[str, Any]:
    """Per NVLink link, whether it is up and its error counters; every field ``None`` on a GPU
    without NVLink. The links are those NVML answers for, from link 0 up."""
    state_fn, errors_fn = nvml.nvlink_state, nvml.nvlink_errors
    none = {"nvlink_active": None, **dict.fromkeys(_NVLINK_FIELDS)}
    if state_fn is None or "nvlink" in gpu.unsupported:
        return none
    active: list[bool] = []
    for link in range(nvml.nvlink_max_links):
        try:
            state = state_fn(gpu.handle, link)
        except nvml.absent:
            break  # past the GPU's last link
        except nvml.unsupported:
            if link == 0:
                gpu.unsupported.add("nvlink")
            break
        except nvml.lost:
            raise GpuLost("GPU is lost") from None
        except nvml.error:
            break
        active.append(state == nvml.feature_enabled)
    if not active:
        return none
    out: dict[str, Any] = {"nvlink_active": active}
    for name, counter in zip(_NVLINK_FIELDS, _NVLINK_ERRORS, strict=True):
        counts = [
            _int(nvml.query(gpu, name, errors_fn, gpu.handle, link, counter)) for link in range(len(active))
        ]
        out[name] = None if None in counts else counts
    return out


class _Readings(NamedTuple):
    """What one sample asks NVML about one GPU, as NVML answers (``None``: unsupported)."""

    memory: Any
    util: Any
    power_mw: Any
    pstate: Any
    enc: Any
    dec: Any
    reasons: Any
    temp: Any
    fan: Any
    clock_sm: Any
    clock_mem: Any
    compute_procs: Any
    graphics_procs: Any


def sample_calls(nvml: _Nvml, handle: Any) -> SampleCalls:
    """The NVML calls of one sample of one GPU, in :class:`_Readings`' order: (field, function,
    arguments). Looked up anew each sample, so both ways of calling them see the same functions."""
    m = nvml.m
    return (
        ("memory", m.nvmlDeviceGetMemoryInfo, (handle,)),
        ("util", m.nvmlDeviceGetUtilizationRates, (handle,)),
        ("power", m.nvmlDeviceGetPowerUsage, (handle,)),
        ("pstate", m.nvmlDeviceGetPerformanceState, (handle,)),
        ("enc", m.nvmlDeviceGetEncoderUtilization, (handle,)),
        ("dec", m.nvmlDeviceGetDecoderUtilization, (handle,)),
        ("throttle", nvml.throttle, (handle,)),
        ("temp", m.nvmlDeviceGetTemperature, (handle, nvml.temp_gpu)),
        ("fan", m.nvmlDeviceGetFanSpeed, (handle,)),
        ("clock_sm", m.nvmlDeviceGetClockInfo, (handle, nvml.clock_sm)),
        ("clock_mem", m.nvmlDeviceGetClockInfo, (handle, nvml.clock_mem)),
        ("compute_procs", m.nvmlDeviceGetComputeRunningProcesses, (handle,)),
        ("graphics_procs", m.nvmlDeviceGetGraphicsRunningProcesses, (handle,)),
    )


def _call_directly(nvml: _Nvml, gpu: _Gpu) -> _Readings:
    """The sample's calls made directly, the fields known to be unsupported skipped; any error
    raises."""
    skip = gpu.unsupported
    calls = sample_calls(nvml, gpu.handle)
    return _Readings._make(None if fn is None or key in skip else fn(*args) for key, fn, args in calls)


def _call_by_policy(nvml: _Nvml, gpu: _Gpu) -> _Readings:
    """The same calls, each through :meth:`_Nvml.query`: an unsupported field is ``None`` (and
    marked, so that :func:`_call_directly` skips it from then on), a lost GPU raises
    :class:`GpuLost`; the memory reading is required."""
    query, calls = nvml.query, sample_calls(nvml, gpu.handle)
    return _Readings._make(query(gpu, key, fn, *args, required=key == "memory") for key, fn, args in calls)


def _merged_processes(compute: Any, graphics: Any) -> list[_RawProcess] | None:
    """Compute and graphics processes merged by pid (a pid in both counts once, with the
    larger memory figure); ``None`` when the GPU can list neither."""
    if compute is None and graphics is None:
        return None
    merged: dict[int, int | None] = {}
    for proc in (*(compute or ()), *(graphics or ())):
        pid, used = int(proc.pid), _int(proc.usedGpuMemory)
        known = merged.get(pid)
        if pid not in merged or (used is not None and (known is None or used > known)):
            merged[pid] = used
    return [_RawProcess(pid, used) for pid, used in merged.items()]


def _mig_mode_text(current: int, enable_value: int) -> str:
    return "enabled" if current == enable_value else "disabled"


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def unseen_mem_bytes(used: int | None, total: int | None, raw: list[_RawProcess] | None) -> int | None:
    """GPU memory in use that no listed process holds: a process in another PID namespace (the
    agent in a container without ``--pid=host``), or left by a context that outlived its
    process. ``0`` when within :data:`UNSEEN_MARGIN_BYTES` plus :data:`UNSEEN_MARGIN_RATIO` of
    the total (the driver's own reservation counts as used in NVML's memory info but belongs to
    no process); ``None`` when it can't be told (memory or processes unknown, or a process whose
    memory NVML doesn't report, as under MIG)."""
    if used is None or total is None or raw is None:
        return None
    held = 0
    for proc in raw:
        if proc.gpu_mem_bytes is None:
            return None
        held += proc.gpu_mem_bytes
    unseen = used - held
    return unseen if unseen > UNSEEN_MARGIN_BYTES + UNSEEN_MARGIN_RATIO * total else 0


@functools.lru_cache(maxsize=1024)
def _attribution_wire(attribution: Attribution) -> dict[str, Any]:
    """A process's attribution as wire fields, made once per distinct attribution (``**``
    copies it): a third of the cost of ``_asdict()`` for every process of every sample."""
    return attribution._asdict()


def _gpu_processes(raw: list[_RawProcess] | None, infos: dict[int, ProcInfo]) -> list[dict[str, Any]] | None:
    """Wire :class:`GpuProcess` dicts, largest GPU memory first (unknown last); at most the
    protocol's list limit."""
    if raw is None:
        return None
    ordered = sorted(raw, key=lambda p: (p.gpu_mem_bytes is None, -(p.gpu_mem_bytes or 0), p.pid))
    out = []
    for proc in ordered[:MAX_OBJECT_LIST]:
        info = infos.get(proc.pid) or UNKNOWN
        out.append(
            {
                "pid": proc.pid,
                "user": info.user,
                "command": info.command,
                "gpu_mem_bytes": proc.gpu_mem_bytes,
                "cpu_percent": info.cpu_percent,
                "host_mem_bytes": info.host_mem_bytes,
                "started_epoch_s": info.started_epoch_s,
                **_attribution_wire(info.attribution),
            }
        )
    return out


def _typed(wire: dict[str, Any]) -> GpuSample:
    """A wire GPU sample back as a :class:`GpuSample`."""
    processes, events, slices = wire["processes"], wire.get("xid_events"), wire.get("mig_slices")
    if processes is not None:
        wire = {**wire, "processes": [GpuProcess(**p) for p in processes]}
    if events is not None:
        wire = {**wire, "xid_events": [XidEvent(**e) for e in events]}
    if slices is not None:
        wire = {**wire, "mig_slices": [_typed_slice(s) for s in slices]}
    return GpuSample(**wire)


def _typed_slice(wire: dict[str, Any]) -> MigSlice:
    processes = wire["processes"]
    if processes is not None:
        wire = {**wire, "processes": [GpuProcess(**p) for p in processes]}
    return MigSlice(**wire)
