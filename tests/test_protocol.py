from __future__ import annotations

import math

import orjson
import pytest

from node_agent import protocol as p


def hello(**overrides: object) -> p.Hello:
    fields: dict[str, object] = {
        "node": "gpu07",
        "agent_version": "0.1.0",
        "interval_s": 1.0,
        "host": p.to_wire(p.HostStatic(hostname="gpu07.lab", cpu_cores_logical=64)),
        "gpu_driver": p.to_wire(p.GpuDriver(driver_version="550.54", cuda_driver_version="12.4")),
        "gpus": [p.to_wire(p.GpuStatic(index=0, uuid="GPU-1", name="NVIDIA A100", mem_total_bytes=80 << 30))],
    }
    fields.update(overrides)
    return p.Hello(**fields)  # type: ignore[arg-type]


def snapshot(cpu: float = 12.5, util: float = 97.0) -> p.Snapshot:
    return p.to_wire(
        {
            "sampled_at": 1_700_000_000.5,
            "host": p.HostSample(
                cpu_percent=cpu,
                cpu_percent_per_core=[cpu, cpu],
                mem_total_bytes=100,
                mem_used_bytes=40,
                disks=[p.DiskUsage(mount="/", total_bytes=10, used_bytes=5)],
            ),
            "gpus": {
                "0": p.GpuSample(
                    index=0,
                    name="NVIDIA A100",
                    util_gpu_percent=util,
                    throttle_reasons=["sw_power_cap"],
                    processes=[p.GpuProcess(pid=42, user="alice", command="python", gpu_mem_bytes=1 << 30)],
                ),
                "1": p.GpuSample(index=1, name="NVIDIA A100", util_gpu_percent=0.0),
            },
        }
    )


def test_hello_round_trip_keeps_every_static_fact() -> None:
    decoded = p.decode(p.encode(hello()))
    assert isinstance(decoded, p.Hello)
    assert decoded.node == "gpu07"
    assert decoded.protocol == p.PROTOCOL_VERSION
    assert decoded.host["hostname"] == "gpu07.lab"
    assert decoded.host["cpu_cores_logical"] == 64
    assert decoded.host["kernel"] is None  # absent facts are null, never "N/A"
    assert decoded.gpu_driver["cuda_driver_version"] == "12.4"
    assert decoded.gpus[0]["mem_total_bytes"] == 80 << 30


def test_first_delta_carries_the_full_snapshot_and_round_trips() -> None:
    full = snapshot()
    delta = p.Delta(seq=1, ts=1.5, patch=p.make_patch({}, full))
    decoded = p.decode(p.encode(delta))
    assert isinstance(decoded, p.Delta)
    assert decoded.seq == 1 and decoded.ts == 1.5
    assert p.merge_patch({}, decoded.patch) == p.make_patch({}, full)


def test_a_later_delta_carries_only_what_changed() -> None:
    old, new = snapshot(cpu=10.0, util=50.0), snapshot(cpu=10.0, util=60.0)
    patch = p.make_patch(old, new)
    assert patch == {"gpus": {"0": {"util_gpu_percent": 60.0}}}
    assert p.merge_patch(old, patch) == new


def test_an_empty_delta_is_a_heartbeat() -> None:
    assert p.make_patch(snapshot(), snapshot()) == {}
    decoded = p.decode(p.encode(p.Delta(seq=9, ts=2.0, patch={})))
    assert isinstance(decoded, p.Delta) and decoded.is_heartbeat


def test_merge_patch_follows_rfc7396() -> None:
    # the examples of RFC 7396 section 3
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert p.merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert p.merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert p.merge_patch({"a": "foo"}, None) is None
    assert p.merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert p.merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert p.merge_patch(target, {}) == target
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}}, "inputs are not mutated"


def test_make_patch_tells_equal_values_of_another_class_and_removed_keys() -> None:
    old = {"gpu": {"temp": 40, "fan": 30.0, "name": "A"}, "n": True, "gone": 1}
    new = {"gpu": {"temp": 40.0, "fan": 30.0, "name": "A", "new": None}, "n": 1, "added": [1]}
    # 40 and 40.0 (or True and 1) are equal in Python but not the same JSON
    assert p.make_patch(old, new) == {"gpu": {"temp": 40.0}, "n": 1, "gone": None, "added": [1]}
    assert p.make_patch(new, new) == {}
    assert p.make_patch({"a": None}, {"b": None}) == {"a": None}


def test_make_patch_removes_gpus_and_replaces_lists_whole() -> None:
    old = snapshot()
    new = p.merge_patch(old, {"gpus": {"1": None}})
    assert p.make_patch(old, new) == {"gpus": {"1": None}}
    changed = snapshot()
    changed["gpus"]["0"]["processes"] = []
    assert p.make_patch(old, changed) == {"gpus": {"0": {"processes": []}}}


def test_decode_drops_unknown_fields_so_newer_agents_still_talk() -> None:
    raw = orjson.dumps(
        {
            "type": "delta",
            "seq": 1,
            "ts": 1.0,
            "patch": {"host": {"cpu_percent": 1.0, "new_field": 3}, "extra": 1},
        }
    )
    decoded = p.decode(raw)
    assert isinstance(decoded, p.Delta)
    assert decoded.patch == {"host": {"cpu_percent": 1.0}}


