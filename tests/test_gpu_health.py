"""GPU health through NVML (Xid events, memory health, throttling, PCIe and NVLink, MIG slices),
against the fake ``pynvml`` (tests/fake_nvml), in-process; and the fake against the real
nvidia-ml-py: every NVML name the agent uses exists there, with a signature the fake shares."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import inspect
import os
import pwd
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from node_agent import gpu as gpu_module
from node_agent import protocol
from node_agent.gpu import GpuCollector, mig_profile
from node_agent.protocol import MAX_XID_EVENTS, GpuSample, check_patch, to_wire
from tests import fakes
from tests.fakes import GIB, MakeCollector, xid

MY_USER = pwd.getpwuid(os.getuid()).pw_name
GPU_SOURCE = Path(gpu_module.__file__).read_text(encoding="utf-8")


HEALTH_FIELDS = (
    "xid_count",
    "xid_last_code",
    "xid_last_epoch_s",
    "xid_events",
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
    "pcie_link_gen",
    "pcie_link_width_lanes",
    "pcie_rx_bytes_per_s",
    "pcie_tx_bytes_per_s",
    "pcie_replay_count",
    "nvlink_active",
    "nvlink_replay_count",
    "nvlink_recovery_count",
    "nvlink_crc_flit_count",
    "nvlink_crc_data_count",
    "mig_slices",
)


def assert_wire_valid(samples: dict[str, GpuSample]) -> None:
    wire = to_wire(samples)
    assert check_patch({"gpus": wire}) == {"gpus": wire}


def xid_threads(besides: Iterable[threading.Thread] = ()) -> list[threading.Thread]:
    """The live Xid threads but ``besides`` (those of earlier tests' collectors, which end with
    their current wait)."""
    old = set(besides)
    return [t for t in threading.enumerate() if t.name == "sers-xid-events" and t not in old]


def sample_until(
    collector: GpuCollector, done: Callable[[dict[str, GpuSample]], bool], limit_s: float = 10.0
) -> dict[str, GpuSample]:
    deadline = time.monotonic() + limit_s
    while True:
        samples = collector.sample()
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


# --------------------------------------------------------------------------- Xid events
def test_xid_79_arrives_on_its_gpu_without_delaying_a_sample(make_collector: MakeCollector) -> None:
    started = time.time()
    collector, _ = make_collector(fakes.xid_79_after_registration(after_s=1.5))
    first = collector.sample()
    assert (first["1"].xid_count, first["1"].xid_last_code, first["1"].xid_events) == (0, None, [])
    slowest_s = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        before = time.monotonic()
        samples = collector.sample()
        slowest_s = max(slowest_s, time.monotonic() - before)
        if samples["1"].xid_count:
            break
        time.sleep(0.05)
    gpu1 = samples["1"]
    assert gpu1.xid_count == 1 and gpu1.xid_last_code == 79
    assert gpu1.xid_last_epoch_s is not None and started + 1.4 <= gpu1.xid_last_epoch_s <= time.time()
    assert gpu1.xid_events is not None and [e.code for e in gpu1.xid_events] == [79]
    assert gpu1.xid_events[0].mig_uuid is None and gpu1.xid_events[0].gpu_instance_id is None
    assert samples["0"].xid_count == 0  # the other GPU saw nothing
    assert slowest_s < 0.2  # the samples never waited for the event
    assert_wire_valid(samples)


def test_xid_on_a_mig_instance_names_the_slice(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(
        fakes.a100_mig(xids=[xid(43, 0.3, gpu_instance_id=5, compute_instance_id=0)])
    )
    samples = sample_until(collector, lambda s: bool(s["0"].xid_count))
    gpu = samples["0"]
    assert gpu.xid_events is not None and gpu.mig_slices is not None
    (event,) = gpu.xid_events
    small = next(s for s in gpu.mig_slices if s.profile == "2g.10gb")
    assert (event.code, event.mig_uuid, event.gpu_instance_id, event.compute_instance_id) == (
        43,
        small.uuid,
        5,
        0,
    )


def test_only_the_newest_xid_events_are_sent_but_all_are_counted(make_collector: MakeCollector) -> None:
    codes = [13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 74, 79]
    assert len(codes) > MAX_XID_EVENTS
    events = [xid(code, 0.01 * k) for k, code in enumerate(codes)]
    collector, _ = make_collector(fakes.scenario([fakes.gpu(0, xid_events=events)]))
    samples = sample_until(collector, lambda s: s["0"].xid_count == len(codes))
    gpu = samples["0"]
    assert gpu.xid_count == len(codes) and gpu.xid_last_code == 79
    assert gpu.xid_events is not None and [e.code for e in gpu.xid_events] == codes[-MAX_XID_EVENTS:]


def test_event_registration_unsupported_gives_null_and_no_thread(make_collector: MakeCollector) -> None:
    earlier = xid_threads()
    collector, fake = make_collector(fakes.events_unsupported())
    samples = collector.sample()
    for gpu in samples.values():
        assert (gpu.xid_count, gpu.xid_last_code, gpu.xid_events) == (None, None, None)
        assert gpu.remapped_rows_corrected == 0  # the rest is there
    assert not xid_threads(earlier)
    assert "nvmlEventSetWait_v2" not in fake.calls


def test_the_event_thread_sleeps_in_nvml_and_stops_on_close(make_collector: MakeCollector) -> None:
    earlier = xid_threads()
    collector, fake = make_collector(fakes.eight_gpus())
    collector.sample()
    (thread,) = xid_threads(earlier)
    waits = fake.calls.get("nvmlEventSetWait_v2", 0)
    time.sleep(1.2)
    # one blocking wait per XID_WAIT_MS: no polling while no event comes
    assert fake.calls["nvmlEventSetWait_v2"] - waits <= 1.2 / (gpu_module.XID_WAIT_MS / 1000) + 1
    started = time.monotonic()
    collector.close()
    assert time.monotonic() - started < gpu_module.XID_CLOSE_WAIT_S + 0.3  # an exit never waits
    thread.join(gpu_module.XID_WAIT_MS / 1000 + 1)
    assert not thread.is_alive()  # it ends with its current wait


def test_xid_counts_survive_an_nvml_restart(make_collector: MakeCollector) -> None:
    earlier = xid_threads()
    now = [time.monotonic()]
    collector, fake = make_collector(fakes.xid_79_after_registration(after_s=0.0), clock=lambda: now[0])
    sample_until(collector, lambda s: s["1"].xid_count == 1)
    for entry in fake._scenario["gpus"]:
        entry["errors"] = {"*": "GpuIsLost"}
        entry["xid_events"] = []
    collector.sample()
    now[0] += gpu_module.NVML_RETRY_EVERY_S
    collector.sample()  # every GPU failed for the retry period: NVML stops
    for entry in fake._scenario["gpus"]:
        entry["errors"] = {}
    now[0] += gpu_module.NVML_RETRY_EVERY_S
    samples = sample_until(collector, lambda s: bool(s))
    assert samples["1"].xid_count == 1 and samples["1"].xid_last_code == 79
    assert len(xid_threads(earlier)) == 1  # the old thread ended with the old NVML


# --------------------------------------------------------------------------- memory health
def test_row_remap_pending_and_failure(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.memory_faults())
    samples = collector.sample()
    ok, pending, failed = samples["0"], samples["1"], samples["2"]
    assert (ok.remap_pending, ok.remap_failed, ok.remapped_rows_uncorrected) == (False, False, 0)
    assert (pending.remapped_rows_corrected, pending.remapped_rows_uncorrected) == (0, 1)
    assert (pending.remap_pending, pending.remap_failed) == (True, False)
    assert (failed.remapped_rows_corrected, failed.remapped_rows_uncorrected) == (2, 5)
    assert (failed.remap_pending, failed.remap_failed) == (False, True)
    assert pending.ecc_volatile_uncorrected == 1 and failed.ecc_aggregate_uncorrected == 5
    assert ok.retired_pages_single_bit is None and ok.retired_pages_pending is None  # Ampere: none
    assert_wire_valid(samples)


def test_ecc_counts_rise_within_the_slow_period(make_collector: MakeCollector) -> None:
    now = [time.monotonic()]
    collector, fake = make_collector(fakes.memory_faults(), clock=lambda: now[0])
    gpu3 = collector.sample()["3"]
    assert (gpu3.ecc_volatile_corrected, gpu3.ecc_aggregate_corrected) == (10, 10)
    fake._scenario["gpus"][3].update(ecc_corrected=25, ecc_aggregate_corrected=25, ecc_uncorrected=1)
    now[0] += gpu_module.SLOW_FIELDS_EVERY_S - 1
    assert collector.sample()["3"].ecc_volatile_corrected == 10  # not read again yet
    now[0] += 1
    gpu3 = collector.sample()["3"]
    assert (gpu3.ecc_volatile_corrected, gpu3.ecc_aggregate_corrected) == (25, 25)
    assert (gpu3.ecc_volatile_uncorrected, gpu3.ecc_aggregate_uncorrected) == (1, 0)


def test_pages_pending_retirement_before_ampere(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.slowdowns_and_links())
    t4 = collector.sample()["4"]
    assert (t4.retired_pages_single_bit, t4.retired_pages_double_bit, t4.retired_pages_pending) == (
        2,
        1,
        True,
    )
    assert t4.remapped_rows_corrected is None and t4.remap_pending is None  # no row remapper


# --------------------------------------------------------------------------- clocks, PCIe, NVLink
def test_slowdowns_pcie_and_nvlink(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.slowdowns_and_links())
    static = collector.static()
    samples = collector.sample()
    assert samples["0"].throttle_reasons == ["sw_thermal", "hw_thermal"]
    assert samples["1"].throttle_reasons == ["hw_slowdown", "hw_power_brake"]
    narrow = samples["2"]
    assert (narrow.pcie_link_gen, narrow.pcie_link_width_lanes) == (5, 8)
    assert (static[2].pcie_link_gen_max, static[2].pcie_link_width_max_lanes) == (5, 16)
    assert (narrow.pcie_rx_bytes_per_s, narrow.pcie_tx_bytes_per_s) == (4000 * 1024.0, 2000 * 1024.0)
    assert narrow.pcie_replay_count == 0
    links = samples["3"]
    assert links.nvlink_active is not None and len(links.nvlink_active) == 18
    assert [k for k, up in enumerate(links.nvlink_active) if not up] == [3]
    assert links.nvlink_crc_flit_count is not None and links.nvlink_crc_flit_count[3] == 7
    assert links.nvlink_replay_count == [0] * 18
    assert samples["4"].nvlink_active is None  # a T4 has no NVLink
    assert_wire_valid(samples)


def test_a_gpu_supporting_none_of_it_gives_null_everywhere(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.no_health_support())
    static = collector.static()[0]
    assert (static.pcie_link_gen_max, static.pcie_link_width_max_lanes, static.mig_mode) == (None, None, None)
    assert static.mig_profiles is None
    for _ in range(2):  # the second sample skips what the first found unsupported
        gpu = collector.sample()["0"]
        assert gpu.error is None and gpu.mem_used_bytes == 1 * GIB
        assert {name: getattr(gpu, name) for name in HEALTH_FIELDS} == dict.fromkeys(HEALTH_FIELDS)


# --------------------------------------------------------------------------- MIG
def test_mig_slices_with_their_processes(
    make_collector: MakeCollector, two_sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pids = [child.pid for child in two_sleepers]
    collector, _ = make_collector(fakes.a100_mig(pids))
    assert collector.static()[0].mig_mode == "enabled"
    samples = collector.sample()
    gpu = samples["0"]
    assert gpu.util_gpu_percent is None  # NVML gives none for a GPU in MIG mode
    assert gpu.mig_slices is not None and [s.profile for s in gpu.mig_slices] == ["3g.20gb", "2g.10gb"]
    for mig, pid, instance in zip(gpu.mig_slices, pids, (1, 5), strict=True):
        assert mig.uuid is not None and mig.uuid.startswith("MIG-")
        assert (mig.gpu_instance_id, mig.compute_instance_id) == (instance, 0)
        assert mig.mem_used_bytes == GIB and mig.mem_total_bytes is not None and mig.mem_total_bytes > GIB
        assert mig.util_gpu_percent is None  # never a made-up number
        assert mig.processes is not None
        (proc,) = mig.processes
        assert (proc.pid, proc.user, proc.command, proc.gpu_mem_bytes) == (pid, MY_USER, "sleep", GIB)
    assert gpu.mig_slices[0].uuid != gpu.mig_slices[1].uuid
    assert_wire_valid(samples)


A100_PROFILES = ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "1g.5gb+me", "1g.10gb"]


def test_the_mig_profiles_a_gpu_offers_are_in_its_hello(
    make_collector: MakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    collector, fake = make_collector(fakes.a100_mig())
    assert collector.static()[0].mig_profiles == A100_PROFILES
    assert fake.calls["nvmlDeviceGetGpuInstanceProfileInfo"] == fake.NVML_GPU_INSTANCE_PROFILE_COUNT
    h100s, _ = make_collector(fakes.eight_gpus())
    assert [g.mig_profiles for g in h100s.static()] == [None] * 8, "MIG-capable but naming none: null"
    # a profile this GPU doesn't offer (NotSupported) is left out, the others still count
    scenario = fakes.a100_mig()
    scenario["gpus"][0]["gi_profiles"] = [p for p in fakes.A100_GI_PROFILES if p["profile"] != 2]
    some, _ = make_collector(scenario)
    assert some.static()[0].mig_profiles == [p for p in A100_PROFILES if p != "3g.20gb"]
    # an unexpected error: not known (null), warned once; the rest of the hello is as ever
    scenario["gpus"][0]["errors"] = {"nvmlDeviceGetGpuInstanceProfileInfo": "Unknown"}
    failing, _ = make_collector(scenario)
    static = failing.static()[0]
    assert (static.mig_mode, static.mig_profiles, static.name) == ("enabled", None, "NVIDIA A100-SXM4-40GB")
    warned = [r.getMessage() for r in caplog.records if "mig_profiles" in r.getMessage()]
    assert warned == ["GPU 0: reading mig_profiles failed: NVML error: Unknown Error"]


def test_mig_profile_from_the_device_name() -> None:
    assert mig_profile("NVIDIA A100-SXM4-40GB MIG 3g.20gb") == "3g.20gb"
    assert mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me") == "1g.10gb+me"
    assert mig_profile("NVIDIA A100-SXM4-40GB") is None
    assert mig_profile(None) is None


def test_slices_made_while_running_show_within_the_slow_period(make_collector: MakeCollector) -> None:
    now = [time.monotonic()]
    collector, fake = make_collector(fakes.a100_mig(), clock=lambda: now[0])
    assert len(collector.sample()["0"].mig_slices or []) == 2
    fake._scenario["gpus"][0]["mig_devices"].append(fakes.mig_device(0, 6, "1g.5gb", 13))
    now[0] += gpu_module.SLOW_FIELDS_EVERY_S
    slices = collector.sample()["0"].mig_slices or []
    assert [s.profile for s in slices] == ["3g.20gb", "2g.10gb", "1g.5gb"]


# --------------------------------------------------------------------------- the fake vs nvidia-ml-py
def real_pynvml() -> ModuleType:
    """The installed nvidia-ml-py (whatever a test put in ``sys.modules``)."""
    saved = sys.modules.pop("pynvml", None)
    try:
        module = importlib.import_module("pynvml")
    finally:
        if saved is not None:
            sys.modules["pynvml"] = saved
    assert not module.__file__ or "fake_nvml" not in module.__file__
    return module


def agent_nvml_names() -> set[str]:
    """The NVML names ``node_agent/gpu.py`` names (but its own constants)."""
    found = set(re.findall(r"\b(nvml[A-Z]\w+|NVML_[A-Z0-9_]+|nvmlEventType\w+)\b", GPU_SOURCE))
    return found - set(vars(gpu_module))


def positional_arity(fn: Any) -> tuple[int, int]:
    """(required, most) positional parameters."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return sum(p.default is p.empty for p in params), len(params)


