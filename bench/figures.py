"""Printing figures the same way in every benchmark: one line per figure, greppable.

``figure <bench> <name> = <value> <unit>   [target <text>: met|MISSED]``
"""

from __future__ import annotations

import platform
import sys
import time

import psutil


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = psutil.virtual_memory().total / 1024**3
    return (
        f"{psutil.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


class Figures:
    def __init__(self, bench: str, judge: bool = True) -> None:
        """``judge``: say whether each target is met (off for ``--tiny`` runs: too small to mean
        anything)."""
        self.bench = bench
        self.judge = judge
        self.values: dict[str, float] = {}
        self.missed: list[str] = []

    def header(self, what: str) -> None:
        print(f"== bench.{self.bench}: {what}", flush=True)
        if not self.judge:
            print("   tiny run: it checks that the benchmark works; its figures mean nothing", flush=True)
        print(f"   machine: {machine()}", flush=True)
        print(f"   date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)

    def note(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def add(
        self,
        name: str,
        value: float,
        unit: str = "",
        *,
        target: str | None = None,
        ok: bool | None = None,
        digits: int = 1,
    ) -> None:
        self.values[name] = value
        shown = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
        line = f"figure {self.bench} {name} = {shown}{' ' + unit if unit else ''}"
        if not self.judge:
            ok = None
        if target is not None:
            verdict = "" if ok is None else (": met" if ok else ": MISSED")
            line = f"{line:<70} [target {target}{verdict}]"
            if ok is False:
                self.missed.append(name)
        print(line, flush=True)

    def done(self) -> int:
        if self.missed:
            print(f"   {self.bench}: targets missed: {', '.join(self.missed)}", flush=True)
        else:
            print(f"   {self.bench}: done", flush=True)
        sys.stdout.flush()
        return 0
