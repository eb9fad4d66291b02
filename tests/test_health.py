"""hub.domain.health: a GPU's health in words, from the wire dicts; and from the agent's own
samples of the fake NVML scenarios."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.domain.health import (
    HEALTHY,
    XID_FAULT_SHOWN_S,
    XID_TABLE,
    XID_WARNING_SHOWN_S,
    Health,
    HealthCounts,
    Level,
    _judged,
    count_levels,
    gpu_health,
    slowdown_is_normal,
    xid_words,
)
from node_agent.gpu import THROTTLE_REASON_BITS, GpuCollector
from node_agent.protocol import to_wire
from tests import fakes

NOW = 1_800_000_000.0
STATIC = {"pcie_link_gen_max": 5, "pcie_link_width_max_lanes": 16}
REQUIRED_XIDS = (13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 74, 79, 92, 94, 95, 119, 120)


def healthy_sample(**fields: Any) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "util_gpu_percent": 90.0,
        "throttle_reasons": ["sw_power_cap"],
        "pcie_link_gen": 5,
        "pcie_link_width_lanes": 16,
        "ecc_volatile_uncorrected": 0,
        "remapped_rows_uncorrected": 0,
        "remap_pending": False,
        "remap_failed": False,
        "nvlink_active": [True] * 18,
        "xid_count": 0,
        "xid_events": [],
        "error": None,
    }
    sample.update(fields)
    return sample


def xid_event(code: int, age_s: float = 10.0, **extra: Any) -> dict[str, Any]:
    return {"code": code, "epoch_s": NOW - age_s, **extra}


def test_the_table_covers_the_common_codes_with_an_action_each() -> None:
    actions = {"restart the job", "reset the GPU", "drain the node", "replace the GPU (RMA)"}
    for code in REQUIRED_XIDS:
        info = XID_TABLE[code]
        assert info.meaning and info.action
    assert actions <= {info.action for info in XID_TABLE.values()}


@pytest.mark.parametrize(
    ("code", "words", "level"),
    [
        (79, "Xid 79: fell off the bus: drain the node", Level.FAULT),
        (48, "Xid 48: double-bit ECC error: reset the GPU", Level.FAULT),
        (64, "Xid 64: row remap or page retirement failed: replace the GPU (RMA)", Level.FAULT),
        (13, "Xid 13: graphics engine exception: restart the job", Level.WARNING),
        (94, "Xid 94: contained ECC error: restart the job", Level.WARNING),
        (999, "Xid 999: see NVIDIA's Xid catalog: check the kernel log", Level.WARNING),
    ],
)
def test_an_xid_says_what_and_what_to_do(code: int, words: str, level: Level) -> None:
    assert xid_words(code) == words
    health = gpu_health(healthy_sample(xid_count=1, xid_events=[xid_event(code)]), STATIC, NOW)
    assert (health.level, health.words) == (level, words)


def test_a_healthy_gpu_is_ok_with_no_words() -> None:
    assert gpu_health(healthy_sample(), STATIC, NOW) == HEALTHY
    assert HEALTHY.words == "" and HEALTHY.level is Level.OK


def test_the_readme_says_what_every_xid_badge_means_at_its_level() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.lstrip().startswith(("| ⛔", "| ⚠"))]
    for code, info in XID_TABLE.items():
        sign = "⛔" if info.level is Level.FAULT else "⚠"
        named = [
            row for row in rows if "Xid" in row.split("|")[1] and re.search(rf"\b{code}\b", row.split("|")[1])
        ]
        assert [row.split("|")[1].strip()[0] for row in named] == [sign], (code, named)
    assert any("Xid N" in row for row in rows), "and what to do with a code the table lacks"


def test_an_xid_stops_showing_after_its_window() -> None:
    old_warning = xid_event(13, age_s=XID_WARNING_SHOWN_S + 1)
    assert gpu_health(healthy_sample(xid_events=[old_warning]), STATIC, NOW) == HEALTHY
    fault_after_an_hour = xid_event(79, age_s=XID_WARNING_SHOWN_S + 1)
    assert gpu_health(healthy_sample(xid_events=[fault_after_an_hour]), STATIC, NOW).level is Level.FAULT
    old_fault = xid_event(79, age_s=XID_FAULT_SHOWN_S + 1)
    assert gpu_health(healthy_sample(xid_events=[old_fault]), STATIC, NOW) == HEALTHY


def test_the_worst_finding_comes_first_and_each_code_once() -> None:
    events = [xid_event(13, 30), xid_event(79, 20), xid_event(13, 10)]
    health = gpu_health(healthy_sample(xid_events=events, throttle_reasons=["hw_thermal"]), STATIC, NOW)
    assert [f.words for f in health.findings] == [
        "Xid 79: fell off the bus: drain the node",
        "Xid 13: graphics engine exception: restart the job",
        "HW thermal slowdown",
    ]
    assert health.level is Level.FAULT


def test_the_last_code_alone_is_judged_when_no_events_are_listed() -> None:
    sample = healthy_sample(xid_events=None, xid_last_code=95, xid_last_epoch_s=NOW - 5)
    assert gpu_health(sample, STATIC, NOW).words == "Xid 95: uncontained ECC error: reset the GPU"


@pytest.mark.parametrize(
    ("fields", "words", "level"),
    [
        ({"remap_pending": True}, "row remap pending: reset the GPU", Level.WARNING),
        (
            {"remap_failed": True, "remap_pending": True},
            "row remap failed: replace the GPU (RMA)",
            Level.FAULT,
        ),
        ({"retired_pages_pending": True}, "page retirement pending: reset the GPU", Level.WARNING),
        (
            {"retired_pages_single_bit": 50, "retired_pages_double_bit": 12},
            "62 retired pages: replace the GPU (RMA)",
            Level.FAULT,
        ),
        ({"ecc_volatile_uncorrected": 3}, "3 uncorrected ECC errors: reset the GPU", Level.WARNING),
        ({"pcie_link_width_lanes": 8}, "PCIe x8 of x16", Level.WARNING),
        ({"pcie_link_gen": 3}, "PCIe gen3 of gen5 under load", Level.WARNING),
        ({"nvlink_active": [True, True, True, False, True, False]}, "NVLink 3, 5 down", Level.WARNING),
        ({"throttle_reasons": ["hw_slowdown"]}, "HW slowdown", Level.WARNING),
        ({"throttle_reasons": ["hw_power_brake"]}, "HW power brake slowdown", Level.WARNING),
        ({"throttle_reasons": ["sw_thermal"]}, "SW thermal slowdown", Level.WARNING),
    ],
)
def test_memory_links_and_slowdowns_in_words(fields: dict[str, Any], words: str, level: Level) -> None:
    health = gpu_health(healthy_sample(**fields), STATIC, NOW)
    assert (health.level, health.words) == (level, words)


def test_normal_clock_reasons_and_an_idle_link_are_no_warning() -> None:
    normal = ["gpu_idle", "applications_clocks", "sw_power_cap", "sync_boost", "display_clocks"]
    assert all(slowdown_is_normal(r) for r in normal)
    assert not any(
        slowdown_is_normal(r) for r in ("hw_slowdown", "hw_thermal", "hw_power_brake", "sw_thermal")
    )
    assert {name for _, name in THROTTLE_REASON_BITS} == {
        *normal,
        "hw_slowdown",
        "hw_thermal",
        "hw_power_brake",
        "sw_thermal",
    }
    idle_gen1 = healthy_sample(throttle_reasons=normal, pcie_link_gen=1, util_gpu_percent=0.0)
    assert gpu_health(idle_gen1, STATIC, NOW) == HEALTHY
    no_nvlink_in_use = healthy_sample(nvlink_active=[False] * 4)
    assert gpu_health(no_nvlink_in_use, STATIC, NOW) == HEALTHY


def test_nothing_known_is_healthy_and_a_lost_gpu_is_not_judged() -> None:
    assert gpu_health({}, None, NOW) == HEALTHY
    nulls = dict.fromkeys(healthy_sample(), None)
    assert gpu_health(nulls, {"pcie_link_width_max_lanes": None}, NOW) == HEALTHY
    lost = healthy_sample(error="GPU is lost", remap_failed=True)
    assert gpu_health(lost, STATIC, NOW) == HEALTHY


_COUNTS = st.none() | st.integers(0, 80)
_FLAGS = st.none() | st.booleans()
_SAMPLE_FIELDS = {
    "error": st.none() | st.just("GPU is lost"),
    "util_gpu_percent": st.none() | st.sampled_from([0.0, 49.9, 50.0, 100.0]),
    "throttle_reasons": st.none()
    | st.lists(
        st.sampled_from(["gpu_idle", "sw_power_cap", "hw_thermal", "sw_thermal", "hw_slowdown"]), max_size=3
    ),
    "pcie_link_gen": st.none() | st.integers(1, 6),
    "pcie_link_width_lanes": st.none() | st.sampled_from([0, 1, 4, 8, 16, 32]),
    "ecc_volatile_uncorrected": _COUNTS,
    "retired_pages_single_bit": _COUNTS,
    "retired_pages_double_bit": _COUNTS,
    "retired_pages_pending": _FLAGS,
    "remap_pending": _FLAGS,
    "remap_failed": _FLAGS,
    "nvlink_active": st.none() | st.lists(st.booleans(), max_size=6),
    "xid_last_code": st.none() | st.sampled_from([13, 79, 999]),
    "xid_last_epoch_s": st.none() | st.sampled_from([NOW - 10, NOW - XID_FAULT_SHOWN_S - 1]),
    "xid_events": st.none()
    | st.lists(
        st.builds(
            xid_event,
            st.sampled_from([13, 48, 79, 999]),
            st.sampled_from([1.0, XID_WARNING_SHOWN_S + 1, XID_FAULT_SHOWN_S + 1]),
        ),
        max_size=3,
    ),
}


@given(
    sample=st.fixed_dictionaries({}, optional=_SAMPLE_FIELDS),
    static=st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "pcie_link_gen_max": st.none() | st.integers(1, 6),
            "pcie_link_width_max_lanes": st.none() | st.sampled_from([0, 8, 16]),
        },
    ),
)
def test_the_fast_path_for_a_healthy_gpu_never_changes_the_verdict(
    sample: dict[str, Any], static: dict[str, Any] | None
) -> None:
    """gpu_health tells a healthy GPU by a few lookups before putting findings together: on
    any sample it says what the full judgement says."""
    assert gpu_health(sample, static, NOW) == _judged(sample, static, NOW)


def test_counts_take_each_gpu_once_at_its_worst() -> None:
    warning = gpu_health(healthy_sample(throttle_reasons=["hw_thermal"]), STATIC, NOW)
    fault = gpu_health(healthy_sample(remap_failed=True, throttle_reasons=["hw_thermal"]), STATIC, NOW)
    assert count_levels([HEALTHY, warning, fault, fault]) == HealthCounts(warnings=1, faults=2)
    assert count_levels([]) == HealthCounts()


# --------------------------------------------------------------------------- from the agent
@pytest.fixture
def collector_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    made: list[GpuCollector] = []

    def make(scenario: dict[str, Any]) -> GpuCollector:
        path = fakes.write_scenario(tmp_path / f"s{len(made)}.json", scenario)
        monkeypatch.setitem(sys.modules, "pynvml", fakes.load_fake_pynvml(path))
        made.append(GpuCollector(sysfs_root=tmp_path / "no-sysfs"))
        return made[-1]

    yield make
    for collector in made:
        collector.close()


def healths(collector: GpuCollector) -> dict[str, Health]:
    static = {str(g.index): to_wire(g) for g in collector.static()}
    return {k: gpu_health(v, static[k], NOW) for k, v in collector.sample_wire().items()}


def test_the_agents_samples_of_each_scenario_read_as_expected(collector_for: Any) -> None:
    memory = healths(collector_for(fakes.memory_faults()))
    assert [memory[k].words for k in "0123"] == [
        "",
        "row remap pending: reset the GPU",
        "row remap failed: replace the GPU (RMA)",
        "",
    ]
    slow = healths(collector_for(fakes.slowdowns_and_links()))
    assert [slow[k].words for k in "01234"] == [
        "SW thermal slowdown",
        "HW slowdown",
        "PCIe x8 of x16",
        "NVLink 3 down",
        "page retirement pending: reset the GPU",
    ]
    assert [f.words for f in slow["0"].findings] == ["SW thermal slowdown", "HW thermal slowdown"]
    assert healths(collector_for(fakes.no_health_support()))["0"] == HEALTHY
    assert all(h == HEALTHY for h in healths(collector_for(fakes.eight_gpus())).values())
