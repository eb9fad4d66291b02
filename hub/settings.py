"""The hub's settings: one frozen object built once from flags, ``SERS_*`` env vars and TOML.

Each setting is declared once, as a field of :class:`HubSettings` made by :func:`setting`: its
name is its TOML key, and its flag (``--name-with-dashes``), environment variable
(``SERS_NAME``), help text and default live in the field's metadata. The argument parser, the
environment and TOML readers and ``docs/settings.md`` (``python -m hub.settings >
docs/settings.md``) are all derived from these declarations.

Precedence: command-line flag, then environment variable, then the ``--config`` file, then the
default. An empty flag or variable counts as not given (:mod:`node_agent.given`), so it never
switches off a token set further down. A token can also come from a file (``--token-file``,
``SERS_TOKEN_FILE``); at one level a token beats its file. Every error names the flag, variable
or key it is about.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from hub.alerts.config import AlertConfig, ConfigError, parse_alerts
from hub.domain.gpus import GpuFreeRule, IdleRule
from hub.domain.nodes import Liveness, Naming
from hub.domain.usage import MemoryLimits
from node_agent import __version__
from node_agent.given import env_value, given, read_token_file
from node_agent.protocol import MAX_STRING_CHARS


class SettingsError(ValueError):
    """A setting with a bad value; the message names the key."""


Kind = Literal["str", "int", "float", "list", "table"]
_SCALAR_TYPES: dict[str, type] = {"str": str, "int": int, "float": float}
_METADATA_KEY = "sers"


@dataclass(frozen=True, slots=True)
class Declaration:
    """How one hub setting is given: the metadata :func:`setting` puts on its field.

    ``env`` and ``flag`` are ``None`` for TOML tables. ``from_file``: the value can also be read
    from a file (``<flag>-file``, ``<env>_FILE``). ``default_from_env``: the default depends on
    the environment (shown resolved in ``--help`` and as ``default_text`` in the docs).
    """

    kind: Kind
    help: str
    env: str | None
    flag: str | None
    metavar: str | None
    from_file: bool
    default_text: str | None
    table: Callable[[Any, str], Any] | None
    default_from_env: Callable[[Mapping[str, str]], Any] | None


def setting(
    default: Any,
    kind: Kind,
    help: str,
    *,
    env: str | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    from_file: bool = False,
    default_text: str | None = None,
    table: Callable[[Any, str], Any] | None = None,
    default_from_env: Callable[[Mapping[str, str]], Any] | None = None,
) -> Any:
    """A :class:`HubSettings` field. ``env`` and ``flag`` default to ``SERS_<NAME>`` and
    ``--<name-with-dashes>`` (filled in by :func:`declarations`, which knows the name); a
    ``table`` (TOML only) has neither. A callable ``default`` is a default factory."""
    declared = Declaration(kind, help, env, flag, metavar, from_file, default_text, table, default_from_env)
    metadata = {_METADATA_KEY: declared}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- TOML tables
def _convert(key: str, kind: type, raw: Any) -> Any:
    try:
        if kind is int and isinstance(raw, bool):
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{key}: expected {kind.__name__}, got {raw!r}") from None


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


def _node_tokens(raw: Any, key: str) -> dict[str, str]:
    """Per-node tokens. An empty one is an error, not "no token": read either way it would
    change who may connect (the node locked out, or let in on the shared token or none)."""
    tokens = {str(k): _convert(f"{key}.{k}", str, v) for k, v in _table(raw, key).items()}
    for node, token in tokens.items():
        if not token.strip():
            raise SettingsError(f"{key}.{node}: an empty token; give the node a token or remove the line")
    return tokens


def _names(raw: Any, key: str) -> dict[str, Naming]:
    """Display names and groups: an empty or blank text is no name or no group (as an empty
    setting is no setting), and one past the protocol's string limit is an error (the hub
    remembers these texts in its state file, which holds them to that limit)."""
    names = {}
    for node, table in _table(raw, key).items():
        naming: Naming = _dataclass_from(Naming, table, f"{key}.{node}")
        texts = {}
        for name in ("display_name", "group"):
            text = getattr(naming, name)
            if text is not None and len(text) > MAX_STRING_CHARS:
                raise SettingsError(f"{key}.{node}.{name}: longer than {MAX_STRING_CHARS} characters")
            texts[name] = text if text and text.strip() else None
        if naming.group and "," in naming.group:
            raise SettingsError(
                f"{key}.{node}.group: no ',' in a group (the wall's ?group= filter splits there)"
            )
        names[str(node)] = Naming(**texts)
    return names


def _liveness(raw: Any, key: str) -> Liveness:
    result: Liveness = _dataclass_from(Liveness, raw, key)
    return result


def _gpu_free(raw: Any, key: str) -> GpuFreeRule:
    result: GpuFreeRule = _dataclass_from(GpuFreeRule, raw, key)
    return result


def _idle_holders(raw: Any, key: str) -> IdleRule:
    rule: IdleRule = _dataclass_from(IdleRule, raw, key)
    if not 0 <= rule.max_util_percent <= 100:
        raise SettingsError(
            f"{key}.max_util_percent: a percentage from 0 to 100, got {rule.max_util_percent}"
        )
    if not 0 <= rule.min_idle_s < float("inf"):
        raise SettingsError(f"{key}.min_idle_s: seconds, 0 or more, got {rule.min_idle_s}")
    return rule


def _alerts(raw: Any, key: str) -> AlertConfig:
    try:
        return parse_alerts(raw, key)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None


def _memory(raw: Any, key: str) -> MemoryLimits:
    result: MemoryLimits = _dataclass_from(MemoryLimits, raw, key)
    for problem in result.problems():
        raise SettingsError(f"{key}.{problem}")
    return result


# --------------------------------------------------------------------------- the state file
STATE_FILE_NAME = "hub.sqlite3"
NO_STATE_DB = "none"  # the state_db value for "remember nothing"


def default_state_db(env: Mapping[str, str]) -> str:
    """``$STATE_DIRECTORY/hub.sqlite3`` under systemd's ``StateDirectory=`` (its first
    directory), else ``${XDG_STATE_HOME:-~/.local/state}/sers-monitor/hub.sqlite3``."""
    state_directory = env_value(env, "STATE_DIRECTORY")
    if state_directory:
        return str(Path(state_directory.split(":")[0]) / STATE_FILE_NAME)
    xdg = env_value(env, "XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: relative paths are to be ignored
        base = Path(xdg)
    else:
        home = env_value(env, "HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "state"
    return str(base / "sers-monitor" / STATE_FILE_NAME)


# --------------------------------------------------------------------------- the settings
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class HubSettings:
    host: str = setting(
        "127.0.0.1", "str", "address to listen on; 0.0.0.0 or :: for every interface", metavar="ADDRESS"
    )
    port: int = setting(8000, "int", "port to listen on", metavar="PORT")
    root_path: str = setting(
        "",
        "str",
        "URL prefix when a proxy serves the hub under a sub-path and strips it, e.g. /monitor",
        metavar="PATH",
    )
    log_level: str = setting("INFO", "str", "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL")
    agent_token: str | None = setting(
        None,
        "str",
        "token every agent must present (Authorization: Bearer); none: any agent may report",
        env="SERS_TOKEN",
        flag="--token",
        metavar="TOKEN",
        from_file=True,
    )
    node_tokens: Mapping[str, str] = setting(
        dict,
        "table",
        'per-node tokens, `name = "token"`: each speaks only for its node, which the shared '
        "token then cannot claim",
        table=_node_tokens,
    )
    view_token: str | None = setting(
        None,
        "str",
        "token needed to view the dashboard, API and /metrics; none: anyone who reaches the hub may look",
        metavar="TOKEN",
        from_file=True,
    )
    admin_token: str | None = setting(
        None,
        "str",
        "token for changes such as forgetting a node (DELETE /api/v1/nodes/NODE); none: the agent token",
        metavar="TOKEN",
        from_file=True,
    )
    trusted_hosts: tuple[str, ...] = setting(
        ("*",),
        "list",
        "Host header values the hub answers (comma-separated; '*.domain' allowed); '*' for any, "
        "which allows DNS rebinding on a non-loopback address",
        metavar="HOSTS",
    )
    allowed_origins: tuple[str, ...] = setting(
        (),
        "list",
        "other origins whose pages may open /ws/view (comma-separated); the hub's own always may",
        metavar="ORIGINS",
    )
    forwarded_allow_ips: str = setting(
        DEFAULT_FORWARDED_ALLOW_IPS,
        "str",
        "proxies whose X-Forwarded-* headers are believed (comma-separated addresses or networks)",
        metavar="IPS",
    )
    liveness: Liveness = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        Liveness,
        "table",
        "when a silent node turns stale and offline: `stale_after_intervals` (3), "
        "`offline_after_intervals` (8), in multiples of its interval, and `min_offline_after_s` (3)",
        table=_liveness,
    )
    names: Mapping[str, Naming] = setting(
        dict,
        "table",
        "display name and group by node name or agent address: "
        '`[names."gpu07"]` with `display_name` and `group`',
        table=_names,
    )
    gpu_free: GpuFreeRule = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        GpuFreeRule,
        "table",
        "a GPU counts as free with no processes and under `max_util_percent` (10) and `max_mem_percent` (5)",
        table=_gpu_free,
    )
    idle_holders: IdleRule = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        IdleRule,
        "table",
        "a GPU (or MIG slice) is idle-held when processes hold it at or under `max_util_percent` (5) "
        "for at least `min_idle_s` (1800): the wall, `/users`, `/api/v1/users` and `/metrics` name them",
        table=_idle_holders,
    )
    viewer_max_rate_hz: float = setting(
        10.0, "float", "most updates per second sent to one viewer", metavar="HZ"
    )
    viewer_send_timeout_s: float = setting(
        10.0, "float", "a viewer whose send waits longer than this is dropped", metavar="SECONDS"
    )
    agent_max_messages_per_s: float = setting(
        20.0,
        "float",
        "most messages per second from one agent (or 3 per announced interval, if more); close 1008 above",
        metavar="RATE",
    )
    max_nodes: int = setting(
        5000, "int", "new node names beyond this many are refused (close 1008)", metavar="N"
    )
    state_db: str | None = setting(
        None,
        "str",
        "SQLite file of remembered nodes (its directory is created, mode 0700, when missing); "
        f"'{NO_STATE_DB}' for none",
        metavar="FILE",
        default_text="`$STATE_DIRECTORY/hub.sqlite3` under systemd's `StateDirectory=`, else "
        "`${XDG_STATE_HOME:-~/.local/state}/sers-monitor/hub.sqlite3`",
        default_from_env=default_state_db,
    )
    memory: MemoryLimits = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        MemoryLimits,
        "table",
        "the hub's memory in the state file: written every `flush_every_s` (60, at most 60); "
        "kept: 1-minute history `history_1m_keep_h` (48, at least 1), 15-minute history `history_15m_keep_d` (90), "
        "hourly usage `usage_hourly_keep_d` (90), daily usage `usage_daily_keep_d` (731), events "
        "`events_keep_d` (90); `pending_max_rows` (200000) rows of each kind wait in memory while the "
        "file cannot be written; past `max_file_mib` (10240; 0: none) the oldest days of 15-minute "
        "history, then of hourly usage, are dropped",
        table=_memory,
    )
    history_s: float = setting(
        900.0, "float", "seconds of history kept per node for the node page", metavar="SECONDS"
    )
    alerts: AlertConfig = setting(  # noqa: RUF009 - setting() is a dataclasses.field()
        AlertConfig,
        "table",
        "alerting: `[[alerts.channels]]` (`name`, Apprise `url`, `max_per_minute`), `[[alerts.rules]]` "
        "(`name`, `when`, `channels`, `for_s`, `repeat_s`, `send_resolved`, `severity`, `quiet_hours`, "
        "`group`, `nodes`, `model`, `threshold`, `min_free`, `mig_profile`, `users`), `[alerts.users]` "
        '(`alice = "mailto://..."`), `group_wait_s` (5); see README.md, Alerts',
        table=_alerts,
    )
    header_timeout_s: float = setting(
        10.0,
        "float",
        "an HTTP connection must send a complete request head (and a kept-alive one its next "
        "request's head) within this, or it is closed",
        metavar="SECONDS",
    )


def declarations() -> Iterator[tuple[str, Declaration]]:
    """Every hub setting, in declaration order, with its flag and env var filled in."""
    for f in fields(HubSettings):
        yield f.name, _declaration(f)


def _declaration(f: Field[Any]) -> Declaration:
    declared: Declaration = f.metadata[_METADATA_KEY]
    if declared.kind == "table":
        return declared
    return replace(
        declared,
        env=declared.env or "SERS_" + f.name.upper(),
        flag=declared.flag or "--" + f.name.replace("_", "-"),
    )


def _file_env(declared: Declaration) -> str:
    return f"{declared.env}_FILE"


def _file_flag(declared: Declaration) -> str:
    return f"{declared.flag}-file"


def _default_text(name: str, declared: Declaration, env: Mapping[str, str] | None) -> str:
    """The default as ``--help`` (with ``env``: resolved) or the docs (``env`` None) show it."""
    if declared.default_from_env is not None:
        if env is not None:
            return str(declared.default_from_env(env))
        return declared.default_text or ""
    value = getattr(HubSettings(), name)
    if value is None or value in ("", ()):
        return "none"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


# --------------------------------------------------------------------------- flags
CONFIG_ENV = "SERS_CONFIG"


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """Flags for every setting but the TOML tables. Each flag's ``dest`` is its env var's name,
    so that flags and environment go through the same reader (:func:`_layer`)."""
    tables = ", ".join(f"[{name}]" for name, d in declarations() if d.kind == "table")
    parser = argparse.ArgumentParser(
        prog="sers-hub",
        description="sers-monitor hub: collects node agents' state and serves the live dashboard.",
        epilog=f"Flags override SERS_* environment variables, which override the --config file. "
        f"An empty flag or variable counts as not given. TOML only: {tables}. "
        f"Every setting: docs/settings.md.",
    )
    parser.add_argument("--version", action="version", version=f"sers-hub {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", dest=CONFIG_ENV, help=f"TOML settings file [{CONFIG_ENV}]"
    )
    for name, declared in declarations():
        if declared.kind == "table":
            continue
        assert declared.flag is not None and declared.env is not None
        default = _default_text(name, declared, env)
        parser.add_argument(
            declared.flag,
            dest=declared.env,
            metavar=declared.metavar,
            help=f"{declared.help} (default: {default}) [{declared.env}]".replace("%", "%%"),
        )
        if declared.from_file:
            parser.add_argument(
                _file_flag(declared),
                dest=_file_env(declared),
                metavar="FILE",
                help=f"read {declared.flag}'s value from FILE [{_file_env(declared)}]",
            )
    return parser


# --------------------------------------------------------------------------- reading
def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config: {path} is not valid TOML: {exc}") from None


def _toml_layer(doc: Mapping[str, Any], path: str | None) -> dict[str, Any]:
    declared = dict(declarations())
    values: dict[str, Any] = {}
    for key, raw in doc.items():
        if key not in declared:
            raise SettingsError(f"{key}: unknown setting in {path}")
        kind = declared[key].kind
        table = declared[key].table
        if table is not None:
            values[key] = table(raw, key)
        elif kind == "list":
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise SettingsError(f"{key}: expected a list of strings, got {raw!r}")
            if raw:  # an empty list, like an empty string, is not given
                values[key] = tuple(raw)
        elif not (isinstance(raw, str) and given(raw) is None):
            values[key] = _convert(key, _SCALAR_TYPES[kind], raw)
    return values


def _parse(label: str, declared: Declaration, raw: str) -> Any:
    """A flag's or variable's value; ``None`` for a list with no items (not given)."""
    if declared.kind == "list":
        items = tuple(x.strip() for x in raw.split(",") if x.strip())
        return items or None
    return _convert(label, _SCALAR_TYPES[declared.kind], raw)


def _layer(source: Mapping[str, str | None], flags: bool) -> dict[str, Any]:
    """The settings given in ``source``: the environment, or the parsed flags keyed by env name.

    Error messages name the flag (``flags``) or the variable.
    """
    values: dict[str, Any] = {}
    for name, declared in declarations():
        if declared.env is None or declared.flag is None:
            continue
        label = declared.flag if flags else declared.env
        raw = given(source.get(declared.env))
        value = _parse(label, declared, raw) if raw is not None else None
        if value is None and declared.from_file:
            path = given(source.get(_file_env(declared)))
            if path is not None:
                try:
                    value = read_token_file(path)
                except ValueError as exc:
                    raise SettingsError(
                        f"{_file_flag(declared) if flags else _file_env(declared)}: {exc}"
                    ) from None
        if value is not None:
            values[name] = value
    return values


def load_settings(argv: Sequence[str] | None, env: Mapping[str, str] = os.environ) -> HubSettings:
    flags: dict[str, str | None] = vars(build_parser(env).parse_args(argv))
    config_path = given(flags[CONFIG_ENV]) or env_value(env, CONFIG_ENV)
    values = _toml_layer(_from_toml(config_path) if config_path else {}, config_path)
    values |= _layer(env, flags=False)
    values |= _layer(flags, flags=True)
    for name, declared in declarations():
        if name not in values and declared.default_from_env is not None:
            values[name] = declared.default_from_env(env)
    return _checked(replace(HubSettings(), **values))


_ROOT_PATH_RE = re.compile(r"(/[A-Za-z0-9\-._~%!$&'()*+,;=:@]+)+")


def _proxy_addresses(raw: str) -> str:
    """``forwarded_allow_ips`` as uvicorn takes it, checked: uvicorn believes anything it cannot
    parse as an address or network to be a literal peer name (one no TCP peer has), and ``*``
    only alone, so a typo or ``*,10.0.0.1`` would quietly trust no proxy. No items (``,``) is
    the default, as for the other lists."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        return DEFAULT_FORWARDED_ALLOW_IPS
    if "*" in items:
        if len(items) > 1:
            raise SettingsError(f"forwarded_allow_ips: '*' (every peer) stands alone, got {raw!r}")
        return "*"
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                f"forwarded_allow_ips: {item!r} is not an IP address or network (such as 10.0.0.0/8)"
            ) from None
    return ",".join(items)


