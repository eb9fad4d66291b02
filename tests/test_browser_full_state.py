"""A full state larger than one message, in a real headless Chromium against a real hub and
real simulated agents (``bench.load_agents``, one process): the hub sends the grid in parts of
about ``JOIN_MAX_BYTES``, cut between cards, and the page swaps it in once, whole; it never
shows part of the grid (#20.3: 50 viewers resynchronized at once each held a frame of the whole
grid, 400-700 MiB at 3,000 nodes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.fanout import JOIN_MAX_BYTES, MORE_ATTRIBUTE
from tests.browser import CHROMIUM, COUNT_FRAMES, new_tab
from tests.procs import REPO, Hub, Proc, base_env, wait_until

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

NODES = 450  # about 3 KB a card: a full state of about 1.3 MB, two parts

# The card count of every grid that replaced the one before it (the server-rendered one is
# parsed as it streams in), beside every frame the page receives (COUNT_FRAMES).
RECORD_GRIDS = """
window.__grids = [];
let grid = null;
new MutationObserver(() => {
  const now = document.getElementById("nodes");
  if (now && now !== grid) {
    if (grid) window.__grids.push([now.children.length, now.getAttribute("data-more")]);
    grid = now;
  }
}).observe(document, { childList: true, subtree: true });
"""


def test_a_full_state_in_parts_is_shown_whole(
    browser: Any, hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    log_path = tmp_path / "agents.log"
    with open(log_path, "ab") as log:
        agents = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.load_agents",
                "--url",
                hub.ws_url + "/ws/agent",
                "--nodes",
                str(NODES),
            ],
            stdin=subprocess.PIPE,  # its commands: it runs until the test ends
            stdout=log,
            stderr=subprocess.STDOUT,
            env=base_env(None),
            cwd=REPO,
        )
    procs.append(Proc(agents, log_path))
    wait_until(lambda: hub.get("/healthz")["nodes"] >= NODES, 60, what=f"{NODES} simulated nodes")
    with new_tab(browser, init_script=COUNT_FRAMES + RECORD_GRIDS) as page:
        page.goto(hub.url + "/")
        page.wait_for_function(f"document.getElementById('nodes').hasAttribute('{MORE_ATTRIBUTE}')")
        frames = [(len(text), text[:80]) for _, text in page.evaluate("window.__frames")]
        grids = page.evaluate("window.__grids")
        more = int(frames[0][1].split(f'{MORE_ATTRIBUTE}="')[1].split('"')[0])
        assert more >= 1, frames[0]
        assert all(size < JOIN_MAX_BYTES + 20_000 for size, _ in frames), [size for size, _ in frames]
        assert all(head.startswith("<article") for _, head in frames[1 : 1 + more]), "whole cards"
        # the parts were joined: the grid that replaced the served one is whole, never a part
        assert grids and all(count == NODES for count, _ in grids), grids
        # and the page goes on live: the values change in place after it
        first = page.locator("article").first.inner_text()
        page.wait_for_function(
            "text => document.querySelector('article').innerText !== text", arg=first, timeout=10_000
        )
        assert page.locator("article").count() == NODES
