"""Hub and agent settings: one declaration per hub setting (flags, env, TOML, docs/settings.md
derived from it), precedence, and the shared rule that an empty flag or ``SERS_*`` variable is
not given, so it never switches off a token set further down."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.__main__ import warn_if_open
from hub.registry import Naming
from hub.settings import (
    HubSettings,
    SettingsError,
    build_parser,
    declarations,
    default_state_db,
    load_settings,
    settings_reference,
)
from node_agent import settings as agent_settings
from node_agent.protocol import MAX_STRING_CHARS
from tests.procs import REPO, base_env

# Three distinct values per flag-and-env setting: for the TOML file, the environment, the flag.
SAMPLES: dict[str, tuple[str, str, str]] = {
    "host": ("0.0.0.0", "::", "10.0.0.5"),
    "port": ("9001", "9002", "9003"),
    "root_path": ("/a", "/b", "/c"),
    "log_level": ("DEBUG", "WARNING", "ERROR"),
    "agent_token": ("toml-agent", "env-agent", "flag-agent"),
    "view_token": ("toml-view", "env-view", "flag-view"),
    "admin_token": ("toml-admin", "env-admin", "flag-admin"),
    "trusted_hosts": ("a.lab", "b.lab,c.lab", "d.lab"),
    "allowed_origins": ("https://a.lab", "https://b.lab", "https://c.lab"),
    "forwarded_allow_ips": ("10.0.0.1", "10.0.0.2", "10.0.0.3"),
    "viewer_max_rate_hz": ("1.5", "2.5", "3.5"),
    "viewer_send_timeout_s": ("4", "5", "6"),
    "agent_max_messages_per_s": ("7", "8", "9"),
    "max_nodes": ("11", "12", "13"),
    "state_db": ("/s/toml.sqlite3", "/s/env.sqlite3", "/s/flag.sqlite3"),
    "history_s": ("60", "120", "180"),
    "header_timeout_s": ("1", "2", "3"),
}
FLAGGED = [(name, d) for name, d in declarations() if d.kind != "table"]
FILE_SETTINGS = [(name, d) for name, d in FLAGGED if d.from_file]
NO_STATE_ENV = {"HOME": "/nonexistent-home"}  # keeps the state_db default off the real home


def toml_line(name: str, raw: str) -> str:
    kind = dict(declarations())[name].kind
    if kind in ("int", "float"):
        return f"{name} = {raw}\n"
    if kind == "list":
        return f"{name} = {[x for x in raw.split(',')]!r}\n".replace("'", '"')
    return f'{name} = "{raw}"\n'


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return str(path)


def test_every_flagged_setting_has_samples() -> None:
    assert sorted(SAMPLES) == sorted(name for name, _ in FLAGGED)


@pytest.mark.parametrize(("name", "declared"), FLAGGED, ids=[n for n, _ in FLAGGED])
def test_flag_beats_env_beats_toml_beats_default(name: str, declared: Any, tmp_path: Path) -> None:
    in_toml, in_env, in_flag = SAMPLES[name]
    config = config_file(tmp_path, toml_line(name, in_toml))
    env = {**NO_STATE_ENV, declared.env: in_env}

    def value(argv: list[str], environment: dict[str, str]) -> Any:
        return getattr(load_settings(argv, env={**NO_STATE_ENV, **environment}), name)

    from_toml = value(["--config", config], {})
    from_env = value([], {declared.env: in_env})
    from_flag = value([declared.flag, in_flag], {})
    default = value([], {})
    assert len({repr(v) for v in (default, from_toml, from_env, from_flag)}) == 4
    assert value(["--config", config], env) == from_env
    assert value(["--config", config, declared.flag, in_flag], env) == from_flag


@pytest.mark.parametrize("blank", ["", "  "])
@pytest.mark.parametrize(("name", "declared"), FLAGGED, ids=[n for n, _ in FLAGGED])
def test_an_empty_flag_or_variable_is_not_given(name: str, declared: Any, blank: str, tmp_path: Path) -> None:
    """SERS_TOKEN= (as Compose and systemd set it) must not switch off a token in the TOML file."""
    config = config_file(tmp_path, toml_line(name, SAMPLES[name][0]))
    expected = getattr(load_settings(["--config", config], env=NO_STATE_ENV), name)
    env = {**NO_STATE_ENV, declared.env: blank}
    if declared.from_file:
        env[f"{declared.env}_FILE"] = blank
    argv = ["--config", config, declared.flag, blank]
    assert getattr(load_settings(argv, env=env), name) == expected
    assert getattr(load_settings(["--config", config], env=env), name) == expected


def test_empty_variables_keep_the_files_tokens_end_to_end(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'agent_token = "a"\nview_token = "v"\nadmin_token = "adm"\n')
    env = {"SERS_TOKEN": "", "SERS_VIEW_TOKEN": "", "SERS_ADMIN_TOKEN": "", "SERS_CONFIG": config}
    settings = load_settings(["--token", ""], env={**NO_STATE_ENV, **env})
    assert (settings.agent_token, settings.view_token, settings.admin_token) == ("a", "v", "adm")


@pytest.mark.parametrize(("name", "declared"), FILE_SETTINGS, ids=[n for n, _ in FILE_SETTINGS])
def test_token_files(name: str, declared: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    file_flag, file_env = f"{declared.flag}-file", f"{declared.env}_FILE"

    def value(argv: list[str], env: dict[str, str]) -> Any:
        return getattr(load_settings(argv, env={**NO_STATE_ENV, **env}), name)

    assert value([file_flag, str(token_file)], {}) == "from-file"
    assert value([], {file_env: str(token_file)}) == "from-file"
    assert value([file_flag, str(token_file)], {declared.env: "env"}) == "from-file", "a flag beats env"
    assert value([], {declared.env: "env", file_env: str(token_file)}) == "env", "the token beats its file"
    assert value([declared.flag, "flag", file_flag, str(token_file)], {}) == "flag"

    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match=f"^{file_flag}: .* is empty"):
        load_settings([file_flag, str(empty)], env=NO_STATE_ENV)
    with pytest.raises(SettingsError, match=f"^{file_env}: .* is empty"):
        load_settings([], env={**NO_STATE_ENV, file_env: str(empty)})
    with pytest.raises(SettingsError, match=f"^{file_env}: cannot read"):
        load_settings([], env={**NO_STATE_ENV, file_env: str(tmp_path / "missing")})


def test_bad_values_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^--port: expected int"):
        load_settings(["--port", "x"], env=NO_STATE_ENV)
    with pytest.raises(SettingsError, match=r"^SERS_MAX_NODES: expected int"):
        load_settings([], env={**NO_STATE_ENV, "SERS_MAX_NODES": "many"})
    with pytest.raises(SettingsError, match=r"^port: expected int"):
        load_settings(["--config", config_file(tmp_path, "port = true\n")], env=NO_STATE_ENV)
    with pytest.raises(SettingsError, match=r"^nope: unknown setting"):
        load_settings(["--config", config_file(tmp_path, "nope = 1\n")], env=NO_STATE_ENV)
    with pytest.raises(SettingsError, match=r"^header_timeout_s: must be positive"):
        load_settings(["--header-timeout-s", "0"], env=NO_STATE_ENV)


def test_toml_tables_still_load(tmp_path: Path) -> None:
    config = config_file(
        tmp_path,
        '[node_tokens]\ngpu07 = "t7"\n[liveness]\nstale_after_intervals = 2\n'
        '[gpu_free]\nmax_util_percent = 20\n[names."gpu07"]\ngroup = "A100 room"\n',
    )
    settings = load_settings(["--config", config], env=NO_STATE_ENV)
    assert settings.node_tokens == {"gpu07": "t7"}
    assert settings.liveness.stale_after_intervals == 2.0
    assert settings.gpu_free.max_util_percent == 20.0
    assert settings.names["gpu07"].group == "A100 room"


@pytest.mark.parametrize(
    "root_path", ["//evil.example", "/mon//x", "/\\evil.example", "/mon?x", "/mon#x", "/a b", '/"x']
)
def test_root_path_that_would_not_stay_on_the_hub_is_refused(root_path: str) -> None:
    """The pages put the root path in ``<base href>``: ``//evil.example/`` there loads the
    script and styles from another site, ``/\\`` reads as ``//``, ``?`` and ``#`` end the path."""
    with pytest.raises(SettingsError, match=r"^root_path: a path such as /monitor"):
        load_settings(["--root-path", root_path], env=NO_STATE_ENV)


