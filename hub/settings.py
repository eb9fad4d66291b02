"""The hub's settings: one frozen object built once from flags, ``SERS_*`` env vars and TOML.

Precedence: command-line flag, then environment variable, then the ``--config`` file, then the
defaults below. Every error names the key it is about.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hub.registry import Liveness, Naming


class SettingsError(ValueError):
    """A setting with a bad value; the message names the key."""


@dataclass(frozen=True, slots=True)
class GpuFreeRule:
    """A GPU counts as free with no processes and utilization and memory under these."""

    max_util_percent: float = 10.0
    max_mem_percent: float = 5.0


@dataclass(frozen=True, slots=True)
class HubSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    root_path: str = ""
    log_level: str = "INFO"
    agent_token: str | None = None  # one token shared by every agent
    node_tokens: Mapping[str, str] = field(default_factory=dict)  # node name -> its own token
    view_token: str | None = None
    admin_token: str | None = None  # for forgetting nodes; falls back to agent_token
    trusted_hosts: tuple[str, ...] = ("*",)
    allowed_origins: tuple[str, ...] = ()
    forwarded_allow_ips: str = "127.0.0.1"
    liveness: Liveness = field(default_factory=Liveness)
    names: Mapping[str, Naming] = field(default_factory=dict)  # node name or address -> naming
    gpu_free: GpuFreeRule = field(default_factory=GpuFreeRule)
    viewer_max_rate_hz: float = 10.0
    viewer_send_timeout_s: float = 10.0
    agent_max_messages_per_s: float = 20.0
    max_nodes: int = 5000  # new node names beyond this are refused (1008)
    state_db: str | None = "sers-hub.sqlite3"
    history_s: float = 900.0


_SCALARS: dict[str, tuple[type, str]] = {
    "host": (str, "SERS_HOST"),
    "port": (int, "SERS_PORT"),
    "root_path": (str, "SERS_ROOT_PATH"),
    "log_level": (str, "SERS_LOG_LEVEL"),
    "agent_token": (str, "SERS_TOKEN"),
    "view_token": (str, "SERS_VIEW_TOKEN"),
    "admin_token": (str, "SERS_ADMIN_TOKEN"),
    "max_nodes": (int, "SERS_MAX_NODES"),
    "forwarded_allow_ips": (str, "SERS_FORWARDED_ALLOW_IPS"),
    "viewer_max_rate_hz": (float, "SERS_VIEWER_MAX_RATE_HZ"),
    "viewer_send_timeout_s": (float, "SERS_VIEWER_SEND_TIMEOUT_S"),
    "agent_max_messages_per_s": (float, "SERS_AGENT_MAX_MESSAGES_PER_S"),
    "state_db": (str, "SERS_STATE_DB"),
    "history_s": (float, "SERS_HISTORY_S"),
}
_LISTS = {"trusted_hosts": "SERS_TRUSTED_HOSTS", "allowed_origins": "SERS_ALLOWED_ORIGINS"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sers-hub",
        description="sers-monitor hub: collects node agents' state and serves the live dashboard.",
        epilog="Flags override SERS_* environment variables, which override the --config file.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file [SERS_CONFIG]")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1) [SERS_HOST]")
    parser.add_argument("--port", help="port to listen on (default 8000) [SERS_PORT]")
    parser.add_argument(
        "--root-path",
        metavar="PATH",
        help="URL prefix when served under a sub-path, e.g. /monitor [SERS_ROOT_PATH]",
    )
    parser.add_argument("--token", dest="agent_token", help="token every agent must present [SERS_TOKEN]")
    parser.add_argument(
        "--token-file", metavar="FILE", help="read the agent token from FILE [SERS_TOKEN_FILE]"
    )
    parser.add_argument(
        "--view-token", help="token needed to view the dashboard (default: none) [SERS_VIEW_TOKEN]"
    )
    parser.add_argument(
        "--view-token-file", metavar="FILE", help="read the view token from FILE [SERS_VIEW_TOKEN_FILE]"
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="read the admin token (forgetting nodes) from FILE [SERS_ADMIN_TOKEN_FILE]",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies whose X-Forwarded-* headers are trusted [SERS_FORWARDED_ALLOW_IPS]",
    )
    parser.add_argument(
        "--state-db",
        metavar="FILE",
        help="SQLite file of remembered nodes; '' for none [SERS_STATE_DB]",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR [SERS_LOG_LEVEL]")
    return parser


def _convert(key: str, kind: type, raw: Any) -> Any:
    try:
        if kind is int and isinstance(raw, bool):
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{key}: expected {kind.__name__}, got {raw!r}") from None


def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config: {path} is not valid TOML: {exc}") from None


def _table(raw: Any, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SettingsError(f"{key}: expected a table, got {raw!r}")
    return raw


def _dataclass_from(cls: Any, raw: Any, key: str) -> Any:
    table = _table(raw, key)
    known = {f.name: f for f in fields(cls)}
    values = {}
    for name, value in table.items():
        if name not in known:
            raise SettingsError(f"{key}.{name}: unknown setting (known: {', '.join(known)})")
        values[name] = _convert(f"{key}.{name}", float if known[name].type == "float" else str, value)
    return cls(**values)


def load_settings(argv: Sequence[str] | None, env: Mapping[str, str] = os.environ) -> HubSettings:
    args = build_parser().parse_args(argv)
    config_path = args.config or env.get("SERS_CONFIG")
    doc = _from_toml(config_path) if config_path else {}
    values: dict[str, Any] = {}
    known = {f.name for f in fields(HubSettings)}
    for key, raw in doc.items():
        if key not in known:
            raise SettingsError(f"{key}: unknown setting in {config_path}")
        if key in _SCALARS:
            values[key] = _convert(key, _SCALARS[key][0], raw)
        elif key in _LISTS:
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise SettingsError(f"{key}: expected a list of strings, got {raw!r}")
            values[key] = tuple(raw)
        elif key == "node_tokens":
            values[key] = {str(k): _convert(f"node_tokens.{k}", str, v) for k, v in _table(raw, key).items()}
        elif key == "names":
            values[key] = {
                str(k): _dataclass_from(Naming, v, f"names.{k}") for k, v in _table(raw, key).items()
            }
        elif key == "liveness":
            values[key] = _dataclass_from(Liveness, raw, key)
        elif key == "gpu_free":
            values[key] = _dataclass_from(GpuFreeRule, raw, key)
    for key, (kind, var) in _SCALARS.items():
        if var in env:
            values[key] = _convert(var, kind, env[var])
    for key, var in _LISTS.items():
        if var in env:
            values[key] = tuple(x.strip() for x in env[var].split(",") if x.strip())
    for key, flag, var in (
        ("agent_token", "token_file", "SERS_TOKEN_FILE"),
        ("view_token", "view_token_file", "SERS_VIEW_TOKEN_FILE"),
        ("admin_token", "admin_token_file", "SERS_ADMIN_TOKEN_FILE"),
    ):
        token_file = getattr(args, flag) or env.get(var)
        if token_file:
            try:
                values[key] = Path(token_file).read_text().strip()
            except OSError as exc:
                option = "--" + flag.replace("_", "-")
                raise SettingsError(f"{option}: cannot read {token_file}: {exc.strerror}") from None
    for key in (
        "host",
        "port",
        "root_path",
        "agent_token",
        "view_token",
        "forwarded_allow_ips",
        "state_db",
        "log_level",
    ):
        flag = getattr(args, key)
        if flag is not None:
            values[key] = _convert(f"--{key.replace('_', '-')}", _SCALARS[key][0], flag)
    settings = replace(HubSettings(), **values)
    return _checked(settings)


def _checked(settings: HubSettings) -> HubSettings:
    if not 0 < settings.port < 65536:
        raise SettingsError(f"port: must be 1..65535, got {settings.port}")
    root = settings.root_path.rstrip("/")
    if root and not root.startswith("/"):
        raise SettingsError(f"root_path: must start with '/', got {settings.root_path!r}")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"log_level: unknown level {settings.log_level!r}")
    if settings.viewer_max_rate_hz <= 0:
        raise SettingsError("viewer_max_rate_hz: must be positive")
    if settings.agent_max_messages_per_s <= 0:
        raise SettingsError("agent_max_messages_per_s: must be positive")
    if settings.max_nodes < 1:
        raise SettingsError(f"max_nodes: must be at least 1, got {settings.max_nodes}")
    for pattern in settings.trusted_hosts:
        if "*" in pattern[1:] or (
            pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")
        ):
            raise SettingsError(f"trusted_hosts: {pattern!r} must be a host name, '*.domain' or '*'")
    return replace(
        settings,
        root_path=root,
        log_level=settings.log_level.upper(),
        agent_token=settings.agent_token or None,
        view_token=settings.view_token or None,
        admin_token=settings.admin_token or None,
        state_db=settings.state_db or None,
    )
