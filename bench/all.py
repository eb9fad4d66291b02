"""Runs every benchmark in sequence, each in its own process: ``python -m bench.all [--tiny]``.

Defaults finish in a few minutes; ``--tiny`` runs each at a tiny size in seconds (CI runs that,
so the benchmarks never rot). Figures are printed as ``figure <bench> <name> = <value>`` lines;
see BENCHMARKS.md for what they mean and the recorded results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.workers import REPO, child_env

BENCHES = ("render", "agent_cost", "hub_load", "browser_load", "peer_prometheus")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="each benchmark at a tiny size (seconds)")
    parser.add_argument("--only", action="append", choices=BENCHES, help="run only these (repeatable)")
    args = parser.parse_args(argv)
    failed: list[str] = []
    for name in args.only or BENCHES:
        if not (REPO / "bench" / f"{name}.py").exists():
            print(f"== bench.{name}: not present, skipped", flush=True)
            continue
        argv_one = [sys.executable, "-m", f"bench.{name}", *(["--tiny"] if args.tiny else [])]
        started = time.monotonic()
        code = subprocess.call(argv_one, cwd=REPO, env=child_env())
        print(f"   ({name}: {time.monotonic() - started:.0f} s, exit {code})", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