@pytest.mark.parametrize(
    ("root_path", "kept"), [("/monitor/", "/monitor"), ("/a/b-c_d.e~%41", "/a/b-c_d.e~%41"), ("/", "")]
)
def test_root_path_of_plain_segments_is_kept(root_path: str, kept: str) -> None:
    assert load_settings(["--root-path", root_path], env=NO_STATE_ENV).root_path == kept


@pytest.mark.parametrize(
    ("given_ips", "kept"),
    [
        (",", "127.0.0.1"),
        (" , ", "127.0.0.1"),
        ("10.0.0.1, ,10.1.0.0/16,", "10.0.0.1,10.1.0.0/16"),
        ("*", "*"),
        ("::1, fd00::/8", "::1,fd00::/8"),
    ],
)
def test_forwarded_allow_ips_without_items_is_the_default_and_items_are_kept(
    given_ips: str, kept: str
) -> None:
    settings = load_settings([], env={**NO_STATE_ENV, "SERS_FORWARDED_ALLOW_IPS": given_ips})
    assert settings.forwarded_allow_ips == kept


@pytest.mark.parametrize(
    ("given_ips", "problem"),
    [
        ("10.0.0.l", "'10.0.0.l' is not an IP address"),
        ("proxy.lab", "'proxy.lab' is not"),
        ("*,10.0.0.1", "'*'"),
    ],
)
def test_forwarded_allow_ips_that_uvicorn_would_quietly_never_match_are_refused(
    given_ips: str, problem: str
) -> None:
    """uvicorn takes what is not an address as a literal peer name, and ``*`` only alone: each
    of these would trust no proxy at all, without a word."""
    with pytest.raises(SettingsError, match=rf"^forwarded_allow_ips: {re.escape(problem)}"):
        load_settings(["--forwarded-allow-ips", given_ips], env=NO_STATE_ENV)


