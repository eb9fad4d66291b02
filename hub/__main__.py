"""``sers-hub``: serve the dashboard and take agents, on uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn

from hub.app import create_app
from hub.settings import HubSettings, SettingsError, load_settings
from node_agent.protocol import MAX_MESSAGE_BYTES


def uvicorn_config(settings: HubSettings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        root_path=settings.root_path,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        ws_max_size=MAX_MESSAGE_BYTES,  # agents send a few KiB; browsers send nothing
        ws_per_message_deflate=False,  # fragments are small; per-viewer compression costs 5x CPU
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=3,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"sers-hub: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn_config(settings))
    try:
        server.run()
    except OSError as exc:
        print(
            f"sers-hub: error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
