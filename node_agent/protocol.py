"""The wire protocol between node agents and the hub: the one definition of every message.

Pure: no I/O, no psutil, no NVML. Both sides import it.

Frames are JSON text (orjson). Every message has a ``type``:

- ``hello``: sent first on every connection; protocol version, node name, agent version,
  sampling interval and the node's static facts (:class:`HostStatic`, :class:`GpuDriver`,
  one :class:`GpuStatic` per GPU).
- ``delta``: a sequence number, the agent's wall-clock time ``ts`` and ``patch``, an RFC 7396
  JSON Merge Patch against the previously sent :data:`Snapshot`. The first delta after a hello
  carries the full snapshot. A delta with an empty patch is a heartbeat.

A snapshot is ``{"sampled_at": epoch_s, "host": HostSample, "gpus": {"<index>": GpuSample}}``.
GPUs are keyed by index so one GPU's change stays small; lists are replaced whole.
``null`` always means "not supported or unknown".

Decoding is strict about types and bounds and tolerant of unknown fields (they are dropped, so a
newer agent still talks to an older hub): anything else raises :class:`ProtocolError`, whose
``close_code`` says how the hub should close the connection.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import orjson
from websockets.frames import CloseCode

PROTOCOL_VERSION = 1

# Limits enforced by the decoder. An agent message is a few KiB; 64 KiB leaves room for
# 8 GPUs with many processes each while keeping a hostile agent cheap to reject.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_STRING_CHARS = 256
MAX_NUMBER_LIST = 1024  # e.g. per-core CPU percentages
MAX_OBJECT_LIST = 128  # processes per GPU, disks per host
MAX_STRING_LIST = 32
MAX_GPUS = 64
# The state the hub keeps for a node (every delta merged) must fit in one message as JSON: a
# reconnecting agent resends it whole in its first delta, so more could never be sent again.
MAX_STATE_BYTES = MAX_MESSAGE_BYTES
MAX_ABS_NUMBER = 1e18
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# The close codes that say why a connection was refused (every module takes them from here or
# from websockets' CloseCode itself; see docs/security.md).
CLOSE_POLICY = CloseCode.POLICY_VIOLATION  # 1008
CLOSE_BAD_DATA = CloseCode.INVALID_DATA  # 1007
CLOSE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG  # 1009
CLOSE_UNSUPPORTED_DATA = CloseCode.UNSUPPORTED_DATA  # 1003: binary frames
CLOSE_INTERNAL_ERROR = CloseCode.INTERNAL_ERROR  # 1011


class Bounds(NamedTuple):
    """The range a numeric wire field's values must lie in (both ends included)."""

    low: float
    high: float


# What the fields measure, and the values that can mean something (a number outside its field's
# bounds closes the connection with 1007, like a wrong type). Every view formats any value in
# these ranges; an unannotated number gets NUMBER.
NUMBER = Bounds(-MAX_ABS_NUMBER, MAX_ABS_NUMBER)
EPOCH_S = Bounds(0, 4_102_444_800)  # 1970-01-01 (a clock reset to the epoch) to 2100-01-01
DURATION_S = Bounds(0, EPOCH_S.high)  # no longer than the epoch range
INTERVAL_S = Bounds(0.05, 3600)
PERCENT = Bounds(0, 100)  # a share of time or of a capacity
FAN_PERCENT = Bounds(0, 200)  # of the fan's rated speed: NVML says it may exceed 100
BYTES = Bounds(0, MAX_ABS_NUMBER)  # 888 PiB: more than any one host's memory or filesystem
BYTES_PER_S = Bounds(0, MAX_ABS_NUMBER)
COUNT = Bounds(0, MAX_ABS_NUMBER)  # events since the driver loaded (ECC errors)
CPU_CORES = Bounds(0, 1 << 20)
USERS = Bounds(0, 1 << 20)
LOAD_AVG = Bounds(0, 100 * CPU_CORES.high)  # runnable tasks: far more than cores is possible
PROCESS_CPU_PERCENT = Bounds(0, 100 * CPU_CORES.high)  # one process on many cores: above 100
PID = Bounds(0, 2**32 - 1)  # NVML reports pids as unsigned 32-bit integers
SLURM_JOB_ID = Bounds(0, 2**32 - 1)  # Slurm's job ids are unsigned 32-bit integers
GPU_INDEX = Bounds(0, 999)  # as the GPU keys of a patch: at most three digits
CELSIUS = Bounds(-273.15, 1000)
WATTS = Bounds(0, 100_000)
MHZ = Bounds(0, 1_000_000)
PSTATE = Bounds(0, 15)  # P0 (fastest) to P15; NVML's "unknown" (32) goes out as null
XID = Bounds(0, 2**32 - 1)  # an Xid code (NVML hands it as a 64-bit integer; codes so far are < 200)
PCIE_GEN = Bounds(0, 64)  # PCIe generation (1 to 6 today)
PCIE_LANES = Bounds(0, 64)  # PCIe link width in lanes (x1 to x32)
MIG_ID = Bounds(0, 2**32 - 1)  # a MIG GPU or compute instance id (NVML's unsigned int)
NVLINK = Bounds(0, 63)  # an NVLink link number (NVML_NVLINK_MAX_LINKS is 36 today)