@pytest.mark.parametrize("origin", ["wall.lab", "https://wall.lab/page", "ftp://wall.lab", "https://"])
def test_allowed_origins_that_no_browser_sends_are_refused(origin: str) -> None:
    """An origin the check can never match would leave the wall it names with 403s."""
    with pytest.raises(SettingsError, match=rf"^allowed_origins: {re.escape(repr(origin))} is not an origin"):
        load_settings(["--allowed-origins", f"https://ok.lab,{origin}"], env=NO_STATE_ENV)
    kept = load_settings(["--allowed-origins", "https://ok.lab, http://10.0.0.5:8080/,*"], env=NO_STATE_ENV)
    assert kept.allowed_origins == ("https://ok.lab", "http://10.0.0.5:8080/", "*")


def test_toml_names_and_node_tokens_with_empty_or_long_texts(tmp_path: Path) -> None:
    """An empty group or display name is none (not a group called "", sorted before every
    named one); an empty node token is an error, since either reading of it changes who may
    connect; a name past the protocol's string limit is refused, as the state file would
    refuse it when the hub reads the name back."""
    config = config_file(
        tmp_path, '[names."gpu07"]\ngroup = ""\ndisplay_name = " "\n[names."gpu08"]\ngroup = "A"\n'
    )
    settings = load_settings(["--config", config], env=NO_STATE_ENV)
    assert settings.names["gpu07"] == Naming(display_name=None, group=None)
    assert settings.names["gpu08"] == Naming(display_name=None, group="A")
    for blank in ('""', '"  "'):
        config = config_file(tmp_path, f'agent_token = "t"\n[node_tokens]\ngpu07 = {blank}\n')
        with pytest.raises(SettingsError, match=r"^node_tokens\.gpu07: an empty token"):
            load_settings(["--config", config], env=NO_STATE_ENV)
    config = config_file(tmp_path, '[names."gpu07"]\ngroup = "Room A, B"\n')
    with pytest.raises(SettingsError, match=r"^names\.gpu07\.group: no ','"):
        load_settings(["--config", config], env=NO_STATE_ENV)
    config = config_file(tmp_path, f'[names."gpu07"]\ndisplay_name = "{"x" * (MAX_STRING_CHARS + 1)}"\n')
    with pytest.raises(SettingsError, match=rf"^names\.gpu07\.display_name: longer than {MAX_STRING_CHARS}"):
        load_settings(["--config", config], env=NO_STATE_ENV)


