"""Who holds the GPUs: every user's GPUs and MIG slices across the lab, from the nodes' samples
and the idle-held spells (:mod:`hub.domain.idle`). One definition for ``/api/v1/users``, the
people board (``/users``, the wall's ``?panel=users``) and ``/metrics``.

A user holds a GPU while one of their processes is listed on it (NVML lists processes that hold
a context, hence memory). On a GPU in MIG mode a process listed on a slice holds that slice, not
the whole GPU. Offline nodes hold nothing: their last samples are history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hub.domain.gpus import UNKNOWN_USER

IdleSet = Mapping[tuple[str, str, str | None], float]
"""(node id, GPU index, MIG uuid or None) -> idle-held since (epoch seconds):
:meth:`hub.domain.idle.IdleHolders.held`, or the presenter's copy kept from the events."""


@dataclass(frozen=True, slots=True)
class HeldGpu:
    """One GPU, or one MIG slice of it, that a user's processes hold."""

    node_id: str
    gpu_index: str
    mig_uuid: str | None
    model: str | None  # the GPU's name, or the slice's profile ("3g.40gb")
    mem_bytes: int  # the user's processes' GPU memory on it (unknown counts 0)
    util_gpu_percent: float | None  # the GPU's (or slice's)
    processes: tuple[Mapping[str, Any], ...]  # the user's, as the agent sent them
    idle_since_epoch_s: float | None  # idle-held since, or None


@dataclass(slots=True)
class Holding:
    """Everything one user holds now."""

    user: str
    gpus: list[HeldGpu] = field(default_factory=list)

    @property
    def mem_bytes(self) -> int:
        return sum(g.mem_bytes for g in self.gpus)

    @property
    def idle(self) -> list[HeldGpu]:
        return [g for g in self.gpus if g.idle_since_epoch_s is not None]

    @property
    def oldest_started_epoch_s(self) -> float | None:
        """When the user's oldest GPU process started (the agent's clock)."""
        starts = [
            s
            for g in self.gpus
            for p in g.processes
            if isinstance(s := p.get("started_epoch_s"), int | float) and not isinstance(s, bool)
        ]
        return min(starts) if starts else None

    @property
    def longest_idle_since_epoch_s(self) -> float | None:
        starts = [g.idle_since_epoch_s for g in self.gpus if g.idle_since_epoch_s is not None]
        return min(starts) if starts else None


class PeopleSort(StrEnum):
    """The board's orders: most GPUs, most idle-held (then longest idle), longest held."""

    GPUS = "gpus"
    IDLE = "idle"
    HELD = "held"


def _user(process: Mapping[str, Any]) -> str:
    user = process.get("user")
    return user if isinstance(user, str) and user else UNKNOWN_USER


def _mem(process: Mapping[str, Any]) -> int:
    mem = process.get("gpu_mem_bytes")
    return mem if isinstance(mem, int) and not isinstance(mem, bool) else 0


def _by_user(
    processes: Iterable[Any], skip_pids: frozenset[Any] = frozenset()
) -> dict[str, list[Mapping[str, Any]]]:
    users: dict[str, list[Mapping[str, Any]]] = {}
    for proc in processes:
        if isinstance(proc, Mapping) and proc.get("pid") not in skip_pids:
            users.setdefault(_user(proc), []).append(proc)
    return users


def holdings(nodes: Iterable[tuple[str, Mapping[str, Any]]], idle: IdleSet) -> dict[str, Holding]:
    """Per user, what they hold on ``nodes`` ((node id, merged state) of the nodes not offline)."""
    out: dict[str, Holding] = {}

    def add(
        node_id: str,
        index: str,
        uuid: str | None,
        model: Any,
        sample: Mapping[str, Any],
        skip: frozenset[Any],
    ) -> None:
        util = sample.get("util_gpu_percent")
        since = idle.get((node_id, index, uuid))
        for user, procs in _by_user(sample.get("processes") or (), skip).items():
            holding = out.get(user)
            if holding is None:
                holding = out[user] = Holding(user)
            holding.gpus.append(
                HeldGpu(
                    node_id,
                    index,
                    uuid,
                    model if isinstance(model, str) else None,
                    sum(_mem(p) for p in procs),
                    util if isinstance(util, int | float) and not isinstance(util, bool) else None,
                    tuple(procs),
                    since,
                )
            )

    for node_id, state in nodes:
        gpus = state.get("gpus")
        if not isinstance(gpus, Mapping):
            continue
        for index, gpu in gpus.items():
            if not isinstance(gpu, Mapping):
                continue
            on_slices: set[Any] = set()
            for mig in gpu.get("mig_slices") or ():
                if not isinstance(mig, Mapping) or not isinstance(mig.get("uuid"), str):
                    continue
                add(node_id, index, mig["uuid"], mig.get("profile"), mig, frozenset())
                on_slices.update(p.get("pid") for p in mig.get("processes") or () if isinstance(p, Mapping))
            # the whole GPU: its processes that no slice lists
            add(node_id, index, None, gpu.get("name"), gpu, frozenset(on_slices))
    return out


def sort_holdings(people: Iterable[Holding], order: PeopleSort) -> list[Holding]:
    """Most GPUs first; most idle-held (then idle longest) first; or held longest first (the
    oldest process); ties by user name."""
    if order is PeopleSort.IDLE:
        return sorted(
            people, key=lambda h: (-len(h.idle), _or_last(h.longest_idle_since_epoch_s), -len(h.gpus), h.user)
        )
    if order is PeopleSort.HELD:
        return sorted(people, key=lambda h: (_or_last(h.oldest_started_epoch_s), -len(h.gpus), h.user))
    return sorted(people, key=lambda h: (-len(h.gpus), -h.mem_bytes, h.user))


def _or_last(epoch_s: float | None) -> float:
    return float("inf") if epoch_s is None else epoch_s