# The agent sends at most this many of a GPU's Xid events (the newest), and ``xid_count`` counts
# them all: the node's state stays small (within MAX_STATE_BYTES) however many arrive.
MAX_XID_EVENTS = 8
# MIG instances per GPU: 7 on an A100 or H100. The agent sends at most this many slices per GPU;
# each slice counts toward the node's state limit (MAX_STATE_BYTES) like a GPU's processes.
MAX_MIG_SLICES = 7
_BOUNDS_KEY = "bounds"


def bounded(bounds: Bounds) -> Any:
    """A wire dataclass field holding a number in ``bounds``; null (unknown) by default."""
    return field(default=None, metadata={_BOUNDS_KEY: bounds})


def field_bounds(cls: type, name: str) -> Bounds:
    """The bounds of a numeric field of a wire dataclass (:data:`NUMBER` where none are declared)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            bounds: Bounds = f.metadata.get(_BOUNDS_KEY, NUMBER)
            return bounds
    raise KeyError(f"{cls.__name__} has no field {name!r}")


class ProtocolError(ValueError):
    """A message that breaks the protocol. ``close_code`` is the WebSocket close code to use."""

    def __init__(self, reason: str, close_code: int = CLOSE_BAD_DATA) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


# --------------------------------------------------------------------------- wire types
@dataclass(frozen=True, slots=True)
class HostStatic:
    hostname: str | None = None
    os_name: str | None = None
    kernel: str | None = None
    cpu_model: str | None = None
    cpu_cores_logical: int | None = bounded(CPU_CORES)
    cpu_cores_physical: int | None = bounded(CPU_CORES)
    mem_total_bytes: int | None = bounded(BYTES)
    boot_time_epoch_s: float | None = bounded(EPOCH_S)


# GpuDriver.collector_state: NVML works; NVML fails on a machine with NVIDIA GPUs (or with NVML
# installed), ``error`` says why; no NVIDIA GPU and no working NVML, a CPU-only node.
GPU_COLLECTOR_UP = "up"
GPU_COLLECTOR_DOWN = "down"
GPU_COLLECTOR_ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class GpuDriver:
    """NVML-wide facts. ``error`` says why there are no GPUs (no library, no driver).
    ``collector_state`` is one of the ``GPU_COLLECTOR_*`` values (``None`` from agents older
    than the field, and older hubs drop it)."""

    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    error: str | None = None
    collector_state: str | None = None


@dataclass(frozen=True, slots=True)
class GpuStatic:
    index: int | None = bounded(GPU_INDEX)
    uuid: str | None = None
    name: str | None = None
    mem_total_bytes: int | None = bounded(BYTES)
    power_limit_watts: float | None = bounded(WATTS)
    pci_bus_id: str | None = None
    mig_mode: str | None = None
    # the MIG GPU instance profiles the GPU offers ("1g.10gb", "3g.40gb"), in NVML's order; null:
    # not MIG-capable, or not known (an older hub ignores the field)
    mig_profiles: list[str] | None = None
    # the fastest PCIe link this GPU and its slot can run (a lower current one: a bad seat or riser)
    pcie_link_gen_max: int | None = bounded(PCIE_GEN)
    pcie_link_width_max_lanes: int | None = bounded(PCIE_LANES)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    mount: str | None = None
    total_bytes: int | None = bounded(BYTES)
    used_bytes: int | None = bounded(BYTES)


@dataclass(frozen=True, slots=True)
class HostSample:
    cpu_percent: float | None = bounded(PERCENT)
    cpu_percent_per_core: list[float] | None = bounded(PERCENT)  # noqa: RUF009 (a dataclasses.field)
    load_avg_1m: float | None = bounded(LOAD_AVG)
    load_avg_5m: float | None = bounded(LOAD_AVG)
    load_avg_15m: float | None = bounded(LOAD_AVG)
    mem_total_bytes: int | None = bounded(BYTES)
    mem_used_bytes: int | None = bounded(BYTES)
    mem_available_bytes: int | None = bounded(BYTES)
    swap_total_bytes: int | None = bounded(BYTES)
    swap_used_bytes: int | None = bounded(BYTES)
    disks: list[DiskUsage] | None = None
    disk_read_bytes_per_s: float | None = bounded(BYTES_PER_S)
    disk_write_bytes_per_s: float | None = bounded(BYTES_PER_S)
    net_rx_bytes_per_s: float | None = bounded(BYTES_PER_S)
    net_tx_bytes_per_s: float | None = bounded(BYTES_PER_S)
    uptime_s: float | None = bounded(DURATION_S)
    users_count: int | None = bounded(USERS)


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int | None = bounded(PID)
    user: str | None = None
    command: str | None = None
    gpu_mem_bytes: int | None = bounded(BYTES)
    cpu_percent: float | None = bounded(PROCESS_CPU_PERCENT)
    host_mem_bytes: int | None = bounded(BYTES)
    # who the process belongs to (node_agent.attribution), each null where not known
    started_epoch_s: float | None = bounded(EPOCH_S)
    container_id: str | None = None  # 64 hex digits
    container_runtime: str | None = None  # docker, podman, containerd, cri-o
    container_name: str | None = None
    pod_uid: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None
    slurm_job_id: int | None = bounded(SLURM_JOB_ID)
    slurm_step: str | None = None  # "0", "batch", "extern", ...
    slurm_job_name: str | None = None  # from scontrol, where it answers
    slurm_job_user: str | None = None


@dataclass(frozen=True, slots=True)
class XidEvent:
    """One Xid error NVML reported while the agent ran. On a GPU in MIG mode ``mig_uuid`` and
    the instance ids say which slice it hit (null: the whole GPU)."""

    code: int | None = bounded(XID)
    epoch_s: float | None = bounded(EPOCH_S)
    mig_uuid: str | None = None
    gpu_instance_id: int | None = bounded(MIG_ID)
    compute_instance_id: int | None = bounded(MIG_ID)


@dataclass(frozen=True, slots=True)
class MigSlice:
    """One MIG instance of a GPU in MIG mode: free or busy like a GPU. ``util_gpu_percent`` is
    null where NVML gives none for an instance (most drivers)."""

    uuid: str | None = None  # "MIG-..."
    profile: str | None = None  # "3g.40gb"
    gpu_instance_id: int | None = bounded(MIG_ID)
    compute_instance_id: int | None = bounded(MIG_ID)
    mem_used_bytes: int | None = bounded(BYTES)
    mem_total_bytes: int | None = bounded(BYTES)
    util_gpu_percent: float | None = bounded(PERCENT)
    processes: list[GpuProcess] | None = None


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int | None = bounded(GPU_INDEX)
    uuid: str | None = None
    name: str | None = None
    util_gpu_percent: float | None = bounded(PERCENT)
    util_mem_percent: float | None = bounded(PERCENT)
    mem_used_bytes: int | None = bounded(BYTES)
    mem_total_bytes: int | None = bounded(BYTES)
    temp_celsius: float | None = bounded(CELSIUS)
    fan_percent: float | None = bounded(FAN_PERCENT)
    power_draw_watts: float | None = bounded(WATTS)
    power_limit_watts: float | None = bounded(WATTS)
    clock_sm_mhz: int | None = bounded(MHZ)
    clock_mem_mhz: int | None = bounded(MHZ)
    pstate: int | None = bounded(PSTATE)
    enc_util_percent: float | None = bounded(PERCENT)
    dec_util_percent: float | None = bounded(PERCENT)
    throttle_reasons: list[str] | None = None
    pcie_link_gen: int | None = bounded(PCIE_GEN)
    pcie_link_width_lanes: int | None = bounded(PCIE_LANES)
    # ECC error counts: volatile since the driver loaded, aggregate over the GPU's life
    ecc_volatile_uncorrected: int | None = bounded(COUNT)
    ecc_volatile_corrected: int | None = bounded(COUNT)
    ecc_aggregate_uncorrected: int | None = bounded(COUNT)
    ecc_aggregate_corrected: int | None = bounded(COUNT)
    # page retirement (before Ampere): pages retired for single- and double-bit errors
    retired_pages_single_bit: int | None = bounded(COUNT)
    retired_pages_double_bit: int | None = bounded(COUNT)
    retired_pages_pending: bool | None = None  # a reset retires them
    # row remapping (Ampere and later)
    remapped_rows_corrected: int | None = bounded(COUNT)
    remapped_rows_uncorrected: int | None = bounded(COUNT)
    remap_pending: bool | None = None  # a reset remaps them
    remap_failed: bool | None = None  # no spare row left: the GPU needs replacing
    pcie_rx_bytes_per_s: float | None = bounded(BYTES_PER_S)
    pcie_tx_bytes_per_s: float | None = bounded(BYTES_PER_S)
    pcie_replay_count: int | None = bounded(COUNT)
    # NVLink, one entry per link (index = link number): up or not, and its error counters
    nvlink_active: list[bool] | None = None
    nvlink_replay_count: list[int] | None = bounded(COUNT)  # noqa: RUF009 (a dataclasses.field)
    nvlink_recovery_count: list[int] | None = bounded(COUNT)  # noqa: RUF009
    nvlink_crc_flit_count: list[int] | None = bounded(COUNT)  # noqa: RUF009
    nvlink_crc_data_count: list[int] | None = bounded(COUNT)  # noqa: RUF009
    # Xid errors since the agent started (null: event registration unsupported)
    xid_count: int | None = bounded(COUNT)
    xid_last_code: int | None = bounded(XID)
    xid_last_epoch_s: float | None = bounded(EPOCH_S)
    xid_events: list[XidEvent] | None = None  # the newest MAX_XID_EVENTS, oldest first
    mig_slices: list[MigSlice] | None = None  # on a GPU in MIG mode: its instances
    processes: list[GpuProcess] | None = None
    # memory in use beyond what the listed processes hold (past a margin for the driver's own
    # reservation): a process this agent can't see; 0 when none, null when it can't be told
    unseen_mem_bytes: int | None = bounded(BYTES)
    error: str | None = None  # set when this GPU failed (lost, unknown NVML error)


Snapshot = dict[str, Any]
"""``{"sampled_at": float, "host": HostSample-dict, "gpus": {"<index>": GpuSample-dict}}``"""


@dataclass(frozen=True, slots=True)
class Hello:
    node: str
    agent_version: str
    interval_s: float
    host: dict[str, Any] = field(default_factory=dict)
    gpu_driver: dict[str, Any] = field(default_factory=dict)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    protocol: int = PROTOCOL_VERSION


class Delta(NamedTuple):
    """Immutable like the other messages; a NamedTuple because the hub makes thousands a second
    (a frozen dataclass's ``__init__`` costs several times more)."""

    seq: int
    ts: float
    patch: dict[str, Any]

    @property
    def is_heartbeat(self) -> bool:
        return not self.patch


Message = Hello | Delta


_WIRE_LEAVES = frozenset({type(None), bool, int, float, str})
_SCALAR_HINTS = frozenset({type(None), bool, int, float, str})
_converters: dict[type, Callable[[Any], Any]] = {}  # per class, made on first use


def to_wire(obj: Any) -> Any:
    """A wire type (or a snapshot holding wire types) as plain JSON-ready data.

    Runs on every sample for every value, so plain values return first and each class gets its
    converter made once: a dataclass's fields are read all at once (``attrgetter``), and only the
    fields not annotated as plain values (lists, nested wire types) are converted further."""
    kind = obj.__class__
    if kind in _WIRE_LEAVES:
        return obj
    try:
        convert = _converters[kind]
    except KeyError:
        convert = _converters[kind] = _converter(kind)  # obj's class: a class itself is not converted
    return convert(obj)


def _converter(kind: type) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(kind):
        return _dataclass_converter(kind)
    if issubclass(kind, dict):
        return lambda obj: {k: v if v.__class__ in _WIRE_LEAVES else to_wire(v) for k, v in obj.items()}
    if issubclass(kind, list | tuple):
        return lambda obj: [v if v.__class__ in _WIRE_LEAVES else to_wire(v) for v in obj]
    return lambda obj: obj


def _dataclass_converter(kind: type) -> Callable[[Any], dict[str, Any]]:
    names = tuple(f.name for f in dataclasses.fields(kind))
    if not names:
        return lambda obj: {}
    hints = typing.get_type_hints(kind)
    nested = tuple(name for name in names if not _is_scalar_hint(hints[name]))
    read = operator.attrgetter(*names) if len(names) > 1 else (lambda obj: (getattr(obj, names[0]),))

    def convert(obj: Any) -> dict[str, Any]:
        out = dict(zip(names, read(obj), strict=True))
        for name in nested:
            value = out[name]
            if value is not None:
                out[name] = to_wire(value)
        return out

    return convert


def _is_scalar_hint(hint: Any) -> bool:
    """``int``, ``str | None`` and the like: a field whose value is already plain."""
    if hint in _SCALAR_HINTS:
        return True
    if typing.get_origin(hint) in (Union, types.UnionType):
        return all(arg in _SCALAR_HINTS for arg in typing.get_args(hint))
    return False


# --------------------------------------------------------------------------- encoding
def encode(message: Message) -> bytes:
    if isinstance(message, Hello):
        return orjson.dumps(
            {
                "type": "hello",
                "protocol": message.protocol,
                "node": message.node,
                "agent_version": message.agent_version,
                "interval_s": message.interval_s,
                "host": message.host,
                "gpu_driver": message.gpu_driver,
                "gpus": message.gpus,
            }
        )
    return orjson.dumps({"type": "delta", "seq": message.seq, "ts": message.ts, "patch": message.patch})


# --------------------------------------------------------------------------- validation
# The checkers run on every agent message, so valid input takes the cheapest path: no error
# text and no field path is built until a value fails. Then :class:`_Invalid` collects the path
# on its way up, and the public entry points turn it into a :class:`ProtocolError`.
Checker = Callable[[Any], Any]
"""Takes a value; returns the cleaned value or raises :class:`_Invalid`."""


class _Invalid(Exception):
    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.path: list[str] = []

    def at(self, segment: str) -> _Invalid:
        self.path.append(segment)
        return self

    def error(self, root: str) -> ProtocolError:
        shown = repr(self.value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        where = root + "".join(reversed(self.path))
        return ProtocolError(f"{where}: expected {self.expected}, got {shown}")


def _number_check(low: float, high: float, expected: str) -> Checker:
    """A checker of numbers from ``low`` to ``high`` for a float field. An integer passes where
    it does as a float (``10**18 + 1`` is ``1e18``), as msgspec reads it on the fast path."""

    def check(value: Any) -> float | int | None:
        kind = value.__class__  # exact classes: bool, a subclass of int, is not a number here
        if (kind is float or kind is int) and low <= value <= high:
            return value  # NaN fails the comparison, as do infinities
        if value is None:
            return None
        if kind is int and value.bit_length() < 1024 and low <= float(value) <= high:
            return float(value)
        if kind is not float and kind is not int:
            raise _Invalid("a number", value)
        raise _Invalid(expected, value)

    return check


# Every field of the wire types may be null, so the base checkers pass ``None`` through (one
# call per value, no wrapper); :func:`_required` guards the few fields that must be present.
_check_number = _number_check(-MAX_ABS_NUMBER, MAX_ABS_NUMBER, f"a finite number within ±{MAX_ABS_NUMBER:g}")


@functools.cache
def _number_checker(bounds: Bounds) -> Checker:
    """:func:`_check_number` for a field with narrower bounds."""
    if bounds == NUMBER:
        return _check_number
    low, high = bounds
    return _number_check(low, high, f"a number from {low:.15g} to {high:.15g}")


@functools.cache
def _int_checker(bounds: Bounds) -> Checker:
    """:func:`_check_int` for a field with narrower bounds."""
    if bounds == NUMBER:
        return _check_int
    low, high = bounds

    def check(value: Any) -> int | None:
        if value.__class__ is int and low <= value <= high:
            return int(value)
        if value is None:
            return None
        if value.__class__ is not int:
            raise _Invalid("an integer", value)
        raise _Invalid(f"an integer from {low:.15g} to {high:.15g}", value)

    return check


def _check_int(value: Any) -> int | None:
    if value.__class__ is int and -MAX_ABS_NUMBER <= value <= MAX_ABS_NUMBER:
        return int(value)
    if value is None:
        return None
    if value.__class__ is not int:
        raise _Invalid("an integer", value)
    raise _Invalid(f"an integer within ±{MAX_ABS_NUMBER:g}", value)


def _check_bool(value: Any) -> bool | None:
    if value is None or value.__class__ is bool:
        return value
    raise _Invalid("true or false", value)


def _check_str(value: Any) -> str | None:
    if value.__class__ is str and len(value) <= MAX_STRING_CHARS:
        return str(value)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid("a string", value)
    raise _Invalid(f"a string of at most {MAX_STRING_CHARS} characters", value)


def _list_checker(item: Checker, max_items: int) -> Checker:
    def check(value: Any) -> list[Any] | None:
        if value is None:
            return None
        if value.__class__ is not list:
            raise _Invalid("a list", value)
        if len(value) > max_items:
            raise _Invalid(f"a list of at most {max_items} items", f"{len(value)} items")
        try:
            items = [item(v) for v in value]
        except _Invalid as bad:
            for index, v in enumerate(value):
                try:
                    item(v)
                except _Invalid:
                    raise bad.at(f"[{index}]") from None
            raise
        if None in items:  # the item checkers pass null through; inside a list it means nothing
            raise _Invalid("a value", None).at(f"[{items.index(None)}]")
        return items

    return check


_NUMBER_CLASSES = frozenset((float, int))


def _number_list_checker(max_items: int, bounds: Bounds) -> Checker:
    """A list of numbers (per-core CPU percentages: up to hundreds per message). Checked with
    C-level passes (classes, then min, max and a sum, which NaN turns into NaN); any doubt
    falls back to the item-by-item check, which also words the error."""
    slow = _list_checker(_number_checker(bounds), max_items)
    low, high = bounds

    def check(value: Any) -> list[Any] | None:
        if (
            value.__class__ is list
            and 0 < len(value) <= max_items
            and _NUMBER_CLASSES.issuperset(map(type, value))
            and min(value) >= low
            and max(value) <= high
            and (total := sum(value)) == total
        ):
            return value
        return slow(value)

    return check


def _required(check: Checker) -> Checker:
    def required(value: Any) -> Any:
        if value is None:
            raise _Invalid("a value", value)
        return check(value)

    return required


def _checker_for(hint: Any, bounds: Bounds = NUMBER) -> Checker:
    """The checker for one annotated field type (``X | None``, ``list[X] | None``, ...);
    ``bounds`` apply to its numbers."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _checker_for(inner, bounds)  # every checker lets None through
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(item_hint, type) and dataclasses.is_dataclass(item_hint):
            return _list_checker(_object_checker(item_hint, partial=False), MAX_OBJECT_LIST)
        if item_hint is str:
            return _list_checker(_check_str, MAX_STRING_LIST)
        if item_hint is float:
            return _number_list_checker(MAX_NUMBER_LIST, bounds)
        return _list_checker(_checker_for(item_hint, bounds), MAX_NUMBER_LIST)
    if hint is bool:
        return _check_bool
    if hint is float:
        return _number_checker(bounds)
    if hint is int:
        return _int_checker(bounds)
    if hint is str:
        return _check_str
    raise TypeError(f"no wire checker for {hint!r}")


def _locate(bad: _Invalid, pairs: Iterable[tuple[str, Checker, Any]]) -> _Invalid:
    """Finds which field failed (only after a failure) and adds it to the path."""
    for key, check, value in pairs:
        try:
            check(value)
        except _Invalid:
            return bad.at(f".{key}")
    return bad


def _object_checker(cls: type, *, partial: bool) -> Checker:
    """Checks a JSON object against a wire dataclass. Unknown keys are dropped.

    ``partial`` objects are merge patches: only the present keys are checked and returned, and
    ``null`` deletes. Complete objects get every field, missing ones as ``None``.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: _checker_for(hints[f.name], field_bounds(cls, f.name)) for f in dataclasses.fields(cls)}

    def check(value: Any) -> dict[str, Any] | None:
        if value.__class__ is not dict:
            if value is None:
                return None
            raise _Invalid("an object", value)
        try:
            if partial:
                return {k: fields[k](v) for k, v in value.items() if k in fields}
            return {k: c(value.get(k)) for k, c in fields.items()}
        except _Invalid as bad:
            if partial:
                raise _locate(bad, ((k, fields[k], v) for k, v in value.items() if k in fields)) from None
            raise _locate(bad, ((k, c, value.get(k)) for k, c in fields.items())) from None

    return check


_required_int = _required(_check_int)
_required_number = _required(_check_number)
_check_epoch = _number_checker(EPOCH_S)
_required_interval = _required(_number_checker(INTERVAL_S))
_host_static = _object_checker(HostStatic, partial=False)
_gpu_driver = _object_checker(GpuDriver, partial=False)
_gpu_static_list = _list_checker(_object_checker(GpuStatic, partial=False), MAX_GPUS)
_host_patch = _object_checker(HostSample, partial=True)
_gpu_patch = _object_checker(GpuSample, partial=True)


def check_patch(patch: Any, path: str = "patch") -> dict[str, Any]:
    """Validates a snapshot merge patch and returns it without unknown fields."""
    try:
        return _check_patch(patch)
    except _Invalid as bad:
        raise bad.error(path) from None


def _check_patch(patch: Any) -> dict[str, Any]:
    if patch.__class__ is not dict:
        raise _Invalid("an object", patch)
    clean: dict[str, Any] = {}
    for key, value in patch.items():
        try:
            if key == "sampled_at":
                clean[key] = _check_epoch(value)
            elif key == "host":
                clean[key] = _host_patch(value)
            elif key == "gpus":
                clean[key] = None if value is None else _check_gpus_patch(value)
        except _Invalid as bad:
            raise bad.at(f".{key}") from None
    return clean


def _is_gpu_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and len(key) <= 3 and str(int(key)) == key


def _check_gpus_patch(value: Any) -> dict[str, Any]:
    if value.__class__ is not dict:
        raise _Invalid("an object keyed by GPU index", value)
    if len(value) > MAX_GPUS:
        raise _Invalid(f"at most {MAX_GPUS} GPUs", f"{len(value)} GPUs")
    gpus: dict[str, Any] = {}
    for index, gpu in value.items():
        if not _is_gpu_index(index):
            raise _Invalid("GPU index keys such as '0'", index)
        try:
            gpus[index] = _gpu_patch(gpu)
        except _Invalid as bad:
            raise bad.at(f".{index}") from None
    return gpus


def _field(obj: Mapping[str, Any], key: str, check: Checker) -> Any:
    if key not in obj:
        raise ProtocolError(f"{obj.get('type', 'message')}: missing field {key!r}")
    try:
        return check(obj[key])
    except _Invalid as bad:
        raise bad.error(key) from None


def _check_node_name(value: Any) -> str:
    name = _required(_check_str)(value)
    if not NODE_NAME_RE.fullmatch(name):
        raise _Invalid("a node name of letters, digits, '.', '_', '-' (at most 63)", name)
    return name


def check_node_name(value: Any, path: str = "node") -> str:
    try:
        return _check_node_name(value)
    except _Invalid as bad:
        raise bad.error(path) from None


# --------------------------------------------------------------------------- fast deltas
# A hub takes thousands of deltas a second. msgspec parses and checks one in a single C pass
# (7.6 µs for a 1.8 KB delta against 36 µs for orjson plus the checkers above, BENCHMARKS.md),
# with types derived from the same wire dataclasses and limits. Whatever it refuses, hellos
# included, goes through the checkers above, which accept or word the error: they stay the
# reference, and ``tests/test_protocol_props.py`` checks that msgspec never accepts what they
# refuse. Imported on the first decode, so agents, which only encode, never load it.
def _fast_type(hint: Any, bounds: Bounds = NUMBER) -> Any:
    """The msgspec type for one annotated wire field (``X | None``, ``list[X] | None``, ...);
    ``bounds`` apply to its numbers."""
    from msgspec import Meta

    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return typing.Optional[_fast_type(inner, bounds)]  # noqa: UP045 (a runtime type, not an annotation)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(item_hint, type) and dataclasses.is_dataclass(item_hint):
            return typing.Annotated[list[_fast_object(item_hint)], Meta(max_length=MAX_OBJECT_LIST)]  # type: ignore[misc]
        most = MAX_STRING_LIST if item_hint is str else MAX_NUMBER_LIST
        return typing.Annotated[list[_fast_type(item_hint, bounds)], Meta(max_length=most)]  # type: ignore[misc]
    if hint is bool:
        return bool
    if hint is float:
        return typing.Annotated[float, Meta(ge=bounds.low, le=bounds.high)]
    if hint is int:
        return typing.Annotated[int, Meta(ge=math.ceil(bounds.low), le=math.floor(bounds.high))]
    if hint is str:
        return typing.Annotated[str, Meta(max_length=MAX_STRING_CHARS)]
    raise TypeError(f"no fast wire type for {hint!r}")


def _fast_object(cls: type) -> Any:
    """A wire dataclass as a TypedDict whose keys are all optional (unknown keys are dropped)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: _fast_type(hints[f.name], field_bounds(cls, f.name)) for f in dataclasses.fields(cls)}
    typed_dict: Any = typing.TypedDict
    return typed_dict(f"{cls.__name__}Wire", fields, total=False)


@functools.cache
def _fast_delta_decoder() -> Callable[[str | bytes], Any]:
    import msgspec

    gpu_index: Any = typing.Annotated[str, msgspec.Meta(pattern=r"^(0|[1-9][0-9]{0,2})$")]  # _is_gpu_index
    gpu: Any = typing.Optional[_fast_object(GpuSample)]  # noqa: UP045
    gpus = typing.Annotated[dict[gpu_index, gpu], msgspec.Meta(max_length=MAX_GPUS)]
    typed_dict: Any = typing.TypedDict
    patch = typed_dict(
        "SnapshotPatchWire",
        {
            "sampled_at": _fast_type(float | None, EPOCH_S),
            "host": typing.Optional[_fast_object(HostSample)],  # noqa: UP045
            "gpus": typing.Optional[gpus],  # noqa: UP045
        },
        total=False,
    )
    wire = msgspec.defstruct(
        "DeltaWire",
        [
            ("type", typing.Literal["delta"]),
            ("seq", _fast_type(int)),
            ("ts", _fast_type(float)),
            ("patch", patch),
        ],
    )
    decoder = msgspec.json.Decoder(wire)
    refused = msgspec.DecodeError  # ValidationError is one too

    def decode_delta(data: str | bytes) -> Delta | None:
        try:
            message: Any = decoder.decode(data)
        except refused:
            return None
        return Delta(seq=message.seq, ts=message.ts, patch=message.patch)

    return decode_delta


def _check_size(data: str | bytes) -> None:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}", CLOSE_TOO_BIG)


def decode(data: str | bytes) -> Message:
    """Parses one agent frame. Raises :class:`ProtocolError` for anything malformed."""
    _check_size(data)
    delta = _fast_delta_decoder()(data)
    if delta is not None:
        return delta
    return decode_with_checkers(data)


def decode_with_checkers(data: str | bytes) -> Message:
    """:func:`decode` without msgspec's fast path: the reference, and the one that words errors."""
    _check_size(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object")
    kind = obj.get("type")
    if kind == "delta":
        seq = _field(obj, "seq", _required_int)
        ts = _field(obj, "ts", _required_number)
        if "patch" not in obj:
            raise ProtocolError("delta: missing field 'patch'")
        return Delta(seq=seq, ts=float(ts), patch=check_patch(obj["patch"]))
    if kind == "hello":
        protocol = _field(obj, "protocol", _required_int)
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {protocol} is not supported (hub speaks {PROTOCOL_VERSION})",
                CLOSE_POLICY,
            )
        interval = _field(obj, "interval_s", _required_interval)
        return Hello(
            node=_field(obj, "node", _check_node_name),
            agent_version=_field(obj, "agent_version", _required(_check_str)),
            interval_s=float(interval),
            host=_field({"host": obj.get("host") or {}}, "host", _host_static),
            gpu_driver=_field({"gpu_driver": obj.get("gpu_driver") or {}}, "gpu_driver", _gpu_driver),
            gpus=_field({"gpus": obj.get("gpus") or []}, "gpus", _gpu_static_list),
            protocol=protocol,
        )
    raise ProtocolError(f"unknown message type {kind!r}", CLOSE_POLICY)


# --------------------------------------------------------------------------- bounds on the agent
# An agent sends null (unknown) for a reading outside its field's bounds: one odd reading (a
# clock stepped back under the uptime, a driver's garbage) then shows as unknown on the wall,
# where sending it would get the connection closed, again on every reconnect.
_NUMBER_KINDS = frozenset((int, float))


class _BoundsPlan(NamedTuple):
    """The fields of a wire dataclass that hold numbers, with their bounds (low, high)."""

    numbers: tuple[tuple[str, float, float], ...]
    number_lists: tuple[tuple[str, float, float], ...]
    object_lists: tuple[tuple[str, type], ...]


@functools.cache
def _bounds_plan(cls: type, skip: frozenset[str] = frozenset()) -> _BoundsPlan:
    hints = typing.get_type_hints(cls)
    numbers, number_lists, object_lists = [], [], []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) in (Union, types.UnionType):
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        low, high = field_bounds(cls, f.name)
        if hint in _NUMBER_KINDS:
            numbers.append((f.name, low, high))
        elif typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            if item in _NUMBER_KINDS:
                number_lists.append((f.name, low, high))
            elif isinstance(item, type) and dataclasses.is_dataclass(item):
                object_lists.append((f.name, item))
    return _BoundsPlan(tuple(numbers), tuple(number_lists), tuple(object_lists))


