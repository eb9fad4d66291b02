"""Done means, for idle holders: a real hub (``min_idle_s`` of 2 s in its TOML) and a real agent
over the fake NVML. A process in a Slurm job's cgroup holds GPU 0 at 0 % and becomes idle-held
on ``/api/v1/users``, on its card ("idle … · user (job N)"), in the top bar, on ``/users`` and on
``/metrics``; a process in a Docker container's cgroup (GPU 1) and a bare one (GPU 2) hold
theirs busy and stay merely held, each with its container, job or nothing, and its start time.
When GPU 0 gets busy, the idle hold ends everywhere."""

from __future__ import annotations

import html
import os
import pwd
import secrets
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests import fakes
from tests.fakes import GIB
from tests.procs import Hub, Proc, free_port, start_agent, wait_until
from tests.test_attribution_cgroups import need, process_in_cgroup, write_docker_config
from tests.test_hardening_faults import write_atomically
from tests.test_metrics import samples, scrape, value

USER = pwd.getpwuid(os.getuid()).pw_name


def scenario(job_pid: int, docker_pid: int, bare_pid: int, util_0: int) -> dict[str, Any]:
    return fakes.scenario(
        [
            fakes.gpu(0, util_gpu=util_0, compute_processes=[fakes.process(job_pid, 4 * GIB)]),
            fakes.gpu(1, util_gpu=80, compute_processes=[fakes.process(docker_pid, 2 * GIB)]),
            fakes.gpu(2, util_gpu=90, compute_processes=[fakes.process(bare_pid, 1 * GIB)]),
        ],
        live_reload=True,
    )


def get_text(hub: Hub, path: str) -> str:
    with urllib.request.urlopen(hub.url + path, timeout=10) as response:
        return html.unescape(response.read().decode())


def test_a_gpu_held_at_zero_percent_turns_idle_held_on_the_api_card_and_metrics(
    tmp_path: Path, procs: list[Proc], sleeper: subprocess.Popen[bytes]
) -> None:
    root = need("v2")
    config = tmp_path / "hub.toml"
    config.write_text("[idle_holders]\nmax_util_percent = 5\nmin_idle_s = 2\n")
    hub = Hub(port=free_port(), tmp=tmp_path, args=("--config", str(config))).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    job_id = 81_000 + secrets.randbelow(1000)
    container_id = secrets.token_hex(32)
    write_docker_config(tmp_path / "docker", container_id, "carol-vllm")
    with (
        process_in_cgroup(root, f"system.slice/slurmstepd.scope/job_{job_id}/step_0") as child,
        process_in_cgroup(root, f"system.slice/docker-{container_id}.scope") as boxed,
    ):
        path = tmp_path / "nvml.json"
        write_atomically(path, scenario(child.pid, boxed.pid, sleeper.pid, util_0=0))
        docker = ("--docker-root", str(tmp_path / "docker"))
        procs.append(start_agent(hub, "gpu07", *docker, env=fakes.fake_env(path, base={})))
        hub.wait_status("gpu07", "live")

        def me() -> dict[str, Any] | None:
            users = {u["user"]: u for u in hub.get("/api/v1/users")["users"]}
            found = users.get(USER)
            return found if found and found["idle_held"] else None

        mine = wait_until(me, 20, what="GPU 0 idle-held on /api/v1/users")
        assert mine["gpus_held"] == 3 and mine["gpu_mem_bytes"] == 7 * GIB
        [idle] = mine["idle_held_gpus"]
        assert (idle["node"], idle["gpu_index"], idle["mig_uuid"]) == ("gpu07", "0", None)
        gpus = {g["gpu_index"]: g for g in mine["gpus"]}
        assert gpus["0"]["idle_held_since_epoch_s"] == idle["since_epoch_s"]
        assert gpus["1"]["idle_held_since_epoch_s"] is None, "held at 80 %: busy, not idle"
        [proc] = gpus["0"]["processes"]
        assert (proc["pid"], proc["slurm_job_id"], proc["command"]) == (child.pid, job_id, "sleep")
        assert gpus["0"]["util_gpu_percent"] == 0 and proc["started_epoch_s"] > 0
        [in_box] = gpus["1"]["processes"]
        assert (in_box["pid"], in_box["container_id"], in_box["container_name"]) == (
            boxed.pid,
            container_id,
            "carol-vllm",
        )
        [bare] = gpus["2"]["processes"]
        assert bare["pid"] == sleeper.pid and bare["container_id"] is None and bare["slurm_job_id"] is None
        assert all(p["started_epoch_s"] > 0 for p in (in_box, bare))

        # the card: the row in words, never free; the top bar counts it
        def wall_counting_it() -> str | None:
            page = get_text(hub, "/")
            return page if "idle-held" in page else None

        wall = wait_until(wall_counting_it, 10, what="the top bar")
        row = wall[wall.index('id="gpu-0-gpu07"') :]
        row = row[: row.index("</div>")]
        assert f"· {USER} (job {job_id}) 4.0G" in row and 'class="ih"' in row and "idle " in row
        assert 'class="g b"' in wall[wall.index('id="gpu-0-gpu07"') - 40 :][:80], "idle-held is busy"
        assert "◷ 1 idle-held" in wall and "<b>0</b>/3 GPUs free" in wall

        # the people board
        board = get_text(hub, "/users")
        assert f'data-user="{USER}"' in board and f"job {job_id}, carol-vllm" in board
        assert "gpu07/0, gpu07/1, gpu07/2" in board and "<b>3</b> 3× H100" in board

        # /metrics: per user; promtool finds nothing to complain about
        text = scrape(hub)[0]
        found = samples(text)
        assert value(found, "sers_user_gpus_held", user=USER) == 3.0
        assert value(found, "sers_user_gpus_idle_held", user=USER) == 1.0
        assert value(found, "sers_user_gpu_memory_used_bytes", user=USER) == 7 * GIB
        promtool = shutil.which("promtool")
        if promtool is not None:
            result = subprocess.run(
                [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr

        # GPU 0 gets busy: the idle hold ends on the API, the card and /metrics
        write_atomically(path, scenario(child.pid, boxed.pid, sleeper.pid, util_0=60))
        wait_until(lambda: me() is None, 10, what="the idle hold to end")
        assert USER in {u["user"] for u in hub.get("/api/v1/users")["users"]}, "still holding"
        wait_until(lambda: "idle-held" not in get_text(hub, "/"), 10, what="the top bar to drop it")
        found = samples(scrape(hub)[0])
        assert value(found, "sers_user_gpus_idle_held", user=USER) == 0.0
