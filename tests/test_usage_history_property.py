"""The downsampled history, fed by a real registry, against a plain reference: whatever the
samples (GPUs unchanged, changed, failing, gone and back, the host missing, heartbeats, minutes
ending, takes with failed writes put back), every 1-minute bucket holds exactly the sum, count
and maximum of the values its samples carried. The aggregator reads only what a patch changed
and counts repeats lazily; the reference reads every value of every sample."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.clock import ManualClock
from hub.registry import NodeRegistry
from hub.usage.history import MINUTE_S, HistoryAggregator, Minutes, SeriesKey, merge, minute_rows
from hub.usage.schema import GPU_METRICS, HOST_METRICS
from node_agent.protocol import Delta, Hello, make_patch

T0 = 1_796_600_000.0
GPU_INDEXES = ("0", "1", "2")

values = st.one_of(st.none(), st.integers(0, 100).map(float))
gpu_change = st.one_of(
    st.just("same"),
    st.just("same"),
    st.just("gone"),
    st.just("error"),
    st.tuples(values, values),  # new utilization and temperature
)
step = st.one_of(
    st.tuples(
        st.just("sample"),
        st.tuples(*[gpu_change] * len(GPU_INDEXES)),
        st.sampled_from(["same", "new", "gone"]),
        st.sampled_from([0.5, 1.0, 7.0, 31.0]),
    ),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("take"), st.booleans()),  # a take, written or put back (a failed write)
)


def _reference_add(
    into: dict[SeriesKey, list[float]], key: SeriesKey, source: dict[str, Any], metrics: tuple[str, ...]
) -> None:
    aggregate = into.setdefault(key, [0.0, 0.0, math.nan] * len(metrics))
    for j, metric in enumerate(metrics):
        value = source.get(metric)
        if isinstance(value, float):
            aggregate[3 * j] += value
            aggregate[3 * j + 1] += 1
            if not aggregate[3 * j + 2] >= value:
                aggregate[3 * j + 2] = value


def _close(a: list[float], b: list[float]) -> bool:
    return all(
        (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, abs_tol=1e-9)
        for x, y in zip(a, b, strict=True)
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=60))
def test_every_minute_bucket_matches_a_plain_count(steps: list[tuple[Any, ...]]) -> None:
    clock = ManualClock(mono_s=100.0, wall_s=T0)
    registry = NodeRegistry(clock)
    history = HistoryAggregator(clock)
    history.subscribe(registry.events)
    connection = registry.hello(Hello(node="n1", agent_version="t", interval_s=1.0))
    state: dict[str, Any] = {"host": {"cpu_percent": 1.0}, "gpus": {}}
    sent: dict[str, Any] = {}
    expected: dict[SeriesKey, list[float]] = {}
    written: dict[SeriesKey, list[float]] = {}
    seq = 0
    for kind, *args in steps:
        seq += 1
        if kind == "take":
            taken: Minutes = history.take()
            if args[0]:
                for key, aggregate in minute_rows(taken).items():
                    if key.tier_s == MINUTE_S:
                        have = written.setdefault(key, [0.0, 0.0, math.nan] * (len(aggregate) // 3))
                        merge(have, aggregate)
            else:
                history.put_back(taken, 100_000)
            continue
        if kind == "heartbeat":
            registry.delta("n1", connection, Delta(seq, clock.wall(), {}))
            continue
        changes, host_change, after_s = args
        clock.advance(after_s)
        gpus = dict(state["gpus"])
        for index, change in zip(GPU_INDEXES, changes, strict=True):
            if change == "gone":
                gpus.pop(index, None)
            elif change == "error":
                gpus[index] = {"error": "lost", "util_gpu_percent": 3.0}
            elif change != "same" or index not in gpus:
                util, temp = change if change != "same" else (1.0, 30.0)
                gpus[index] = {
                    "util_gpu_percent": util,
                    "temp_celsius": temp,
                    "mem_used_bytes": 5.0,
                    "name": "X",
                }
        host = state.get("host")
        if host_change == "new":
            host = {"cpu_percent": float(seq), "mem_used_bytes": 2.0}
        elif host_change == "gone":
            host = None
        state = {"sampled_at": clock.wall(), "gpus": gpus, **({"host": host} if host is not None else {})}
        registry.delta("n1", connection, Delta(seq, clock.wall(), make_patch(sent, state)))
        sent = state
        minute = int(clock.wall() - clock.wall() % MINUTE_S)
        if host is not None:
            _reference_add(expected, SeriesKey("n1", MINUTE_S, minute, None), host, HOST_METRICS)
        for index, gpu in gpus.items():
            if not gpu.get("error"):
                _reference_add(expected, SeriesKey("n1", MINUTE_S, minute, index), gpu, GPU_METRICS)
    history.put_back(history.take(), 100_000)  # a failed write at the end is not lost either
    for key, aggregate in minute_rows(history.take()).items():
        if key.tier_s == MINUTE_S:
            have = written.setdefault(key, [0.0, 0.0, math.nan] * (len(aggregate) // 3))
            merge(have, aggregate)
    written = {k: v for k, v in written.items() if any(v[j + 1] for j in range(0, len(v), 3))}
    assert written.keys() == expected.keys()
    for key, aggregate in expected.items():
        assert _close(written[key], aggregate), key
