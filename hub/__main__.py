"""``sers-hub``: serve the dashboard and take agents, on uvicorn.

``sers-hub forget NODE [--state-db FILE]`` removes a remembered node from the state file (with
the hub stopped; on a running hub use ``DELETE /api/v1/nodes/NODE``). ``sers-hub alerts test
--config hub.toml`` sends a test message to every alert channel and says which got it. ``sers-hub usage
--state-db FILE --from ... --to ... --by user`` prints GPU-hours from the file (read-only).

On SIGTERM or SIGINT uvicorn closes every WebSocket with 1012 (service restart) and the hub
exits within ``timeout_graceful_shutdown`` seconds, writing the state file once more. After
SIGINT (Ctrl-C) it exits with status 130, as shells expect of an interrupted command, and
without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from hub.app import create_app
from hub.header_timeout import header_timeout_protocol
from hub.memory import release_free_memory_forever, tune_gc, tune_malloc
from hub.settings import HubSettings, SettingsError, default_state_db, load_settings
from hub.store import StoreError, forget_offline
from hub.usage.cli import usage_cli
from hub.ws_direct import DirectWebSocketProtocol
from node_agent.given import env_value
from node_agent.protocol import MAX_MESSAGE_BYTES


class QuietConnections(logging.Filter):
    """Drops uvicorn's per-connection WebSocket lines: the hub logs its own (node connected,
    disconnected, refused at most once per source per minute), so a client that hammers the hub
    cannot flood the log. Also drops the "returned without completing handshake" error that
    uvicorn's websockets-sansio protocol logs after every HTTP denial response (401/403)."""

    _DROPPED_PREFIXES = ("connection open", "connection rejected", "connection closed")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno <= logging.INFO:
            return not (message.startswith(self._DROPPED_PREFIXES) or '"WebSocket ' in message)
        return "returned without completing handshake" not in message


# Kernel send buffer per connection (Linux doubles it). Without it, loopback and LAN sockets
# autotune up to tcp_wmem's maximum (4 MiB), so a browser that stops reading could hide megabytes
# in the kernel for tens of seconds before the hub's send timeout even starts counting.
SOCKET_SEND_BUFFER_BYTES = 128 * 1024


class HubServer(uvicorn.Server):
    """uvicorn's server, with :data:`SOCKET_SEND_BUFFER_BYTES` on its listening sockets (accepted
    connections inherit it) and free heap memory handed back to the kernel every few seconds
    (:mod:`hub.memory`)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for server in self.servers:
            for sock in server.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER_BYTES)
        self._trimmer = asyncio.create_task(release_free_memory_forever())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        trimmer: asyncio.Task[None] | None = getattr(self, "_trimmer", None)
        if trimmer is not None:
            trimmer.cancel()
        memory = getattr(getattr(self.config.app, "state", None), "memory", None)
        if memory is not None:  # the agents' connections closed next are the hub's doing
            memory.hub_stopping()
        await super().shutdown(sockets=sockets)


def uvicorn_config(settings: HubSettings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        root_path=settings.root_path,
        http=header_timeout_protocol(settings.header_timeout_s),
        proxy_headers=False,  # create_app applies uvicorn's proxy middleware itself (ProxyTrust)
        ws=DirectWebSocketProtocol,  # agent messages skip the ASGI queue (hub.ws_direct)
        ws_max_size=MAX_MESSAGE_BYTES,  # agents send a few KiB; browsers send nothing
        ws_per_message_deflate=False,  # fragments are small; per-viewer compression costs 5x CPU
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=3,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )


def forget(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sers-hub forget",
        description="Remove a remembered node from the hub's state file (stop the hub first; "
        "on a running hub use DELETE /api/v1/nodes/NODE).",
    )
    parser.add_argument("node", metavar="NODE", help="the node name")
    state_db = env_value(os.environ, "SERS_STATE_DB") or default_state_db(os.environ)
    parser.add_argument(
        "--state-db",
        metavar="FILE",
        default=state_db,
        help=f"the hub's SQLite state file (default: {state_db}) [SERS_STATE_DB]",
    )
    args = parser.parse_args(argv)
    try:
        forgotten = forget_offline(args.state_db, args.node)
    except StoreError as exc:
        print(f"sers-hub forget: error: {exc}", file=sys.stderr)
        return 2
    if not forgotten:
        print(f"sers-hub forget: {args.node!r} is not in {args.state_db}", file=sys.stderr)
        return 1
    print(f"forgot {args.node} (restart the hub if it is running)")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(settings: HubSettings, log: logging.Logger) -> None:
    if _is_loopback(settings.host):
        return
    if "*" in settings.trusted_hosts:
        log.warning(
            "trusted_hosts is '*' on %s: any host name is answered, so a web page can reach the hub "
            "through DNS rebinding; list the names agents and browsers use (--trusted-hosts, "
            "SERS_TRUSTED_HOSTS)",
            settings.host,
        )
    if settings.agent_token is None and not settings.node_tokens:
        log.warning("no agent token: anyone who reaches %s:%d can report nodes", settings.host, settings.port)
    if settings.view_token is None:
        log.warning(
            "no view token: anyone who reaches %s:%d can see the dashboard", settings.host, settings.port
        )


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Binds every address ``host`` resolves to, as uvicorn would, so that a busy port is
    reported by :func:`main` with its remedy instead of as a line in uvicorn's log."""
    bound: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly and re-raised SIGINT
        return 130


def _main(args: list[str]) -> int:
    if args[:1] == ["forget"]:
        return forget(args[1:])
    if args[:1] == ["alerts"]:
        from hub.alerts.cli import alerts_command  # only this subcommand needs Apprise loaded

        return alerts_command(args[1:])
    if args[:1] == ["usage"]:
        return usage_cli(args[1:])
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"sers-hub: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.state_db:
        # the default's folder (~/.local/state/sers-monitor) may not exist yet; a folder that
        # cannot be made is the store's to report (it runs without memory and tries again)
        with contextlib.suppress(OSError):
            Path(settings.state_db).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        sockets = listening_sockets(settings.host, settings.port)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = (
                f"; port {settings.port} is taken: pick another with --port N or "
                "SERS_PORT=N (make run: PORT=N make run)"
            )
        print(
            f"sers-hub: error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}{hint}",
            file=sys.stderr,
        )
        return 1
    warn_if_open(settings, logging.getLogger("sers.hub"))
    tune_malloc()
    config = uvicorn_config(settings)  # configures uvicorn's loggers: add the filter after
    logging.getLogger("uvicorn.error").addFilter(QuietConnections())
    server = HubServer(config)
    tune_gc()
    server.run(sockets=sockets)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
