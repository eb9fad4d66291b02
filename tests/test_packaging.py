"""The distribution builds cleanly: an sdist, then a wheel from that sdist (as ``python -m build``
does), with no setuptools warning, the license declared as SPDX and shipped, and every template
and static file inside both."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent

# What a checkout may hold besides the sources: never part of a build's input.
LEFTOVERS = {
    ".git",
    ".venv",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
}


def _ignore_leftovers(_folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in LEFTOVERS or n.endswith(".egg-info") or ".sqlite3" in n}


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _frontend_files() -> set[str]:
    return {
        str(path.relative_to(REPO))
        for folder in ("templates", "static")
        for path in (REPO / "frontend" / folder).iterdir()
        if path.is_file()
    }


class Built(NamedTuple):
    logs: str  # the build's output, sdist and wheel
    sdist_root: str  # the folder every sdist member sits under
    sdist_names: list[str]
    wheel_names: list[str]
    metadata: str  # the wheel's METADATA


HOOK = (
    "import sys; from setuptools import build_meta as b; print('built', getattr(b, sys.argv[1])(sys.argv[2]))"
)


@pytest.fixture(scope="module")
def backend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PYTHONPATH holds the setuptools that pyproject.toml asks for, as
    pip's isolated build environment would."""
    backend = tmp_path_factory.mktemp("backend")
    requirement = re.search(r'requires = \["(setuptools[^"]*)"\]', (REPO / "pyproject.toml").read_text())
    assert requirement is not None
    # PYTHONDONTWRITEBYTECODE makes setuptools warn that it skips byte-compiling: not ours to judge
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(backend), requirement[1]], backend, env
    )
    return {**env, "PYTHONPATH": str(backend)}


def _build(hook: str, source: Path, out: Path, env: dict[str, str]) -> str:
    return _run([sys.executable, "-W", "always", "-c", HOOK, hook, str(out)], source, env)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, backend_env: dict[str, str]) -> Built:
    tmp = tmp_path_factory.mktemp("dist")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_ignore_leftovers)
    out = tmp / "out"
    sdist_log = _build("build_sdist", source, out, backend_env)
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = archive.getnames()
        archive.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel_log = _build("build_wheel", unpacked, out, backend_env)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = archive.namelist()
        metadata = archive.read(next(n for n in wheel_names if n.endswith(".dist-info/METADATA"))).decode()
    return Built(sdist_log + wheel_log, unpacked.name, sdist_names, wheel_names, metadata)


def test_the_image_build_context_holds_everything_the_build_needs(
    tmp_path: Path, backend_env: dict[str, str]
) -> None:
    """The Dockerfile builds from what .dockerignore lets in (``*``, then ``!path`` lines)."""
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    context = tmp_path / "context"
    context.mkdir()
    for name in allowed:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, context / name, ignore=_ignore_leftovers)
        else:
            shutil.copy(REPO / name, context / name)
    log = _build("build_wheel", context, tmp_path / "out", backend_env)
    # a missing license file is a warning today and an error from 2027 on
    assert [line for line in log.splitlines() if re.search("warn", line, re.IGNORECASE)] == [], log
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())


def test_the_build_prints_no_warning(built: Built) -> None:
    warnings = [line for line in built.logs.splitlines() if re.search("warn", line, re.IGNORECASE)]
    assert warnings == [], built.logs


def test_every_template_and_static_file_is_in_the_sdist_and_the_wheel(built: Built) -> None:
    expected = _frontend_files()
    assert any(name.endswith(".html") for name in expected)
    assert any(name.endswith(".js") for name in expected)
    assert expected <= {name.removeprefix(built.sdist_root + "/") for name in built.sdist_names}
    assert expected <= set(built.wheel_names)


def test_the_license_is_spdx_mit_and_shipped(built: Built) -> None:
    assert "License-Expression: MIT" in built.metadata.splitlines()
    assert "License-File: LICENSE" in built.metadata.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in built.wheel_names)
    assert f"{built.sdist_root}/LICENSE" in built.sdist_names
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_only_the_products_packages_are_installed(built: Built) -> None:
    top_levels = {name.split("/")[0] for name in built.wheel_names if "/" in name}
    assert {t for t in top_levels if not t.endswith(".dist-info")} == {"hub", "node_agent", "frontend"}
