"""Headless Chromium for tests, benchmarks and the screenshot: Debian's browser, never a download.

The flags keep Chromium from reaching for the network at start (this machine has none) and
from needing a sandbox or a GPU.
"""

from __future__ import annotations

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