# --------------------------------------------------------------------------- the state file
def test_state_db_default_follows_systemd_then_xdg() -> None:
    assert default_state_db({"STATE_DIRECTORY": "/var/lib/sers-hub:/var/lib/other"}) == (
        "/var/lib/sers-hub/hub.sqlite3"
    )
    assert (
        default_state_db({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == "/x/state/sers-monitor/hub.sqlite3"
    )
    assert default_state_db({"XDG_STATE_HOME": "relative", "HOME": "/h"}) == (
        "/h/.local/state/sers-monitor/hub.sqlite3"
    )
    assert (
        default_state_db({"XDG_STATE_HOME": "", "HOME": "/h"}) == "/h/.local/state/sers-monitor/hub.sqlite3"
    )
    assert load_settings([], env={"STATE_DIRECTORY": "/sd"}).state_db == "/sd/hub.sqlite3"
    assert load_settings(["--state-db", "none"], env={"STATE_DIRECTORY": "/sd"}).state_db is None
    assert load_settings([], env={"STATE_DIRECTORY": "/sd", "SERS_STATE_DB": "none"}).state_db is None


def test_help_shows_the_resolved_state_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "500")  # no line breaks inside the paths
    help_text = build_parser({"STATE_DIRECTORY": "/var/lib/sers-hub"}).format_help()
    assert "(default: /var/lib/sers-hub/hub.sqlite3)" in help_text
    help_text = build_parser({"HOME": "/home/ann"}).format_help()
    assert "(default: /home/ann/.local/state/sers-monitor/hub.sqlite3)" in help_text


# --------------------------------------------------------------------------- --help, docs
def test_help_lists_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub", "--help"],
        capture_output=True,
        text=True,
        env=base_env({"COLUMNS": "500"}),
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 0
    for name, declared in declarations():
        if declared.kind == "table":
            assert f"[{name}]" in result.stdout, name
        else:
            assert f"{declared.flag} {declared.metavar}" in result.stdout, name
            assert f"[{declared.env}]" in result.stdout, name


def test_docs_settings_md_is_generated_from_the_declarations() -> None:
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == settings_reference(), (
        "docs/settings.md is out of date: python -m hub.settings > docs/settings.md"
    )
    for name, _ in declarations():
        assert f"| `{name}` |" in committed


def test_versions() -> None:
    for module, prog in (("hub", "sers-hub"), ("node_agent", "sers-agent")):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            env=base_env(),
            cwd=REPO,
            timeout=30,
        )
        assert result.returncode == 0
        assert result.stdout.strip() == f"{prog} {agent_settings.__version__}"


# --------------------------------------------------------------------------- startup warnings
def test_wildcard_trusted_hosts_on_a_public_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("sers.test")
    tokens = {"agent_token": "a", "view_token": "v"}
    with caplog.at_level(logging.WARNING, logger="sers.test"):
        warn_if_open(HubSettings(host="0.0.0.0", **tokens), log)
    rebinding = [r.getMessage() for r in caplog.records if "DNS rebinding" in r.getMessage()]
    assert len(rebinding) == 1 and "trusted_hosts is '*' on 0.0.0.0" in rebinding[0]
    assert "--trusted-hosts" in rebinding[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sers.test"):
        warn_if_open(HubSettings(host="0.0.0.0", trusted_hosts=("hub.lab",), **tokens), log)
        warn_if_open(HubSettings(host="127.0.0.1", **tokens), log)
        warn_if_open(HubSettings(host="::1", **tokens), log)
    assert caplog.records == []


# --------------------------------------------------------------------------- the agent
def test_agent_empty_flags_and_variables_are_not_given(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    load = agent_settings.load_settings
    assert load(["--token", ""], env={"SERS_TOKEN": "env"}).token == "env"
    assert (
        load(["--token", " "], env={"SERS_TOKEN": "", "SERS_TOKEN_FILE": str(token_file)}).token
        == "from-file"
    )
    assert load(["--token-file", str(token_file)], env={"SERS_TOKEN": "env"}).token == "from-file", (
        "a flag beats a variable, the token file's flag too"
    )
    assert (
        load(["--hub", ""], env={"SERS_HUB_URL": "http://hub.lab:8000"}).hub_url
        == "ws://hub.lab:8000/ws/agent"
    )
    assert load(["--name", ""], env={"SERS_NODE_NAME": "gpu07"}).node_name == "gpu07"
    assert load([], env={"SERS_LOG_LEVEL": "", "SERS_INTERVAL": " "}).interval_s == 1.0


def test_agent_empty_token_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(agent_settings.SettingsError, match=r"^--token-file: .* is empty"):
        agent_settings.load_settings(["--token-file", str(empty)], env={})
    with pytest.raises(agent_settings.SettingsError, match=r"^SERS_TOKEN_FILE: .* is empty"):
        agent_settings.load_settings([], env={"SERS_TOKEN_FILE": str(empty)})


def test_agent_nvml_retry_is_a_setting() -> None:
    load = agent_settings.load_settings
    assert load([], env={}).nvml_retry_s == 60.0
    assert load([], env={"SERS_NVML_RETRY_S": "0.5"}).nvml_retry_s == 0.5
    assert load(["--nvml-retry", "5"], env={"SERS_NVML_RETRY_S": "0.5"}).nvml_retry_s == 5.0
    with pytest.raises(
        agent_settings.SettingsError, match="--nvml-retry / SERS_NVML_RETRY_S: must be between"
    ):
        load(["--nvml-retry", "0"], env={})
