"""Which alert URLs Apprise refuses, asked of a short-lived child process.

Knowing whether Apprise takes a URL means loading every one of its plugins (some 470 modules
with ``requests`` and ``oauthlib``): about 28 MiB that a Python process never gives back. The
hub needs the answer at startup (a channel with a URL Apprise refuses is reported on
``/alerts`` and in the log), but Apprise itself only when it sends a message. So the child
answers, and the hub loads Apprise on its first message (:func:`hub.alerts.delivery.apprise_sender`,
on that channel's worker thread). The URLs, which may hold passwords and tokens, go over the
child's stdin, never on its command line. Should the child fail to answer, the hub asks
Apprise itself, as before.

    python -m hub.alerts.url_check   # stdin: a JSON list of URLs; stdout: a JSON list of reasons
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence

import orjson

log = logging.getLogger("sers.hub")

CHECK_TIMEOUT_S = 60.0
UNKNOWN_URL = "not a URL Apprise knows (see https://github.com/caronc/apprise/wiki)"


def refusal(url: str) -> str | None:
    """Why Apprise refuses ``url``, or None when it takes it (loads Apprise in this process)."""
    import apprise  # only this function's process pays for it

    return None if apprise.Apprise().add(url) else UNKNOWN_URL


def refusals(urls: Sequence[str]) -> list[str | None]:
    """For each URL, why Apprise refuses it (None: it takes it), answered by a child process."""
    if not urls:
        return []
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hub.alerts.url_check"],
            input=orjson.dumps(list(urls)),
            capture_output=True,
            timeout=CHECK_TIMEOUT_S,
            check=True,
        )
        answer = orjson.loads(done.stdout)
        if not (isinstance(answer, list) and len(answer) == len(urls)):
            raise ValueError(f"unexpected answer {done.stdout[:200]!r}")
        return [reason if isinstance(reason, str) else None for reason in answer]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("checking the alert URLs in a child process failed (%s): checking them in the hub", exc)
        return [refusal(url) for url in urls]


def main() -> int:
    urls = orjson.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(orjson.dumps([refusal(str(url)) for url in urls]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