def test_every_nvml_name_the_agent_uses_exists_in_nvidia_ml_py_and_the_fake(tmp_path: Path) -> None:
    real = real_pynvml()
    fake = fakes.load_fake_pynvml(fakes.write_scenario(tmp_path / "s.json", fakes.eight_gpus()))
    names = agent_nvml_names()
    assert {
        "nvmlEventSetWait_v2",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetMigDeviceHandleByIndex",
    } <= names
    missing_real = sorted(n for n in names if not hasattr(real, n))
    assert not missing_real, missing_real
    for name in sorted(names):
        real_value = getattr(real, name)
        if not callable(real_value):
            # a constant: the fake (where it has it) and the agent's fallback agree with the real one
            assert getattr(fake, name, real_value) == real_value, name
            continue
        fake_fn = getattr(fake, name, None)
        if fake_fn is None:
            assert name in {"nvmlDeviceGetPowerManagementLimit", "nvmlEventSetWait"}, name  # fallbacks
            continue
        assert positional_arity(fake_fn) == positional_arity(real_value), name


def test_the_agents_fallback_constants_are_nvml_h_values() -> None:
    real = real_pynvml()
    assert real.nvmlEventTypeXidCriticalError == gpu_module._XID_EVENT
    assert gpu_module._ECC_CORRECTED == real.NVML_MEMORY_ERROR_TYPE_CORRECTED
    assert gpu_module._ECC_AGGREGATE == real.NVML_AGGREGATE_ECC
    assert gpu_module._PCIE_TX == real.NVML_PCIE_UTIL_TX_BYTES
    assert gpu_module._PCIE_RX == real.NVML_PCIE_UTIL_RX_BYTES
    assert gpu_module._RETIRED_DOUBLE_BIT == real.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
    assert gpu_module._NVLINK_ERRORS == (
        real.NVML_NVLINK_ERROR_DL_REPLAY,
        real.NVML_NVLINK_ERROR_DL_RECOVERY,
        real.NVML_NVLINK_ERROR_DL_CRC_FLIT,
        real.NVML_NVLINK_ERROR_DL_CRC_DATA,
    )
    assert gpu_module._FEATURE_ENABLED == real.NVML_FEATURE_ENABLED
    assert gpu_module._GPU_INSTANCE_PROFILE_COUNT == real.NVML_GPU_INSTANCE_PROFILE_COUNT