def _checked(settings: HubSettings) -> HubSettings:
    if not 0 < settings.port < 65536:
        raise SettingsError(f"port: must be 1..65535, got {settings.port}")
    root = settings.root_path.rstrip("/")
    if root and not root.startswith("/"):
        raise SettingsError(f"root_path: must start with '/', got {settings.root_path!r}")
    if root and not _ROOT_PATH_RE.fullmatch(root):
        # pages put it in <base href>: "//host" there is another site, "\\" a slash to browsers
        raise SettingsError(
            f"root_path: a path such as /monitor (segments of letters, digits and -._~%!$&'()*+,;=:@ "
            f"between single slashes), got {settings.root_path!r}"
        )
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"log_level: unknown level {settings.log_level!r}")
    for name in (
        "viewer_max_rate_hz",
        "agent_max_messages_per_s",
        "viewer_send_timeout_s",
        "header_timeout_s",
    ):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{name}: must be positive")
    if settings.max_nodes < 1:
        raise SettingsError(f"max_nodes: must be at least 1, got {settings.max_nodes}")
    for pattern in settings.trusted_hosts:
        if "*" in pattern[1:] or (
            pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")
        ):
            raise SettingsError(f"trusted_hosts: {pattern!r} must be a host name, '*.domain' or '*'")
    from hub.security import normalize_origin  # hub.security builds on these settings

    for origin in settings.allowed_origins:
        if origin != "*" and normalize_origin(origin) is None:
            # the origin check would never match it: the wall it names would get 403s
            raise SettingsError(
                f"allowed_origins: {origin!r} is not an origin such as https://wall.lab or http://10.0.0.5:8080"
            )
    return replace(
        settings,
        forwarded_allow_ips=_proxy_addresses(settings.forwarded_allow_ips),
        root_path=root,
        log_level=settings.log_level.upper(),
        agent_token=settings.agent_token or None,
        view_token=settings.view_token or None,
        admin_token=settings.admin_token or None,
        state_db=None if settings.state_db in (None, "", NO_STATE_DB) else settings.state_db,
    )


