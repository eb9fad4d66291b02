"""Element ids: every node's card and parts have ids no other node's element can have, whatever
the legal node names (``gpu1`` beside ``gpu1-host`` or ``gpu1-gpu-0``), on the page and in every
pushed fragment; and app.js reads a part's node back the way the scheme writes it."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend.element_ids import PART_ID_PATTERN, element_id, node_of_part
from frontend.render import Renderer
from hub.clock import ManualClock
from hub.history import BUCKET_S, CARD_GROUP
from hub.registry import NodeRegistry
from hub.scene import NodeChange, Scene, ViewFilter
from hub.settings import GpuFreeRule
from node_agent.protocol import NODE_NAME_RE, Delta, Hello
from tests.rendered import Rendered

APP_JS = Path(__file__).resolve().parent.parent / "frontend" / "static" / "app.js"
GIB = 1024**3
GPU_INDEXES = ("0", "1", "10")
GROUP_S = BUCKET_S * CARD_GROUP

# Each is the old "<card id>-<suffix>" or "<suffix>-<name>" of another name in this list.
COLLIDING = (
    "gpu1",
    "gpu1-host",
    "gpu1-host-host",
    "gpu1-gpu-0",
    "gpu1-gpu-1",
    "gpu1-gpu-10",
    "gpu1-gpu-0-x",
    "gpu1-cpu",
    "host-gpu1",
    "gpu-0-gpu1",
    "gpu-1-0-gpu1",
    "spark-cpu-gpu1",
    "spark-gpu-0-gpu1",
    "node-gpu1",
    "gpu1.lab",
    "gpu1_lab",
    "gpu1.lab-host",
    "0",
    "10",
    "1-0",
    "nodes",
    "summary",
)
TOKENS = ("gpu1", "host", "gpu", "0", "1", "10", "cpu", "spark", "node", "x")
legal_names = st.one_of(
    st.from_regex(NODE_NAME_RE, fullmatch=True),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map("-".join),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3).map(".".join),
)
VOID = {"meta", "link", "base", "br", "img", "input"}


class OwnedIds(HTMLParser):
    """Every id in a document, with the node of the card it sits in (None outside cards)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[tuple[str, str | None]] = []
        self._open: list[tuple[str, str | None]] = []
        self.feed(html)
        self.close()

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        found = dict(attrs)
        node = found.get("data-node") if tag == "article" else (self._open[-1][1] if self._open else None)
        if found.get("id"):
            self.ids.append((str(found["id"]), node))
        return node

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = self._element(tag, attrs)
        if tag not in VOID:
            self._open.append((tag, node))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        assert self._open and self._open[-1][0] == tag, f"</{tag}> closes {self._open[-1:]}"
        self._open.pop()


def gpu(util_percent: float) -> dict[str, object]:
    return {
        "name": "NVIDIA H100 80GB HBM3",
        "util_gpu_percent": util_percent,
        "mem_used_bytes": 10 * GIB,
        "mem_total_bytes": 80 * GIB,
        "processes": [],
    }


def sample(clock: ManualClock, step: int) -> dict[str, object]:
    return {
        "sampled_at": clock.wall(),
        "host": {"cpu_percent": 10.0 + step, "mem_used_bytes": step * GIB, "mem_total_bytes": 64 * GIB},
        "gpus": {i: gpu(20.0 + step) for i in GPU_INDEXES},
    }


def lab(names: list[str]) -> tuple[Scene, list[tuple[str, dict[str, str]]]]:
    """A scene of ``names`` (three GPUs each), and every fragment it pushed while each node
    changed its host and GPUs twice and closed a sparkline group: (node, element id -> HTML)."""
    clock = ManualClock()
    registry = NodeRegistry(clock)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    rendered = Rendered(registry)
    connections = {}
    pushed: list[tuple[str, dict[str, str]]] = []
    for name in names:
        connections[name] = registry.hello(Hello(node=name, agent_version="t", interval_s=1.0))
        registry.delta(name, connections[name], Delta(1, 0.0, sample(clock, 0)))
        rendered.take()
        pushed.append((name, scene.render_change(NodeChange(name, card=True))))
    for step in (1, 2):
        clock.advance(GROUP_S)
        for name in names:
            registry.delta(name, connections[name], Delta(1 + step, 0.0, sample(clock, step)))
            pushed.append((name, scene.render_change(rendered.one())))
    return scene, pushed


def assert_ids_are_owned(names: list[str]) -> None:
    scene, pushed = lab(names)
    page = Renderer().page(
        root_path="",
        ws_path="/ws/view",
        summary_html=scene.summary(scene.summary_view(ViewFilter())),
        cards=scene.cards(ViewFilter()),
    )
    owned = OwnedIds(page).ids
    repeated = [i for i, count in Counter(i for i, _ in owned).items() if count > 1]
    assert not repeated, f"ids on the page more than once: {repeated}"
    where = dict(owned)
    for element, node in owned:
        if node is None:
            assert node_of_part(element) is None and not element.startswith("node-"), element
        elif element == element_id("node", node):
            assert node_of_part(element) is None, "a card is no part"
        else:
            assert node_of_part(element) == node, f"{element} sits in {node}'s card"
    kinds = Counter()
    for node, fragments in pushed:
        for element, html in fragments.items():
            assert OwnedIds(html).ids[0][0] == element, "the fragment carries its key"
            assert where.get(element) == node, f"{element} of {node} is on the page, in its card"
            kinds[element.split("-")[0]] += 1
    assert set(kinds) == {"node", "host", "gpu", "spark"}, "every kind of fragment was checked"


# --------------------------------------------------------------------------- the scheme
@given(st.lists(legal_names, min_size=1, max_size=8, unique=True))
@settings(max_examples=300, deadline=None)
def test_ids_are_injective_over_legal_names(names: list[str]) -> None:
    made: dict[str, tuple[str, str, str]] = {}
    for name in names:
        assert NODE_NAME_RE.fullmatch(name)
        for kind, index in [("node", ""), ("host", ""), ("spark-cpu", "")] + [
            (kind, i) for kind in ("gpu", "spark-gpu") for i in GPU_INDEXES
        ]:
            element = element_id(kind, name, index)  # type: ignore[arg-type]
            assert made.setdefault(element, (kind, name, index)) == (kind, name, index), element
            assert node_of_part(element) == (None if kind == "node" else name)


def test_a_gpu_index_that_is_not_digits_is_refused() -> None:
    with pytest.raises(ValueError, match="digits"):
        element_id("gpu", "gpu1", "0-x")


def test_app_js_reads_part_ids_with_the_schemes_pattern() -> None:
    found = re.search(r"const PART_ID = /(.+)/;", APP_JS.read_text())
    assert found is not None
    assert found[1] == PART_ID_PATTERN


# --------------------------------------------------------------------------- the page and the pushes
def test_colliding_names_get_their_own_ids_on_the_page_and_in_every_fragment() -> None:
    assert all(NODE_NAME_RE.fullmatch(name) for name in COLLIDING)
    assert_ids_are_owned(list(COLLIDING))


@given(st.lists(legal_names, min_size=2, max_size=6, unique=True))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_page_and_fragment_ids_are_owned_by_one_node_for_any_legal_names(names: list[str]) -> None:
    assert_ids_are_owned(names)