def nulls_for_out_of_bounds(
    obj: Mapping[str, Any], cls: type, path: str, nulled: list[str], skip: frozenset[str] = frozenset()
) -> Any:
    """``obj`` (a wire ``cls`` as a dict) with every number outside its field's bounds set to
    ``None``, each such field's path appended to ``nulled``; ``obj`` itself when all are within
    (it is never mutated). A list of numbers with one outside becomes ``None`` as a whole.
    ``obj`` may hold only some of ``cls``'s fields; those in ``skip`` are not looked at."""
    plan = _bounds_plan(cls, skip)
    get = obj.get
    changed: dict[str, Any] = {}
    for name, low, high in plan.numbers:
        value: Any = get(name)
        if isinstance(value, (int, float)) and not low <= value <= high:
            changed[name] = None
    for name, low, high in plan.number_lists:
        values: Any = get(name)
        # C-level passes over per-core figures, as the decoder's (a sum is NaN if any is NaN)
        if values.__class__ is list and values and _NUMBER_KINDS.issuperset(map(type, values)):
            total = sum(values)
            if not (low <= min(values) and max(values) <= high and total == total):
                changed[name] = None
    for name, item_cls in plan.object_lists:
        items = get(name)
        if items.__class__ is list:
            fitted = [
                nulls_for_out_of_bounds(v, item_cls, f"{path}.{name}[{i}]", nulled)
                if isinstance(v, dict)
                else v
                for i, v in enumerate(items)
            ]
            if any(a is not b for a, b in zip(fitted, items, strict=True)):
                changed[name] = fitted
    if not changed:
        return obj
    nulled.extend(f"{path}.{name}" for name, value in changed.items() if value is None)
    return {**obj, **changed}


