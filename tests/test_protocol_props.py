"""Property tests of the wire protocol: no input makes the decoder raise anything but
``ProtocolError``, and merge patches round-trip."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
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
    _fast_delta_decoder,
    check_patch,
    decode,
    decode_with_checkers,
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


def _loose(value: Any) -> Any:
    """For comparing the fast decoder with the checkers: numbers as floats (msgspec gives a float
    field's integer as a float), and a list item's missing fields the same as its nulls."""
    if isinstance(value, dict):
        return {k: _loose(v) for k, v in value.items()}
    if isinstance(value, list):
        return [
            {k: _loose(v) for k, v in item.items() if v is not None}
            if isinstance(item, dict)
            else _loose(item)
            for item in value
        ]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _edge_value(hint: Any) -> st.SearchStrategy[Any]:
    """Mostly right for a field's type, at and past its limits, sometimes of another type."""
    text = str(hint)
    if "list[" in text:
        item = (
            st.text(max_size=3)
            if "str" in text
            else st.fixed_dictionaries(
                {},
                # what JSON (orjson) can carry: a larger pid can't even be encoded to be sent
                optional={"pid": st.integers(-(2**63), 2**64 - 1), "user": st.text(max_size=3)},
            )
            if "Process" in text or "Disk" in text
            else st.floats(min_value=-2e18, max_value=2e18)
        )
        return st.none() | st.lists(item | st.none(), max_size=4) | scalars
    if "float" in text:
        return st.floats(min_value=-2e18, max_value=2e18) | st.integers(-(2**62), 2**62) | scalars
    if "int" in text:
        return st.integers(-(2**61), 2**61) | st.sampled_from([10**18, 10**18 + 1, -(10**18) - 1]) | scalars
    return st.text(max_size=3) | st.text(min_size=255, max_size=258) | scalars


def _typed_objects(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries({}, optional={name: _edge_value(hint) for name, hint in hints.items()})


@st.composite
def typed_deltas(draw: st.DrawFn) -> dict[str, Any]:
    """Deltas of the right shape with values at the edges of what the checkers accept."""
    patch = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "sampled_at": _edge_value("float"),
                "host": _typed_objects(HostSample) | st.none(),
                "gpus": st.dictionaries(
                    st.sampled_from(["0", "1", "63", "01", "x"]),
                    _typed_objects(GpuSample) | st.none(),
                    max_size=3,
                )
                | st.none(),
            },
        )
    )
    return {
        "type": "delta",
        "seq": draw(_edge_value("int")),
        "ts": draw(_edge_value("float")),
        "patch": patch,
    }


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | near_messages() | typed_deltas() | typed_deltas())
# an integer just past a float field's bound is the bound as a float, which msgspec takes
@example({"type": "delta", "seq": 0, "ts": 10**18 + 1, "patch": {}})
@example({"type": "delta", "seq": 0, "ts": 1.0, "patch": {"host": {"uptime_s": 10**18 + 1}}})
def test_the_fast_delta_decoder_accepts_nothing_the_checkers_refuse(value: Any) -> None:
    """Deltas go through msgspec first; the checkers are the reference. Whatever msgspec
    accepts, they accept too, with the same content."""
    data = orjson.dumps(value)
    fast = _fast_delta_decoder()(data)
    if fast is None:
        return
    try:
        checked = decode_with_checkers(data)
    except ProtocolError as exc:
        raise AssertionError(f"msgspec accepted what the checkers refuse: {exc.reason}") from None
    assert isinstance(checked, Delta)
    assert (fast.seq, fast.ts) == (checked.seq, checked.ts)
    assert _loose(fast.patch) == _loose(checked.patch)


def test_the_fast_delta_decoder_takes_the_agents_deltas() -> None:
    patch = {
        "sampled_at": 1.5,
        "host": {"cpu_percent": 3, "cpu_percent_per_core": [1.0, 2], "disks": [{"mount": "/"}], "new": 1},
        "gpus": {"0": {"util_gpu_percent": 5.0, "processes": [{"pid": 1, "user": "ann"}]}, "1": None},
    }
    fast = _fast_delta_decoder()(encode(Delta(seq=3, ts=2.0, patch=patch)))
    assert fast is not None, "a valid delta takes the fast path"
    assert fast.patch["host"] == {
        "cpu_percent": 3.0,
        "cpu_percent_per_core": [1.0, 2.0],
        "disks": [{"mount": "/"}],
    }
    assert fast.patch["gpus"]["1"] is None
    for bad in (
        {"type": "delta", "seq": 1, "ts": 1.0, "patch": {"host": {"cpu_percent": True}}},
        {"seq": 1, "ts": 1.0, "patch": {}},
        {"type": "delta", "seq": 1.0, "ts": 1.0, "patch": {}},
        {"type": "delta", "seq": 1, "ts": 1.0, "patch": {"gpus": {"01": {}}}},
        {"type": "delta", "seq": 1, "ts": 1.0, "patch": {"host": {"cpu_percent_per_core": [1, None]}}},
        {"type": "delta", "seq": 1, "ts": 1.0, "patch": {"gpus": {"0": {"name": "x" * 257}}}},
    ):
        assert _fast_delta_decoder()(orjson.dumps(bad)) is None, bad
