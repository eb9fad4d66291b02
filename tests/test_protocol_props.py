"""Property tests of the wire protocol: no input makes the decoder raise anything but
``ProtocolError``, and merge patches round-trip."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.protocol import (
    CLOSE_BAD_DATA,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    MAX_MESSAGE_BYTES,
    Delta,
    DiskUsage,
    GpuDriver,
    GpuProcess,
    GpuSample,
    GpuStatic,
    Hello,
    HostSample,
    HostStatic,
    ProtocolError,
    check_patch,
    decode,
    encode,
    make_patch,
    merge_patch,
)

CLOSE_CODES = {CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_TOO_BIG}
FIELD_NAMES = sorted(
    {
        f.name
        for cls in (HostStatic, GpuDriver, GpuStatic, DiskUsage, HostSample, GpuProcess, GpuSample)
        for f in dataclasses.fields(cls)
    }
    | {"type", "protocol", "node", "agent_version", "interval_s", "host", "gpus", "gpu_driver"}
    | {"seq", "ts", "patch", "sampled_at", "0", "1", "10"}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=6),
    max_leaves=40,
)
json_objects = st.dictionaries(keys, json_values, max_size=8)


@st.composite
def near_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Messages shaped like hellos and deltas, with any value in any field."""
    kind = draw(st.sampled_from(["hello", "delta", "delta", "other"]))
    message: dict[str, Any] = {"type": kind if kind != "other" else draw(json_values)}
    if kind == "hello":
        message.update(
            protocol=draw(st.just(1) | json_values),
            node=draw(st.sampled_from(["gpu01", "x"]) | json_values),
            agent_version=draw(st.just("1.0") | json_values),
            interval_s=draw(st.just(1.0) | json_values),
            host=draw(json_objects | json_values),
            gpu_driver=draw(json_objects | json_values),
            gpus=draw(st.lists(json_objects, max_size=4) | json_values),
        )
    elif kind == "delta":
        message.update(seq=draw(st.just(1) | json_values), ts=draw(st.just(1.5) | json_values))
        message["patch"] = draw(patches() | json_values)
    for key in draw(st.lists(st.sampled_from(sorted(message)), max_size=2)):
        message.pop(key, None)  # some required field missing
    return message


@st.composite
def patches(draw: st.DrawFn) -> dict[str, Any]:
    gpus = draw(
        st.dictionaries(
            st.sampled_from(["0", "1", "7", "x", "٣", "00"]), json_objects | st.none(), max_size=3
        )
    )
    patch = {
        "sampled_at": draw(st.floats() | json_values),
        "host": draw(json_objects | st.none()),
        "gpus": gpus,
    }
    return {k: v for k, v in patch.items() if draw(st.booleans())}


def assert_only_protocol_errors(data: str | bytes) -> Any:
    try:
        return decode(data)
    except ProtocolError as exc:
        assert exc.close_code in CLOSE_CODES
        assert exc.reason
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decode_of_any_bytes_raises_only_protocol_error(data: str | bytes) -> None:
    assert_only_protocol_errors(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | near_messages())
def test_decode_of_any_json_raises_only_protocol_error(value: Any) -> None:
    decoded = assert_only_protocol_errors(orjson.dumps(value))
    if decoded is not None:
        # whatever was accepted encodes again and decodes to the same message
        assert isinstance(decoded, Hello | Delta)
        assert decode(encode(decoded)) == decoded


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | patches())
def test_check_patch_raises_only_protocol_error_and_is_idempotent(value: Any) -> None:
    try:
        clean = check_patch(value)
    except ProtocolError as exc:
        assert exc.close_code in CLOSE_CODES
        return
    assert set(clean) <= {"sampled_at", "host", "gpus"}
    assert check_patch(clean) == clean


@given(st.integers(min_value=MAX_MESSAGE_BYTES + 1, max_value=4 * MAX_MESSAGE_BYTES))
@settings(max_examples=10)
def test_decode_refuses_oversized_messages_with_1009(size: int) -> None:
    try:
        decode(b" " * size)
    except ProtocolError as exc:
        assert exc.close_code == CLOSE_TOO_BIG
    else:
        raise AssertionError("an oversized message was accepted")


def without_object_nulls(value: Any) -> Any:
    """What a merge patch can express: ``null`` inside objects means "absent"; lists are whole."""
    if isinstance(value, dict):
        return {k: without_object_nulls(v) for k, v in value.items() if v is not None}
    return value


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)  # 1, 1.0 and True stay distinct


@settings(max_examples=300)
@given(json_values, json_values)
def test_merge_patch_never_raises_and_never_mutates(target: Any, patch: Any) -> None:
    before = copy.deepcopy((target, patch))
    merge_patch(target, patch)
    assert canonical((target, patch)) == canonical(before)


@settings(max_examples=400)
@given(json_values | json_objects, json_values | json_objects)
def test_make_patch_then_merge_patch_round_trips(old: Any, new: Any) -> None:
    """The agent diffs its raw snapshots (``null`` for unsupported fields); the hub holds what
    merging gave it, which never keeps an object's ``null``. After every patch the hub must hold
    exactly the agent's new snapshot, nulls aside."""
    before = copy.deepcopy((old, new))
    patch = make_patch(old, new)
    hub_state = without_object_nulls(old)
    assert canonical(merge_patch(hub_state, patch)) == canonical(without_object_nulls(new))
    assert canonical(without_object_nulls(merge_patch(old, patch))) == canonical(without_object_nulls(new))
    assert canonical((old, new)) == canonical(before)
    if isinstance(old, dict) and isinstance(new, dict) and canonical(old) == canonical(new):
        assert patch == {}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(patches(), patches())
def test_registry_style_merges_of_checked_patches_stay_checkable(first: Any, second: Any) -> None:
    """What the hub does with every delta: check it, then merge it into the node's state.
    The state stays something ``check_patch`` accepts (a full snapshot is a patch against {})."""
    state: dict[str, Any] = {}
    for raw in (first, second):
        try:
            clean = check_patch(raw)
        except ProtocolError:
            continue
        state = merge_patch(state, clean)
        assert check_patch(state) == state
