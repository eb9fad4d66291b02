"""A wall receives what it shows, in a real headless Chromium against a real hub and real agent
processes (fake NVML): the page tells the hub which cards are in or near its viewport, a card
far below gets no parts while it is off screen, and scrolling to it brings its whole current
card at once. The page's own WebSocket frames are counted in the page (a wrapper installed
before app.js runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fakes
from tests.browser import CHROMIUM, COUNT_FRAMES, chromium, new_tab
from tests.procs import Hub, killed_at_exit, start_agent, start_hub

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

NODES = [f"wall{i}" for i in range(6)]  # sorted by name: wall0 on top, wall5 at the bottom
FAR = NODES[-1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Hub]:
    """A hub and six agents sampling every 0.5 s, each with one fake GPU."""
    with killed_at_exit() as started:
        hub = start_hub(started, tmp_path)
        for name in NODES:
            scenario = fakes.write_scenario(tmp_path / f"{name}.json", fakes.scenario([fakes.gpu(0)]))
            started.append(start_agent(hub, name, interval_s=0.5, env=fakes.fake_env(scenario)))
        for name in NODES:
            hub.wait_status(name, "live", timeout_s=30)
        yield hub


@pytest.fixture
def page(lab: Hub) -> Iterator[Any]:
    # one column of cards, about two of them on screen: the last ones are far below
    with chromium() as browser, new_tab(browser, COUNT_FRAMES, viewport={"width": 420, "height": 360}) as tab:
        yield tab


def last_show(tab: Any) -> tuple[float, list[str] | None]:
    sent = tab.evaluate("window.__sent")
    assert sent, "the page told the hub what it shows"
    at, text = sent[-1]
    return at, json.loads(text)["show"]


def frames_after(tab: Any, at_ms: float) -> list[str]:
    return [text for t, text in tab.evaluate("window.__frames") if t > at_ms]


def test_an_off_screen_card_gets_no_parts_and_scrolling_to_it_shows_it_current(lab: Hub, page: Any) -> None:
    page.goto(lab.url + "/")
    page.wait_for_function(
        "n => document.documentElement.dataset.conn === 'live' && document.querySelectorAll('article.n').length >= n",
        arg=len(NODES),
    )
    below = page.evaluate(f"document.getElementById('node-{FAR}').getBoundingClientRect().top / innerHeight")
    assert below > 1.25, f"{FAR} starts beyond the viewport and its margin ({below:.2f} screens down)"
    page.wait_for_function("window.__sent.length > 0")
    told_at, shown = last_show(page)
    assert shown is not None and NODES[0] in shown and FAR not in shown, shown

    # Off screen: a few samples later the top card got new parts, the far one none at all.
    settled_at = told_at + 500  # the hub takes the set on its next tick (100 ms), with room to spare
    page.wait_for_function(
        "([since, part]) => window.__frames.filter(([t, text]) => t > since && text.includes(part)).length >= 3",
        arg=[settled_at, f'<div id="host-{NODES[0]}"'],
    )
    later = frames_after(page, settled_at)
    assert not [f for f in later if f'id="host-{FAR}"' in f or f'id="gpu-0-{FAR}"' in f], (
        "no parts of a card off screen"
    )
    assert not [f for f in later if f'id="node-{FAR}"' in f], "nor its card while nothing about it changed"
    stale_host = page.inner_html(f"#host-{FAR}")

    # Scrolled into view: the hub is told, and sends the whole current card on its next tick.
    scrolled_at = page.evaluate("performance.now()")
    page.locator(f"#node-{FAR}").scroll_into_view_if_needed()
    page.wait_for_function(
        "([since, card]) => window.__frames.some(([t, text]) => t > since && text.includes(card))",
        arg=[scrolled_at, f'<article id="node-{FAR}"'],
    )
    _, shown = last_show(page)
    assert shown is not None and FAR in shown, shown
    card_frame = next(f for f in frames_after(page, scrolled_at) if f'<article id="node-{FAR}"' in f)
    card_host = card_frame[card_frame.index(f'<div id="host-{FAR}"') :]
    shown_host = page.evaluate(f"document.getElementById('host-{FAR}').outerHTML")
    assert card_host.startswith(shown_host), "the page shows the card it was sent, at once"
    assert page.inner_html(f"#host-{FAR}") != stale_host, "with values newer than the off-screen ones"
    # and from now on its parts as they change
    page.wait_for_function(
        "([since, part]) => window.__frames.some(([t, text]) => t > since && text.includes(part))",
        arg=[scrolled_at, f'<div id="host-{FAR}"'],
    )
    assert page.evaluate("document.documentElement.dataset.conn") == "live"