@pytest.mark.parametrize(
    ("raw", "message", "code"),
    [
        (b"not json", "not valid JSON", p.CLOSE_BAD_DATA),
        (b"[1, 2]", "JSON object", p.CLOSE_BAD_DATA),
        (b'{"type": "launch"}', "unknown message type", p.CLOSE_POLICY),
        (b'{"seq": 1}', "unknown message type None", p.CLOSE_POLICY),
        (b'{"type": "delta", "ts": 1.0, "patch": {}}', "missing field 'seq'", p.CLOSE_BAD_DATA),
        (
            b'{"type": "delta", "seq": "1", "ts": 1.0, "patch": {}}',
            "seq: expected an integer",
            p.CLOSE_BAD_DATA,
        ),
        (
            b'{"type": "delta", "seq": 1, "ts": 1.0, "patch": []}',
            "patch: expected an object",
            p.CLOSE_BAD_DATA,
        ),
        (b'{"type": "delta", "seq": 1, "ts": 1e300, "patch": {}}', "finite number", p.CLOSE_BAD_DATA),
        (b'{"type": "delta", "seq": 1, "ts": true, "patch": {}}', "ts: expected a number", p.CLOSE_BAD_DATA),
        (
            b'{"type": "delta", "seq": 1, "ts": 1, "patch": {"host": {"cpu_percent": "high"}}}',
            "patch.host.cpu_percent: expected a number",
            p.CLOSE_BAD_DATA,
        ),
        (
            b'{"type": "delta", "seq": 1, "ts": 1, "patch": {"gpus": {"x": {}}}}',
            "GPU index keys",
            p.CLOSE_BAD_DATA,
        ),
        (
            '{"type": "delta", "seq": 1, "ts": 1, "patch": {"gpus": {"\u0663": {}}}}'.encode(),
            "GPU index keys",
            p.CLOSE_BAD_DATA,
        ),
        (
            b'{"type": "delta", "seq": 1, "ts": 1, "patch": {"gpus": {"00": {}}}}',
            "GPU index keys",
            p.CLOSE_BAD_DATA,
        ),
        (
            b'{"type": "delta", "seq": 1, "ts": 1, "patch": {"gpus": {"0": {"processes": [1]}}}}',
            "processes[0]: expected an object",
            p.CLOSE_BAD_DATA,
        ),
        (
            b'{"type": "hello", "protocol": 99, "node": "a", "agent_version": "1", "interval_s": 1}',
            "protocol version 99",
            p.CLOSE_POLICY,
        ),
        (
            b'{"type": "hello", "protocol": 1, "node": "<script>", "agent_version": "1", "interval_s": 1}',
            "node name",
            p.CLOSE_BAD_DATA,
        ),
        (
            b'{"type": "hello", "protocol": 1, "node": "a", "agent_version": "1", "interval_s": 0}',
            "interval_s",
            p.CLOSE_BAD_DATA,
        ),
    ],
)
def test_decode_rejects_malformed_messages_clearly(raw: bytes, message: str, code: int) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(raw)
    assert message in str(caught.value)
    assert caught.value.close_code == code


def test_decode_rejects_nan_long_strings_and_oversized_messages() -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(b'{"type": "delta", "seq": 1, "ts": NaN, "patch": {}}')
    long_name = "x" * (p.MAX_STRING_CHARS + 1)
    with pytest.raises(p.ProtocolError, match="at most 256 characters"):
        p.decode(
            orjson.dumps({"type": "delta", "seq": 1, "ts": 1, "patch": {"gpus": {"0": {"name": long_name}}}})
        )
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(b" " * (p.MAX_MESSAGE_BYTES + 1))
    assert caught.value.close_code == p.CLOSE_TOO_BIG
    too_many = {str(i): {} for i in range(p.MAX_GPUS + 1)}
    with pytest.raises(p.ProtocolError, match="at most 64 GPUs"):
        p.decode(orjson.dumps({"type": "delta", "seq": 1, "ts": 1, "patch": {"gpus": too_many}}))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e19, True, "1"])
def test_numbers_must_be_finite_and_real_numbers(bad: object) -> None:
    assert p.check_patch({"host": {"cpu_percent": 1}}) == {"host": {"cpu_percent": 1}}
    with pytest.raises(p.ProtocolError, match=r"patch\.host\.cpu_percent: expected"):
        p.check_patch({"host": {"cpu_percent": bad}})


def test_errors_name_the_path_of_the_bad_value() -> None:
    patch = {"gpus": {"3": {"processes": [{"pid": 1}, {"pid": "x"}]}}}
    with pytest.raises(p.ProtocolError, match=r"patch\.gpus\.3\.processes\[1\]\.pid: expected an integer"):
        p.check_patch(patch)
    with pytest.raises(p.ProtocolError, match=r"patch\.host\.cpu_percent_per_core\[2\]: expected a value"):
        p.check_patch({"host": {"cpu_percent_per_core": [1.0, 2.0, None]}})


def test_make_patch_passes_the_same_objects_by() -> None:
    links = [True, False]
    old = {"nvlink_active": links, "util": 5.0, "gone": 1}
    new = {"nvlink_active": links, "util": 6.0}
    assert p.make_patch(old, new) == {"util": 6.0, "gone": None}
    assert p.make_patch({"a": links}, {"a": [True, True]}) == {"a": [True, True]}
