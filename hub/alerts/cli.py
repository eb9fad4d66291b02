"""``sers-hub alerts test --config hub.toml``: one test message to every alert channel and every
``[alerts.users]`` URL, at once, then per channel "delivered" or why not. Exit status 0 when
every one was delivered, 1 when some were not, 2 for a config that cannot be read."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from hub.alerts.delivery import Outgoing, apprise_sender
from hub.alerts.service import user_channel
from hub.settings import CONFIG_ENV, SettingsError, load_settings
from node_agent.given import env_value


def _send(url: str, item: Outgoing) -> str | None:
    try:
        return apprise_sender(url)(item)
    except ValueError as exc:
        return str(exc)


def alerts_command(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="sers-hub alerts", description="Check the hub's alert channels ([alerts] in its TOML)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    test = commands.add_parser("test", help="send a test message to every channel and user URL")
    test.add_argument("--config", metavar="FILE", default=env_value(env, CONFIG_ENV), help=f"[{CONFIG_ENV}]")
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config FILE is needed (the hub's TOML with [[alerts.channels]])")
    try:
        config = load_settings(["--config", args.config], env={}).alerts
    except SettingsError as exc:
        print(f"sers-hub alerts: error: {exc}", file=sys.stderr)
        return 2
    targets = {c.name: c.url for c in config.channels} | {
        user_channel(u): url for u, url in config.users.items()
    }
    if not targets:
        print(
            f"sers-hub alerts: {args.config} has no [[alerts.channels]] and no [alerts.users]",
            file=sys.stderr,
        )
        return 2
    item = Outgoing(
        "[TEST] sers-monitor alerts",
        f"A test message from sers-hub on {socket.gethostname()}: alerts reach this channel.",
        "info",
    )
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        results = dict(zip(targets, pool.map(lambda url: _send(url, item), targets.values()), strict=True))
    width = max(len(name) for name in targets)
    for name, reason in results.items():
        print(f"{name:<{width}}  {'delivered' if reason is None else 'NOT delivered: ' + reason}")
    return 0 if all(reason is None for reason in results.values()) else 1