def snapshot_within_bounds(
    snapshot: Snapshot, gpu_fields_checked: frozenset[str] = frozenset()
) -> tuple[Snapshot, list[str]]:
    """An agent's snapshot with every out-of-bounds number as null, and the paths of those.
    ``gpu_fields_checked``: GPU fields the collector already held to their bounds (when it read
    them), not looked at again."""
    nulled: list[str] = []
    out = snapshot
    sampled_at: Any = snapshot.get("sampled_at")
    if isinstance(sampled_at, (int, float)) and not EPOCH_S.low <= sampled_at <= EPOCH_S.high:
        out = {**out, "sampled_at": None}
        nulled.append("sampled_at")
    host = snapshot.get("host")
    if isinstance(host, dict):
        fitted_host = nulls_for_out_of_bounds(host, HostSample, "host", nulled)
        if fitted_host is not host:
            out = {**out, "host": fitted_host}
    gpus = snapshot.get("gpus")
    if isinstance(gpus, dict):
        fitted_gpus = {
            index: nulls_for_out_of_bounds(gpu, GpuSample, f"gpus.{index}", nulled, gpu_fields_checked)
            if isinstance(gpu, dict)
            else gpu
            for index, gpu in gpus.items()
        }
        if any(fitted_gpus[i] is not gpus[i] for i in gpus):
            out = {**out, "gpus": fitted_gpus}
    return out, nulled