def test_the_fakes_structures_are_the_real_ones(tmp_path: Path) -> None:
    real = real_pynvml()
    fake = fakes.load_fake_pynvml(fakes.write_scenario(tmp_path / "s.json", fakes.eight_gpus()))
    names = [name for name, _ in real.c_nvmlEventData_t._fields_]
    assert [name for name, _ in fake.c_nvmlEventData_t._fields_] == names
    assert dict(fake.c_nvmlEventData_t._fields_)["eventData"] is ctypes.c_ulonglong
    # the remapped rows: a 4-tuple (corrected, uncorrected, pending, failure), as the real one returns
    source = inspect.getsource(real.nvmlDeviceGetRemappedRows)
    assert "return (c_corr.value, c_unc.value, c_bpending.value, c_bfailure.value)" in source
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetRemappedRows(handle) == (0, 0, 0, 0)
    # a GPU instance profile: the version 2 structure (with its name), what the real call returns
    # unless asked for version 1
    real_fields = [name for name, _ in real.c_nvmlGpuInstanceProfileInfo_v2_t._fields_]
    assert [name for name, _ in fake.c_nvmlGpuInstanceProfileInfo_v2_t._fields_] == real_fields
    assert inspect.signature(real.nvmlDeviceGetGpuInstanceProfileInfo).parameters["version"].default == 2
    assert fake.NVML_DEVICE_NAME_V2_BUFFER_SIZE == real.NVML_DEVICE_NAME_V2_BUFFER_SIZE
    # the wait raises NVMLError_Timeout when nothing came, like the real one
    assert real.NVMLError_Timeout.__name__ == fake.NVMLError_Timeout.__name__
    event_set = fake.nvmlEventSetCreate()
    fake.nvmlDeviceRegisterEvents(handle, fake.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(fake.NVMLError_Timeout):
        fake.nvmlEventSetWait_v2(event_set, 10)


# --------------------------------------------------------------------------- cost of the slow fields
def test_slow_fields_are_held_to_bounds_when_read_and_reused_until_read_again(
    make_collector: MakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    now = [time.monotonic()]
    collector, fake = make_collector(fakes.memory_faults(), clock=lambda: now[0])
    first = collector.sample_wire()["3"]
    slow = {name: first[name] for name in gpu_module.FIELDS_CHECKED_WHEN_READ}
    assert set(slow) <= set(first) and first["ecc_volatile_corrected"] == 10
    now[0] += 1
    second = collector.sample_wire()["3"]
    assert all(second[name] is value for name, value in slow.items()), "the same objects until read again"
    fake._scenario["gpus"][3].update(ecc_corrected=int(protocol.MAX_ABS_NUMBER) * 10)
    now[0] += gpu_module.SLOW_FIELDS_EVERY_S
    for _ in range(2):
        assert collector.sample_wire()["3"]["ecc_volatile_corrected"] is None, "outside its bounds: unknown"
        now[0] += gpu_module.SLOW_FIELDS_EVERY_S
    warned = [r for r in caplog.records if "gpus.3.ecc_volatile_corrected" in r.getMessage()]
    assert len(warned) == 1, "warned once"


def test_the_sampler_leaves_only_the_collectors_checked_fields_to_it() -> None:
    checked = gpu_module.FIELDS_CHECKED_WHEN_READ
    assert checked <= {f.name for f in dataclasses.fields(GpuSample)}
    odd = {"index": 0, "ecc_volatile_corrected": -1, "fan_percent": 255.0}
    snapshot, nulled = protocol.snapshot_within_bounds({"gpus": {"0": odd}}, checked)
    assert snapshot["gpus"]["0"]["ecc_volatile_corrected"] == -1, "the collector's to check"
    assert nulled == ["gpus.0.fan_percent"], "every other field is checked every sample"
