"""The people board's view model: one row per user holding GPUs (:mod:`hub.domain.people`).

Every text here is bounded (a user, job or container name can be anything an agent sends, up
to the protocol's 256 characters): names are cut to :data:`MAX_NAME_CHARS`, lists to a few
entries and a count of the rest, the board to :data:`MAX_ROWS` rows. Escaping is the
template's (autoescape, and :func:`frontend.fragments.visible` for unseen characters).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from frontend.element_ids import person_id
from frontend.viewmodels import fmt_age, fmt_ago, fmt_bytes, fmt_epoch, process_holder, short_gpu_name
from hub.domain.people import Holding, PeopleSort, sort_holdings

MAX_ROWS = 200  # users on the board; the rest are counted
MAX_NAME_CHARS = 40  # a user, job or container name on the board
MAX_LISTED = 3  # models, jobs/containers, places per row; the rest are counted
SORT_LABELS = {PeopleSort.GPUS: "most GPUs", PeopleSort.IDLE: "most idle", PeopleSort.HELD: "longest held"}


def cut(text: str, limit: int = MAX_NAME_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c +2 more``: the first ``limit`` items, each cut, and how many more."""
    items = list(items)
    text = ", ".join(cut(item) for item in items[:limit])
    return f"{text} +{len(items) - limit} more" if len(items) > limit else text


@dataclass(frozen=True, slots=True)
class PersonRow:
    row_id: str  # frontend.element_ids.person_id
    user: str  # cut to MAX_NAME_CHARS
    gpus_held: int
    models_text: str  # "2x H100, 1x MIG 3g.40gb" (with a multiplication sign)
    mem_text: str
    idle_held: int
    idle_since_epoch_s: float | None  # the longest idle-held one's
    idle_text: str  # "idle 47 min" ("" when none is idle-held)
    holders_text: str  # jobs and containers: "job 81234, docker llama"
    where_text: str  # "gpu07/0, gpu07/1"
    oldest_text: str  # the oldest process's age: "3 d 4 h"
    oldest_started_text: str


@dataclass(frozen=True, slots=True)
class SortLink:
    label: str
    href: str
    current: bool


@dataclass(frozen=True, slots=True)
class PeopleView:
    rows: tuple[PersonRow, ...]
    more_users: int  # beyond MAX_ROWS
    links: tuple[SortLink, ...]
    gpus_held: int
    idle_held: int


def _models(holding: Holding) -> str:
    counts = Counter(f"MIG {g.model or '?'}" if g.mig_uuid else short_gpu_name(g.model) for g in holding.gpus)
    return listed(
        f"{n}× {model}" for model, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )


def _holders(holding: Holding) -> str:
    seen: dict[str, None] = {}
    for gpu in holding.gpus:
        for proc in gpu.processes:
            holder = process_holder(proc, short=True)
            if holder:
                seen.setdefault(holder)
    return listed(seen) or "–"


def _where(holding: Holding) -> str:
    places: dict[str, None] = {}
    for gpu in holding.gpus:
        places.setdefault(f"{gpu.node_id}/{gpu.gpu_index}")
    return listed(places)


def person_row(holding: Holding, now_epoch_s: float) -> PersonRow:
    idle_since = holding.longest_idle_since_epoch_s
    oldest = holding.oldest_started_epoch_s
    return PersonRow(
        row_id=person_id(holding.user),
        user=cut(holding.user),
        gpus_held=len(holding.gpus),
        models_text=_models(holding),
        mem_text=fmt_bytes(holding.mem_bytes),
        idle_held=len(holding.idle),
        idle_since_epoch_s=idle_since,
        idle_text="" if idle_since is None else f"idle {fmt_ago(now_epoch_s - idle_since)}",
        holders_text=_holders(holding),
        where_text=_where(holding),
        oldest_text=fmt_age(oldest, now_epoch_s),
        oldest_started_text=fmt_epoch(oldest),
    )


def sort_links(order: PeopleSort, query: Mapping[str, str]) -> tuple[SortLink, ...]:
    """Links to ``/users`` in each order, keeping ``query`` (the node filter)."""
    return tuple(
        SortLink(label, "users?" + urlencode({**query, "sort": sort.value}), sort is order)
        for sort, label in SORT_LABELS.items()
    )


def people_view(
    people: Iterable[Holding], order: PeopleSort, now_epoch_s: float, query: Mapping[str, str]
) -> PeopleView:
    ranked = sort_holdings(people, order)
    return PeopleView(
        rows=tuple(person_row(h, now_epoch_s) for h in ranked[:MAX_ROWS]),
        more_users=max(0, len(ranked) - MAX_ROWS),
        links=sort_links(order, query),
        gpus_held=sum(len(h.gpus) for h in ranked),
        idle_held=sum(len(h.idle) for h in ranked),
    )
