"""The downsampled history's counting: a GPU whose dict repeats (unchanged since the last
sample) is counted without being read again, and comes out as if each sample had been added."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hub.clock import ManualClock
from hub.domain.events import SampleApplied
from hub.usage.history import MINUTE_S, HistoryAggregator, SeriesKey, minute_rows

T0 = 1_796_600_040.0  # 00:40 into a quarter, on a minute


_sent: dict[str, dict[str, Any]] = {}


@pytest.fixture(autouse=True)
def _fresh_sent() -> None:
    _sent.clear()


def _sample(node: str, state: dict[str, Any], new_sample: bool = True) -> SampleApplied:
    """The event the registry publishes: ``gpus`` names the GPUs whose dicts are new."""
    before = _sent.get(node, {})
    gpus = state.get("gpus", {})
    changed = frozenset(i for i, gpu in gpus.items() if gpu is not before.get("gpus", {}).get(i))
    set_changed = gpus.keys() != before.get("gpus", {}).keys()
    _sent[node] = state
    host = state.get("host") is not before.get("host")
    return SampleApplied(node, state, host, changed, new_sample, set_changed, False, False, 0.0)


def _gpu(util: float, temp: int) -> dict[str, Any]:
    return {"util_gpu_percent": util, "mem_used_bytes": 1000, "temp_celsius": temp, "power_draw_watts": None}


def test_a_repeated_gpu_counts_every_sample_across_takes_and_minutes() -> None:
    clock = ManualClock(wall_s=T0)
    history = HistoryAggregator(clock)
    idle, busy = _gpu(0.0, 31), [_gpu(50.0 + k, 60 + k) for k in range(6)]
    host = {"cpu_percent": 10.0}
    for k in range(4):  # the idle GPU's dict is the same object every time
        history.sample(_sample("n1", {"host": host, "gpus": {"0": idle, "1": busy[k]}}))
        clock.advance(1.0)
    history.sample(_sample("n1", {"host": host, "gpus": {"0": idle}}, new_sample=False))  # a heartbeat
    first = history.take()
    history.sample(_sample("n1", {"host": host, "gpus": {"0": idle, "1": busy[4]}}))  # same minute
    clock.advance(MINUTE_S)
    history.sample(_sample("n1", {"host": host, "gpus": {"0": _gpu(7.0, 40), "1": busy[5]}}))
    batch = minute_rows(first)
    minute = T0 - T0 % MINUTE_S
    idle_minute = batch[SeriesKey("n1", MINUTE_S, int(minute), "0")]
    assert list(idle_minute[:3]) == [0.0, 4.0, 0.0]  # util: 4 samples of 0
    assert list(idle_minute[6:9]) == [31 * 4, 4.0, 31]  # temp
    assert list(idle_minute[9:11]) == [0.0, 0.0] and math.isnan(idle_minute[11])  # power: never a number
    assert list(batch[SeriesKey("n1", MINUTE_S, int(minute), "1")][:3]) == [50 + 51 + 52 + 53, 4.0, 53.0]
    assert list(batch[SeriesKey("n1", MINUTE_S, int(minute), None)][:3]) == [
        40.0,
        4.0,
        10.0,
    ]  # the host repeats too

    second = minute_rows(history.take())
    assert list(second[SeriesKey("n1", MINUTE_S, int(minute), "0")][:3]) == [0.0, 1.0, 0.0]
    next_minute = second[SeriesKey("n1", MINUTE_S, int(minute + MINUTE_S), "0")]
    assert list(next_minute[:3]) == [7.0, 1.0, 7.0]
    assert {key.tier_s for key in second} == {MINUTE_S}  # 15-minute buckets are made in the file


def test_put_back_keeps_repeats_pending_on_both_sides() -> None:
    clock = ManualClock(wall_s=T0)
    history = HistoryAggregator(clock)
    idle = _gpu(0.0, 31)
    for _ in range(3):
        history.sample(_sample("n1", {"gpus": {"0": idle}}))
    taken = history.take()
    for _ in range(2):  # the same minute goes on while the write fails
        history.sample(_sample("n1", {"gpus": {"0": idle}}))
    assert history.put_back(taken, 1000) == 0
    history.sample(_sample("n1", {"gpus": {"0": idle}}))
    batch = minute_rows(history.take())
    minute = T0 - T0 % MINUTE_S
    assert list(batch[SeriesKey("n1", MINUTE_S, int(minute), "0")][6:9]) == [31 * 6, 6.0, 31]
    assert minute_rows(history.take()) == {}


@pytest.mark.parametrize("error", ["lost", None])
def test_a_failed_gpu_is_not_counted_and_a_recovered_one_is(error: str | None) -> None:
    clock = ManualClock(wall_s=T0)
    history = HistoryAggregator(clock)
    failed = {**_gpu(0.0, 31), "error": error}
    for _ in range(3):
        history.sample(_sample("n1", {"gpus": {"0": failed}}))
    batch = minute_rows(history.take())
    key = SeriesKey("n1", MINUTE_S, int(T0 - T0 % MINUTE_S), "0")
    assert (key in batch) is (error is None)
    if error is None:
        assert list(batch[key][:3]) == [0.0, 3.0, 0.0]
