"""Who owns a GPU process: host pid → user, command, CPU % and host memory (psutil).

Only the pids NVML reports are looked up, never the whole process table. ``psutil.Process``
objects are kept between samples so ``cpu_percent`` measures since the previous sample and the
user and command are resolved once per process; pids that are no longer reported are dropped.
Blocking (reads ``/proc``): call from the sampler's worker thread.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

COMMAND_MAX_CHARS = 200
REDACTED = "***"

_PROCESS_ERRORS = (psutil.NoSuchProcess, psutil.AccessDenied)  # ZombieProcess ⊂ NoSuchProcess

# A flag or variable name that announces a secret: --token X, --api-key=X, DB_PASSWORD=X.
_SECRET_NAME = re.compile(
    r"token|secret|passw(?:or)?d|pwd|api[-_]?key|access[-_]?key|private[-_]?key|credential|auth"
    r"|(?:^|[-_])key$",
    re.IGNORECASE,
)
# NAME=value (environment style) or --name=value.
_ASSIGNMENT = re.compile(r"(-{0,2}[A-Za-z_][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
# Runs of characters that could be a hex or base64 key; _looks_like_key decides.
_KEYLIKE_RUN = re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """What the host knows about one pid; ``None`` means unknown or not visible."""

    user: str | None = None
    command: str | None = None
    cpu_percent: float | None = None
    host_mem_bytes: int | None = None


UNKNOWN = ProcInfo()


def _looks_like_key(run: str) -> bool:
    if _HEX.fullmatch(run):
        return True
    if run.startswith("/"):  # an absolute path, not a key
        return False
    has_upper = any(c.isupper() for c in run)
    has_lower = any(c.islower() for c in run)
    has_digit = any(c.isdigit() for c in run)
    return has_upper and has_lower and has_digit


def _redact_keylike(arg: str) -> str:
    return _KEYLIKE_RUN.sub(lambda m: REDACTED if _looks_like_key(m.group()) else m.group(), arg)


def redact_cmdline(args: Iterable[str], max_chars: int = COMMAND_MAX_CHARS) -> str:
    """The command line joined by spaces, values that look like secrets replaced by ``***``.

    Redacted: the argument after a secret-named flag (``--token X``), the value of
    ``--secret=X`` and ``API_KEY=X``, and hex or mixed-case base64 runs of 32+ characters.
    The result is cut to ``max_chars`` (the last character becomes ``…``).
    """
    out: list[str] = []
    redact_next = False
    for arg in args:
        if redact_next:
            out.append(REDACTED)
            redact_next = False
            continue
        assignment = _ASSIGNMENT.fullmatch(arg)
        if assignment and _SECRET_NAME.search(assignment.group(1).lstrip("-")):
            out.append(f"{assignment.group(1)}={REDACTED}")
            continue
        if arg.startswith("-") and _SECRET_NAME.search(arg.lstrip("-")):
            out.append(arg)
            redact_next = True
            continue
        out.append(_redact_keylike(arg))
    joined = " ".join(out)
    if len(joined) > max_chars:
        joined = joined[: max_chars - 1] + "…"
    return joined


def _user_name(uid: int) -> str:
    """The login name of ``uid``, or the uid as a string when it has none here (LDAP/SSSD
    users seen from inside a container)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class _Entry:
    __slots__ = ("command", "primed", "process", "user")

    def __init__(self, process: psutil.Process, user: str | None, command: str | None) -> None:
        self.process = process
        self.user = user
        self.command = command
        self.primed = False  # cpu_percent's first call only starts the measurement


class ProcessResolver:
    """Resolves host pids across samples. Not thread-safe: one sampler thread calls it."""

    def __init__(self, *, full_cmdline: bool = False) -> None:
        self._full_cmdline = full_cmdline
        self._cache: dict[int, _Entry] = {}

    def resolve(self, pids: Iterable[int]) -> dict[int, ProcInfo]:
        """Info for every pid in ``pids`` (``UNKNOWN`` for the ones that can't be seen).

        Call once per sample with all pids of all GPUs, so each process's CPU % is measured
        over one full interval. Pids not passed are forgotten.
        """
        wanted = set(pids)
        for gone in self._cache.keys() - wanted:
            del self._cache[gone]
        return {pid: self._info(pid) for pid in wanted}

    def _info(self, pid: int) -> ProcInfo:
        entry = self._cache.get(pid)
        if entry is not None and not entry.process.is_running():  # gone, or pid reused
            del self._cache[pid]
            entry = None
        if entry is None:
            entry = self._new_entry(pid)
            if entry is None:
                return UNKNOWN
            self._cache[pid] = entry
        process = entry.process
        try:
            with process.oneshot():
                cpu_percent: float | None = process.cpu_percent(interval=None)
                host_mem_bytes: int | None = process.memory_info().rss
        except psutil.NoSuchProcess:  # died since NVML listed it
            del self._cache[pid]
            return UNKNOWN
        except psutil.AccessDenied:
            cpu_percent = host_mem_bytes = None
        if not entry.primed:
            entry.primed = True
            cpu_percent = None  # the first reading has nothing to compare with
        return ProcInfo(entry.user, entry.command, cpu_percent, host_mem_bytes)

    def _new_entry(self, pid: int) -> _Entry | None:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                user = _user_name(process.uids().real)
                command = self._command(process)
        except _PROCESS_ERRORS:
            return None
        return _Entry(process, user, command)

    def _command(self, process: psutil.Process) -> str | None:
        if self._full_cmdline:
            try:
                args = process.cmdline()
            except psutil.AccessDenied:
                args = []
            if args:
                return redact_cmdline(args)
        name = process.name()
        if not name:
            try:
                name = os.path.basename(process.exe())
            except psutil.AccessDenied:
                name = ""
        return name[:COMMAND_MAX_CHARS] or None
