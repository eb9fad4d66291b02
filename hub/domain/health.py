"""A GPU's health in words a lab can act on: ok, warning or fault, and what to do.

Pure functions over the wire dicts (a :class:`~node_agent.protocol.GpuSample` and its
:class:`~node_agent.protocol.GpuStatic` as the hub keeps them); no I/O, the clock is a
parameter. The wall shows the first :class:`Finding`'s words on the GPU row; the node page all
of them and the Xid history.

Distinct from a lost GPU (the agent reports an ``error`` for it: the row's own "fault" state) and
from a node that stopped reporting: :func:`gpu_health` says nothing about those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    """How bad, least first (the order :func:`worst` uses)."""

    OK = "ok"
    WARNING = "warning"
    FAULT = "fault"


_RANK = {Level.OK: 0, Level.WARNING: 1, Level.FAULT: 2}

# What an admin does, shortest first: the job, the GPU, the node, the hardware.
RESTART_JOB = "restart the job"
RESET_GPU = "reset the GPU"
DRAIN_NODE = "drain the node"
REPLACE_GPU = "replace the GPU (RMA)"
RMA_IF_REPEATED = "RMA the GPU if it repeats"


@dataclass(frozen=True, slots=True)
class XidInfo:
    meaning: str
    action: str
    level: Level


# The common Xid codes (NVIDIA's Xid catalog and DCGM's health checks), in a few words each.
# Application-caused ones are warnings (the GPU is fine: the job failed); those that leave the
# GPU or the node unusable until a reset are faults.
XID_TABLE: dict[int, XidInfo] = {
    8: XidInfo("GPU stopped processing (timeout)", RESTART_JOB, Level.WARNING),
    13: XidInfo("graphics engine exception", RESTART_JOB, Level.WARNING),
    31: XidInfo("GPU memory page fault", RESTART_JOB, Level.WARNING),
    43: XidInfo("GPU stopped processing", RESTART_JOB, Level.WARNING),
    45: XidInfo("preemptive cleanup after earlier errors", RESTART_JOB, Level.WARNING),
    48: XidInfo("double-bit ECC error", RESET_GPU, Level.FAULT),
    61: XidInfo("internal micro-controller warning", RESET_GPU, Level.WARNING),
    62: XidInfo("internal micro-controller halt", RESET_GPU, Level.FAULT),
    63: XidInfo("row remap or page retirement recorded", RESET_GPU, Level.WARNING),
    64: XidInfo("row remap or page retirement failed", REPLACE_GPU, Level.FAULT),
    68: XidInfo("video decoder exception", RESTART_JOB, Level.WARNING),
    74: XidInfo("NVLink error", RESET_GPU, Level.FAULT),
    79: XidInfo("fell off the bus", DRAIN_NODE, Level.FAULT),
    92: XidInfo("high single-bit ECC error rate", RMA_IF_REPEATED, Level.WARNING),
    94: XidInfo("contained ECC error", RESTART_JOB, Level.WARNING),
    95: XidInfo("uncontained ECC error", RESET_GPU, Level.FAULT),
    109: XidInfo("context switch timeout", RESTART_JOB, Level.WARNING),
    119: XidInfo("GSP firmware timeout", RESET_GPU, Level.FAULT),
    120: XidInfo("GSP firmware error", RESET_GPU, Level.FAULT),
}
UNKNOWN_XID = XidInfo("see NVIDIA's Xid catalog", "check the kernel log", Level.WARNING)

# An Xid shows on the wall this long after it came (the node page keeps the history since the
# agent started): a job's error for an hour, a fault for a day, or until the agent restarts.
XID_WARNING_SHOWN_S = 3600.0
XID_FAULT_SHOWN_S = 24 * 3600.0

# Clocks-event reasons that say the hardware is held back; the others (idle, application clocks,
# SW power cap, sync boost, display clocks) are how a GPU normally runs.
SLOWDOWN_WORDS = {
    "hw_slowdown": "HW slowdown",
    "hw_thermal": "HW thermal slowdown",
    "hw_power_brake": "HW power brake slowdown",
    "sw_thermal": "SW thermal slowdown",
}

# A PCIe link below its generation under at least this utilization is a warning (an idle GPU
# lowers its link's generation to save power); a link narrower than its maximum always is.
PCIE_LOAD_PERCENT = 50.0
# Before Ampere, a GPU with this many retired pages is due for replacement (NVIDIA's guidance).
RETIRED_PAGES_RMA = 60


# The sample fields :func:`gpu_health` reads: a patch without any of them leaves a GPU's health
# as it was (but for an Xid growing old: see Health.until_epoch_s).
HEALTH_FIELDS = frozenset(
    {
        "error",
        "xid_events",
        "xid_last_code",
        "xid_last_epoch_s",
        "remap_failed",
        "remap_pending",
        "retired_pages_single_bit",
        "retired_pages_double_bit",
        "retired_pages_pending",
        "ecc_volatile_uncorrected",
        "pcie_link_width_lanes",
        "pcie_link_gen",
        "util_gpu_percent",  # a slower PCIe link is a warning only under load
        "nvlink_active",
        "throttle_reasons",
    }
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, with the words the wall shows (what, and what to do)."""

    level: Level
    words: str


