"""A Slurm job's name and user, from ``scontrol show job -o <id>``, off the sampling path.

The job id comes from the process's cgroup (:mod:`node_agent.attribution`); its name and user
are asked of ``scontrol`` by one worker thread, at most once per job (a failure is asked again
after :data:`RETRY_S`), with a timeout: the sampler only looks the answer up in a dict, and gets
``None`` until ``scontrol`` has answered. Without ``scontrol`` on the PATH nothing is asked and
both stay ``null``.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

from node_agent.protocol import MAX_STRING_CHARS

log = logging.getLogger("sers.agent")

TIMEOUT_S = 2.0  # slurmctld busy: give up, and ask again later
RETRY_S = 300.0
JOBS_KEPT_MAX = 4096  # answers remembered; past this the oldest are forgotten
PENDING_MAX = 256  # questions waiting for the worker; more are asked at a later sample
OUTPUT_MAX_BYTES = 64 * 1024

# one line of Key=Value pairs; a job's name may hold spaces, so it runs to the next known key
_JOB_NAME = re.compile(r"(?:^|\s)JobName=(.*?)(?=\s+(?:UserId|GroupId|MCS_label|Priority)=|\s*$)", re.M)
_USER_ID = re.compile(r"(?:^|\s)UserId=([^\s(]+)")

JobFacts = tuple[str | None, str | None]  # (name, user)


def parse_show_job(text: str) -> JobFacts:
    """(job name, user name) from ``scontrol show job -o`` output; ``None`` for what it lacks."""
    name = _JOB_NAME.search(text)
    user = _USER_ID.search(text)
    return (
        name[1][:MAX_STRING_CHARS] or None if name else None,
        user[1][:MAX_STRING_CHARS] if user else None,
    )


class SlurmJobs:
    """Job names and users, asked in the background. :meth:`lookup` never blocks."""

    def __init__(
        self,
        scontrol: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scontrol = scontrol if scontrol is not None else shutil.which("scontrol")
        self._timeout_s = timeout_s
        self._clock = clock
        self._known: dict[int, JobFacts] = {}
        self._failed_at: dict[int, float] = {}
        self._asked: set[int] = set()  # waiting or being asked
        self._pending: queue.Queue[int | None] = queue.Queue(PENDING_MAX)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._scontrol is not None

    def lookup(self, job_id: int) -> JobFacts | None:
        """The job's (name, user) once ``scontrol`` answered; ``None`` meanwhile (the question
        is queued), after a failure, or without ``scontrol``."""
        found = self._known.get(job_id)
        if found is not None or self._scontrol is None:
            return found
        with self._lock:
            if job_id in self._asked:
                return None
            failed_at = self._failed_at.get(job_id)
            if failed_at is not None and self._clock() - failed_at < RETRY_S:
                return None
            try:
                self._pending.put_nowait(job_id)
            except queue.Full:
                return None
            self._asked.add(job_id)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="sers-scontrol", daemon=True)
                self._worker.start()
        return None

    def close(self) -> None:
        """Stops the worker (a question in flight ends within its timeout)."""
        worker = self._worker
        if worker is not None:
            self._pending.put(None)
            worker.join(self._timeout_s + 1.0)

    def _run(self) -> None:
        while (job_id := self._pending.get()) is not None:
            facts = self._ask(job_id)
            with self._lock:
                self._asked.discard(job_id)
                if facts is None:
                    self._failed_at[job_id] = self._clock()
                    if len(self._failed_at) > JOBS_KEPT_MAX:
                        del self._failed_at[next(iter(self._failed_at))]
                else:
                    self._known[job_id] = facts
                    if len(self._known) > JOBS_KEPT_MAX:
                        del self._known[next(iter(self._known))]

    def _ask(self, job_id: int) -> JobFacts | None:
        assert self._scontrol is not None
        try:
            done = subprocess.run(
                [self._scontrol, "show", "job", "-o", str(job_id)],
                capture_output=True,
                timeout=self._timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("scontrol for job %d: %s", job_id, exc)
            return None
        if done.returncode != 0 or len(done.stdout) > OUTPUT_MAX_BYTES:
            return None
        return parse_show_job(done.stdout.decode("utf-8", "replace"))
