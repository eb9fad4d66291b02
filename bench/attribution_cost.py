"""What #17's attribution adds to the agent's work per sample, A/B in one process.

The agent reads a process's start time, container and job once per new pid (cgroup files,
cached); what it pays every sample is carrying those fields: each GPU's process list is diffed
against the previous sample (``make_patch``) and the patch encoded. This feeds the same 8 busy
GPUs, one process each (CPU % changing every sample, as real ones do), through that path with
the attribution fields and without them, interleaved, and prints µs per sample for each. Set the
difference against the agent's whole CPU per sample from ``python -m bench.agent_cost``.

    python -m bench.attribution_cost [--samples 3000] [--rounds 7] [--tiny]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson

from bench.figures import Figures
from node_agent.protocol import GpuProcess, make_patch

GIB = 1 << 30
GPUS = 8
# the fields attribution put on each process (node_agent.attribution, node_agent.procinfo)
ATTRIBUTION_FIELDS = (
    "started_epoch_s",
    "container_id",
    "container_runtime",
    "container_name",
    "pod_uid",
    "pod_namespace",
    "pod_name",
    "slurm_job_id",
    "slurm_step",
    "slurm_job_name",
    "slurm_job_user",
)


def gpus_wire(tick: int, attributed: bool) -> dict[str, dict[str, Any]]:
    """The changing part of 8 busy GPUs' wire samples at ``tick``."""
    wire = {}
    for index in range(GPUS):
        process = asdict(
            GpuProcess(
                pid=4000 + index,
                user="alice",
                command="python train.py --config llama.yaml",
                gpu_mem_bytes=20 * GIB,
                cpu_percent=97.0 + (tick + index) % 5,
                host_mem_bytes=8 * GIB,
                started_epoch_s=1.765e9,
                container_id="c0ffee" * 10 + "beef",
                container_runtime="docker",
                container_name="alice-llama",
                slurm_job_id=81234,
                slurm_step="0",
            )
        )
        if not attributed:
            for name in ATTRIBUTION_FIELDS:
                del process[name]
        wire[str(index)] = {
            "util_gpu_percent": 50.0 + (tick * 7 + index) % 40,
            "temp_celsius": 60.0 + (tick + index) % 5,
            "power_draw_watts": 300.0 + tick % 17,
            "processes": [process],
        }
    return wire


def us_per_sample(samples: int, attributed: bool) -> float:
    """µs per sample for the diff and the encoding alone (the wire dicts are built beforehand)."""
    wires = [gpus_wire(tick, attributed) for tick in range(samples)]
    started = time.perf_counter()
    for previous, current in itertools.pairwise(wires):
        orjson.dumps(make_patch(previous, current))
    return (time.perf_counter() - started) / (samples - 1) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.attribution_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="a few samples and rounds (a second)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.rounds = 50, 2
    fig = Figures("attribution_cost", judge=not args.tiny)
    fig.header(
        f"{GPUS} busy GPUs, one process each, {args.samples} samples x {args.rounds} rounds, interleaved"
    )
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for attributed in (False, True):
            runs[attributed].append(us_per_sample(args.samples, attributed))
    without, with_fields = statistics.median(runs[False]), statistics.median(runs[True])
    fig.add("us_per_sample_without_attribution", without, "µs", digits=1)
    fig.add("us_per_sample_with_attribution", with_fields, "µs", digits=1)
    fig.add("attribution_us_per_sample", with_fields - without, "µs", digits=1)
    return fig.done()


if __name__ == "__main__":
    raise SystemExit(main())
