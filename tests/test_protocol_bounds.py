"""Bounds of the numeric wire fields: both decoders take every value at a field's bounds and
refuse one just outside, and an agent sends null for a reading outside them instead."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import orjson
import pytest

from node_agent.host import HostCollector
from node_agent.protocol import (
    Delta,
    GpuDriver,
    GpuStatic,
    Hello,
    ProtocolError,
    _fast_delta_decoder,
    decode,
    decode_with_checkers,
    encode,
    merge_patch,
    snapshot_within_bounds,
)
from node_agent.sampler import Sampler
from tests.test_values_at_bounds import INSIDE, OUTSIDE, Case, frames, sample


def messages(case: Case) -> list[bytes]:
    hello, _snapshot, second = frames(case)
    return [hello] if case.message == "hello" else [second]


@pytest.mark.parametrize("case", INSIDE, ids=[c.name for c in INSIDE])
def test_both_decoders_take_a_value_at_its_bounds(case: Case) -> None:
    for data in messages(case):
        assert decode_with_checkers(data) == decode(data)
        if case.message == "delta":
            assert _fast_delta_decoder()(data) is not None, "a valid delta takes the fast path"


@pytest.mark.parametrize("case", OUTSIDE, ids=[c.name for c in OUTSIDE])
def test_both_decoders_refuse_a_value_just_outside_naming_the_field(case: Case) -> None:
    (data,) = messages(case)
    for decoder in (decode, decode_with_checkers):
        with pytest.raises(ProtocolError) as refused:
            decoder(data)
        assert refused.value.close_code == 1007
        assert case.field in refused.value.reason


DELTA_FIELDS = [c for c in OUTSIDE if c.message == "delta" and c.owner != "message"] + [
    c for c in OUTSIDE if c.field == "sampled_at"
]


@pytest.mark.parametrize("case", DELTA_FIELDS, ids=[c.name for c in DELTA_FIELDS])
def test_an_agent_sends_null_for_a_reading_outside_its_bounds(case: Case) -> None:
    message = orjson.loads(frames(case)[2])
    before = copy.deepcopy(message)
    fitted, nulled = snapshot_within_bounds(message["patch"])
    assert len(nulled) == 1 and nulled[0].endswith(case.field), nulled
    decoded = decode(encode(Delta(seq=1, ts=time.time(), patch=fitted)))
    assert isinstance(decoded, Delta)
    found: Any = decoded.patch
    for key in [*case.path, case.field] if case.owner != "message" else [case.field]:
        found = found.get(key) if isinstance(found, dict) else found[key]
    assert found is None
    assert message == before, "the agent's own snapshot is left as it was"


def test_a_snapshot_within_bounds_is_passed_on_as_it_is() -> None:
    snapshot = sample(time.time())
    assert snapshot_within_bounds(snapshot) == (snapshot, [])
    assert snapshot_within_bounds(snapshot)[0] is snapshot


class OddGpus:
    """A GPU source whose driver reports a fan beyond any speed and a pid NVML can't have."""

    static_generation = 0

    def driver(self) -> GpuDriver:
        return GpuDriver(driver_version="550")

    def static(self) -> list[GpuStatic]:
        return [GpuStatic(index=0, name="GPU", power_limit_watts=-5.0)]

    fields_checked_when_read: frozenset[str] = frozenset()

    def sample_wire(self) -> dict[str, dict[str, Any]]:
        return {"0": {"index": 0, "fan_percent": 255.0, "temp_celsius": 40.0, "processes": [{"pid": -1}]}}

    def close(self) -> None:
        pass


def test_the_sampler_sends_odd_readings_as_unknown_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    host = HostCollector()
    host._boot_time_epoch_s = time.time() + 3600  # the clock was stepped back after the agent started
    sampler = Sampler(host, OddGpus())
    with caplog.at_level(logging.WARNING, "sers.agent"):
        hello = sampler.hello("odd", 1.0)
        first = sampler.snapshot()
        second = sampler.snapshot()
    assert isinstance(decode(encode(hello)), Hello)
    assert hello.gpus[0]["power_limit_watts"] is None
    for snapshot in (first, second):
        assert isinstance(decode(encode(Delta(seq=1, ts=time.time(), patch=snapshot))), Delta)
        assert snapshot["host"]["uptime_s"] is None and snapshot["host"]["cpu_percent"] is not None
        assert snapshot["gpus"]["0"]["fan_percent"] is None and snapshot["gpus"]["0"]["temp_celsius"] == 40.0
        assert snapshot["gpus"]["0"]["processes"][0]["pid"] is None
    warned = [r.getMessage() for r in caplog.records]
    assert sorted(warned) == sorted(
        f"{path}: a reading outside the protocol's bounds; sent as unknown"
        for path in (
            "gpus[0].power_limit_watts",
            "host.uptime_s",
            "gpus.0.fan_percent",
            "gpus.0.processes[0].pid",
        )
    ), warned


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


class DriftingGpus(OddGpus):
    """A GPU whose fan reading goes past any speed in one sample only, the rest unchanged."""

    def __init__(self, fans: list[float]) -> None:
        self.fans = fans

    def sample_wire(self) -> dict[str, dict[str, Any]]:
        fan = self.fans.pop(0)
        return {"0": {"index": 0, "fan_percent": fan, "temp_celsius": 40.0, "processes": []}}


def test_each_sample_checks_what_changed_and_its_patch_carries_the_null(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampler = Sampler(HostCollector(), DriftingGpus([50.0, 255.0, 60.0, 60.0]))
    with caplog.at_level(logging.WARNING, "sers.agent"):
        first, no_patch = sampler.next_sample(None)
        snapshots, patches = [first], []
        for _ in range(3):
            snapshot, patch = sampler.next_sample(snapshots[-1])
            snapshots.append(snapshot)
            patches.append(patch)
    assert no_patch is None
    assert [s["gpus"]["0"]["fan_percent"] for s in snapshots] == [50.0, None, 60.0, 60.0]
    fans_sent = [p.get("gpus", {}).get("0", {}).get("fan_percent", "same") for p in patches]
    assert fans_sent == [None, 60.0, "same"]
    for before, patch, after in zip(snapshots, patches, snapshots[1:], strict=False):
        # absent and null mean the same on this wire
        assert without_nulls(merge_patch(before, patch)) == without_nulls(after), (
            "patches rebuild the snapshots"
        )
    warned = [r.getMessage() for r in caplog.records if "bounds" in r.getMessage()]
    assert warned == ["gpus.0.fan_percent: a reading outside the protocol's bounds; sent as unknown"]
