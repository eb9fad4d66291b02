"""A simulated node's sample in Prometheus's text exposition format, for the peer benchmark.

What node_exporter and dcgm-exporter would serve for the node :mod:`bench.simnode` simulates,
field by field from the same snapshot the simulated agents send: every number of the host
(one series per CPU core, one per disk) and of each GPU, and each GPU process's numbers
labelled with its pid, user and command. Names are the wire fields' own (units in the names),
prefixed ``sers_host_``, ``sers_gpu_`` and ``sers_gpu_process_``; ``None`` (unsupported) is
left out, as an exporter leaves out what it cannot read.
"""

from __future__ import annotations

from typing import Any

from node_agent.protocol import Snapshot


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _labels(pairs: dict[str, Any]) -> str:
    inner = ",".join(f'{key}="{_escape(str(value))}"' for key, value in pairs.items())
    return "{" + inner + "}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(snapshot: Snapshot) -> str:
    """The text a scrape of this node returns (``# TYPE`` lines once per metric name)."""
    series: dict[str, list[str]] = {}

    def add(name: str, labels: dict[str, Any], value: float) -> None:
        series.setdefault(name, []).append(f"{name}{_labels(labels) if labels else ''} {value}")

    host = snapshot.get("host") or {}
    for key, value in host.items():
        if _number(value):
            add(f"sers_host_{key}", {}, value)
    for core, value in enumerate(host.get("cpu_percent_per_core") or []):
        add("sers_host_cpu_core_percent", {"core": core}, value)
    for disk in host.get("disks") or []:
        for key in ("total_bytes", "used_bytes"):
            add(f"sers_host_disk_{key}", {"mount": disk["mount"]}, disk[key])
    for index, gpu in sorted((snapshot.get("gpus") or {}).items()):
        gpu_labels = {"gpu": index, "uuid": gpu.get("uuid", ""), "name": gpu.get("name", "")}
        for key, value in gpu.items():
            if _number(value) and key != "index":
                add(f"sers_gpu_{key}", gpu_labels, value)
        for process in gpu.get("processes") or []:
            process_labels = {
                "gpu": index,
                "pid": process["pid"],
                "user": process["user"],
                "command": process["command"],
            }
            for key, value in process.items():
                if _number(value) and key != "pid":
                    add(f"sers_gpu_process_{key}", process_labels, value)
    lines = []
    for name, rows in series.items():
        lines.append(f"# TYPE {name} gauge")
        lines.extend(rows)
    return "\n".join(lines) + "\n"


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))
