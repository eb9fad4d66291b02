"""Makes ``docs/wall.png``: the wall display at 1920x1080 with 24 nodes of 8 GPUs.

Starts a real ``sers-hub`` on a free port, connects 24 simulated agents speaking the real
protocol over WebSocket (``/ws/agent``; the first 24 nodes of :mod:`bench.lab`: H100, A100,
L40S and RTX 4090 nodes in four groups, some GPUs free, one lost GPU, one node gone offline),
backfills ten minutes of samples so the sparklines have a history, and photographs the page in
headless Chromium.

    python docs/make_screenshot.py [--out docs/wall.png] [--theme dark|light] [--nodes 24]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.lab import lab, run_node  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

BACKFILL_S = 630.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def shoot(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    port = free_port()
    nodes, toml = lab(args.nodes)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hub.toml"
        config.write_text(toml)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERS_")}
        env["PYTHONPATH"] = str(REPO)
        env["SERS_STATE_DB"] = "none"
        env["SERS_AGENT_MAX_MESSAGES_PER_S"] = "50"
        hub = subprocess.Popen(  # noqa: ASYNC220 - once, before anything else runs
            [
                sys.executable,
                "-m",
                "hub",
                "--port",
                str(port),
                "--config",
                str(config),
                "--log-level",
                "WARNING",
            ],
            env=env,
            cwd=REPO,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(base + "/healthz", timeout=1).read()  # noqa: ASYNC210
                    break
                await asyncio.sleep(0.1)
            stop = asyncio.Event()
            lives = [asyncio.Event() for _ in nodes]
            gone = nodes[-1]  # one node that went away a while ago
            tasks = [
                asyncio.create_task(
                    run_node(node, base.replace("http", "ws") + "/ws/agent", BACKFILL_S, live, stop)
                )
                for node, live in zip(nodes[:-1], lives, strict=False)
            ]
            gone_stop = asyncio.Event()
            gone_task = asyncio.create_task(
                run_node(gone, base.replace("http", "ws") + "/ws/agent", 60.0, lives[-1], gone_stop)
            )
            await asyncio.gather(*(live.wait() for live in lives))
            await asyncio.sleep(2)
            gone_stop.set()
            await gone_task
            await asyncio.sleep(args.settle_s)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                width, height = (int(x) for x in args.size.split("x"))
                page = await browser.new_page(viewport={"width": width, "height": height})
                query = f"?theme={args.theme}" if args.theme != "dark" else ""
                await page.goto(base + "/" + query)
                await page.wait_for_function(f"document.querySelectorAll('article.n').length >= {len(nodes)}")
                await page.wait_for_timeout(2500)
                overflow = await page.evaluate("document.documentElement.scrollHeight - innerHeight")
                print(f"page overflow below the fold: {overflow} px (0 means it fits)")
                await page.screenshot(path=args.out)
                if args.detail_out:
                    await page.click("article[data-node='atlas'] header")
                    await page.wait_for_selector("#detail")
                    await page.screenshot(path=args.detail_out, full_page=True)
                await browser.close()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            hub.terminate()
            hub.wait(10)
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "wall.png"))
    parser.add_argument("--theme", choices=("dark", "light"), default="dark")
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--size", default="1920x1080", help="viewport, WIDTHxHEIGHT")
    parser.add_argument("--detail-out", help="also photograph a node's detail page here")
    parser.add_argument("--settle-s", type=float, default=3.0, help="seconds of live updates before the shot")
    args = parser.parse_args(argv)
    asyncio.run(shoot(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
