"""The agent's settings: one frozen object, built once from CLI flags and ``SERS_*`` env vars.

A flag beats its variable; an empty flag or variable counts as not given (:mod:`node_agent.given`,
the rule the hub follows too).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from node_agent import __version__
from node_agent.given import env_value, given, read_token_file
from node_agent.protocol import INTERVAL_S, NODE_NAME_RE, Bounds


class SettingsError(ValueError):
    """A setting with a bad value; the message names the flag or variable."""


DEFAULT_HUB_URL = "ws://127.0.0.1:8000/ws/agent"
# The agent samples at most ten times a second (each sample reads /proc and NVML); the protocol
# (INTERVAL_S) accepts faster senders, such as the benchmarks' simulated agents.
AGENT_INTERVAL_S = Bounds(0.1, INTERVAL_S.high)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    hub_url: str = DEFAULT_HUB_URL
    token: str | None = None
    node_name: str = "localhost"
    interval_s: float = 1.0
    mounts: tuple[str, ...] = ("/",)
    full_cmdline: bool = False
    once: bool = False
    json: bool = False
    log_level: str = "INFO"
    backoff_max_s: float = 30.0
    sysfs_root: Path = Path("/sys")
    nvml_retry_s: float = 60.0  # how often a failed NVML is tried again (gpu.NVML_RETRY_EVERY_S)
    # where GPU processes are looked up, and the runtimes' state their containers are named from
    proc_root: Path = Path("/proc")
    docker_root: Path = Path("/var/lib/docker")
    podman_root: Path = Path("/var/lib/containers/storage")
    pod_log_dir: Path = Path("/var/log/pods")


def default_node_name() -> str:
    """The short host name, reduced to the characters a node name may hold."""
    short = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in short).strip("-._")
    return cleaned[:63] or "localhost"


def agent_ws_url(hub: str) -> str:
    """Accepts ``http(s)://host[:port][/prefix]`` or a full ``ws(s)://.../ws/agent`` URL."""
    url = hub.rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif not url.startswith(("ws://", "wss://")):
        raise SettingsError(f"--hub / SERS_HUB_URL: expected an http(s):// or ws(s):// URL, got {hub!r}")
    url = url if url.endswith("/ws/agent") else url + "/ws/agent"
    try:  # what connect() would raise on every attempt, forever: say it once, at startup
        parse_uri(url)
    except (InvalidURI, ValueError) as exc:
        ipv6 = url.count(":") > 2 and "[" not in url
        hint = " (an IPv6 address goes in brackets: http://[fd00::1]:8000)" if ipv6 else ""
        raise SettingsError(f"--hub / SERS_HUB_URL: {hub!r} is not a valid URL: {exc}{hint}") from None
    return url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sers-agent",
        description=(
            "sers-monitor node agent: samples this machine (psutil) and its NVIDIA GPUs (NVML) "
            "and streams the state to a sers-hub over one WebSocket."
        ),
        epilog="Every option can also be set by the environment variable named in brackets; an empty "
        "flag or variable counts as not given.",
    )
    parser.add_argument("--hub", metavar="URL", help="hub URL, e.g. http://hub:8000 [SERS_HUB_URL]")
    parser.add_argument("--token", help="bearer token for the hub [SERS_TOKEN]")
    parser.add_argument("--token-file", metavar="FILE", help="read the token from FILE [SERS_TOKEN_FILE]")
    parser.add_argument(
        "--name", help="node name shown on the hub (default: short host name) [SERS_NODE_NAME]"
    )
    parser.add_argument("--interval", metavar="SECONDS", help="sampling interval (default 1) [SERS_INTERVAL]")
    parser.add_argument(
        "--mount",
        action="append",
        metavar="PATH",
        help="filesystem to report, repeatable (default /) [SERS_MOUNTS, comma-separated]",
    )
    parser.add_argument(
        "--full-cmdline",
        action="store_true",
        default=None,
        help="report GPU processes' full command lines, secrets redacted (default: name only) [SERS_FULL_CMDLINE=1]",
    )
    parser.add_argument("--once", action="store_true", help="take one sample, print it and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON (hello and snapshot)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR [SERS_LOG_LEVEL]")
    parser.add_argument(
        "--sysfs-root",
        metavar="PATH",
        help="where sysfs is mounted (default /sys): its PCI bus tells a GPU server whose driver "
        "failed from a CPU-only node [SERS_SYSFS_ROOT]",
    )
    parser.add_argument(
        "--nvml-retry",
        metavar="SECONDS",
        help="how often to try NVML again while it fails, e.g. after a driver reload (default 60) "
        "[SERS_NVML_RETRY_S]",
    )
    parser.add_argument(
        "--proc-root",
        metavar="PATH",
        help="where the host's procfs is mounted (default /proc): GPU processes' owners, start "
        "times, containers and Slurm jobs are read there [SERS_PROC_ROOT]",
    )
    parser.add_argument(
        "--docker-root",
        metavar="PATH",
        help="Docker's data directory (default /var/lib/docker), for container names from "
        "containers/<id>/config.v2.json [SERS_DOCKER_ROOT]",
    )
    parser.add_argument(
        "--podman-root",
        metavar="PATH",
        help="Podman's storage (default /var/lib/containers/storage), for container names [SERS_PODMAN_ROOT]",
    )
    parser.add_argument(
        "--pod-log-dir",
        metavar="PATH",
        help="the kubelet's pod log directory (default /var/log/pods), for pod namespaces and "
        "names [SERS_POD_LOG_DIR]",
    )
    parser.add_argument("--version", action="version", version=f"sers-agent {__version__}")
    return parser


