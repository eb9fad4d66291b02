"""The GPU collector against the fake ``pynvml`` (tests/fake_nvml), in-process."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from node_agent import gpu as gpu_module
from node_agent import procinfo
from node_agent.gpu import GpuCollector, cuda_version_text, decode_throttle_reasons
from node_agent.procinfo import ProcessResolver, redact_cmdline
from node_agent.protocol import GpuDriver, GpuProcess, GpuSample, check_patch, to_wire
from tests import fakes
from tests.fakes import GIB, MISSING_PIDS, MakeCollector

MY_USER = pwd.getpwuid(os.getuid()).pw_name


def assert_wire_valid(samples: dict[str, GpuSample]) -> None:
    """The sample survives the hub's decoder unchanged (no unknown or invalid fields)."""
    wire = to_wire(samples)
    assert check_patch({"gpus": wire}) == {"gpus": wire}


# --------------------------------------------------------------------------- pure helpers
def test_throttle_reasons_decode_to_short_names() -> None:
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x1) == ["gpu_idle"]
    assert decode_throttle_reasons(0x4 | 0x8 | 0x40 | 0x80) == [
        "sw_power_cap",
        "hw_slowdown",
        "hw_thermal",
        "hw_power_brake",
    ]
    assert decode_throttle_reasons(0x2 | 0x10 | 0x20) == [
        "applications_clocks",
        "sync_boost",
        "sw_thermal",
    ]


def test_cuda_version_text() -> None:
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"
    assert cuda_version_text(12090) == "12.9"


# --------------------------------------------------------------------------- several GPUs
def test_mixed_models_static_and_driver(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.mixed_models())
    driver = collector.driver()
    assert driver.driver_version == "550.54.15"
    assert driver.cuda_driver_version == "12.4"
    assert driver.nvml_version == "12.550.54.15"
    assert driver.error is None

    static = collector.static()
    assert [g.index for g in static] == [0, 1, 2, 3]
    assert [g.name for g in static] == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA GeForce RTX 4090",
    ]
    assert len({g.uuid for g in static}) == 4
    assert static[0].mem_total_bytes == 80 * GIB
    assert static[0].power_limit_watts == 700.0
    assert static[3].power_limit_watts == 450.0
    assert static[1].pci_bus_id == "00000000:19:00.0"
    assert [g.mig_mode for g in static] == ["disabled", "disabled", "enabled", "disabled"]


def test_mixed_models_sample(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.mixed_models())
    samples = collector.sample()
    assert list(samples) == ["0", "1", "2", "3"]
    gpu0, gpu1 = samples["0"], samples["1"]
    assert gpu0 == GpuSample(
        index=0,
        uuid=collector.static()[0].uuid,
        name="NVIDIA H100 80GB HBM3",
        util_gpu_percent=0.0,
        util_mem_percent=0.0,
        mem_used_bytes=1 * GIB,
        mem_total_bytes=80 * GIB,
        temp_celsius=40.0,
        fan_percent=30.0,
        power_draw_watts=100.0,
        power_limit_watts=700.0,
        clock_sm_mhz=1980,
        clock_mem_mhz=2619,
        pstate=0,
        enc_util_percent=0.0,
        dec_util_percent=0.0,
        throttle_reasons=[],
        ecc_volatile_uncorrected=0,
        processes=[],
        unseen_mem_bytes=0,  # 1 GiB used with no process: the driver's reservation, within the margin
        error=None,
        xid_count=0,
        xid_events=[],
        ecc_volatile_corrected=0,
        ecc_aggregate_corrected=0,
        ecc_aggregate_uncorrected=0,
        remapped_rows_corrected=0,
        remapped_rows_uncorrected=0,
        remap_pending=False,
        remap_failed=False,
        pcie_link_gen=5,
        pcie_link_width_lanes=16,
        pcie_rx_bytes_per_s=0.0,
        pcie_tx_bytes_per_s=0.0,
        pcie_replay_count=0,
        nvlink_active=[True] * 18,
        nvlink_replay_count=[0] * 18,
        nvlink_recovery_count=[0] * 18,
        nvlink_crc_flit_count=[0] * 18,
        nvlink_crc_data_count=[0] * 18,
    )
    assert gpu1.util_gpu_percent == 97.0
    assert gpu1.power_draw_watts == 101.0
    assert gpu1.throttle_reasons == ["sw_power_cap", "sw_thermal"]
    assert gpu1.ecc_volatile_uncorrected == 2
    assert samples["3"].temp_celsius == 88.0
    assert samples["3"].throttle_reasons == ["gpu_idle"]
    assert all(s.error is None for s in samples.values())
    assert_wire_valid(samples)


