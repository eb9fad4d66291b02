"""The fan-out with a real registry and scene and in-memory viewers: batches shared by every
viewer, a viewer that falls far behind resynchronized from one full state per filter, changes
rendered as they arrive (the newest part per element, a whole card over earlier parts), and a
change that fails to render costing only itself."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.simnode import SimNode
from frontend.render import Renderer
from hub import fanout
from hub.clock import ManualClock
from hub.fanout import (
    MAX_SHARED_BATCHES,
    SHED_AFTER_LAG_S,
    SHED_RENDER_EVERY_S,
    SHED_UNTIL_LAG_S,
    Fanout,
    Viewer,
)
from hub.registry import NodeRegistry
from hub.scene import Scene, ViewFilter
from hub.settings import GpuFreeRule
from node_agent.protocol import Delta, Hello, decode


class Lab:
    def __init__(self, nodes: int = 3) -> None:
        self.clock = ManualClock()
        self.registry = NodeRegistry(self.clock)
        self.scene = Scene(self.registry, Renderer(), GpuFreeRule(), self.clock.wall)
        self.fanout = Fanout(self.registry, self.scene, max_rate_hz=10, monotonic=self.clock.monotonic)
        self.sims = [SimNode(f"gpu{i}", seed=i) for i in range(nodes)]
        self.connections: dict[str, int] = {}
        for sim in self.sims:
            hello = decode(sim.hello_frame())
            assert isinstance(hello, Hello)
            self.connections[sim.name] = self.registry.hello(hello)
        self.tick()

    def tick(self) -> None:
        """One sample from every node, then one fan-out tick."""
        self.clock.advance(1.0)
        for sim in self.sims:
            delta = decode(sim.next_delta(self.clock.wall()))
            assert isinstance(delta, Delta)
            self.registry.delta(sim.name, self.connections[sim.name], delta)
        self.fanout.flush()


class Browser:
    """A viewer's send function that can be held (a browser that stops reading)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.open = asyncio.Event()
        self.open.set()

    async def send(self, payload: bytes) -> None:
        await self.open.wait()
        self.received.append(payload)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def two_viewers(lab: Lab) -> tuple[Browser, Browser, Viewer, list[asyncio.Task[None]]]:
    """Two browsers watching everything, each through its viewer, both caught up; returns the
    browsers, the second one's viewer and the viewers' tasks."""
    browsers = Browser(), Browser()
    viewers = [Viewer(browser.send, ViewFilter(), 60.0) for browser in browsers]
    tasks = [asyncio.create_task(viewer.run()) for viewer in viewers]
    for viewer in viewers:
        lab.fanout.add_viewer(viewer)
    await settle()
    return browsers[0], browsers[1], viewers[1], tasks


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_every_viewer_gets_the_same_shared_bytes() -> None:
    async def main() -> None:
        lab = Lab()
        browsers = [Browser() for _ in range(3)]
        viewers = [Viewer(b.send, ViewFilter(), 10.0) for b in browsers]
        tasks = [asyncio.create_task(v.run()) for v in viewers]
        for viewer in viewers:
            lab.fanout.add_viewer(viewer)
        await settle()
        for _ in range(3):
            lab.tick()
            await settle()
        first = browsers[0].received
        assert first[0].startswith(b'<main id="nodes"'), "a joining viewer gets the full state first"
        assert len(first) == 4 and b"host-gpu1" in first[1]
        for other in browsers[1:]:
            assert other.received == first
            assert all(a is b for a, b in zip(other.received[1:], first[1:], strict=True)), (
                "shared, not copied"
            )
        for task in tasks:
            task.cancel()

    run(main())


def test_a_viewer_catching_up_gets_its_batches_joined_up_to_a_size(monkeypatch: Any) -> None:
    """Each message holds the queued batches in order up to JOIN_MAX_BYTES (one batch more at
    most), the rest follow in the next ones: every byte arrives, in order, and no viewer joins
    everything it missed into one copy of its own (#20.3)."""

    async def main() -> None:
        lab = Lab()
        steady, held, _, tasks = await two_viewers(lab)
        held.open.clear()
        lab.tick()  # the send of this batch waits on the held browser
        await settle()
        for _ in range(6):  # these queue up
            lab.tick()
            await settle()
        batches = steady.received[2:]
        assert len(batches) == 6 and all(batches)
        cap = 2 * max(len(b) for b in batches)
        monkeypatch.setattr(fanout, "JOIN_MAX_BYTES", cap)
        held.open.set()
        for _ in range(5):
            await settle()
        messages = held.received[2:]
        assert b"".join(messages) == b"".join(batches), "every batch, in order"
        assert 1 < len(messages) < len(batches), [len(m) for m in messages]
        assert all(len(m) < cap + max(len(b) for b in batches) for m in messages)
        for task in tasks:
            task.cancel()

    run(main())


