"""``make demo``: the hub with a simulated lab (:mod:`bench.lab`), no GPU needed.

    python -m bench.demo [--host 127.0.0.1] [--port 8000] [--nodes 36]

36 GPU servers in five groups appear on the dashboard within seconds, with ten minutes of
history; one has lost a GPU, one's sampler hangs, one goes offline. The hub keeps no state file
and ignores ``SERS_*`` settings from the environment. Ctrl-C stops the hub and the lab
(:mod:`tools.launch`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.lab import LAB_SIZE, lab
from tools.launch import client_host, supervise

REPO = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address the hub listens on")
    parser.add_argument("--port", type=int, default=8000, help="port the hub listens on")
    parser.add_argument("--nodes", type=int, default=LAB_SIZE, help=f"how many nodes, 1 to {LAB_SIZE}")
    args = parser.parse_args(argv)
    base = f"http://{client_host(args.host)}:{args.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["SERS_AGENT_MAX_MESSAGES_PER_S"] = "50"  # each node sends its history in a burst
    with tempfile.TemporaryDirectory(prefix="sers-demo-") as tmp:
        config = Path(tmp) / "hub.toml"
        config.write_text(lab(args.nodes)[1])
        hub = [
            sys.executable,
            "-m",
            "hub",
            "--host",
            args.host,
            "--port",
            str(args.port),
            "--config",
            str(config),
            "--state-db",
            "",
            "--log-level",
            "WARNING",
        ]
        simulated = [sys.executable, "-m", "bench.lab", "--url", base.replace("http", "ws", 1) + "/ws/agent"]
        simulated += ["--nodes", str(args.nodes)]
        banner = f"sers-monitor demo: {args.nodes} simulated GPU servers on {base}  (Ctrl-C stops the demo)"
        return supervise(hub, {"simulated lab": simulated}, f"{base}/healthz", banner, env=env)


if __name__ == "__main__":
    sys.exit(main())