# --------------------------------------------------------------------------- merge patch
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: applies ``patch`` to ``target`` and returns the result; inputs are not mutated.

    Unchanged branches of ``target`` are shared with the result, not copied.
    """
    if not isinstance(patch, dict):
        return patch
    # the hub merges every delta: most values are replaced as they are, so the patch is laid
    # over the target in one C-level step and only deletions and nested objects are revisited
    old = target if isinstance(target, dict) else {}
    result = {**old, **patch}
    for key, value in patch.items():
        if value is None:
            del result[key]
        elif isinstance(value, dict):
            result[key] = merge_patch(old.get(key), value)
    return result


# Classes whose values are unchanged when equal and of the same class: what make_patch meets
# most (a sample's numbers and strings, mostly the same as a second ago), checked first.
_EQUAL_MEANS_UNCHANGED = frozenset({int, float, str, bool, list, type(None)})
_ABSENT = object()


def make_patch(old: Any, new: Any) -> Any:
    """The smallest RFC 7396 patch that turns ``old`` into ``new`` (``{}`` when equal).

    Objects are diffed key by key; anything else (numbers, strings, lists) is replaced whole.
    A ``None`` value inside ``new`` cannot be expressed by a merge patch, so it is dropped from
    objects: absent and ``null`` mean the same thing on this wire. A value counts as changed
    when it is unequal or of another class (``1`` and ``1.0`` are different JSON).
    """
    if not isinstance(new, dict):
        return new
    if not isinstance(old, dict):
        return _without_nulls(new)
    patch: dict[str, Any] = {}
    kept = 0  # keys of new that old has too: when all of old's, no key was removed
    for key, value in new.items():
        old_value = old.get(key, _ABSENT)
        if value is old_value:  # the same object: a reading repeated between slow reads
            kept += 1
            continue
        kind = value.__class__
        if kind is old_value.__class__ and kind in _EQUAL_MEANS_UNCHANGED and value == old_value:
            kept += 1
            continue
        if old_value is _ABSENT:
            if value is not None:
                patch[key] = _without_nulls(value) if isinstance(value, dict) else value
            continue
        kept += 1
        if value is None:
            if old_value is not None:
                patch[key] = None
        elif isinstance(value, dict) and isinstance(old_value, dict):
            sub = make_patch(old_value, value)
            if sub:
                patch[key] = sub
        elif value != old_value or kind is not old_value.__class__:
            patch[key] = _without_nulls(value) if isinstance(value, dict) else value
    if kept < len(old):
        for key in old:
            if key not in new:
                patch[key] = None
    return patch


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value
