"""Time ranges for usage reports and the event log, as people give them: ``today``, ``7d``,
``30d``, or ISO dates and times (``2026-12-01``, ``2026-12-01T08:00``, with or without an
offset). A date or time without an offset is in the hub's local time zone; a date alone means
its local midnight, so ``--from 2026-11-01 --to 2026-12-01`` is the month of November. Pure."""

from __future__ import annotations

import datetime as dt
import time

NAMED_DAYS = {"today": 1, "7d": 7, "30d": 30}
MAX_TEXT_CHARS = 40


class RangeError(ValueError):
    """A range that cannot be read; the message says which value and what is expected."""


def local_midnight(epoch_s: float) -> float:
    t = time.localtime(epoch_s)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def parse_time(text: str, name: str) -> float:
    """An ISO date or date-time as epoch seconds (local time when it has no offset)."""
    if len(text) > MAX_TEXT_CHARS:
        raise RangeError(f"{name}: at most {MAX_TEXT_CHARS} characters")
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise RangeError(
            f"{name}: expected an ISO date or time such as 2026-12-01 or 2026-12-01T08:00, got {text!r}"
        ) from None
    if when.tzinfo is None:
        return time.mktime(when.timetuple())
    return when.timestamp()


def named_range(name: str, now_s: float) -> tuple[float, float]:
    """``today``, ``7d`` or ``30d``: whole local days ending with today, up to now."""
    days = NAMED_DAYS.get(name)
    if days is None:
        raise RangeError(f"range: one of {', '.join(NAMED_DAYS)}, got {name[:MAX_TEXT_CHARS]!r}")
    start = local_midnight(now_s)
    for _ in range(days - 1):
        start = local_midnight(start - 1)
    return start, now_s


def resolve(
    from_text: str | None, to_text: str | None, range_name: str | None, now_s: float
) -> tuple[float, float]:
    """The range from ``from``/``to`` when given (``to`` defaults to now, ``from`` to today's
    midnight), else from a named range (default ``today``)."""
    if from_text or to_text:
        start = parse_time(from_text, "from") if from_text else local_midnight(now_s)
        end = parse_time(to_text, "to") if to_text else now_s
        if end <= start:
            raise RangeError("to: must be after from")
        return start, end
    return named_range(range_name or "today", now_s)


def iso(epoch_s: float) -> str:
    """Local ISO time with its offset, to the second."""
    return dt.datetime.fromtimestamp(epoch_s).astimezone().isoformat(timespec="seconds")
