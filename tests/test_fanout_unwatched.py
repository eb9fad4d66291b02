"""The hub renders what some viewer shows: a change of a node that no viewer shows waits
(``Scene.defer``), its history and the summary bar's sums kept, and renders when its card is
asked for or a viewer comes to show it. A real registry, scene and fan-out (``Lab`` of
tests/test_fanout.py) fed simulated agents; what waited is compared with a scene that renders
the same nodes afresh."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from frontend.render import Renderer
from hub.domain.gpus import GpuFreeRule
from hub.scene import Scene, ViewFilter
from node_agent.protocol import Delta, Hello, decode
from tests.test_fanout import Lab, run, settle
from tests.test_fanout_shown import cards_in, joined, nodes_with_parts


def count_renders(lab: Lab) -> Counter[str]:
    """Counts the host parts and GPU rows the scene renders from now on."""
    renders: Counter[str] = Counter()
    renderer = lab.scene._renderer

    def counted(kind: str, render: Callable[[Any], str]) -> Callable[[Any], str]:
        def render_counted(view: Any) -> str:
            renders[f"{kind}:{view.node_id}"] += 1
            return render(view)

        return render_counted

    renderer.host = counted("host", renderer.host)
    renderer.gpu = counted("gpu", renderer.gpu)
    return renders


def afresh(lab: Lab) -> Scene:
    """A scene that renders every node from the registry as it is now (the same history)."""
    return Scene(lab.registry, Renderer(), GpuFreeRule(), lab.clock.wall, history=lab.scene.history)


def test_with_no_viewer_nothing_renders_but_the_bar_cards_and_history_stay_current() -> None:
    lab = Lab(nodes=6)
    renders = count_renders(lab)
    for _ in range(45):  # sparkline buckets close every 20 s: two of them
        lab.tick()
    assert not renders, renders
    fresh = afresh(lab)
    for node in lab.registry.nodes.values():
        assert lab.scene.card(node) == fresh.card(node), node.node_id
    assert lab.scene.summary_view(ViewFilter()) == fresh.summary_view(ViewFilter())
    assert renders, "the cards asked for rendered what waited"
    assert not lab.scene.unrendered()


def test_the_bar_counts_nodes_that_wait_as_they_are() -> None:
    lab = Lab(nodes=8)
    for _ in range(12):
        lab.tick()
    fresh = afresh(lab)
    fresh.cards(ViewFilter())  # renders every card, and so every GPU's tally
    assert lab.scene.unrendered(), "the nodes' changes waited"
    assert lab.scene.summary_view(ViewFilter()) == fresh.summary_view(ViewFilter())


def test_only_the_nodes_a_viewer_shows_render_and_one_coming_into_view_is_current() -> None:
    async def main() -> None:
        lab = Lab(nodes=5)
        viewer, browser, task = await joined(lab)
        lab.fanout.show(viewer, frozenset({"gpu1"}))
        renders = count_renders(lab)
        for _ in range(25):
            lab.tick()
            await settle()
        assert {key.split(":")[1] for key in renders} == {"gpu1"}, renders
        assert renders["host:gpu1"] == 25
        lab.fanout.show(viewer, frozenset({"gpu1", "gpu3"}))  # gpu3 scrolled into view
        before = len(browser.received)
        lab.fanout.flush()
        await settle()
        (payload,) = browser.received[before:]
        assert cards_in(payload) == ["gpu3"]
        node = lab.registry.nodes["gpu3"]
        assert afresh(lab).card(node).encode() in payload, "the card as it is now, not as it was"
        lab.tick()
        await settle()
        assert nodes_with_parts(browser.received[-1]) == {"gpu1", "gpu3"}
        task.cancel()

    run(main())


def test_a_new_node_a_filtered_viewer_shows_gets_the_changes_it_had_before_the_tick() -> None:
    async def main() -> None:
        lab = Lab(nodes=2)
        _, browser, task = await joined(lab, ViewFilter(names=frozenset({"late"})))
        hello = decode(lab.sims[0].hello_frame().replace('"gpu0"', '"late"'))
        assert isinstance(hello, Hello)
        connection = lab.registry.hello(hello)  # its card renders at once
        patch = {"sampled_at": lab.clock.wall(), "host": {"cpu_percent": 87.5}}
        lab.registry.delta("late", connection, Delta(1, lab.clock.wall(), patch))
        assert "late" in lab.scene.unrendered(), "no viewer showed it when the change came"
        lab.fanout.flush()  # the tick finds the viewer shows it
        await settle()
        assert nodes_with_parts(browser.received[-1]) == {"late"}
        assert b"87.5" in browser.received[-1] or b"88" in browser.received[-1], browser.received[-1][:400]
        assert not lab.scene.unrendered()
        task.cancel()

    run(main())