@dataclass(frozen=True, slots=True)
class Health:
    level: Level
    findings: tuple[Finding, ...]  # the worst first
    # after this the same sample may be judged otherwise: an Xid shown now leaves the wall
    until_epoch_s: float = math.inf

    @property
    def words(self) -> str:
        """The worst finding's words; ``""`` when all is well."""
        return self.findings[0].words if self.findings else ""


HEALTHY = Health(Level.OK, ())


def xid_info(code: int) -> XidInfo:
    return XID_TABLE.get(code, UNKNOWN_XID)


def xid_words(code: int) -> str:
    """``"Xid 79: fell off the bus: drain the node"``."""
    info = xid_info(code)
    return f"Xid {code}: {info.meaning}: {info.action}"


def worst(levels: Iterable[Level]) -> Level:
    return max(levels, key=_RANK.__getitem__, default=Level.OK)


def gpu_health(sample: Mapping[str, Any], static: Mapping[str, Any] | None, now_epoch_s: float) -> Health:
    """The health of one GPU from its merged sample and its hello facts (``None``: none known).
    A GPU the agent reports an error for (lost) is not judged here.

    The registry judges a GPU whenever a patch may change its health (:func:`health_may_change`)
    and again once :attr:`Health.until_epoch_s` has passed; a healthy GPU, nearly all of them,
    is told in a few lookups (:func:`_may_have_findings`) before any finding is put together."""
    if sample.get("error") or not _may_have_findings(sample, static):
        return HEALTHY
    return _judged(sample, static, now_epoch_s)


_SLOWDOWNS = frozenset(SLOWDOWN_WORDS)


def _may_have_findings(sample: Mapping[str, Any], static: Mapping[str, Any] | None) -> bool:
    """False only when no finding below can apply: each test is implied by a finding's own
    condition (``tests/test_health.py`` holds :func:`gpu_health` to :func:`_judged` on any
    sample), so a healthy GPU costs these lookups instead of five lists and a sort."""
    get = sample.get
    if (
        get("xid_events")
        or get("xid_last_code") is not None
        or get("remap_failed")
        or get("remap_pending")
        or get("retired_pages_single_bit")
        or get("retired_pages_double_bit")
        or get("retired_pages_pending")
        or get("ecc_volatile_uncorrected")
    ):
        return True
    reasons = get("throttle_reasons")
    if reasons and not _SLOWDOWNS.isdisjoint(reasons):
        return True
    active = get("nvlink_active")
    if active and not all(active):
        return True
    if static:
        width, gen = get("pcie_link_width_lanes"), get("pcie_link_gen")
        width_max, gen_max = static.get("pcie_link_width_max_lanes"), static.get("pcie_link_gen_max")
        if width and width_max and width < width_max:
            return True
        if gen and gen_max and gen < gen_max:
            util = get("util_gpu_percent")
            return util is not None and util >= PCIE_LOAD_PERCENT
    return False


def _judged(sample: Mapping[str, Any], static: Mapping[str, Any] | None, now_epoch_s: float) -> Health:
    """:func:`gpu_health` in full: every finding, the worst first."""
    if sample.get("error"):
        return HEALTHY
    xids, until_epoch_s = _xid_findings(sample, now_epoch_s)
    findings = [
        *xids,
        *_memory_findings(sample),
        *_pcie_findings(sample, static or {}),
        *_nvlink_findings(sample),
        *_slowdown_findings(sample),
    ]
    if not findings:
        return HEALTHY
    findings.sort(key=lambda f: -_RANK[f.level])  # stable: within a level, the order above
    return Health(findings[0].level, tuple(findings), until_epoch_s)


def health_may_change(
    gpu_patch: Mapping[str, Any], sample: Mapping[str, Any], static: Mapping[str, Any] | None
) -> bool:
    """Whether a GPU's patch may change its health (``sample``: the GPU as merged with it). The
    utilization, in nearly every patch of a busy GPU, counts only for a PCIe link below its
    generation; a patch without any field a finding reads changes nothing."""
    if not _JUDGED_FIELDS.isdisjoint(gpu_patch):
        return True
    if "util_gpu_percent" not in gpu_patch or not static:
        return False
    gen, gen_max = sample.get("pcie_link_gen"), static.get("pcie_link_gen_max")
    return bool(gen and gen_max and gen < gen_max)