def test_values_follow_the_device_between_samples(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    collector.sample()
    fake._scenario["gpus"][0].update(util_gpu=55, mem_used_bytes=7 * GIB, pstate=32)
    sample = collector.sample()["0"]
    assert sample.util_gpu_percent == 55.0
    assert sample.mem_used_bytes == 7 * GIB
    assert sample.pstate is None  # NVML_PSTATE_UNKNOWN


def test_static_facts_are_fetched_once(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    for _ in range(5):
        collector.sample()
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 4
    assert fake.calls["nvmlDeviceGetName"] == 4
    assert fake.calls["nvmlDeviceGetUUID"] == 4
    assert fake.calls["nvmlDeviceGetPciInfo"] == 4
    assert fake.calls["nvmlDeviceGetMigMode"] == 4
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 4 * 5


def test_power_limit_and_ecc_count_are_read_every_few_seconds(make_collector: MakeCollector) -> None:
    now = [time.monotonic()]  # the power limit is first read with the static facts
    collector, fake = make_collector(fakes.mixed_models(), clock=lambda: now[0])
    assert collector.sample()["1"].ecc_volatile_uncorrected == 2
    ecc_calls = fake.calls["nvmlDeviceGetTotalEccErrors"]
    fake._scenario["gpus"][1].update(ecc_uncorrected=3, power_limit_mw=300_000)
    now[0] += gpu_module.SLOW_FIELDS_EVERY_S - 1
    sample = collector.sample()["1"]
    assert (sample.ecc_volatile_uncorrected, sample.power_limit_watts) == (2, 400.0)
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == ecc_calls  # not asked in between
    now[0] += 1
    sample = collector.sample()["1"]
    assert (sample.ecc_volatile_uncorrected, sample.power_limit_watts) == (3, 300.0)


def test_legacy_bindings_bytes_and_throttle_name(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.legacy_bindings())
    assert not hasattr(fake, "nvmlDeviceGetCurrentClocksEventReasons")
    assert collector.driver().driver_version == "550.54.15"
    static = collector.static()[0]
    assert static.name == "NVIDIA A100-SXM4-40GB"
    assert isinstance(static.uuid, str) and static.uuid.startswith("GPU-")
    assert static.pci_bus_id == "00000000:18:00.0"
    assert collector.sample()["0"].throttle_reasons == ["hw_slowdown"]


# --------------------------------------------------------------------------- unsupported
def test_unsupported_fields_are_none(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.unsupported_fields())
    driver = collector.driver()
    assert driver.driver_version == "550.54.15"
    assert driver.cuda_driver_version is None and driver.nvml_version is None
    static = collector.static()[0]
    assert static.name == "Tesla T4" and static.mem_total_bytes == 15 * GIB
    assert static.power_limit_watts is None
    assert static.pci_bus_id is None and static.mig_mode is None

    samples = collector.sample()
    bare = samples["0"]
    assert bare == GpuSample(
        index=0,
        uuid=static.uuid,
        name="Tesla T4",
        mem_used_bytes=1 * GIB,
        mem_total_bytes=15 * GIB,
    )
    assert bare.processes is None  # unknown, not "no processes"
    assert bare.throttle_reasons is None

    restricted = samples["1"]
    assert restricted.error is None
    assert restricted.power_draw_watts is None  # NoPermission
    assert restricted.ecc_volatile_uncorrected is None  # FunctionNotFound
    assert restricted.temp_celsius == 41.0 and restricted.processes == []
    assert_wire_valid(samples)


def test_unsupported_fields_are_not_asked_again(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.unsupported_fields())
    collector.sample()
    power_calls, fan_calls = (
        fake.calls["nvmlDeviceGetPowerUsage"],
        fake.calls["nvmlDeviceGetFanSpeed"],
    )
    collector.sample()
    collector.sample()
    assert fake.calls["nvmlDeviceGetPowerUsage"] == power_calls  # both GPUs: unsupported
    assert fake.calls["nvmlDeviceGetFanSpeed"] == fan_calls + 2  # only GPU 1 is asked


@pytest.mark.parametrize(
    "scenario", [fakes.mixed_models(), fakes.unsupported_fields(), fakes.legacy_bindings()]
)
def test_direct_calls_read_what_the_policy_reads(
    make_collector: MakeCollector, scenario: dict[str, Any]
) -> None:
    """The sampler calls NVML directly and falls back to the policy only when a call raises:
    both paths make the same calls, so, once the unsupported fields are known, read the same."""
    collector, _ = make_collector(scenario)
    collector.sample()  # the policy marks the unsupported fields
    nvml = collector._nvml
    assert nvml is not None
    for gpu in collector._gpus:
        by_policy = gpu_module._call_by_policy(nvml, gpu)
        assert gpu_module._call_directly(nvml, gpu) == by_policy
        assert len(by_policy) == len(gpu_module._Readings._fields)


def test_unexpected_error_on_optional_field_logs_once(
    make_collector: MakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    fake._scenario["gpus"][2]["errors"] = {"nvmlDeviceGetFanSpeed": "Unknown"}
    with caplog.at_level(logging.WARNING):
        first = collector.sample()
        second = collector.sample()
    for samples in (first, second):
        assert samples["2"].error is None
        assert samples["2"].fan_percent is None
        assert samples["2"].temp_celsius == 42.0
    warnings = [r for r in caplog.records if "fan" in r.getMessage()]
    assert len(warnings) == 1
    assert "GPU 2" in warnings[0].getMessage() and "Unknown Error" in warnings[0].getMessage()


# --------------------------------------------------------------------------- lost GPU
def test_gpu_lost_at_start_is_an_error_entry(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.one_gpu_lost())
    static = collector.static()
    assert [g.index for g in static] == [0, 1, 2]
    assert static[1].uuid is None and static[0].uuid is not None
    samples = collector.sample()
    assert list(samples) == ["0", "1", "2"]
    assert samples["1"] == GpuSample(index=1, error="GPU is lost")
    assert samples["0"].error is None and samples["0"].util_gpu_percent == 0.0
    assert samples["2"].error is None and samples["2"].temp_celsius == 42.0
    assert_wire_valid(samples)


def test_gpu_lost_while_running_then_back(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    uuid1 = collector.static()[1].uuid
    fake._scenario["gpus"][1]["errors"] = {"*": "GpuIsLost"}
    samples = collector.sample()
    assert samples["1"] == GpuSample(index=1, uuid=uuid1, name="NVIDIA A100-SXM4-40GB", error="GPU is lost")
    assert [samples[k].error for k in ("0", "2", "3")] == [None, None, None]
    fake._scenario["gpus"][1]["errors"] = {}
    assert collector.sample()["1"].error is None


def test_gpu_lost_on_an_optional_call_fails_the_gpu(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    fake._scenario["gpus"][0]["errors"] = {"nvmlDeviceGetTemperature": "GpuIsLost"}
    assert collector.sample()["0"].error == "GPU is lost"


def test_nvml_error_on_required_call(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    fake._scenario["gpus"][3]["errors"] = {"nvmlDeviceGetMemoryInfo": "Unknown"}
    samples = collector.sample()
    assert samples["3"].error == "NVML error: Unknown Error"
    assert samples["3"].name == "NVIDIA GeForce RTX 4090"
    assert samples["0"].error is None


def test_no_exception_escapes_sample(
    make_collector: MakeCollector, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector, fake = make_collector(fakes.mixed_models())

    def broken(handle: Any) -> int:
        if handle.index == 2:
            raise RuntimeError("binding bug")
        return 10

    monkeypatch.setattr(fake, "nvmlDeviceGetFanSpeed", broken)
    with caplog.at_level(logging.ERROR):
        samples = collector.sample()
    assert samples["2"].error == "collector error: RuntimeError"
    assert samples["1"].fan_percent == 10.0 and samples["1"].error is None
    assert any("GPU 2" in r.getMessage() for r in caplog.records)


def test_process_lookup_failure_keeps_the_sample(
    make_collector: MakeCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector, _ = make_collector(fakes.unknown_pids())

    def boom(self: ProcessResolver, pids: Any) -> Any:
        raise OSError("proc is gone")

    monkeypatch.setattr(ProcessResolver, "resolve", boom)
    sample = collector.sample()["0"]
    assert sample.error is None
    assert [p.pid for p in sample.processes or []] == list(MISSING_PIDS)
    assert all(p.user is None for p in sample.processes or [])


# --------------------------------------------------------------------------- no NVML
@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (fakes.no_library(), "NVML library not found"),
        (fakes.driver_not_loaded(), "NVIDIA driver not loaded"),
        (fakes.scenario([], init_error="Unknown"), "NVML init failed: Unknown Error"),
    ],
)
def test_no_library_or_driver(
    make_collector: MakeCollector,
    caplog: pytest.LogCaptureFixture,
    scenario: dict[str, Any],
    reason: str,
) -> None:
    with caplog.at_level(logging.WARNING):
        collector, fake = make_collector(scenario)
        assert collector.sample() == {}
        assert collector.sample() == {}
    error = collector.driver().error
    assert error is not None and reason in error
    assert collector.driver().driver_version is None
    assert collector.static() == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()
    collector.close()
    assert fake._initialised == 0


def test_no_pynvml_module(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = fakes.write_scenario(tmp_path / "s.json", fakes.no_pynvml())
    with pytest.raises(ImportError):
        fakes.load_fake_pynvml(path)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError
    with caplog.at_level(logging.WARNING):
        collector = GpuCollector()
    assert collector.driver().error == "nvidia-ml-py (pynvml) is not installed"
    assert collector.sample() == {} and collector.static() == []
    assert len(caplog.records) == 1
    collector.close()


def test_nvml_comes_up_after_a_retry(
    make_collector: MakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent started before the driver loaded: GPUs show once a retry finds it."""
    gpus = [fakes.gpu(0), fakes.gpu(1, "A100")]
    now_s = [1000.0]
    with caplog.at_level(logging.DEBUG, logger="node_agent.gpu"):
        collector, fake = make_collector(
            fakes.scenario(gpus, init_error="DriverNotLoaded", live_reload=True),
            retry_every_s=60.0,
            clock=lambda: now_s[0],
        )
        assert collector.sample() == {} and collector.static_generation == 0
        now_s[0] += 61.0
        assert collector.sample() == {}, "still no driver: the retry fails again"
        path = tmp_path / "scenario0.json"  # the fixture's file
        mtime_ns = path.stat().st_mtime_ns
        fakes.write_scenario(path, fakes.scenario(gpus, live_reload=True))
        os.utime(path, ns=(mtime_ns + 10**9, mtime_ns + 10**9))  # surely seen as changed
        now_s[0] += 59.0
        assert collector.sample() == {}, "the next retry is not due yet"
        now_s[0] += 2.0
        samples = collector.sample()
    assert sorted(samples) == ["0", "1"] and all(s.error is None for s in samples.values())
    assert [g.name for g in collector.static()] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]
    assert collector.driver().error is None and collector.driver().driver_version == "550.54.15"
    assert collector.static_generation == 1
    by_level = {
        level: [r.getMessage() for r in caplog.records if r.levelno == level] for level in (10, 20, 30)
    }
    assert by_level[logging.WARNING] == ["GPU monitoring disabled: NVIDIA driver not loaded"]
    assert by_level[logging.DEBUG] == ["GPU monitoring disabled: NVIDIA driver not loaded"], "repeats"
    assert len(by_level[logging.INFO]) == 1 and "enabled after a retry: 2 GPU(s)" in by_level[logging.INFO][0]
    collector.close()
    assert fake._initialised == 0


def count_init_and_shutdown(fake: ModuleType, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the collector's nvmlInit and nvmlShutdown calls on ``fake``."""
    counts = {"nvmlInit": 0, "nvmlShutdown": 0}
    for name in counts:
        real = getattr(fake, name)

        def counted(real: Callable[[], None] = real, name: str = name) -> None:
            counts[name] += 1
            real()

        monkeypatch.setattr(fake, name, counted)
    return counts


@pytest.mark.parametrize("restart_fails_first", [False, True])
@pytest.mark.parametrize("hello_while_down", [False, True])
def test_nvml_restarts_when_every_gpu_fails(
    make_collector: MakeCollector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    restart_fails_first: bool,
    hello_while_down: bool,
) -> None:
    """A driver reload mid-run: every GPU fails until NVML is shut down and started again. The
    same facts as before need no new hello, unless one may have carried the error meanwhile."""
    now_s = [1000.0]
    collector, fake = make_collector(fakes.mixed_models(), retry_every_s=60.0, clock=lambda: now_s[0])
    before = (collector.driver(), collector.static())
    counts = count_init_and_shutdown(fake, monkeypatch)
    for gpu in fake._scenario["gpus"]:
        gpu["errors"] = {"*": "Unknown"}
    with caplog.at_level(logging.WARNING, logger="node_agent.gpu"):
        assert all(s.error == "NVML error: Unknown Error" for s in collector.sample().values())
        now_s[0] += 59.0
        assert len(collector.sample()) == 4 and counts["nvmlShutdown"] == 0, "not for a minute"
        now_s[0] += 1.0
        samples = collector.sample()
    assert sorted(samples) == ["0", "1", "2", "3"] and all(s.error for s in samples.values())
    assert counts == {"nvmlInit": 0, "nvmlShutdown": 1} and fake._initialised == 0
    assert [r.getMessage() for r in caplog.records] == [
        "every GPU failed for 60 s (NVML error: Unknown Error): restarting NVML"
    ]
    if hello_while_down:
        assert collector.driver().error == "NVML stopped answering: NVML error: Unknown Error"
        assert collector.static() == []
    for gpu in fake._scenario["gpus"]:
        gpu["errors"] = {}
    if restart_fails_first:  # the driver is still loading: the usual retry takes over
        fake._scenario["init_error"] = "DriverNotLoaded"
        assert collector.sample() == {} and counts["nvmlInit"] == 1
        del fake._scenario["init_error"]
        now_s[0] += 60.0
    samples = collector.sample()
    assert all(s.error is None for s in samples.values()) and len(samples) == 4
    assert counts["nvmlInit"] == 1 + restart_fails_first and fake._initialised == 1
    assert (collector.driver(), collector.static()) == before
    # a new hello for each change a hello may have shown: the error in a hello taken meanwhile,
    # and the failed restart (the collector is down until the next retry, a minute later)
    assert collector.static_generation == hello_while_down + restart_fails_first


def test_one_dead_gpu_among_several_keeps_nvml_running(
    make_collector: MakeCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    now_s = [1000.0]
    collector, fake = make_collector(fakes.mixed_models(), retry_every_s=60.0, clock=lambda: now_s[0])
    counts = count_init_and_shutdown(fake, monkeypatch)
    fake._scenario["gpus"][1]["errors"] = {"*": "GpuIsLost"}
    for _ in range(5):
        samples = collector.sample()
        assert samples["1"].error == "GPU is lost" and samples["0"].error is None
        now_s[0] += 61.0
    assert counts == {"nvmlInit": 0, "nvmlShutdown": 0}
    assert collector.driver().error is None and collector.static_generation == 0


def test_only_gpu_dead_restarts_quietly_without_a_new_hello(
    make_collector: MakeCollector, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine whose only GPU is lost from the start: NVML is restarted every minute, but the
    facts stay the same (no new hello) and only the first time is logged above DEBUG."""
    now_s = [1000.0]
    with caplog.at_level(logging.INFO, logger="node_agent.gpu"):
        collector, fake = make_collector(
            fakes.scenario([fakes.gpu(0, errors={"*": "GpuIsLost"})]),
            retry_every_s=60.0,
            clock=lambda: now_s[0],
        )
        counts = count_init_and_shutdown(fake, monkeypatch)
        for _ in range(8):
            assert collector.sample() == {"0": GpuSample(index=0, error="GPU is lost")}
            now_s[0] += 31.0
    assert counts["nvmlShutdown"] == 2 and counts["nvmlInit"] == 2
    assert collector.static_generation == 0
    assert [r.getMessage() for r in caplog.records] == [
        "GPU 0: GPU is lost",
        "every GPU failed for 60 s (GPU is lost): restarting NVML",
        "GPU 0: GPU is lost",
        "GPU monitoring enabled after a retry: 1 GPU(s), driver 550.54.15",
    ]


def test_no_pynvml_is_not_retried(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError
    now_s = [0.0]
    with caplog.at_level(logging.DEBUG, logger="node_agent.gpu"):
        collector = GpuCollector(retry_every_s=1.0, clock=lambda: now_s[0])
        now_s[0] += 10.0
        assert collector.sample() == {}
    assert len(caplog.records) == 1, "only the first failure: a restart is needed anyway"
    collector.close()


# --------------------------------------------------------------------------- collector state
def test_pci_bus_counts_nvidia_gpus_only(tmp_path: Path) -> None:
    """3D and VGA controllers count; a graphics card's audio function and other vendors don't."""
    assert gpu_module.nvidia_gpus_on_pci_bus(fakes.gpu_server_sysfs(tmp_path / "a", 3)) == 3
    vga = fakes.fake_sysfs(tmp_path / "b", [fakes.INTEL_HOST_BRIDGE, fakes.NVIDIA_VGA_CONTROLLER])
    assert gpu_module.nvidia_gpus_on_pci_bus(vga) == 1
    assert gpu_module.nvidia_gpus_on_pci_bus(fakes.cpu_only_sysfs(tmp_path / "c")) == 0


def test_pci_bus_that_tells_nothing_is_none(tmp_path: Path) -> None:
    """No sysfs, or one that lists no device at all (a sandbox hiding it): no evidence either
    way. A device whose files can't be read is skipped, not a failure."""
    assert gpu_module.nvidia_gpus_on_pci_bus(tmp_path / "missing") is None
    assert gpu_module.nvidia_gpus_on_pci_bus(fakes.fake_sysfs(tmp_path / "empty", [])) is None
    odd = fakes.gpu_server_sysfs(tmp_path / "odd", 1)
    (odd / "bus/pci/devices/0000:01:00.0/vendor").write_text("garbage\n")  # the host bridge
    (odd / "bus/pci/devices/0000:02:00.0/class").unlink()  # the GPU
    assert gpu_module.nvidia_gpus_on_pci_bus(odd) == 0


BUSES: dict[str, Callable[[Path], Path]] = {
    "gpu server": lambda root: fakes.gpu_server_sysfs(root, 2),
    "cpu-only": fakes.cpu_only_sysfs,
    "unreadable": lambda root: root / "missing",
}


@pytest.mark.parametrize(
    ("scenario", "bus", "state", "reason"),
    [
        # NVIDIA GPUs on the bus: down, whatever failed
        (fakes.driver_not_loaded(), "gpu server", "down", "NVIDIA driver not loaded"),
        (fakes.no_library(), "gpu server", "down", "NVML library not found"),
        (fakes.library_mismatch(), "gpu server", "down", "versions differ"),
        # NVML installed but failing, the bus unreadable: meant to have GPUs, down
        (fakes.driver_not_loaded(), "unreadable", "down", "NVIDIA driver not loaded"),
        (fakes.library_mismatch(), "unreadable", "down", "versions differ"),
        # no NVML: a CPU-only node
        (fakes.no_library(), "unreadable", "absent", "NVML library not found"),
        (fakes.no_library(), "cpu-only", "absent", "NVML library not found"),
        # the driver's packages on a machine without an NVIDIA GPU: nothing to monitor
        (fakes.driver_not_loaded(), "cpu-only", "absent", "NVIDIA driver not loaded"),
        # NVML works: up, whatever the bus says
        (fakes.mixed_models(), "cpu-only", "up", None),
        (fakes.mixed_models(), "gpu server", "up", None),
    ],
)
def test_collector_state_tells_a_broken_gpu_server_from_a_cpu_only_node(
    make_collector: MakeCollector,
    tmp_path: Path,
    scenario: dict[str, Any],
    bus: str,
    state: str,
    reason: str | None,
) -> None:
    collector, _ = make_collector(scenario, sysfs_root=BUSES[bus](tmp_path / "sys"))
    driver = collector.driver()
    assert driver.collector_state == state
    if reason is None:
        assert driver.error is None
    else:
        assert driver.error is not None and reason in driver.error


@pytest.mark.parametrize(
    ("bus", "state"), [("gpu server", "down"), ("cpu-only", "absent"), ("unreadable", "absent")]
)
def test_no_pynvml_is_down_only_with_nvidia_gpus_on_the_bus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bus: str, state: str
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError
    collector = GpuCollector(sysfs_root=BUSES[bus](tmp_path / "sys"))
    assert collector.driver() == GpuDriver(
        error="nvidia-ml-py (pynvml) is not installed", collector_state=state
    )
    collector.close()


def test_gpus_on_the_bus_are_named_in_the_log(
    make_collector: MakeCollector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        make_collector(fakes.driver_not_loaded(), sysfs_root=fakes.gpu_server_sysfs(tmp_path / "sys", 8))
    assert [r.getMessage() for r in caplog.records] == [
        "GPU monitoring disabled: NVIDIA driver not loaded (8 NVIDIA GPU(s) on the PCI bus)"
    ]


def test_nvml_lost_for_good_mid_run_sends_a_hello_saying_down(
    make_collector: MakeCollector, tmp_path: Path
) -> None:
    """The driver is unloaded under a running agent: every GPU fails, NVML is stopped, and it
    can't start again. Until then the GPU rows said why; now the hub must hear that the
    collector is down (else the node would look CPU-only); once, not at every retry."""
    now_s = [1000.0]
    collector, fake = make_collector(
        fakes.mixed_models(),
        retry_every_s=60.0,
        clock=lambda: now_s[0],
        sysfs_root=fakes.gpu_server_sysfs(tmp_path / "sys", 4),
    )
    assert collector.driver().collector_state == "up"
    collector.static()  # a hello went out
    for gpu in fake._scenario["gpus"]:
        gpu["errors"] = {"*": "Unknown"}
    fake._scenario["init_error"] = "DriverNotLoaded"
    collector.sample()
    now_s[0] += 60.0
    collector.sample()  # every GPU failed for a minute: NVML stopped
    assert collector.sample() == {} and collector.static_generation == 1, "the restart failed"
    assert collector.driver() == GpuDriver(error="NVIDIA driver not loaded", collector_state="down")
    assert collector.static() == []
    for _ in range(3):
        now_s[0] += 61.0
        assert collector.sample() == {}
    assert collector.static_generation == 1, "the same failure again needs no new hello"


def test_close_shuts_nvml_down_once(make_collector: MakeCollector) -> None:
    collector, fake = make_collector(fakes.mixed_models())
    assert fake._initialised == 1
    collector.close()
    collector.close()
    assert fake._initialised == 0
    assert collector.sample() == {}


def test_uses_the_given_logger(make_collector: MakeCollector, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("sers.test.gpu")
    with caplog.at_level(logging.WARNING):
        make_collector(fakes.driver_not_loaded(), log=log)
    assert [r.name for r in caplog.records] == ["sers.test.gpu"]


# --------------------------------------------------------------------------- processes
def test_unknown_pids_give_unknown_owners(make_collector: MakeCollector) -> None:
    collector, _ = make_collector(fakes.unknown_pids())
    samples = collector.sample()
    assert samples["0"].processes == [
        GpuProcess(pid=MISSING_PIDS[0], gpu_mem_bytes=3 * GIB),
        GpuProcess(pid=MISSING_PIDS[1], gpu_mem_bytes=None),
    ]
    assert_wire_valid(samples)


def test_wire_sample_is_the_typed_sample_on_the_wire(make_collector: MakeCollector) -> None:
    scenario = fakes.eight_gpus([MISSING_PIDS[0], MISSING_PIDS[1]])
    scenario["gpus"][3]["errors"] = {"*": "GpuIsLost"}
    collector, _ = make_collector(scenario)
    typed = collector.sample()
    wire = collector.sample_wire()
    assert wire == to_wire(typed)
    assert list(wire["0"]) == list(to_wire(typed["0"]))  # same keys, same order
    assert wire["3"]["error"] == "GPU is lost"
    assert_wire_valid(typed)


def test_real_child_process(make_collector: MakeCollector, sleeper: subprocess.Popen[bytes]) -> None:
    me = os.getpid()
    collector, _ = make_collector(fakes.real_pids([sleeper.pid, me]))
    first = collector.sample()
    procs = first["0"].processes or []
    assert [p.pid for p in procs] == [me, sleeper.pid]  # 2 GiB before 1 GiB
    child = procs[1]
    assert child.user == MY_USER
    assert child.command == "sleep"
    assert child.gpu_mem_bytes == 1 * GIB
    assert child.host_mem_bytes is not None and child.host_mem_bytes > 0
    assert child.cpu_percent is None  # the first reading only starts the measurement
    assert procs[0].user == MY_USER
    assert procs[0].command == psutil.Process(me).name()
    # The same pid on GPU 1 (graphics) resolves to the same owner.
    (on_gpu1,) = first["1"].processes or []
    assert (on_gpu1.pid, on_gpu1.user, on_gpu1.command) == (sleeper.pid, MY_USER, "sleep")
    assert on_gpu1.gpu_mem_bytes == 256 * 1024**2
    assert_wire_valid(first)

    time.sleep(0.05)
    second = collector.sample()
    child = (second["0"].processes or [])[1]
    assert child.cpu_percent is not None and child.cpu_percent >= 0.0


def test_process_that_exits_between_samples(
    make_collector: MakeCollector, sleeper: subprocess.Popen[bytes]
) -> None:
    collector, _ = make_collector(fakes.real_pids([sleeper.pid]))
    assert (collector.sample()["0"].processes or [])[0].command == "sleep"
    sleeper.kill()
    sleeper.wait()
    (gone,) = collector.sample()["0"].processes or []
    assert gone == GpuProcess(pid=sleeper.pid, gpu_mem_bytes=1 * GIB)


def test_zombie_process_never_breaks_the_sample(make_collector: MakeCollector) -> None:
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        collector, _ = make_collector(fakes.real_pids([child.pid]))
        (proc,) = collector.sample()["0"].processes or []
        assert proc.pid == child.pid and proc.gpu_mem_bytes == 1 * GIB
    finally:
        child.wait()


def test_compute_and_graphics_merge_by_pid(make_collector: MakeCollector) -> None:
    both = fakes.gpu(
        0,
        compute_processes=[fakes.process(MISSING_PIDS[0], 2 * GIB), fakes.process(7, None)],
        graphics_processes=[fakes.process(MISSING_PIDS[0], 1 * GIB), fakes.process(8, GIB)],
    )
    collector, _ = make_collector(fakes.scenario([both]))
    procs = collector.sample()["0"].processes or []
    assert [(p.pid, p.gpu_mem_bytes) for p in procs] == [
        (MISSING_PIDS[0], 2 * GIB),
        (8, GIB),
        (7, None),
    ]


def test_full_cmdline_is_redacted(make_collector: MakeCollector) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    code = "import time; time.sleep(30)"
    child = subprocess.Popen(
        [sys.executable, "-c", code, "--token", "hunter2", "API_KEY=xyz", secret, "--lr", "0.1"]
    )
    try:
        collector, _ = make_collector(fakes.real_pids([child.pid]), full_cmdline=True)
        (proc,) = collector.sample()["0"].processes or []
        assert proc.user == MY_USER
        assert proc.command == (f"{sys.executable} -c {code} --token *** API_KEY=*** *** --lr 0.1")
        assert "hunter2" not in proc.command and secret not in proc.command
    finally:
        child.kill()
        child.wait()


def test_name_only_by_default(make_collector: MakeCollector) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--token", "x"])
    try:
        collector, _ = make_collector(fakes.real_pids([child.pid]))
        (proc,) = collector.sample()["0"].processes or []
        assert proc.command == psutil.Process(child.pid).name()
        assert proc.command is not None and "python" in proc.command
        assert "token" not in proc.command
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- procinfo
def test_unresolvable_uid_falls_back_to_the_number(
    monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes]
) -> None:
    def no_such_user(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(procinfo.pwd, "getpwuid", no_such_user)
    info = ProcessResolver().resolve([sleeper.pid])[sleeper.pid]
    assert info.user == str(os.getuid())
    assert info.command == "sleep"


def test_access_denied_gives_unknown(
    monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes]
) -> None:
    real_read_bytes = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path.name == "status":  # what hidepid=2 does to another user's process
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    info = ProcessResolver().resolve([sleeper.pid])[sleeper.pid]
    assert info == procinfo.UNKNOWN


def test_access_denied_on_metrics_keeps_the_owner(
    monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes]
) -> None:
    def denied(stat_file: Any) -> Any:
        raise PermissionError(13, "Permission denied", stat_file.path)

    monkeypatch.setattr(ProcessResolver, "_read_stat", staticmethod(denied))
    resolver = ProcessResolver()
    for _ in range(2):
        info = resolver.resolve([sleeper.pid])[sleeper.pid]
        assert info == procinfo.ProcInfo(user=MY_USER, command="sleep")


def test_resolver_caches_processes_and_forgets_unlisted_pids(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = ProcessResolver()
    created: list[int] = []
    original = procinfo.ProcessResolver._new_entry

    def counting(self: ProcessResolver, pid: int) -> Any:
        created.append(pid)
        return original(self, pid)

    monkeypatch.setattr(procinfo.ProcessResolver, "_new_entry", counting)
    for _ in range(3):
        resolver.resolve([sleeper.pid, MISSING_PIDS[0]])
    assert created.count(sleeper.pid) == 1  # resolved once, reused
    assert set(resolver._cache) == {sleeper.pid}  # missing pids aren't cached
    resolver.resolve([])
    assert resolver._cache == {}


def test_resolver_reads_without_holding_files_past_its_limit(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procinfo, "KEPT_OPEN_MAX", 0)
    resolver = ProcessResolver()
    first = resolver.resolve([sleeper.pid])[sleeper.pid]
    assert not resolver._cache[sleeper.pid].stat_file.keep_open
    time.sleep(0.05)
    second = resolver.resolve([sleeper.pid])[sleeper.pid]
    assert (first.command, first.cpu_percent) == ("sleep", None)
    assert second.command == "sleep" and second.cpu_percent is not None
    assert second.host_mem_bytes is not None and second.host_mem_bytes > 0


def test_resolver_notices_a_reused_pid(sleeper: subprocess.Popen[bytes]) -> None:
    resolver = ProcessResolver()
    resolver.resolve([sleeper.pid])
    entry = resolver._cache[sleeper.pid]
    # Pretend the cached entry belongs to an older process that had this pid (started earlier).
    assert entry.started_ticks is not None
    entry.started_ticks -= 1
    entry.command = "an older process"
    info = resolver.resolve([sleeper.pid])[sleeper.pid]
    assert info.command == "sleep"
    assert info.cpu_percent is None  # a new process: its first reading
    assert resolver._cache[sleeper.pid] is not entry


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["python", "train.py", "--lr", "0.1"], "python train.py --lr 0.1"),
        (["app", "--token", "abc", "--password", "pw"], "app --token *** --password ***"),
        (["app", "--api-key=abc", "--secret=s", "-p", "8"], "app --api-key=*** --secret=*** -p 8"),
        (
            ["env", "HF_TOKEN=hf_x", "AWS_SECRET_ACCESS_KEY=k"],
            "env HF_TOKEN=*** AWS_SECRET_ACCESS_KEY=***",
        ),
        (["env", "DB_PASSWORD=p", "PATH=/usr/bin"], "env DB_PASSWORD=*** PATH=/usr/bin"),
        (["run", "--key", "k", "--keyboard", "us"], "run --key *** --keyboard us"),
        (["x", "deadbeef" * 4], "x ***"),
        (["x", "--url=http://h/?k=" + "aB3" * 12], "x --url=http://h/?k=***"),
        (["x", "/data/runs/resnet50_imagenet_baseline_v2/ckpt"], None),
        (["x", "/Data/Run2023/ResNet50ImageNetBaselineVersion2/ckpt"], None),
        (["x", "abcdefghijklmnopqrstuvwxyzabcdefgh"], None),  # lower case only: a word
    ],
)
def test_redact_cmdline(args: list[str], expected: str | None) -> None:
    assert redact_cmdline(args) == (" ".join(args) if expected is None else expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # URL userinfo: the user stays, the password goes
        (["psql", "postgresql://admin:Hunter2pass@db/x"], "psql postgresql://admin:***@db/x"),
        (
            ["git", "clone", "https://oauth2:glpat-abcdefghijklmnop@gitlab.com/g/r.git"],
            "git clone https://oauth2:***@gitlab.com/g/r.git",
        ),
        (["x", "redis://:pw@cache:6379/0"], "x redis://:***@cache:6379/0"),
        (["x", "DATABASE_URL=mysql://u:p@ss@db/x"], "x DATABASE_URL=mysql://u:***@db/x"),
        # Authorization headers, as one argument or split into words
        (
            ["curl", "-H", "Authorization: Bearer abcdef0123456789", "https://h/x"],
            "curl -H Authorization: Bearer *** https://h/x",
        ),
        (["curl", "-H", "Authorization:", "Bearer", "x"], "curl -H Authorization: Bearer ***"),
        (["curl", "-HAuthorization: Basic dXNlcjpwdw=="], "curl -HAuthorization: Basic ***"),
        (["curl", "--header=authorization: token ghp_x"], "curl --header=authorization: token ***"),
        (["curl", "-H", "Authorization:abc"], "curl -H Authorization:***"),
        (["curl", "-H", "PRIVATE-TOKEN: glpat-x", "u"], "curl -H PRIVATE-TOKEN: *** u"),
        (["x", "Bearer", "abc", "y"], "x Bearer *** y"),
        # -p of password clients
        (["mysql", "-pS3cretPass", "db"], "mysql -p*** db"),
        (["/usr/bin/mariadb-dump", "-u", "root", "-pS3cret"], "/usr/bin/mariadb-dump -u root -p***"),
        (["mysql", "-u", "root", "-p", "mydb"], None),  # -p alone asks: mydb is the database
        (["sshpass", "-p", "hunter2", "ssh", "-p", "22", "host"], "sshpass -p *** ssh -p 22 host"),
        (["sshpass", "-phunter2", "ssh", "host"], "sshpass -p*** ssh host"),
        # secret-named options
        (
            ["x", "--password=X", "--password", "X", "--token", "X"],
            "x --password=*** --password *** --token ***",
        ),
        (
            ["x", "--api-key", "X", "--api_key=X", "--auth-token", "X"],
            "x --api-key *** --api_key=*** --auth-token ***",
        ),
        # word by word inside one argument
        (
            ["sh", "-c", "mysql -uroot -pSecret db && python t.py --token abc"],
            "sh -c mysql -uroot -p*** db && python t.py --token ***",
        ),
        # left alone
        (["python", "train.py", "--config", "a.yaml"], None),
        (["python", "train.py", "--lr", "3e-4", "-p", "8080", "--out", "/data/run1"], None),
        (["python", "-p8080", "serve.py"], None),  # -p glued, but not a password client's
        (["docker", "run", "-p", "8080:80", "img"], None),
        (["git", "clone", "ssh://git@host:22/g/r.git", "https://host:8080/a@b"], None),
        (["git", "clone", "git@github.com:g/r.git"], None),
        (["python", "-c", "import time;  time.sleep(30)"], None),  # spaces kept as they were
        (["x", "--mode", "basic", "--desc", "a basic model"], None),
    ],
)
def test_redact_cmdline_common_secrets(args: list[str], expected: str | None) -> None:
    assert redact_cmdline(args) == (" ".join(args) if expected is None else expected)


def test_redact_cmdline_truncates() -> None:
    text = redact_cmdline(["python"] + ["--epochs 10"] * 40)
    assert len(text) == 200 and text.endswith("…")
