"""Pushing changes to browsers: render once per change, then fan out latest-wins per viewer.

The fan-out subscribes to the registry's events (:func:`hub.scene.subscribe_changes`). Each
node change is rendered as it arrives (the scene renders only the parts it touched), and
the rendered parts are collected, the newest per element, until a fixed tick (``max_rate_hz``,
10 by default) sends them: the same bytes to every viewer. Rendering on arrival spreads that
work over the tick instead of doing it all at once on the tick, where every update of the tick
would wait for it (20 to 30 ms at 2,000 nodes). Each viewer has its own sender task and holds up to
:data:`MAX_SHARED_BATCHES` shared batches, sent joined when it catches up; one further behind
drops them and gets the next full state, built once per filter at most every
:data:`RESYNC_EVERY_S` for all such viewers. So a slow browser costs the others nothing, and a
hub that cannot keep up holds one picture per filter, not one per browser. A viewer whose send
does not complete within ``send_timeout_s`` is dropped. A hub whose ticks come late on average
(more agent messages than it can render) sheds work: it renders each node at most every
:data:`SHED_RENDER_EVERY_S`, joining the changes in between, until the ticks are punctual again.

A viewer that says which cards it shows (:mod:`hub.view_show`) gets only those nodes' parts,
plus every whole card and removal (the page lays out every card) and the summary: the bytes
are built once per (filter, shown set) and tick, so a wall of screens showing the same cards
still shares them, and building them costs a pass over the shown nodes, not over the lab. A
node that joins a viewer's set gets its whole current card on the next tick, after every
batch queued before it (at most :data:`MAX_CARDS_PER_TICK` a tick, the rest on the ticks
after).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from frontend.people import PeopleView
from frontend.viewmodels import SummaryView
from hub.registry import NodeRegistry
from hub.scene import NodeChange, Scene, ViewFilter, subscribe_changes
from hub.view_show import Shown

log = logging.getLogger("sers.hub")

SendBytes = Callable[[bytes], Awaitable[None]]
KEEPALIVE_S = 2.0  # browsers treat 6 s of silence as a lost hub
SUMMARY_EVERY_S = 1.0


@dataclass(slots=True)
class Batch:
    """One tick's rendered changes: node id -> element id -> HTML. Payloads are built once per
    filter and shown set."""

    fragments: dict[str, dict[str, str]]
    summaries: dict[ViewFilter, str]
    _payloads: dict[tuple[ViewFilter, Shown], bytes] = field(default_factory=dict)
    keep: Callable[[str, ViewFilter], bool] = lambda node_id, view_filter: True
    carded: frozenset[str] = frozenset()
    """Nodes whose entry is (or begins with) a whole card or a removal: every viewer gets it."""

    def payload(self, view_filter: ViewFilter, shown: Shown = None) -> bytes:
        key = (view_filter, shown)
        payload = self._payloads.get(key)
        if payload is None:
            fragments = self.fragments
            if shown is None:
                nodes: Iterable[str] = fragments
            elif len(shown) < len(fragments):  # a pass over the shown nodes, not the lab
                nodes = shown | self.carded if self.carded else shown
            else:
                nodes = [node_id for node_id in fragments if node_id in shown or node_id in self.carded]
            parts = [
                html
                for node_id in nodes
                if (elements := fragments.get(node_id)) is not None and self.keep(node_id, view_filter)
                for html in elements.values()
            ]
            summary = self.summaries.get(view_filter)
            if summary:
                parts.append(summary)
            payload = self._payloads[key] = "".join(parts).encode()
        return payload


MAX_VIEW_FILTERS = 100
"""Different filters in use at once. The hub builds each tick's message, each summary bar and
each full state once per filter (a wall of screens shares them), so filters made up per
connection (``?node=x1``, ``?node=x2``...) would each cost a pass over the nodes, every tick."""
MAX_SHARED_BATCHES = 20  # a viewer up to 2 s behind still gets every batch (or set of cards)
MAX_CARDS_PER_TICK = 64
"""Whole cards a viewer gets in one tick for nodes that joined its shown set: a screenful
scrolled into view at once, while a page that keeps claiming new sets costs a bounded amount."""
RESYNC_EVERY_S = 2.0  # how often viewers that fell further behind get a fresh full state
JOIN_MAX_BYTES = 1024 * 1024
"""No message to a viewer is much larger than this (one card or batch more at most). A viewer
catching up gets its queued batches joined into messages of about this size, not all into one,
and a full state comes in parts of about this size, cut between cards: each message's WebSocket
frame is that viewer's own copy, and so is what its socket has not taken yet. 50 viewers each
joining 20 batches of 220 KB (2,000 nodes) held hundreds of MiB when the hub fell behind, and
50 full states of 8.6 MB sent at once (3,000 nodes, each viewer resynchronized) held 400-700 MiB
(#20.3)."""
SHED_AFTER_LAG_S = 0.25
"""Ticks this late on average (the event loop cannot keep up: more agent messages than the hub
can render) make the fan-out shed work: each node's parts are then rendered at most every
:data:`SHED_RENDER_EVERY_S`, the changes in between joined into one render. The page shows the
same values, up to that much later, instead of every viewer falling further behind (#20.3:
3,000 agents with every feature on a 2-core machine: p99 of several seconds)."""
SHED_UNTIL_LAG_S = 0.05  # back to a render per change once ticks are this punctual again
SHED_RENDER_EVERY_S = 2.0
LAG_SMOOTHING = 0.1  # weight of each tick in the mean lateness (about the last ten ticks)
MORE_ATTRIBUTE = "data-more"
"""On the grid of a full state in several messages: how many messages after this one complete it
(the page joins them and swaps the grid once)."""


def full_state_parts(cards: list[str], tail: str, max_chars: int) -> tuple[bytes, ...]:
    """The grid (``<main id="nodes">``, its cards, then ``tail``: the summary and board) as
    messages of about ``max_chars`` each, cut between cards; the first message's grid carries
    :data:`MORE_ATTRIBUTE` when more follow. Joined, they are the grid in one piece."""
    groups: list[list[str]] = [[]]
    size = 0
    for card in cards:
        if size >= max_chars:
            groups.append([])
            size = 0
        groups[-1].append(card)
        size += len(card)
    more = len(groups) - 1
    head = (
        f'<main id="nodes" class="grid" {MORE_ATTRIBUTE}="{more}">'
        if more
        else '<main id="nodes" class="grid">'
    )
    texts = ["".join(group) for group in groups]
    texts[0] = head + texts[0]
    texts[-1] += "</main>" + tail
    return tuple(text.encode() for text in texts)


class Viewer:
    """One browser. ``offer`` never blocks; the sender task does the sending.

    A viewer holds references to shared batches, never a picture of its own: one that falls
    more than :data:`MAX_SHARED_BATCHES` behind drops them and waits for the next full state,
    which the fan-out builds once per filter for every viewer in that case (a hub that cannot
    keep up then costs one picture per filter, not one per browser)."""

    def __init__(self, send: SendBytes, view_filter: ViewFilter, send_timeout_s: float) -> None:
        self._send = send
        self.filter = view_filter
        self._send_timeout_s = send_timeout_s
        self._shared: list[Batch | bytes] = []  # shared batches, and this viewer's own cards
        self._first: tuple[bytes, ...] = ()  # the parts of a full state not sent yet
        self.shown: Shown = None
        self._cards_due: dict[str, None] = {}  # nodes that joined the shown set, in order
        self.needs_full_state = False
        self._wake = asyncio.Event()
        self.last_sent_at = time.monotonic()
        self.closed = asyncio.Event()
        self.sent_messages = 0
        self.resyncs = 0

    def start_with(self, full_state: tuple[bytes, ...]) -> None:
        """The whole grid (:meth:`Fanout.full_state`), sent before anything else; it supersedes
        every batch before it, and the rest of a full state not sent yet."""
        self._first = full_state
        self._shared.clear()
        self._cards_due.clear()
        self.needs_full_state = False
        self._wake.set()

    def show(self, shown: frozenset[str]) -> None:
        """The page shows (only) these nodes now. Those that join the set get their whole card
        (their parts stopped while they were out of it); a viewer that had every node has every
        card current."""
        before = self.shown
        self.shown = shown
        due = {node_id: None for node_id in self._cards_due if node_id in shown}
        if before is not None:
            due.update(dict.fromkeys(sorted(shown - before)))
        self._cards_due = due

    def take_cards_due(self, count: int) -> list[str]:
        """Up to ``count`` nodes owed a whole card, oldest first."""
        taken = list(self._cards_due)[:count]
        for node_id in taken:
            del self._cards_due[node_id]
        return taken

    @property
    def owed_cards(self) -> bool:
        return bool(self._cards_due)

    def offer(self, batch: Batch) -> None:
        if self.needs_full_state:
            return  # the next full state holds this batch's changes too
        if len(self._shared) >= MAX_SHARED_BATCHES:
            self._shared.clear()
            self.needs_full_state = True
            self.resyncs += 1
            return
        self._shared.append(batch)
        self._wake.set()

    def offer_cards(self, cards: bytes) -> None:
        """Whole cards for this viewer alone, sent after every batch offered before them."""
        if self.needs_full_state or not cards:
            return
        self._shared.append(cards)
        self._wake.set()

    def keepalive(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Sends until the browser goes away or stops keeping up."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                payload = self._take()
                try:
                    await asyncio.wait_for(self._send(payload), self._send_timeout_s)
                except TimeoutError:
                    log.warning("dropping a viewer: a send took over %.0f s", self._send_timeout_s)
                    return
                self.last_sent_at = time.monotonic()
                self.sent_messages += 1
        finally:
            self.closed.set()

    def _take(self) -> bytes:
        """The next message: the next part of a full state, or its last part and the queued
        batches, in order, joined up to :data:`JOIN_MAX_BYTES`; what is left goes in the next
        one."""
        payloads = []
        size = 0
        if self._first:
            first, self._first = self._first[0], self._first[1:]
            if self._first:  # more parts of the full state come first
                self._wake.set()
                return first
            payloads.append(first)
            size = len(first)
        shared = self._shared
        taken = 0
        while taken < len(shared) and size < JOIN_MAX_BYTES:
            item = shared[taken]
            payload = item if isinstance(item, bytes) else item.payload(self.filter, self.shown)
            payloads.append(payload)
            size += len(payload)
            taken += 1
        del shared[:taken]
        if shared:
            self._wake.set()
        if len(payloads) == 1:
            return payloads[0]
        return b"".join(payloads)  # nothing at all: a keepalive


class Fanout:
    def __init__(
        self,
        registry: NodeRegistry,
        scene: Scene,
        max_rate_hz: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._scene = scene
        self._tick_s = 1.0 / max_rate_hz
        self._monotonic = monotonic
        self.shedding = False  # rendering each node at most every SHED_RENDER_EVERY_S
        self.tick_lag_s = 0.0  # how late the ticks come, on average
        self._rendered_at: dict[str, float] = {}  # while shedding: when each node was rendered
        self._rendered: dict[str, dict[str, str]] = {}  # since the last tick: node id -> element id -> HTML
        self._carded: set[str] = set()  # since the last tick: nodes rendered whole (or removed)
        self.viewers: set[Viewer] = set()
        self._last_summaries: dict[ViewFilter, SummaryView] = {}
        self._last_boards: dict[ViewFilter, PeopleView | None] = {}  # people boards (?panel=users, /users)
        self._summary_due_at = 0.0
        self._full_states: dict[ViewFilter, tuple[bytes, ...]] = {}  # valid until the next tick sends parts
        self._resync_at = 0.0
        # the nodes some viewer shows (None: every node), from the viewers' filters and shown
        # sets: a change of any other node is not rendered (Scene.defer)
        self._wanted: frozenset[str] | None = frozenset()
        subscribe_changes(registry.events, self.note)

    # ------------------------------------------------------------------ input
    def note(self, change: NodeChange) -> None:
        """Renders a node change now (while :attr:`shedding`, maybe later: :meth:`_shed`); its
        parts go out with the next tick. A whole card (or a removal) replaces the node's parts
        rendered before it in the same tick; later parts are applied over it, the newest per
        element. A change of parts of a node that no viewer shows is deferred by the scene."""
        wanted = self._wanted
        if wanted is not None and change.node_id not in wanted and self._scene.defer(change):
            return
        if self.shedding and self._shed(change):
            return
        self._render(change)

    def _shed(self, change: NodeChange) -> bool:
        """Whether ``change`` waits (:meth:`Scene.defer`), as its node was rendered less than
        :data:`SHED_RENDER_EVERY_S` ago. Whole cards and removals never wait (a card supersedes
        the parts that waited before it); a change that renders takes those parts with it."""
        node_id = change.node_id
        now = self._monotonic()
        if (
            not (change.card or change.removed)
            and now - self._rendered_at.get(node_id, -math.inf) < SHED_RENDER_EVERY_S
            and self._scene.defer(change)
        ):
            return True
        self._rendered_at[node_id] = now
        return False

    def observe_lag(self, lag_s: float) -> None:
        """How late a tick came: turns shedding on past :data:`SHED_AFTER_LAG_S` on average,
        off under :data:`SHED_UNTIL_LAG_S` (then every deferred change renders at once)."""
        self.tick_lag_s += (lag_s - self.tick_lag_s) * LAG_SMOOTHING
        if not self.shedding and self.tick_lag_s > SHED_AFTER_LAG_S:
            self.set_shedding(True)
            log.warning(
                "the hub cannot keep up (ticks %.0f ms late): each node's card is updated at most "
                "every %g s until it can",
                1000 * self.tick_lag_s,
                SHED_RENDER_EVERY_S,
            )
        elif self.shedding and self.tick_lag_s < SHED_UNTIL_LAG_S:
            self.set_shedding(False)
            log.info("the hub keeps up again: every change is rendered as it comes")

    def set_shedding(self, on: bool) -> None:
        """Sheds (or stops), and every summary bar says so from now on (the scene's)."""
        self.shedding = on
        self._scene.cards_every_s = SHED_RENDER_EVERY_S if on else 0.0

    def _render_deferred(self, now: float) -> None:
        """Renders the shown nodes' waiting changes that are due (all of them once shedding
        has stopped)."""
        rendered_at, wanted = self._rendered_at, self._wanted
        for node_id in self._scene.unrendered():
            if wanted is not None and node_id not in wanted:
                continue  # no viewer shows it: it waits for that, not for the clock
            if not self.shedding or now - rendered_at.get(node_id, -math.inf) >= SHED_RENDER_EVERY_S:
                rendered_at[node_id] = now
                self._render(NodeChange(node_id))
        if not self.shedding:
            rendered_at.clear()

    def _render(self, change: NodeChange) -> None:
        try:
            parts = self._scene.render_change(change)
        except Exception:  # one bad render must not cost the agent its connection
            log.exception("rendering a change of node %s failed", change.node_id)
            return
        pending = self._rendered.get(change.node_id)
        if change.card or change.removed:
            self._rendered[change.node_id] = parts
            self._carded.add(change.node_id)
        elif pending is None:
            self._rendered[change.node_id] = parts
        else:
            pending.update(parts)

    def _want(self) -> None:
        """Works out which nodes some viewer shows; the deferred changes of those that were
        not shown before render now, so their parts go out with the next tick."""
        before = self._wanted
        self._wanted = now = self._shown_somewhere()
        if now != before:  # a node deferred was not wanted then
            for node_id in self._scene.unrendered():
                if now is None or node_id in now:
                    self._render(NodeChange(node_id))

    def _shown_somewhere(self) -> frozenset[str] | None:
        """The nodes some viewer shows; ``None`` while a viewer shows every node."""
        views = {(viewer.filter, viewer.shown) for viewer in self.viewers}
        if any(shown is None and view_filter.every_card for view_filter, shown in views):
            return None
        wanted: set[str] = set()
        nodes = self._registry.nodes
        for view_filter, shown in views:
            if shown is not None:
                wanted |= shown
            else:
                wanted.update(node_id for node_id, node in nodes.items() if view_filter.matches(node))
        return frozenset(wanted)

    # ------------------------------------------------------------------ viewers
    def full_state(self, view_filter: ViewFilter) -> tuple[bytes, ...]:
        """The whole grid and summary for a joining viewer, in messages of about
        :data:`JOIN_MAX_BYTES` (:func:`full_state_parts`). Built once per filter between two
        ticks: viewers that join together (a hub restart, a wall of screens) share the bytes."""
        cached = self._full_states.get(view_filter)
        if cached is None:
            cards = self._scene.cards(view_filter)
            summary = self._scene.summary(self._scene.summary_view(view_filter))
            board = self._scene.people(self._scene.people_view(view_filter))
            cached = self._full_states[view_filter] = full_state_parts(cards, summary + board, JOIN_MAX_BYTES)
        return cached

    def takes(self, view_filter: ViewFilter) -> bool:
        """Whether a viewer with ``view_filter`` may join (:data:`MAX_VIEW_FILTERS`)."""
        in_use = {viewer.filter for viewer in self.viewers}
        return view_filter in in_use or len(in_use) < MAX_VIEW_FILTERS

    def add_viewer(self, viewer: Viewer) -> None:
        viewer.start_with(self.full_state(viewer.filter))
        self.viewers.add(viewer)
        self._want()

    def show(self, viewer: Viewer, shown: Shown) -> None:
        """What a viewer's page says it shows (:mod:`hub.view_show`). Back to every node: the
        cards it did not show may be behind, so it gets the full state."""
        if shown is not None:
            viewer.show(shown)
        elif viewer.shown is not None:
            viewer.shown = None
            viewer.start_with(self.full_state(viewer.filter))
        self._want()

    def remove_viewer(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if all(other.filter != viewer.filter for other in self.viewers):
            # filters come from URLs: keep nothing for one that no viewer uses any more
            self._last_summaries.pop(viewer.filter, None)
            self._last_boards.pop(viewer.filter, None)
            self._full_states.pop(viewer.filter, None)

    # ------------------------------------------------------------------ the tick
    async def run(self) -> None:
        while True:
            due = self._monotonic() + self._tick_s
            await asyncio.sleep(self._tick_s)
            self.observe_lag(max(0.0, self._monotonic() - due))
            try:
                self.flush()
            except Exception:  # one bad render must not stop the page for everyone
                log.exception("fan-out tick failed")

    def flush(self) -> None:
        self._want()  # nodes come and go, and filters select by what nodes report
        if self.shedding or self._rendered_at:
            self._render_deferred(self._monotonic())
        now = time.monotonic()
        fragments, self._rendered = self._rendered, {}
        carded, self._carded = frozenset(self._carded), set()
        # A full state lives for one tick: it may lack this tick's parts (a viewer that got it
        # gets this batch too, and parts applied twice change nothing), and it carries the
        # hub's clock, which a viewer joining a quiet hub (every node offline) must get fresh.
        self._full_states.clear()
        summaries = self._summaries(now)
        if fragments or summaries:
            nodes = self._registry.nodes

            def keep(node_id: str, view_filter: ViewFilter) -> bool:
                node = nodes.get(node_id)
                return node is None or view_filter.matches(node)

            batch = Batch(fragments, summaries, keep=keep, carded=carded)
            for viewer in self.viewers:
                viewer.offer(batch)
        self._send_cards_due()
        if now >= self._resync_at:
            behind = [viewer for viewer in self.viewers if viewer.needs_full_state]
            if behind:
                self._resync_at = now + RESYNC_EVERY_S
                for viewer in behind:
                    viewer.start_with(self.full_state(viewer.filter))
        for viewer in self.viewers:
            if now - viewer.last_sent_at >= KEEPALIVE_S:
                viewer.keepalive()

    def _send_cards_due(self) -> None:
        """Whole current cards for the nodes that joined viewers' shown sets, each card
        assembled once a tick however many viewers scrolled to it."""
        owed = [viewer for viewer in self.viewers if viewer.owed_cards]
        if not owed:
            return
        nodes = self._registry.nodes
        cards: dict[str, str] = {}
        for viewer in owed:
            parts = []
            for node_id in viewer.take_cards_due(MAX_CARDS_PER_TICK):
                node = nodes.get(node_id)
                if node is None or not viewer.filter.matches(node):
                    continue  # not (or no longer) a node this page has
                card = cards.get(node_id)
                if card is None:
                    card = cards[node_id] = self._scene.card(node)
                parts.append(card)
            viewer.offer_cards("".join(parts).encode())

    def _summaries(self, now: float) -> dict[ViewFilter, str]:
        """Each distinct filter's summary bar (and people board), at most once a second and only
        when it changed."""
        if now < self._summary_due_at:
            return {}
        self._summary_due_at = now + SUMMARY_EVERY_S
        changed = {}
        for view_filter in {v.filter for v in self.viewers}:
            view = self._scene.summary_view(view_filter)
            # the summary carries the server's clock; only its numbers decide whether to resend
            if self._last_summaries.get(view_filter) != view:
                self._last_summaries[view_filter] = view
                changed[view_filter] = self._scene.summary(view)
            if view_filter.people_sort:
                board = self._scene.people_view(view_filter)
                if self._last_boards.get(view_filter) != board:
                    self._last_boards[view_filter] = board
                    changed[view_filter] = changed.get(view_filter, "") + self._scene.people(board)
        return changed


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