def test_a_viewer_far_behind_is_resynchronized_from_one_full_state() -> None:
    async def main() -> None:
        lab = Lab()
        steady, stuck, slow, tasks = await two_viewers(lab)
        stuck.open.clear()  # the stuck browser stops reading after its full state...
        lab.tick()
        await settle()
        for _ in range(MAX_SHARED_BATCHES + 5):
            lab.tick()
            await settle()
        assert slow.resyncs == 1 and not slow.needs_full_state, "resynchronized on the tick it fell behind"
        assert len(steady.received) == 1 + MAX_SHARED_BATCHES + 6, "the steady one missed nothing"
        stuck.open.set()  # ...and reads again
        await settle()
        assert len(stuck.received) == 3, (len(stuck.received), [p[:40] for p in stuck.received])
        resync = stuck.received[2]
        assert resync.startswith(b'<main id="nodes"'), "the full state comes first"
        # the full state was built on the tick the viewer fell behind (the 22nd after the first):
        # it shows what that tick pushed to the steady viewer
        full = resync[: resync.index(b"</main>")]
        at_resync = steady.received[MAX_SHARED_BATCHES + 2]
        for sim in lab.sims:
            start = at_resync.index(f'<div id="host-{sim.name}"'.encode())
            host_html = at_resync[start : at_resync.index(b"</div>\n</div>", start)]
            assert host_html in full, sim.name
            assert full.count(f'id="host-{sim.name}"'.encode()) == 1
        for task in tasks:
            task.cancel()

    run(main())


def test_full_states_are_built_once_per_filter_and_tick() -> None:
    lab = Lab()
    everything = lab.fanout.full_state(ViewFilter())
    assert lab.fanout.full_state(ViewFilter()) is everything, "viewers joining together share it"
    one = b"".join(lab.fanout.full_state(ViewFilter(names=frozenset({"gpu0"}))))
    assert b"node-gpu0" in one and b"node-gpu1" not in one
    lab.tick()
    assert lab.fanout.full_state(ViewFilter()) is not everything, "a tick that changed nodes renews it"


def test_a_viewer_joining_a_quiet_hub_gets_the_hub_clock_of_now() -> None:
    lab = Lab(nodes=1)
    lab.fanout.full_state(ViewFilter())
    lab.clock.advance(3600.0)  # an hour with nothing to send (every node gone quiet)
    lab.fanout.flush()
    full = b"".join(lab.fanout.full_state(ViewFilter())).decode()
    assert f'data-now="{lab.clock.wall():.3f}"' in full or f'data-now="{lab.clock.wall()}' in full, full[
        -400:
    ]


def test_summaries_of_filters_no_viewer_uses_are_forgotten() -> None:
    async def main() -> None:
        lab = Lab(nodes=2)
        wall = Viewer(Browser().send, ViewFilter(), send_timeout_s=5)
        lab.fanout.add_viewer(wall)
        for name in ("gpu0", "gpu1"):
            viewer = Viewer(Browser().send, ViewFilter(names=frozenset({name})), send_timeout_s=5)
            twin = Viewer(Browser().send, ViewFilter(names=frozenset({name})), send_timeout_s=5)
            lab.fanout.add_viewer(viewer)
            lab.fanout.add_viewer(twin)
            lab.fanout._summary_due_at = 0.0  # the summary bar is due now
            lab.fanout.flush()
            lab.fanout.remove_viewer(viewer)
            assert ViewFilter(names=frozenset({name})) in lab.fanout._last_summaries, "its twin still uses it"
            lab.fanout.remove_viewer(twin)
        assert set(lab.fanout._last_summaries) == {ViewFilter()}, (
            "one entry per URL ever used grows without end"
        )

    run(main())


