"""Time as the hub sees it, injected so that liveness can be tested without sleeping."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class SystemClock:
    """``monotonic`` drives liveness; ``wall`` is only for showing times to people."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


@dataclass(slots=True)
class ManualClock:
    """A clock that moves only when told to (tests and simulations)."""

    mono_s: float = 1000.0
    wall_s: float = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono_s

    def wall(self) -> float:
        return self.wall_s

    def advance(self, seconds: float) -> None:
        self.mono_s += seconds
        self.wall_s += seconds
