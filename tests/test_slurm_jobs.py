"""Slurm job names and users from ``scontrol`` (node_agent/slurm.py): asked once per job in the
background, never on the sampling path; a slow or missing ``scontrol`` leaves them null. Real
``scontrol`` stand-ins (shell scripts) and, where cgroups can be made, a real process in a
Slurm job's cgroup sampled by the real GPU collector over the fake NVML."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

import pytest

from frontend.viewmodels import process_holder
from node_agent.attribution import AttributionReader
from node_agent.gpu import GpuCollector
from node_agent.protocol import MAX_STRING_CHARS
from node_agent.slurm import RETRY_S, SlurmJobs, parse_show_job
from tests import fakes
from tests.procs import wait_until
from tests.test_attribution_cgroups import need, process_in_cgroup

LINE = (
    "JobId={job} JobName=train llama 7b UserId=alice(1001) GroupId=lab(2000) MCS_label=N/A "
    "Priority=4294901 Nice=0 Account=lab QOS=normal JobState=RUNNING"
)


def fake_scontrol(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """An executable ``scontrol`` that logs each call's arguments, then runs ``body``."""
    calls = tmp_path / "calls.log"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    script.chmod(0o755)
    return script, calls


def test_parse_show_job_takes_names_with_spaces_and_bounds_them() -> None:
    assert parse_show_job(LINE.format(job=81234)) == ("train llama 7b", "alice")
    assert parse_show_job("JobId=1 JobName=x UserId=bob(7) GroupId=bob(7)\n") == ("x", "bob")
    assert parse_show_job("slurm_load_jobs error: Invalid job id specified") == (None, None)
    huge = parse_show_job(f"JobId=1 JobName={'<b>' * 500} UserId={'u' * 999}(1)")
    assert huge[0] is not None and huge[1] is not None
    assert len(huge[0]) == len(huge[1]) == MAX_STRING_CHARS


def test_a_job_is_asked_once_in_the_background(tmp_path: Path) -> None:
    script, calls = fake_scontrol(tmp_path, f"echo '{LINE.format(job=81234)}'")
    jobs = SlurmJobs(str(script))
    try:
        assert jobs.lookup(81234) is None, "never waits: the answer comes later"
        assert wait_until(lambda: jobs.lookup(81234), 10, what="scontrol's answer") == (
            "train llama 7b",
            "alice",
        )
        for _ in range(5):
            jobs.lookup(81234)
        assert calls.read_text().splitlines() == ["show job -o 81234"]
    finally:
        jobs.close()


def test_a_slow_scontrol_times_out_and_is_asked_again_later(tmp_path: Path) -> None:
    script, calls = fake_scontrol(tmp_path, "sleep 5")
    now = [0.0]
    jobs = SlurmJobs(str(script), timeout_s=0.3, clock=lambda: now[0])
    try:
        started = time.monotonic()
        assert jobs.lookup(7) is None
        assert time.monotonic() - started < 0.2, "the caller never waits for scontrol"
        wait_until(lambda: 7 in jobs._failed_at, 10, what="the timeout")
        assert jobs.lookup(7) is None and len(calls.read_text().splitlines()) == 1, "not again at once"
        now[0] = RETRY_S
        jobs.lookup(7)
        wait_until(lambda: len(calls.read_text().splitlines()) == 2, 10, what="the retry")
    finally:
        jobs.close()


def test_without_scontrol_nothing_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    jobs = SlurmJobs()
    assert not jobs.enabled and jobs.lookup(81234) is None and jobs._worker is None
    reader = AttributionReader(proc_root=tmp_path, slurm_jobs=jobs)
    assert not reader.waits_for_jobs


def test_the_agents_record_names_the_job_once_scontrol_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = need("v2")
    job_id = 83_000 + secrets.randbelow(1000)
    script, _ = fake_scontrol(tmp_path, f"echo '{LINE.format(job=job_id)}'")
    with process_in_cgroup(root, f"system.slice/slurmstepd.scope/job_{job_id}/step_0") as child:
        scenario = fakes.write_scenario(tmp_path / "scenario.json", fakes.real_pids([child.pid]))
        monkeypatch.setitem(sys.modules, "pynvml", fakes.load_fake_pynvml(scenario))
        reader = AttributionReader(docker_root=tmp_path / "docker", slurm_jobs=SlurmJobs(str(script)))
        collector = GpuCollector(sysfs_root=tmp_path / "no-sysfs", attribution=reader)
        try:

            def named() -> dict[str, object] | None:
                (proc,) = collector.sample_wire()["0"]["processes"]
                return proc if proc["slurm_job_name"] else None

            proc = wait_until(named, 10, what="the job's name in the record")
        finally:
            collector.close()
    assert (proc["slurm_job_id"], proc["slurm_job_name"], proc["slurm_job_user"]) == (
        job_id,
        "train llama 7b",
        "alice",
    )


def test_the_node_page_names_the_job_and_the_card_stays_short() -> None:
    proc = {"slurm_job_id": 81234, "slurm_step": "0", "slurm_job_name": "train"}
    assert process_holder(proc) == "job 81234 (train) step 0"
    assert process_holder(proc, short=True) == "job 81234"
    assert process_holder({"slurm_job_id": 5}) == "job 5"
