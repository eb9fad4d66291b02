"""A process group leader and everything it starts, found by session id, so a test can tell
whether a launcher left anything running after it exited (orphans keep their session)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def session_members(session_id: int) -> dict[int, str]:
    """Live (not zombie) processes of ``session_id``: pid -> command line."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # it exited meanwhile
            continue
        # the fields after the command name (which may hold spaces and parentheses)
        state, _ppid, _pgrp, session = stat.rpartition(")")[2].split()[:4]
        if int(session) == session_id and state != "Z":
            members[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return members


def start_session(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Starts ``argv`` as the leader of a new session (its pid is the session id), as a
    terminal's foreground job: a signal to the group reaches every process, as Ctrl-C does."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_session(session_id: int) -> None:
    """Cleanup after a failed test: SIGKILL whatever is left in the session."""
    for pid in session_members(session_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