_JUDGED_FIELDS = HEALTH_FIELDS - {"util_gpu_percent"}


def _seconds(value: Any) -> float | None:
    """An epoch time as a float; ``None`` for one that isn't a usable number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _xid_findings(sample: Mapping[str, Any], now_epoch_s: float) -> tuple[list[Finding], float]:
    """The Xids shown now, and when the first of them leaves the wall (``inf``: none will)."""
    events = sample.get("xid_events") or ()
    if not events and sample.get("xid_last_code") is not None:
        events = ({"code": sample["xid_last_code"], "epoch_s": sample.get("xid_last_epoch_s")},)
    shown: dict[int, Level] = {}
    until_epoch_s = math.inf
    for event in reversed(events):  # newest first: one finding per code
        code, at = event.get("code"), _seconds(event.get("epoch_s"))
        if not isinstance(code, int) or code in shown:
            continue
        level = xid_info(code).level
        window = XID_FAULT_SHOWN_S if level is Level.FAULT else XID_WARNING_SHOWN_S
        if at is None or now_epoch_s - at <= window:
            shown[code] = level
            if at is not None:
                until_epoch_s = min(until_epoch_s, at + window)
    return [Finding(level, xid_words(code)) for code, level in shown.items()], until_epoch_s


def _memory_findings(sample: Mapping[str, Any]) -> list[Finding]:
    out = []
    if sample.get("remap_failed"):
        out.append(Finding(Level.FAULT, f"row remap failed: {REPLACE_GPU}"))
    elif sample.get("remap_pending"):
        out.append(Finding(Level.WARNING, f"row remap pending: {RESET_GPU}"))
    retired = (sample.get("retired_pages_single_bit") or 0) + (sample.get("retired_pages_double_bit") or 0)
    if retired >= RETIRED_PAGES_RMA:
        out.append(Finding(Level.FAULT, f"{retired} retired pages: {REPLACE_GPU}"))
    elif sample.get("retired_pages_pending"):
        out.append(Finding(Level.WARNING, f"page retirement pending: {RESET_GPU}"))
    uncorrected = sample.get("ecc_volatile_uncorrected")
    if uncorrected and not out:  # a pending remap or retirement already says to reset
        plural = "s" if uncorrected != 1 else ""
        out.append(Finding(Level.WARNING, f"{uncorrected} uncorrected ECC error{plural}: {RESET_GPU}"))
    return out


def _pcie_findings(sample: Mapping[str, Any], static: Mapping[str, Any]) -> list[Finding]:
    width, width_max = sample.get("pcie_link_width_lanes"), static.get("pcie_link_width_max_lanes")
    if width and width_max and width < width_max:
        return [Finding(Level.WARNING, f"PCIe x{width} of x{width_max}")]
    gen, gen_max = sample.get("pcie_link_gen"), static.get("pcie_link_gen_max")
    util = sample.get("util_gpu_percent")
    if gen and gen_max and gen < gen_max and util is not None and util >= PCIE_LOAD_PERCENT:
        return [Finding(Level.WARNING, f"PCIe gen{gen} of gen{gen_max} under load")]
    return []


def _nvlink_findings(sample: Mapping[str, Any]) -> list[Finding]:
    active = sample.get("nvlink_active")
    if not active or all(active) or not any(active):  # none up: NVLink not in use
        return []
    down = [str(link) for link, up in enumerate(active) if not up]
    return [Finding(Level.WARNING, f"NVLink {', '.join(down)} down")]


def _slowdown_findings(sample: Mapping[str, Any]) -> list[Finding]:
    reasons = sample.get("throttle_reasons") or ()
    return [Finding(Level.WARNING, SLOWDOWN_WORDS[r]) for r in reasons if r in SLOWDOWN_WORDS]


def slowdown_is_normal(reason: str) -> bool:
    """Whether a clocks-event reason is how a GPU normally runs (idle, application clocks, SW
    power cap...) rather than a warning."""
    return reason not in SLOWDOWN_WORDS


@dataclass(frozen=True, slots=True)
class HealthCounts:
    """GPUs with a warning and with a fault (a GPU counts once, at its worst)."""

    warnings: int = 0
    faults: int = 0


def count_levels(healths: Iterable[Health]) -> HealthCounts:
    warnings = faults = 0
    for health in healths:
        if health.level is Level.FAULT:
            faults += 1
        elif health.level is Level.WARNING:
            warnings += 1
    return HealthCounts(warnings, faults)
