"""The Prometheus path: the recording rules in docs/prometheus compute the hub's per-user
GPU-hours from /metrics (``promtool check rules`` and ``promtool test rules``), and the metric
names and labels they read are the ones the hub's /metrics serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hub.app import create_app
from hub.clock import ManualClock
from hub.settings import HubSettings
from node_agent.protocol import Delta, Hello

RULES = Path(__file__).resolve().parent.parent / "docs" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
    return found


def test_the_rules_are_valid_and_their_tests_pass() -> None:
    tool = promtool()
    for args in (["check", "rules", "usage.rules.yml"], ["test", "rules", "usage.rules.test.yml"]):
        done = subprocess.run(
            [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_the_rules_read_what_metrics_serves() -> None:
    """Every sers_* series the rules and their test read exists on /metrics with those labels."""
    with TestClient(create_app(HubSettings(), ManualClock())) as client:
        registry = client.app.state.hub.registry  # type: ignore[attr-defined]
        connection = registry.hello(
            Hello(
                node="gpu01",
                agent_version="1",
                interval_s=1.0,
                gpus=[{"index": 0, "name": "A100", "uuid": "GPU-a"}],
            )
        )
        processes = [
            {"pid": 1, "user": "alice", "gpu_mem_bytes": 3},
            {"pid": 2, "user": "bob", "gpu_mem_bytes": 1},
        ]
        gpus = {"0": {"util_gpu_percent": 80.0, "processes": processes}}
        registry.delta("gpu01", connection, Delta(1, 0.0, {"sampled_at": 1.0, "gpus": gpus}))
        served = client.get("/metrics").text
    rules = (RULES / "usage.rules.yml").read_text() + (RULES / "usage.rules.test.yml").read_text()
    for name in set(re.findall(r"\b(sers_[a-z_]+)\b", rules)):
        line = next((ln for ln in served.splitlines() if ln.startswith(name + "{")), None)
        assert line is not None, f"{name} is not on /metrics"
        for label in ("node", "gpu", "model", "uuid"):
            assert f'{label}="' in line, f"{name} lacks the label {label}"
    assert (
        'sers_gpu_user_memory_used_bytes{gpu="0",model="A100",node="gpu01",user="alice",uuid="GPU-a"} 3.0'
        in served
    )
