"""Real ``sers-hub`` processes started against state files they cannot use, or can use only in
part: each serves, takes agents, says what is wrong in one log line and never prints a traceback.
Cases about permissions run the hub as ``nobody`` when the tests run as root (root reads
anything)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub.store import SKIPPED_LOGGED
from tests.procs import REPO, Hub, Proc, base_env, free_port, spawn, start_agent, wait_until
from tests.test_store import (
    bad_rows,
    digest,
    hub_file,
    locked,
    not_sqlite,
    other_programs_nodes_table,
    truncated,
)

NOBODY = 65534
WITHOUT_MEMORY = "Live monitoring goes on without remembering nodes"


def as_unprivileged() -> list[str]:
    """The command prefix that runs a process as a user file permissions apply to."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@contextlib.contextmanager
def traversable_ancestors(path: Path) -> Iterator[None]:
    """Lets every user pass through (``o+x``, not read) the folders above ``path`` while a test
    runs, so ``nobody`` can run this checkout's interpreter and import its code even from a
    clone in a root-only folder (``mktemp -d``); each mode is put back afterwards."""
    opened = []
    for folder in path.resolve().parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            opened.append((folder, stat.S_IMODE(mode)))
    try:
        yield
    finally:
        for folder, mode in opened:
            folder.chmod(mode)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder ``nobody`` can reach (pytest's tmp_path sits under a root-only folder), with this
    checkout reachable by ``nobody`` too."""
    folder = Path(tempfile.mkdtemp(prefix="sers-store-"))
    folder.chmod(0o755)
    with traversable_ancestors(REPO / "hub") if os.geteuid() == 0 else contextlib.nullcontext():
        yield folder
    for path in (folder, *folder.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def start_hub(tmp: Path, state_db: Path, procs: list[Proc], prefix: list[str] | None = None) -> Hub:
    hub = Hub(port=free_port(), tmp=tmp, env={"SERS_STATE_DB": str(state_db)})
    if prefix:
        args = [*prefix, sys.executable, "-m", "hub", "--port", str(hub.port)]
        hub.proc = spawn(args, tmp / f"hub-{hub.port}.log", hub.env)
        procs.append(hub.proc)
        wait_until(hub._healthy, 15, what=f"hub on port {hub.port} to answer /healthz")
    else:
        hub.start()
        assert hub.proc is not None
        procs.append(hub.proc)
    return hub


def serves_agents(hub: Hub, procs: list[Proc]) -> None:
    procs.append(start_agent(hub, "live1"))
    hub.wait_status("live1", "live")


def lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def stop(hub: Hub) -> str:
    """Stops the hub (SIGTERM: its last write runs) and returns its whole log."""
    assert hub.proc is not None
    hub.proc.stop()
    log = hub.proc.log()
    assert "Application shutdown complete" in log, log
    assert "Traceback" not in log, log
    return log


def unreadable(path: Path) -> None:
    hub_file(path, "n1")
    path.chmod(0)


def read_only_folder_without_file(path: Path) -> None:
    path.parent.chmod(0o555)


def read_only_folder_with_file(path: Path) -> None:
    hub_file(path, "n1")
    path.chmod(0o666)  # the file itself is writable; SQLite needs its -wal and -shm beside it
    path.parent.chmod(0o555)


UNUSABLE: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    # case: (make the file, what the log line says, run as an unprivileged user)
    "not sqlite": (not_sqlite, "is not an SQLite file", False),
    "truncated": (truncated, "is damaged (database disk image is malformed)", False),
    "another program's nodes table": (other_programs_nodes_table, "is not a sers-hub state file", False),
    "unreadable": (unreadable, "cannot open the state file", True),
    "read-only folder, no file": (read_only_folder_without_file, "cannot create the state file", True),
    "read-only folder": (
        read_only_folder_with_file,
        "needs to read and write it and to create files in",
        True,
    ),
}


@pytest.mark.parametrize("case", UNUSABLE)
def test_hub_runs_without_memory_on_a_file_it_cannot_use(
    case: str, shared_tmp: Path, procs: list[Proc]
) -> None:
    make, problem, unprivileged = UNUSABLE[case]
    folder = shared_tmp / "state"
    folder.mkdir()
    path = folder / "hub.sqlite3"
    make(path)
    before = digest(path) if path.exists() else None
    hub = start_hub(shared_tmp, path, procs, as_unprivileged() if unprivileged else None)
    serves_agents(hub, procs)
    log = stop(hub)
    [line] = lines_with(log, WITHOUT_MEMORY)
    assert problem in line and str(path) in line, line
    after = digest(path) if path.exists() else None
    assert after == before, "the file is left as it was"


def test_hub_skips_rows_it_cannot_read(tmp_path: Path, procs: list[Proc]) -> None:
    path = hub_file(tmp_path / "hub.sqlite3", "remembered")
    bad_rows(path)
    hub = start_hub(tmp_path, path, procs)
    assert hub.status("remembered") == "offline"
    serves_agents(hub, procs)
    log = stop(hub)
    assert len(lines_with(log, "which cannot be read")) == SKIPPED_LOGGED + 1
    assert not lines_with(log, WITHOUT_MEMORY)


def test_hub_waits_out_a_lock_without_holding_anything_up(tmp_path: Path, procs: list[Proc]) -> None:
    path = hub_file(tmp_path / "hub.sqlite3", "remembered")
    with locked(path):
        hub = start_hub(tmp_path, path, procs)
        serves_agents(hub, procs)
        assert hub.status("remembered") is None
    assert hub.proc is not None
    proc = hub.proc
    wait_until(lambda: "usable again" in proc.log(), 25, what="the hub to take the file once freed")
    hub.wait_status("remembered", "offline")
    log = stop(hub)
    [line] = lines_with(log, WITHOUT_MEMORY)
    assert "is locked by another program" in line
    restarted = start_hub(tmp_path, path, procs)
    assert restarted.status("live1") == "offline", "the node seen while locked was written after"


def test_state_file_is_private_and_written_anew_when_deleted(tmp_path: Path, procs: list[Proc]) -> None:
    path = tmp_path / "hub.sqlite3"
    hub = start_hub(tmp_path, path, procs)
    agent = start_agent(hub, "live1")
    procs.append(agent)
    hub.wait_status("live1", "live")

    def modes() -> dict[str, int]:
        return {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("hub.sqlite3*")}

    wait_until(lambda: len(modes()) == 3, 10, what="the state file and its -wal and -shm")
    assert modes() == {"hub.sqlite3": 0o600, "hub.sqlite3-wal": 0o600, "hub.sqlite3-shm": 0o600}

    for side in tmp_path.glob("hub.sqlite3*"):
        side.unlink()
    agent.stop()  # a change to write: the hub finds its file gone
    hub.wait_status("live1", "offline")
    wait_until(path.exists, 15, what="the hub to write a new state file")
    log = stop(hub)
    assert lines_with(log, "was deleted while the hub ran")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = start_hub(tmp_path, path, procs)
    assert restarted.status("live1") == "offline"


FORGET: dict[str, tuple[Callable[[Path], None] | None, str]] = {
    "missing": (None, "there is no state file"),
    "not sqlite": (not_sqlite, "is not an SQLite file"),
    "another program's nodes table": (other_programs_nodes_table, "is not a sers-hub state file"),
    "truncated": (truncated, "is damaged"),
}


@pytest.mark.parametrize("case", FORGET)
def test_forget_says_what_is_wrong_with_the_file(case: str, tmp_path: Path) -> None:
    make, problem = FORGET[case]
    path = tmp_path / "hub.sqlite3"
    if make is not None:
        make(path)
    before = digest(path) if path.exists() else None
    command = [sys.executable, "-m", "hub", "forget", "n1", "--state-db", str(path)]
    done = subprocess.run(command, cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("sers-hub forget: error: ") and problem in done.stderr
    assert "Traceback" not in done.stderr
    assert (digest(path) if path.exists() else None) == before