# --------------------------------------------------------------------------- docs/settings.md
def settings_reference() -> str:
    """``docs/settings.md``: every hub setting with its flag, variable, TOML key and default."""
    lines = [
        "# Hub settings",
        "",
        "<!-- Generated from hub/settings.py by `python -m hub.settings > docs/settings.md`; "
        "tests/test_settings.py checks that it is current. -->",
        "",
        "Each setting can be given as a flag, an environment variable or a key in the TOML file named",
        f"by `--config FILE` (`{CONFIG_ENV}`). A flag beats a variable, which beats the file, which beats",
        "the default. An empty flag or variable counts as not given. Settings that can come from a file",
        "(`--token-file`, `SERS_TOKEN_FILE`) read it at startup; the file must not be empty.",
        "",
        "| TOML key | flag | environment | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, declared in declarations():
        if declared.kind == "table":
            flag, env = "(TOML table)", "—"
            default = "none" if name in ("node_tokens", "names", "alerts") else "see meaning"
        else:
            flag = f"`{declared.flag} {declared.metavar}`"
            env = f"`{declared.env}`"
            if declared.from_file:
                flag += f", `{_file_flag(declared)} FILE`"
                env += f", `{_file_env(declared)}`"
            default = _default_text(name, declared, None)
            default = default if default.startswith("`") else f"`{default}`"
        lines.append(f"| `{name}` | {flag} | {env} | {default} | {declared.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_reference())