def unique_mounts(paths: Sequence[str]) -> tuple[str, ...]:
    """The mounts to report, each once: paths normalised (``/data/`` and ``/data//`` are
    ``/data``; ``//`` is ``/``), blanks dropped, the first occurrence kept in order."""
    mounts: dict[str, None] = {}
    for path in paths:
        path = path.strip()
        if path:
            normal = posixpath.normpath(path)
            mounts.setdefault("/" + normal.lstrip("/") if normal.startswith("/") else normal)
    return tuple(mounts)


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _token(token: str | None, token_file: str | None, file_label: str) -> str | None:
    """One source's token (flags, or the environment): the token itself beats its file."""
    if token is not None or token_file is None:
        return token
    try:
        return read_token_file(token_file)
    except ValueError as exc:
        raise SettingsError(f"{file_label}: {exc}") from None


def _seconds(raw: str | None, label: str, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{label}: expected seconds, got {raw!r}") from None
    if not 0.1 <= value <= 3600:
        raise SettingsError(f"{label}: must be between 0.1 and 3600 s, got {value}")
    return value


def load_settings(argv: Sequence[str] | None, env: Mapping[str, str] = os.environ) -> AgentSettings:
    args = build_parser().parse_args(argv)

    def pick(flag: str | None, var: str) -> str | None:
        return given(flag) or env_value(env, var)

    hub = pick(args.hub, "SERS_HUB_URL")
    token = _token(given(args.token), given(args.token_file), "--token-file")
    if token is None:
        token = _token(env_value(env, "SERS_TOKEN"), env_value(env, "SERS_TOKEN_FILE"), "SERS_TOKEN_FILE")
    name = pick(args.name, "SERS_NODE_NAME") or default_node_name()
    if not NODE_NAME_RE.fullmatch(name):
        raise SettingsError(
            f"--name / SERS_NODE_NAME: {name!r} is not a node name (letters, digits, '.', '_', '-'; at most 63)"
        )
    interval_raw = pick(args.interval, "SERS_INTERVAL") or "1"
    try:
        interval = float(interval_raw)
    except ValueError:
        raise SettingsError(f"--interval / SERS_INTERVAL: expected seconds, got {interval_raw!r}") from None
    if not AGENT_INTERVAL_S.low <= interval <= AGENT_INTERVAL_S.high:
        raise SettingsError(
            f"--interval / SERS_INTERVAL: must be between {AGENT_INTERVAL_S.low:g} and "
            f"{AGENT_INTERVAL_S.high:g} s, got {interval}"
        )
    nvml_retry = _seconds(
        pick(args.nvml_retry, "SERS_NVML_RETRY_S"), "--nvml-retry / SERS_NVML_RETRY_S", 60.0
    )
    mounts = unique_mounts(args.mount or env.get("SERS_MOUNTS", "/").split(","))
    full_cmdline = (
        args.full_cmdline if args.full_cmdline is not None else _truthy(env.get("SERS_FULL_CMDLINE", ""))
    )
    log_level = (pick(args.log_level, "SERS_LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"--log-level / SERS_LOG_LEVEL: unknown level {log_level!r}")
    return AgentSettings(
        hub_url=agent_ws_url(hub) if hub else DEFAULT_HUB_URL,
        token=token or None,
        node_name=name,
        interval_s=interval,
        mounts=mounts or ("/",),
        full_cmdline=full_cmdline,
        once=args.once,
        json=args.json,
        log_level=log_level,
        sysfs_root=Path(pick(args.sysfs_root, "SERS_SYSFS_ROOT") or "/sys"),
        nvml_retry_s=nvml_retry,
        proc_root=Path(pick(args.proc_root, "SERS_PROC_ROOT") or "/proc"),
        docker_root=Path(pick(args.docker_root, "SERS_DOCKER_ROOT") or "/var/lib/docker"),
        podman_root=Path(pick(args.podman_root, "SERS_PODMAN_ROOT") or "/var/lib/containers/storage"),
        pod_log_dir=Path(pick(args.pod_log_dir, "SERS_POD_LOG_DIR") or "/var/log/pods"),
    )