def test_two_samples_in_one_tick_send_the_newest_part_once_and_a_card_supersedes_parts() -> None:
    async def main() -> None:
        lab = Lab(nodes=1)
        browser = Browser()
        viewer = Viewer(browser.send, ViewFilter(), 10.0)
        task = asyncio.create_task(viewer.run())
        lab.fanout.add_viewer(viewer)
        await settle()
        sim = lab.sims[0]
        for _ in range(2):  # two samples before the tick: rendered as they come
            lab.clock.advance(0.04)
            delta = decode(sim.next_delta(lab.clock.wall()))
            assert isinstance(delta, Delta)
            lab.registry.delta(sim.name, lab.connections[sim.name], delta)
        newest_host = lab.scene.card(lab.registry.nodes[sim.name]).split('id="host-gpu0"')[1][:200]
        lab.fanout.flush()
        await settle()
        batch = browser.received[-1]
        assert batch.count(b'id="host-gpu0"') == 1, "one host part per tick, the newest"
        assert newest_host.encode() in batch
        # a whole card (the agent disconnects) replaces the tick's parts rendered before it
        delta = decode(sim.next_delta(lab.clock.wall() + 0.5))
        assert isinstance(delta, Delta)
        lab.registry.delta(sim.name, lab.connections[sim.name], delta)
        lab.registry.disconnect(sim.name, lab.connections[sim.name])
        lab.fanout.flush()
        await settle()
        batch = browser.received[-1]
        assert batch.startswith(b'<article id="node-gpu0"') and b'id="host-gpu0"' in batch
        assert batch.count(b'id="host-gpu0"') == 1, "the part inside the card, not before it"
        task.cancel()

    run(main())


def test_a_change_that_fails_to_render_costs_only_itself() -> None:
    async def main() -> None:
        lab = Lab(nodes=2)
        real = lab.scene.render_change

        def render_change(change: Any) -> dict[str, str]:
            if change.node_id == "gpu0":
                raise RuntimeError("a bug in a view model")
            return real(change)

        lab.scene.render_change = render_change  # type: ignore[method-assign]
        browser = Browser()
        viewer = Viewer(browser.send, ViewFilter(), 10.0)
        task = asyncio.create_task(viewer.run())
        lab.fanout.add_viewer(viewer)
        await settle()
        lab.tick()  # note() must not raise into the agent's connection handler
        await settle()
        batch = browser.received[-1]
        assert b"host-gpu1" in batch, "the other node's parts still go out on the tick"
        assert b"node-gpu0-" not in batch
        task.cancel()

    run(main())


def test_a_full_state_comes_in_parts_cut_between_cards(monkeypatch: Any) -> None:
    """No message much larger than JOIN_MAX_BYTES: a full state is cut between cards, the first
    part saying how many follow; joined, the parts are the grid in one piece (#20.3: 50 viewers
    resynchronized at once each held a frame of the whole grid)."""
    lab = Lab(nodes=12)
    whole = lab.fanout.full_state(ViewFilter())
    assert len(whole) == 1 and f"{fanout.MORE_ATTRIBUTE}=".encode() not in whole[0], (
        "a small lab: one message"
    )
    card_chars = max(len(lab.scene.card(node)) for node in lab.registry.nodes.values())
    monkeypatch.setattr(fanout, "JOIN_MAX_BYTES", 3 * card_chars)
    lab.tick()  # a new tick: the full state is built again
    parts = lab.fanout.full_state(ViewFilter())
    assert len(parts) == 4, [len(p) for p in parts]  # 12 cards, 3 a message (the last may take 4)
    assert parts[0].startswith(
        f'<main id="nodes" class="grid" {fanout.MORE_ATTRIBUTE}="{len(parts) - 1}">'.encode()
    )
    assert all(len(part) < 5 * card_chars for part in parts)
    for part in parts[1:-1]:  # whole cards only
        assert part.startswith(b"<article") and part.endswith(b"</article>"), part[-40:]
    joined = b"".join(parts).replace(f' {fanout.MORE_ATTRIBUTE}="{len(parts) - 1}"'.encode(), b"")
    assert joined.count(b"<article") == 12 and joined.count(b"</main>") == 1
    assert joined.index(b"</main>") > joined.rindex(b"</article>"), "the summary after the grid"


def test_a_viewer_gets_the_parts_of_a_full_state_before_any_batch(monkeypatch: Any) -> None:
    async def main() -> None:
        lab = Lab(nodes=12)
        card_chars = max(len(lab.scene.card(node)) for node in lab.registry.nodes.values())
        monkeypatch.setattr(fanout, "JOIN_MAX_BYTES", 3 * card_chars)
        lab.tick()
        browser = Browser()
        viewer = Viewer(browser.send, ViewFilter(), send_timeout_s=5)
        lab.fanout.add_viewer(viewer)
        parts = lab.fanout.full_state(ViewFilter())
        lab.tick()  # a batch queued while the parts are still to send
        task = asyncio.create_task(viewer.run())
        for _ in range(len(parts) + 3):
            await settle()
        assert browser.received[: len(parts) - 1] == list(parts[:-1]), "each part a message, in order"
        last = browser.received[len(parts) - 1]
        assert last.startswith(parts[-1]), "the batch comes after the last part"
        assert len(browser.received) == len(parts) or len(last) > len(parts[-1])
        task.cancel()

    run(main())


