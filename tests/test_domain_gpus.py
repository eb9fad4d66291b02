"""The GPU rules of the domain core (hub/domain/gpus.py): state, free, idle-held, per-user totals."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from hub.domain.gpus import (
    GpuFreeRule,
    GpuState,
    IdleRule,
    gpu_is_free,
    gpu_state,
    ratio_percent,
    user_totals,
)

GIB = 1024**3
RULE = GpuFreeRule(max_util_percent=10, max_mem_percent=5)


def gpu(**fields: Any) -> dict[str, Any]:
    return {
        "util_gpu_percent": 0.0,
        "mem_used_bytes": 0,
        "mem_total_bytes": 80 * GIB,
        "processes": [],
        **fields,
    }


def test_the_state_is_fault_first_then_not_current_then_the_free_rule() -> None:
    assert gpu_state(gpu(error="lost"), RULE, node_reporting=False) is GpuState.FAULT
    assert gpu_state(gpu(), RULE, node_reporting=False) is GpuState.NOT_CURRENT
    assert gpu_state(gpu(), RULE, node_reporting=True) is GpuState.FREE
    assert gpu_state(gpu(util_gpu_percent=11.0), RULE, node_reporting=True) is GpuState.BUSY
    assert gpu_state(gpu(mem_used_bytes=5 * GIB), RULE, node_reporting=True) is GpuState.BUSY
    assert gpu_state(gpu(processes=[{"pid": 1}]), RULE, node_reporting=True) is GpuState.BUSY
    assert gpu_is_free(gpu(util_gpu_percent=None, mem_used_bytes=None), RULE), "unknown is not busy"
    assert {state.value for state in GpuState} == {"f", "b", "e", "o"}, (
        "the CSS classes of style.css and app.js"
    )


@given(
    processes=st.none() | st.lists(st.fixed_dictionaries({"pid": st.integers(1, 9)}), max_size=2),
    util=st.none() | st.floats(0, 100),
    used=st.none() | st.integers(0, 80 * GIB) | st.floats(allow_nan=True, allow_infinity=True),
    total=st.none() | st.sampled_from([0, 40 * GIB, 80 * GIB]),
)
def test_the_rule_on_a_sample_is_the_rule_on_its_values(
    processes: list[dict[str, int]] | None, util: float | None, used: float | None, total: int | None
) -> None:
    """allows_sample (the registry's and the slices' hot path) skips the memory share of a GPU
    that processes hold: its verdict must be allows' on the same values, always."""
    sample = {
        "processes": processes,
        "util_gpu_percent": util,
        "mem_used_bytes": used,
        "mem_total_bytes": total,
    }
    assert RULE.allows_sample(sample) == RULE.allows(processes, util, ratio_percent(used, total))


def test_idle_held_needs_processes_low_utilization_and_time() -> None:
    rule = IdleRule(max_util_percent=5, min_idle_s=600)
    held = gpu(util_gpu_percent=2.0, mem_used_bytes=40 * GIB, processes=[{"pid": 1, "user": "alice"}])
    assert rule.idle_now(held)
    assert not rule.idle_now(gpu(util_gpu_percent=2.0)), "no process holds it: free, not idle-held"
    assert not rule.idle_now({**held, "util_gpu_percent": 50.0})
    assert not rule.idle_now({**held, "util_gpu_percent": None}), "unknown utilization is no evidence"
    assert not rule.idle_now({**held, "error": "lost"})
    assert not rule.held_long(idle_since_s=1000.0, now_s=1599.0)
    assert rule.held_long(idle_since_s=1000.0, now_s=1600.0)


def test_user_totals_count_processes_and_sum_reported_memory() -> None:
    processes = [
        {"pid": 1, "user": "alice", "gpu_mem_bytes": GIB},
        {"pid": 2, "user": "alice", "gpu_mem_bytes": 2 * GIB},
        {"pid": 3, "user": "bob", "gpu_mem_bytes": None},
        {"pid": 4, "user": None, "gpu_mem_bytes": GIB},
        {"pid": 5, "user": "", "gpu_mem_bytes": float("nan")},
    ]
    assert user_totals(processes) == {"alice": (2, 3 * GIB), "bob": (1, None), "unknown": (2, GIB)}
    by_pid = user_totals(processes, lambda proc: f"pid {proc['pid']}")
    assert by_pid["pid 4"] == (1, GIB) and by_pid["pid 5"] == (1, None)
