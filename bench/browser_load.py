"""The browser's side: bytes per second and main-thread busy time of a real Chromium showing
the wall for N nodes x 8 GPUs at 1 s updates.

A real ``sers-hub`` takes ``--nodes`` simulated agents (:mod:`bench.load_agents`, the real
protocol over WebSocket); headless Chromium opens the wall at 1920x1080 and stays on it for
``--seconds``. Measured over that window through the Chrome DevTools Protocol:

- main-thread busy %: the growth of ``TaskDuration`` (``Performance.getMetrics``: wall time the
  renderer's main thread spent running tasks: script, style, layout, paint) over wall time; the
  same for ``ScriptDuration``, ``RecalcStyleDuration`` and ``LayoutDuration``. On a loaded
  machine wall time stretches, so ``ThreadTime`` (the main thread's CPU time) is given too, and
  ``ProcessTime`` (the whole renderer process: main, compositor and raster threads);
- bytes per second the page receives: counted in the page by a listener on its WebSocket
  (installed before app.js runs: one addition per message, where counting through Playwright
  turns on DevTools network instrumentation, which added about one point of main-thread busy
  time). The page tells the hub which cards it shows (:mod:`hub.view_show`) and gets only
  those: target ≤ 60 KB/s for a screenful of a 2,000-node lab. A plain WebSocket viewer on the
  same URL next to it shows what a viewer that shows every node receives;
- DOM elements at the start and the end, after a forced garbage collection (flat = no leak),
  and the JS heap in use.

    python -m bench.browser_load [--nodes 100] [--seconds 60] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.typing import Origin

from bench.figures import Figures
from bench.workers import Worker, free_port, get_json, wait_for
from tests.browser import CHROMIUM, CHROMIUM_ARGS

DOM_COUNT = "document.getElementsByTagName('*').length"
COUNT_BYTES = """
window.__received = { bytes: 0, frames: 0, shown: null };
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      window.__received.bytes += event.data.byteLength ?? event.data.length;
      window.__received.frames += 1;
    });
  }
  send(data) {
    window.__received.shown = JSON.parse(data).show;
    super.send(data);
  }
};
"""


async def metrics(cdp: Any) -> dict[str, float]:
    answer = await cdp.send("Performance.getMetrics")
    return {m["name"]: float(m["value"]) for m in answer["metrics"]}


async def count_frames(url: str, origin: str, received: dict[str, Any]) -> None:
    """A plain viewer beside the page: counts the payload bytes of every frame while counting."""
    async with connect(url, origin=Origin(origin), compression=None, max_size=None) as ws:
        async for payload in ws:
            if received["counting"]:
                received["bytes"] += len(payload)
                received["frames"] += 1


async def run(args: argparse.Namespace, fig: Figures) -> None:
    from playwright.async_api import async_playwright

    log_dir = Path(tempfile.mkdtemp(prefix="sers-browser-bench-"))
    fig.note(f"logs: {log_dir}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hub = await Worker.start(
        "hub",
        [sys.executable, "-m", "hub", "--port", str(port), "--log-level", "WARNING", "--state-db", "none"],
        log_dir,
        jsonl=False,
    )
    agents: Worker | None = None
    try:
        await wait_for(lambda: get_json(base + "/healthz"), 20, "the hub")
        agents = await Worker.start(
            "agents",
            [
                sys.executable,
                "-m",
                "bench.load_agents",
                "--url",
                f"ws://127.0.0.1:{port}/ws/agent",
                "--nodes",
                str(args.nodes),
                "--rate",
                str(args.rate),
            ],
            log_dir,
        )
        connected = await agents.event("connected", 60)
        fig.note(f"{connected['n']} simulated agents connected, {connected['busy_gpus']} busy GPUs")
        await wait_for(lambda: get_json(base + "/healthz")["nodes"] >= args.nodes, 30, "every node")

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1920, "height": 1080})
            await page.add_init_script(COUNT_BYTES)
            received = {"bytes": 0, "frames": 0, "counting": False}
            counter = asyncio.create_task(count_frames(f"ws://127.0.0.1:{port}/ws/view", base, received))
            await page.goto(base + "/")
            await page.wait_for_function(
                f"document.querySelectorAll('article.n').length >= {args.nodes}", timeout=60_000
            )
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            await page.wait_for_timeout(args.warmup * 1000)
            await cdp.send("HeapProfiler.collectGarbage")
            dom_start = await page.evaluate(DOM_COUNT)
            before = await metrics(cdp)
            in_page_before = await page.evaluate("window.__received")
            started = time.monotonic()
            received["counting"] = True
            await asyncio.sleep(args.seconds)
            received["counting"] = False
            wall_s = time.monotonic() - started
            after = await metrics(cdp)
            in_page = await page.evaluate("window.__received")
            await cdp.send("HeapProfiler.collectGarbage")
            dom_end = await page.evaluate(DOM_COUNT)
            heap_end = (await metrics(cdp))["JSHeapUsedSize"]
            conn = await page.evaluate("document.documentElement.dataset.conn")
            await browser.close()
            counter.cancel()

        def share(name: str) -> float:
            return 100.0 * (after[name] - before[name]) / wall_s

        busy = share("TaskDuration")
        cpu = share("ThreadTime")
        fig.add("main_thread_busy", busy, "%", target="≤ 5%", ok=busy <= 5.0)
        fig.add("main_thread_cpu", cpu, "%", target="≤ 5%", ok=cpu <= 5.0)
        fig.add("renderer_process_cpu", share("ProcessTime"), "%")
        fig.add("script", share("ScriptDuration"), "%")
        fig.add("style_recalc", share("RecalcStyleDuration"), "%")
        fig.add("layout", share("LayoutDuration"), "%")
        shown = in_page["shown"]
        fig.note(
            f"the page showed {len(shown) if shown is not None else 'every one'} of {args.nodes} cards "
            "(in or near its viewport)"
        )
        page_bytes_per_s = (in_page["bytes"] - in_page_before["bytes"]) / wall_s
        fig.add(
            "bytes_per_s_per_browser",
            page_bytes_per_s / 1000,
            "KB/s",
            target="≤ 60 KB/s",
            ok=page_bytes_per_s <= 60_000,
        )
        fig.add("messages_per_s", (in_page["frames"] - in_page_before["frames"]) / wall_s, "/s")
        fig.add(
            "bytes_per_s_showing_every_node", received["bytes"] / wall_s / 1000, "KB/s (a viewer beside it)"
        )
        fig.add("dom_elements_start", dom_start, "")
        fig.add("dom_elements_end", dom_end, "", target="flat", ok=dom_end <= dom_start)
        fig.add("js_heap_used_end", heap_end / 1024**2, "MiB")
        fig.note(f"connection state at the end: {conn}; measured over {wall_s:.1f} s")
    finally:
        if agents is not None:
            await agents.stop()
        await hub.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.browser_load", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1.0, help="samples per second per node")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds on the page before measuring")
    parser.add_argument("--tiny", action="store_true", help="5 nodes for 5 s (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.nodes, args.seconds, args.warmup = 5, 5.0, 1.0
    if not Path(CHROMIUM).exists():
        print(f"== bench.browser_load: {CHROMIUM} not found, skipped", flush=True)
        return 0
    fig = Figures("browser_load")
    fig.header(
        f"headless Chromium at 1920x1080 showing {args.nodes} nodes x 8 GPUs, {args.rate:g} samples/s "
        f"each, for {args.seconds:g} s"
    )
    asyncio.run(run(args, fig))
    return fig.done()


if __name__ == "__main__":
    raise SystemExit(main())
