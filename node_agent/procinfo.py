"""Who owns a GPU process: host pid → user, command, start time, container or job, CPU % and
host memory.

Only the pids NVML reports are looked up, never the whole process table. A process's user,
command and container or job (:mod:`node_agent.attribution`) are read once, when its pid first
shows up; after that each sample reads one file, ``/proc/<pid>/stat`` (kept open,
:class:`~node_agent.procfs.ProcFile`), for the CPU time and resident memory, and its start time
tells a reused pid from the process that had it before.
CPU % is measured since the previous sample. Pids that are no longer reported are dropped.
Blocking (reads ``/proc``): call from the sampler's worker thread.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, NamedTuple

from node_agent.attribution import NONE, Attribution, AttributionReader
from node_agent.procfs import ProcFile

COMMAND_MAX_CHARS = 200
REDACTED = "***"
# Past this many tracked processes, a process's stat file is opened for each read instead of
# kept open: a node with hundreds of GPU processes must not run out of file descriptors.
KEPT_OPEN_MAX = 256

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

# The kernel keeps the first 15 bytes of a program's name in /proc/<pid>/comm.
_COMM_MAX_CHARS = 15

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
# scheme://user:password@host: the password (up to the last @ before the path).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:)[^\s/?#]+@")
# The name of an HTTP header that carries a credential, anywhere in a word (-HAuthorization:).
_AUTH_HEADER = re.compile(r"(?:authorization|private-token|api-key|auth-token|access-token):", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"bearer|basic|token|digest|negotiate", re.IGNORECASE)
# Clients whose -p takes the password glued on (mysql -pSECRET); -p alone asks for it.
_GLUED_PASSWORD_TOOL = re.compile(r"(?:mysql|mariadb)[\w-]*")
_WHITESPACE = re.compile(r"(\s+)")

# What a word announces about the next one: a secret, or an Authorization scheme or secret.
_Next = Literal["secret", "scheme"] | None


class ProcInfo(NamedTuple):
    """What the host knows about one pid; ``None`` means unknown or not visible. (Made for
    every GPU process every sample: a NamedTuple is cheaper to make than a frozen dataclass.)"""

    user: str | None = None
    command: str | None = None
    cpu_percent: float | None = None
    host_mem_bytes: int | None = None
    started_epoch_s: float | None = None
    attribution: Attribution = NONE


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
    ``--secret=X`` and ``API_KEY=X``, the password of ``scheme://user:password@host``, the
    credential of an ``Authorization:`` (and like) header and after ``Bearer``, ``-pX`` of
    mysql/mariadb clients and ``-p X`` of sshpass, and hex or mixed-case base64 runs of 32+
    characters. An argument with spaces (``sh -c "..."``, ``-H "Authorization: Bearer X"``) is
    redacted word by word. The result is cut to ``max_chars`` (the last character becomes ``…``).
    """
    joined = " ".join(_redact_words(args))
    if len(joined) > max_chars:
        joined = joined[: max_chars - 1] + "…"
    return joined


def _redact_words(words: Iterable[str]) -> list[str]:
    out: list[str] = []
    announced: _Next = None
    tool: Literal["mysql", "sshpass"] | None = None  # the program whose -p is a password
    for word in words:
        if announced == "secret" or (announced == "scheme" and not _AUTH_SCHEME.fullmatch(word)):
            out.append(REDACTED)
            announced = None
            continue
        if announced == "scheme":  # Authorization: Bearer
            out.append(word)
            announced = "secret"
            continue
        assignment = _ASSIGNMENT.fullmatch(word)
        if assignment and _SECRET_NAME.search(assignment.group(1).lstrip("-")):
            out.append(f"{assignment.group(1)}={REDACTED}")
            continue
        if _WHITESPACE.search(word):
            parts = _WHITESPACE.split(word)  # words at even indices, the spaces between them at odd
            parts[::2] = _redact_words(parts[::2])
            out.append("".join(parts))
            continue
        if tool is not None and word.startswith("-p"):
            out.append("-p" + REDACTED if len(word) > 2 else word)
            announced = "secret" if tool == "sshpass" and len(word) == 2 else None
            continue
        header = _AUTH_HEADER.search(word)
        if header:
            value = word[header.end() :]
            if not value or _AUTH_SCHEME.fullmatch(value):
                out.append(word)
                announced = "secret" if value else "scheme"
            else:
                out.append(word[: header.end()] + REDACTED)
            continue
        if word.startswith("-") and _SECRET_NAME.search(word.lstrip("-")):
            out.append(word)
            announced = "secret"
            continue
        if word.lower() == "bearer":
            out.append(word)
            announced = "secret"
            continue
        program = os.path.basename(word)
        if _GLUED_PASSWORD_TOOL.fullmatch(program):
            tool = "mysql"
        elif program == "sshpass":
            tool = "sshpass"
        elif tool == "sshpass" and not word.startswith("-"):
            tool = None  # the command sshpass runs: its -p is its own
        word = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", word)
        out.append(_redact_keylike(word))
    return out


