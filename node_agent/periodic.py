"""Values that change more slowly than the sample comes, read again only every so often."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Periodic(Generic[T]):
    """The value of ``read()``, read again only once ``period_s`` have passed since the last
    read (the first :meth:`get` reads); the samples in between repeat the last reading. If
    ``read()`` raises, the exception goes to the caller and the next :meth:`get` reads again."""

    __slots__ = ("_due_at_s", "_period_s", "_read", "_value")

    def __init__(self, read: Callable[[], T], period_s: float) -> None:
        self._read = read
        self._period_s = period_s
        self._due_at_s = float("-inf")
        self._value: T | None = None

    @property
    def due_at_s(self) -> float:
        """When the next :meth:`get` reads again (``-inf`` before the first read)."""
        return self._due_at_s

    def get(self, now_s: float) -> T:
        """The value, read again when due; ``now_s`` is ``time.monotonic()``."""
        if now_s >= self._due_at_s:
            self._value = self._read()
            self._due_at_s = now_s + self._period_s
        return self._value  # type: ignore[return-value]  # set by the first call
