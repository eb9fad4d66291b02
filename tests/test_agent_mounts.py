"""The agent reports each filesystem once, however often its mount is named."""

from __future__ import annotations

import pytest

from node_agent.host import HostCollector
from node_agent.settings import load_settings


@pytest.mark.parametrize(
    ("argv", "env", "mounts"),
    [
        (["--mount", "/", "--mount", "/"], {}, ("/",)),
        (
            ["--mount", "/tmp/", "--mount", "/", "--mount", "/tmp", "--mount", "//", "--mount", "/tmp/./"],
            {},
            ("/tmp", "/"),
        ),
        ([], {"SERS_MOUNTS": "/, /tmp,/tmp/,,/"}, ("/", "/tmp")),
        ([], {"SERS_MOUNTS": ","}, ("/",)),
        ([], {}, ("/",)),
    ],
    ids=["twice", "spellings", "env", "env-empty", "default"],
)
def test_mounts_are_normalised_and_kept_once_in_order(
    argv: list[str], env: dict[str, str], mounts: tuple[str, ...]
) -> None:
    assert load_settings(argv, env).mounts == mounts


def test_a_mount_named_twice_is_sampled_once() -> None:
    settings = load_settings(["--mount", "/", "--mount", "/", "--mount", "//"], {})
    disks = HostCollector(settings.mounts).sample().disks  # as the agent builds its collector
    assert disks is not None and [d.mount for d in disks] == ["/"]