def _user_name(uid: int) -> str:
    """The login name of ``uid``, or the uid as a string when it has none here (LDAP/SSSD
    users seen from inside a container)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class PidStat(NamedTuple):
    """What one read of ``/proc/<pid>/stat`` tells."""

    started_ticks: int  # since boot: with the pid, names one process
    cpu_ticks: int  # user + system, all threads
    rss_bytes: int


def parse_pid_stat(text: bytes) -> PidStat:
    """``/proc/<pid>/stat`` (``text``) as a :class:`PidStat`; the command in parentheses may
    hold spaces and parentheses itself, so fields are counted from the last ``)``."""
    # fields[0] is field 3 of proc(5), the state; only the first 22 fields are needed
    fields = text[text.rindex(b")") + 2 :].split(maxsplit=22)
    return PidStat(
        started_ticks=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        rss_bytes=int(fields[21]) * _PAGE_BYTES,
    )


def boot_time_epoch_s(proc_root: Path) -> float | None:
    """When the host booted (``btime`` of ``<proc_root>/stat``), or ``None`` if unreadable."""
    try:
        text = (proc_root / "stat").read_bytes()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(b"btime "):
            try:
                return float(int(line.split()[1]))
            except (ValueError, IndexError):
                return None
    return None


def _uid(status: bytes) -> int:
    """The real uid from a ``/proc/<pid>/status`` text."""
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    raise ValueError("no Uid line")


class _Entry:
    """One process being tracked: who it is, and its previous reading (``None``: none yet)."""

    __slots__ = (
        "attribution",
        "command",
        "cpu_ticks",
        "read_at_s",
        "started_epoch_s",
        "started_ticks",
        "stat_file",
        "user",
    )

    def __init__(
        self, stat_file: ProcFile, user: str | None, command: str | None, attribution: Attribution
    ) -> None:
        self.stat_file = stat_file
        self.user = user
        self.command = command
        self.attribution = attribution
        self.started_ticks: int | None = None
        self.started_epoch_s: float | None = None  # from started_ticks, once
        self.cpu_ticks: int | None = None
        self.read_at_s = 0.0


class ProcessResolver:
    """Resolves host pids across samples. Not thread-safe: one sampler thread calls it.

    Every file is read under ``proc_root`` (``/proc``; the host's ``/proc`` mounted elsewhere in
    a container). ``attribution`` reads a new process's container or job (its default: under
    the same ``proc_root``, runtime state at the default paths)."""

    def __init__(
        self,
        *,
        full_cmdline: bool = False,
        proc_root: Path = Path("/proc"),
        attribution: AttributionReader | None = None,
    ) -> None:
        self._full_cmdline = full_cmdline
        self._proc_root = proc_root
        self._attribution = attribution or AttributionReader(proc_root=proc_root)
        self._jobs_answer = self._attribution.waits_for_jobs
        self._boot_epoch_s: float | None = None
        self._cache: dict[int, _Entry] = {}

    def resolve(self, pids: Iterable[int]) -> dict[int, ProcInfo]:
        """Info for every pid in ``pids`` (``UNKNOWN`` for the ones that can't be seen).

        Call once per sample with all pids of all GPUs, so each process's CPU % is measured
        over one full interval. Pids not passed are forgotten.
        """
        wanted = set(pids)
        for gone in self._cache.keys() - wanted:
            self._cache.pop(gone).stat_file.close()
        return {pid: self._info(pid) for pid in wanted}

    def close(self) -> None:
        for entry in self._cache.values():
            entry.stat_file.close()
        self._cache.clear()
        self._attribution.close()

    def _info(self, pid: int) -> ProcInfo:
        entry = self._cache.get(pid)
        if entry is not None:
            info = self._read(entry)
            if info is not None:
                return info
            del self._cache[pid]  # gone, or its pid names another process now: look again
            entry.stat_file.close()
        entry = self._new_entry(pid)
        if entry is None:
            return UNKNOWN
        info = self._read(entry)
        if info is None:  # died in the meantime
            entry.stat_file.close()
            return UNKNOWN
        self._cache[pid] = entry
        return info

    def _read(self, entry: _Entry) -> ProcInfo | None:
        """The process's figures now, from one read of its stat file; ``None`` when it is gone
        or its pid was reused (another start time)."""
        try:
            stat = self._read_stat(entry.stat_file)
        except PermissionError:  # its figures are hidden from us; its owner is still known
            entry.cpu_ticks = None
            return ProcInfo(entry.user, entry.command, attribution=entry.attribution)
        except (OSError, ValueError, IndexError):
            return None
        if entry.started_ticks is not None and stat.started_ticks != entry.started_ticks:
            return None
        now = time.monotonic()
        cpu_percent = None  # the first reading has nothing to compare with
        if entry.cpu_ticks is not None and now > entry.read_at_s:
            cpu_s = (stat.cpu_ticks - entry.cpu_ticks) / _CLOCK_TICKS_PER_S
            cpu_percent = round(100.0 * cpu_s / (now - entry.read_at_s), 1)
        if entry.started_ticks is None and self._boot_epoch_s is not None:  # the first reading
            entry.started_epoch_s = round(self._boot_epoch_s + stat.started_ticks / _CLOCK_TICKS_PER_S, 2)
        entry.started_ticks, entry.cpu_ticks, entry.read_at_s = stat.started_ticks, stat.cpu_ticks, now
        attribution = entry.attribution
        if attribution.slurm_job_id is not None and attribution.slurm_job_user is None and self._jobs_answer:
            entry.attribution = self._attribution.with_job(attribution)  # scontrol answered since
        return ProcInfo(
            entry.user, entry.command, cpu_percent, stat.rss_bytes, entry.started_epoch_s, entry.attribution
        )

    def _new_entry(self, pid: int) -> _Entry | None:
        """A process seen for the first time: its user, command and attribution, once."""
        directory = self._proc_root / str(pid)
        try:
            user = _user_name(_uid((directory / "status").read_bytes()))
        except (OSError, ValueError, IndexError):
            return None
        command = self._command(directory)
        if self._boot_epoch_s is None:  # once, at the first process (or until readable)
            self._boot_epoch_s = boot_time_epoch_s(self._proc_root)
        stat_file = ProcFile(
            str(directory / "stat"), keep_open=len(self._cache) < KEPT_OPEN_MAX, whole_in_one_read=True
        )
        return _Entry(stat_file, user, command, self._attribution.read(pid))

    @staticmethod
    def _read_stat(stat_file: ProcFile) -> PidStat:
        return parse_pid_stat(stat_file.read())

    def _command(self, directory: Path) -> str | None:
        """The command line (``full_cmdline``, redacted) or the program's name: ``comm``, or
        where the kernel cut that short, the first argument's base name that it begins."""
        try:
            args = [a.decode("utf-8", "replace") for a in (directory / "cmdline").read_bytes().split(b"\0")]
        except OSError:  # hidden (hidepid) or gone
            args = []
        while args and not args[-1]:
            args.pop()
        if self._full_cmdline and args:
            return redact_cmdline(args)
        try:
            name = (directory / "comm").read_bytes().decode("utf-8", "replace").rstrip("\n")
        except OSError:
            name = ""
        if len(name) >= _COMM_MAX_CHARS and args:
            program = os.path.basename(args[0])
            if program.startswith(name):
                name = program
        if not name:
            try:
                name = os.path.basename(os.readlink(directory / "exe"))
            except OSError:
                name = ""
        return name[:COMMAND_MAX_CHARS] or None
