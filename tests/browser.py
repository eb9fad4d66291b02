"""Headless Chromium for tests, benchmarks and the screenshot: Debian's browser, never a download.

The flags keep Chromium from reaching for the network at start (this machine has none) and
from needing a sandbox or a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records every frame the page receives (window.__frames: [time, text]) and every message it
# sends (window.__sent), installed before app.js runs (new_tab's init_script).
COUNT_FRAMES = """
window.__frames = [];
window.__sent = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    const decoder = new TextDecoder();
    this.addEventListener("message", (event) => {
      const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
      window.__frames.push([performance.now(), text]);
    });
  }
  send(data) {
    window.__sent.push([performance.now(), data]);
    super.send(data);
  }
};
"""

# the longest a test's browser waits for one step (a selector, a navigation) before failing
TIMEOUT_MS = 20_000


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, launched headless through Playwright (imported here, not above: the
    benchmarks take this module's flags without Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_tab(browser: Any, init_script: str = "", **context_options: Any) -> Iterator[Any]:
    """A page in a browser context of its own (its own storage; ``context_options`` as Playwright
    takes them, such as the viewport), with ``init_script`` run before each page's own."""
    context = browser.new_context(**context_options)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()
