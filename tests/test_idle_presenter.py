"""The presenter learns idle holds from the events: the GPU row is pushed again when its GPU turns
idle-held (and when it stops), the summary counts it and never as free, and a viewer of the
people board gets the board, changed in place, at most once a second. A real registry, tracker,
scene and fan-out on a manual clock; in-memory viewers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from frontend.element_ids import person_id
from frontend.render import Renderer
from hub.clock import ManualClock
from hub.domain.gpus import GpuFreeRule, IdleRule
from hub.domain.idle import IdleHolders
from hub.fanout import SUMMARY_EVERY_S, Fanout, Viewer
from hub.registry import NodeRegistry
from hub.scene import Scene, ViewFilter
from node_agent.protocol import Delta, Hello
from tests.test_fanout import Browser, run, settle

GIB = 1024**3


def proc(pid: int, user: str, **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "user": user, "command": "python", "gpu_mem_bytes": 4 * GIB, **extra}


class Lab:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.registry = NodeRegistry(self.clock)
        self.tracker = IdleHolders(self.registry.events, self.clock, IdleRule(5.0, 60.0))
        self.scene = Scene(self.registry, Renderer(), GpuFreeRule(), self.clock.wall)
        self.fanout = Fanout(self.registry, self.scene, max_rate_hz=10)
        self.connection = self.registry.hello(Hello(node="gpu07", agent_version="t", interval_s=1.0))
        self.seq = 0

    def sample(self, gpus: dict[str, Any] | None = None, advance_s: float = 1.0) -> None:
        self.clock.advance(advance_s)
        self.seq += 1
        patch: dict[str, Any] = {"sampled_at": self.clock.wall()}
        if gpus:
            patch["gpus"] = gpus
        self.registry.delta("gpu07", self.connection, Delta(seq=self.seq, ts=0.0, patch=patch))


def gpu(util: float, *processes: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "NVIDIA H100 80GB HBM3",
        "util_gpu_percent": util,
        "mem_used_bytes": 4 * GIB,
        "mem_total_bytes": 80 * GIB,
        "processes": list(processes),
    }


def test_a_gpu_row_is_pushed_when_its_gpu_turns_idle_held_and_when_it_stops() -> None:
    async def main() -> None:
        lab = Lab()
        browser = Browser()
        viewer = Viewer(browser.send, ViewFilter(), 10.0)
        task = asyncio.create_task(viewer.run())
        lab.sample({"0": gpu(0.0, proc(10, "alice", slurm_job_id=81234)), "1": gpu(0.0)})
        lab.fanout.flush()  # the new card goes out
        lab.fanout.add_viewer(viewer)
        await settle()
        browser.received.clear()
        lab.clock.advance(61.0)  # no sample of GPU 0 changes: time alone makes it idle-held
        lab.tracker.tick()
        lab.fanout.flush()
        await settle()
        pushed = b"".join(browser.received).decode()
        assert '<div id="gpu-0-gpu07" class="g b">' in pushed, "the row, pushed again"
        assert "idle 1 min</mark> · alice (job 81234) 4.0G" in pushed
        assert 'id="gpu-1-gpu07"' not in pushed, "only the GPU that changed"
        summary = lab.scene.summary_view(ViewFilter())
        assert (summary.gpus_idle_held, summary.gpus_free, summary.gpus_total) == (1, 1, 2)

        browser.received.clear()
        lab.sample({"0": {"util_gpu_percent": 40.0}})
        lab.fanout.flush()
        await settle()
        pushed = b"".join(browser.received).decode()
        assert 'id="gpu-0-gpu07"' in pushed and "idle" not in pushed
        assert lab.scene.summary_view(ViewFilter()).gpus_idle_held == 0
        task.cancel()

    run(main())


def test_a_board_viewer_gets_the_people_board_and_its_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        lab = Lab()
        # the fan-out's once-a-second summaries and boards, on the lab's clock
        monkeypatch.setattr("hub.fanout.time", SimpleNamespace(monotonic=lab.clock.monotonic))
        browser = Browser()
        board_filter = ViewFilter(people_sort="idle", cards=False)
        viewer = Viewer(browser.send, board_filter, 10.0)
        task = asyncio.create_task(viewer.run())
        lab.sample({"0": gpu(0.0, proc(10, "alice")), "1": gpu(90.0, proc(11, "bob"), proc(12, "bob"))})
        lab.fanout.flush()
        lab.fanout.add_viewer(viewer)
        await settle()
        [first] = browser.received
        text = first.decode()
        assert 'class="n"' not in text, "no cards for a viewer that shows none"
        assert '<section id="people"' in text
        assert text.index(person_id("alice")) > 0 and text.index(person_id("bob")) > 0
        browser.received.clear()

        lab.clock.advance(61.0)
        lab.tracker.tick()
        lab.fanout.flush()
        await settle()
        pushed = b"".join(browser.received).decode()
        assert "◷ 1 idle-held" in pushed, "the summary"
        board = pushed[pushed.index('<section id="people"') :]
        assert board.index(person_id("alice")) < board.index(person_id("bob")), "most idle first"
        assert "idle 1 min" in board

        browser.received.clear()
        lab.clock.advance(SUMMARY_EVERY_S)
        lab.fanout.flush()
        await settle()
        assert b"people" not in b"".join(browser.received), "unchanged: not sent again"
        lab.sample({"1": {"processes": [proc(11, "bob")]}})  # one of bob's processes exits
        lab.clock.advance(SUMMARY_EVERY_S)
        lab.fanout.flush()
        await settle()
        pushed = b"".join(browser.received).decode()
        assert '<section id="people"' in pushed and "4.0G" in pushed and "8.0G" not in pushed
        task.cancel()

    run(main())
