"""A viewer receives what it shows: the fan-out with a real registry and scene (``Lab`` of
tests/test_fanout.py) and viewers that name the cards their page shows. Also the bounds on what
a page may claim (:mod:`hub.view_show`)."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from hub.fanout import MAX_CARDS_PER_TICK, Viewer
from hub.scene import ViewFilter
from hub.view_show import MAX_SHOW_MESSAGE_BYTES, MAX_SHOWN_NODES, SHOW_BURST, ShowRate, parse_show
from node_agent.protocol import ProtocolError
from tests.procs import REPO
from tests.test_fanout import Browser, Lab, run, settle

PART_NODE = re.compile(rb'<div id="(?:host|gpu-[0-9]+)-([^"]+)"')
CARD_NODE = re.compile(rb'<article id="node-([^"]+)"')


def nodes_with_parts(payload: bytes) -> set[str]:
    """Nodes whose host part or GPU rows stand on their own in ``payload`` (not inside a card)."""
    outside_cards = re.sub(rb"<article.*?</article>", b"", payload, flags=re.S)
    return {m.decode() for m in PART_NODE.findall(outside_cards)}


def cards_in(payload: bytes) -> list[str]:
    return [m.decode() for m in CARD_NODE.findall(payload)]


async def joined(
    lab: Lab, view_filter: ViewFilter | None = None
) -> tuple[Viewer, Browser, asyncio.Task[None]]:
    browser = Browser()
    viewer = Viewer(browser.send, view_filter or ViewFilter(), 10.0)
    task = asyncio.create_task(viewer.run())
    lab.fanout.add_viewer(viewer)
    await settle()
    return viewer, browser, task


async def ticks(lab: Lab, count: int = 1) -> None:
    for _ in range(count):
        lab.tick()
        await settle()


def test_a_viewer_gets_only_the_parts_of_the_nodes_it_shows_plus_the_summary() -> None:
    async def main() -> None:
        lab = Lab(nodes=5)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset({"gpu1", "gpu3"}))
        lab.fanout._summary_due_at = 0.0  # the summary bar is due on this tick
        await ticks(lab)
        batch = browser.received[-1]
        assert nodes_with_parts(batch) == {"gpu1", "gpu3"}, batch[:300]
        assert b'id="summary"' in batch
        assert not cards_in(batch), "nodes that were shown all along need no whole card"
        await ticks(lab, 3)
        for payload in browser.received[-3:]:
            assert nodes_with_parts(payload) == {"gpu1", "gpu3"}
        task.cancel()

    run(main())


def test_viewers_showing_the_same_cards_share_the_same_bytes() -> None:
    async def main() -> None:
        lab = Lab(nodes=4)
        wall = [await joined(lab) for _ in range(3)]
        for viewer, _, _ in wall:
            lab.fanout.show(viewer, frozenset({"gpu0", "gpu2"}))  # equal sets, separate objects
        other, other_browser, other_task = await joined(lab)
        lab.fanout.show(other, frozenset({"gpu1"}))
        await ticks(lab, 2)
        first = wall[0][1].received
        for _, browser, _ in wall[1:]:
            assert all(a is b for a, b in zip(browser.received[1:], first[1:], strict=True)), (
                "shared, not copied"
            )
        assert nodes_with_parts(first[-1]) == {"gpu0", "gpu2"}
        assert nodes_with_parts(other_browser.received[-1]) == {"gpu1"}
        for _, _, task in [*wall, (other, other_browser, other_task)]:
            task.cancel()

    run(main())


def test_a_node_that_comes_into_view_gets_its_whole_current_card_on_the_next_tick() -> None:
    async def main() -> None:
        lab = Lab(nodes=4)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset({"gpu0"}))
        await ticks(lab, 2)
        lab.fanout.show(viewer, frozenset({"gpu0", "gpu2"}))  # gpu2 scrolled into view
        before = len(browser.received)
        lab.fanout.flush()  # the next tick, with no new sample: only the card is owed
        await settle()
        new = browser.received[before:]
        assert len(new) == 1 and cards_in(new[0]) == ["gpu2"], new
        node = lab.registry.nodes["gpu2"]
        assert lab.scene.card(node).encode() in new[0], "the card as it is now"
        await ticks(lab)
        assert nodes_with_parts(browser.received[-1]) == {"gpu0", "gpu2"}, "then its parts as they change"
        assert not cards_in(browser.received[-1]), "one card, not one a tick"
        task.cancel()

    run(main())


def test_cards_come_after_the_batches_queued_before_them() -> None:
    async def main() -> None:
        lab = Lab(nodes=3)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset({"gpu0"}))
        await ticks(lab)
        browser.open.clear()  # the browser is busy: batches queue up
        await ticks(lab, 3)
        lab.fanout.show(viewer, frozenset({"gpu0", "gpu1"}))
        await ticks(lab)
        browser.open.set()
        await settle()
        caught_up = browser.received[-1]  # the queued batches and the card, joined
        card = lab.scene.card(lab.registry.nodes["gpu1"]).encode()
        assert caught_up.endswith(card), "the card comes last: no older part of gpu1 after it"
        assert b'<div id="host-gpu1"' in caught_up[: -len(card)], (
            "older batches carried gpu1's parts before it"
        )
        task.cancel()

    run(main())


def test_whole_cards_and_removals_reach_every_viewer_whatever_it_shows() -> None:
    async def main() -> None:
        lab = Lab(nodes=3)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset({"gpu0"}))
        await ticks(lab)
        sim = lab.sims[2]
        lab.registry.disconnect(sim.name, lab.connections[sim.name])  # gpu2 goes: its card changes
        await ticks(lab)
        assert "gpu2" in cards_in(browser.received[-1]), "the page lays out (and sorts) every card"
        lab.registry.remove(sim.name)
        lab.fanout.flush()
        await settle()
        assert b'<template id="node-gpu2" data-remove>' in browser.received[-1]
        task.cancel()

    run(main())


def test_a_shown_node_outside_the_filter_is_never_sent() -> None:
    async def main() -> None:
        lab = Lab(nodes=3)
        only_gpu0 = ViewFilter(names=frozenset({"gpu0"}))
        viewer, browser, task = await joined(lab, only_gpu0)
        lab.fanout.show(viewer, frozenset({"gpu0"}))
        await ticks(lab)
        lab.fanout.show(viewer, frozenset({"gpu0", "gpu1", "nosuchnode"}))  # a page may claim anything
        await ticks(lab, 2)
        for payload in browser.received[1:]:
            assert b"gpu1" not in payload and b"nosuchnode" not in payload
        task.cancel()

    run(main())


def test_back_to_every_node_gets_the_full_state() -> None:
    async def main() -> None:
        lab = Lab(nodes=3)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset({"gpu0"}))
        await ticks(lab)
        lab.fanout.show(viewer, None)  # e.g. the page switched to sorting by free GPUs
        await settle()
        assert browser.received[-1].startswith(b'<main id="nodes"'), "cards it did not show may be behind"
        await ticks(lab)
        assert nodes_with_parts(browser.received[-1]) == {"gpu0", "gpu1", "gpu2"}
        task.cancel()

    run(main())


def test_cards_owed_past_the_limit_go_out_on_the_next_ticks() -> None:
    async def main() -> None:
        count = MAX_CARDS_PER_TICK + 6
        lab = Lab(nodes=count)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset())
        lab.fanout.show(viewer, frozenset(sim.name for sim in lab.sims))  # the whole lab scrolled in
        lab.fanout.flush()
        await settle()
        first = cards_in(browser.received[-1])
        lab.fanout.flush()
        await settle()
        second = cards_in(browser.received[-1])
        assert (len(first), len(second)) == (MAX_CARDS_PER_TICK, 6)
        assert set(first) | set(second) == {sim.name for sim in lab.sims}
        task.cancel()

    run(main())


# --------------------------------------------------------------------------- what a page may claim
def receive(text: str | None = None, data: bytes | None = None) -> dict[str, object]:
    return {"type": "websocket.receive", "text": text, "bytes": data}


def test_a_show_message_names_node_ids_or_null() -> None:
    assert parse_show(receive('{"show": ["gpu01", "a.b_c-1"]}')) == frozenset({"gpu01", "a.b_c-1"})
    assert parse_show(receive('{"show": []}')) == frozenset()
    assert parse_show(receive('{"show": null}')) is None
    longest = ["n" + f"{i:05d}" + "x" * 57 for i in range(MAX_SHOWN_NODES)]  # 63 characters each
    text = orjson.dumps({"show": longest}).decode()
    assert len(text) <= MAX_SHOW_MESSAGE_BYTES, "the largest valid claim fits the size bound"
    assert parse_show(receive(text)) == frozenset(longest)


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        (receive(data=b'{"show": []}'), 1003, "binary"),
        (receive("not json"), 1007, "not JSON"),
        (receive('["gpu01"]'), 1007, "other than"),
        (receive('{"show": [], "more": 1}'), 1007, "other than"),
        (receive('{"show": "gpu01"}'), 1007, "list"),
        (receive('{"show": ["<script>"]}'), 1007, "not a node id"),
        (receive('{"show": [""]}'), 1007, "not a node id"),
        (receive('{"show": [7]}'), 1007, "not a node id"),
        (receive(orjson.dumps({"show": ["x" * 64]}).decode()), 1007, "not a node id"),
        (
            receive(orjson.dumps({"show": [f"n{i}" for i in range(MAX_SHOWN_NODES + 1)]}).decode()),
            1008,
            "over",
        ),
        (receive('{"show": [' + " " * MAX_SHOW_MESSAGE_BYTES + "]}"), 1009, "over"),
    ],
)
def test_anything_else_is_refused_with_a_close_code_that_says_why(
    message: dict[str, object], code: int, words: str
) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_show(message)
    assert refused.value.close_code == code and words in refused.value.reason, refused.value.reason


def test_a_page_may_send_a_burst_then_ten_a_second() -> None:
    now = [0.0]
    rate = ShowRate(clock=lambda: now[0])
    assert all(rate.take() for _ in range(SHOW_BURST))
    assert not rate.take(), "past the burst at once"
    now[0] += 0.1
    assert rate.take() and not rate.take(), "one more every 100 ms"


def test_the_page_and_the_hub_agree_on_how_many_cards_a_page_may_name() -> None:
    script = (REPO / "frontend" / "static" / "app.js").read_text()
    found = re.search(r"const SHOW_MAX = ([0-9]+);", script)
    assert found is not None and int(found[1]) == MAX_SHOWN_NODES, "a page with more in view asks for all"
