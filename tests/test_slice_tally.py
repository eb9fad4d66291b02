"""A MIG GPU's row tallies its slices (profile, free) for the summary bar without building
the node page's slice views, and judges each slice as those views do."""

from __future__ import annotations

from typing import Any

from frontend.viewmodels import gpu_tally, slice_states, slice_views
from hub.domain.gpus import GpuFreeRule, GpuState

RULE = GpuFreeRule(max_util_percent=10, max_mem_percent=5)
GIB = 1024**3


def _mig_gpu() -> dict[str, Any]:
    busy = {"pid": 7, "user": "alice", "gpu_mem_bytes": 9 * GIB}
    return {
        "name": "NVIDIA A100-SXM4-80GB",
        "mem_used_bytes": 10 * GIB,
        "mem_total_bytes": 80 * GIB,
        "util_gpu_percent": 40.0,
        "processes": [busy],
        "mig_slices": [
            {
                "uuid": "MIG-a",
                "profile": "3g.40gb",
                "mem_used_bytes": 9 * GIB,
                "mem_total_bytes": 40 * GIB,
                "util_gpu_percent": None,
                "processes": [busy],
            },
            {
                "uuid": "MIG-b",
                "profile": "2g.20gb",
                "mem_used_bytes": 0,
                "mem_total_bytes": 20 * GIB,
                "util_gpu_percent": None,
                "processes": [],
            },
            {"profile": None, "mem_used_bytes": 15 * GIB, "mem_total_bytes": 20 * GIB},
        ],
    }


def test_slice_states_judge_each_slice_as_the_node_page_does() -> None:
    gpu = _mig_gpu()
    states = slice_states(gpu, RULE)
    assert states == (("3g.40gb", False), ("2g.20gb", True), ("?", False))
    views = slice_views(gpu, RULE)
    assert [(v.profile, v.state is GpuState.FREE) for v in views] == list(states)


def test_a_tally_counts_free_slices_only_on_a_reporting_node() -> None:
    gpu = _mig_gpu()
    states = slice_states(gpu, RULE)
    assert gpu_tally(gpu, GpuState.BUSY, slices=states).slices == (
        ("3g.40gb", False),
        ("2g.20gb", True),
        ("?", False),
    )
    not_current = gpu_tally(gpu, GpuState.NOT_CURRENT, slices=states).slices
    assert [free for _, free in not_current] == [False, False, False]
    assert gpu_tally({"name": "H100"}, GpuState.FREE).slices == ()