def _host_part(card: str, node_id: str) -> str:
    start = card.index(f'<div id="host-{node_id}"')
    return card[start : card.index("</div>\n</div>", start)]


def test_a_hub_that_sheds_renders_each_node_at_most_every_interval_and_loses_no_change() -> None:
    lab = Lab(nodes=3)
    lab.fanout.add_viewer(Viewer(Browser().send, ViewFilter(), 60.0))  # every node is shown
    renders: list[str] = []
    render_change = lab.scene.render_change
    lab.scene.render_change = lambda change: renders.append(change.node_id) or render_change(change)  # type: ignore[method-assign]
    lab.fanout.set_shedding(True)
    ticks = 10
    for _ in range(ticks):  # a sample from every node a second, one tick each
        lab.tick()
    per_node = ticks / SHED_RENDER_EVERY_S + 1
    assert all(renders.count(sim.name) <= per_node for sim in lab.sims), renders
    assert all(renders.count(sim.name) >= ticks / SHED_RENDER_EVERY_S - 1 for sim in lab.sims), renders
    lab.fanout.set_shedding(False)  # punctual again: what was deferred renders on the next tick
    lab.fanout.flush()
    assert not lab.scene.unrendered(), "the tick rendered every change that waited (card() below would too)"
    fresh = Scene(lab.registry, Renderer(), GpuFreeRule(), lab.clock.wall)
    for sim in lab.sims:
        node = lab.registry.nodes[sim.name]
        assert _host_part(lab.scene.card(node), sim.name) == _host_part(fresh.card(node), sim.name), sim.name


def test_a_hub_that_sheds_still_renders_whole_cards_at_once() -> None:
    lab = Lab(nodes=2)
    lab.fanout.add_viewer(Viewer(Browser().send, ViewFilter(), 60.0))  # every node is shown
    lab.fanout.set_shedding(True)
    lab.tick()
    lab.tick()  # gpu0's parts of this sample are deferred
    assert "gpu0" in lab.scene.unrendered()
    lab.registry.disconnect("gpu0", lab.connections["gpu0"])  # offline: a whole card
    assert "node-gpu0" in lab.fanout._rendered["gpu0"], "the card is rendered now"
    assert "gpu0" not in lab.scene.unrendered(), "it supersedes the deferred parts"


def test_ticks_that_come_late_turn_shedding_on_and_punctual_ones_off(caplog: Any) -> None:
    lab = Lab(nodes=1)
    for _ in range(5):
        lab.fanout.observe_lag(SHED_AFTER_LAG_S * 0.8)
    assert not lab.fanout.shedding, "a little late: every change still renders as it comes"
    for _ in range(30):
        lab.fanout.observe_lag(SHED_AFTER_LAG_S * 3)
    assert lab.fanout.shedding
    assert "cannot keep up" in caplog.text
    for _ in range(5):
        lab.fanout.observe_lag(0.0)
    assert lab.fanout.shedding, "not until the ticks are punctual on average"
    for _ in range(60):
        lab.fanout.observe_lag(0.0)
    assert lab.fanout.shedding is False and lab.fanout.tick_lag_s < SHED_UNTIL_LAG_S


def test_a_hub_that_sheds_says_so_in_the_summary_bar() -> None:
    lab = Lab(nodes=1)
    viewer = Viewer(Browser().send, ViewFilter(), send_timeout_s=5)
    lab.fanout.add_viewer(viewer)
    summaries = []
    joined = []
    for shedding in (False, True, False):
        lab.fanout.set_shedding(shedding)
        lab.fanout._summary_due_at = 0.0  # the summary bar is due now
        lab.fanout.flush()
        summaries.append(lab.scene.summary(lab.fanout._last_summaries[ViewFilter()]))
        joined.append(b"".join(lab.fanout.full_state(ViewFilter())).decode())  # a viewer joining now
    assert "cards every" not in summaries[0] and "cards every" not in summaries[2]
    assert f"⏱ cards every {SHED_RENDER_EVERY_S:.0f} s" in summaries[1], summaries[1]
    assert "cards every" not in joined[0] and "cards every" not in joined[2]
    assert f"⏱ cards every {SHED_RENDER_EVERY_S:.0f} s" in joined[1], "a viewer joining meanwhile is told too"
