"""Rendering: the templates' contexts, the pushed fragments' shape and size, hostile strings in
every agent-provided field, and which parts the scene renders for a change."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from jinja2 import Environment, meta

from frontend.render import Renderer, build_environment
from frontend.viewmodels import (
    detail_view,
    gpu_view,
    head_view,
    host_view,
    spark_view,
)
from hub.clock import ManualClock
from hub.history import BUCKET_S, CARD_GROUP, History
from hub.pages import filter_text, view_filter_from
from hub.registry import Naming, Node, NodeRegistry, NodeStatus
from hub.scene import NodeChange, Scene, ViewFilter
from hub.settings import GpuFreeRule
from node_agent.protocol import Delta, Hello
from tests.rendered import Rendered

GIB = 1024**3
PAYLOADS = (
    "<script>window.__xss=1</script>",
    "<img src=x onerror=window.__xss=2>",
    "\"'><svg onload=window.__xss=3>",
    "a&amp;b</div></article>",
    "W" * 300,
)

RULE = GpuFreeRule(max_util_percent=10, max_mem_percent=5)


class Parsed(HTMLParser):
    """Tags, attributes and text of a fragment, as a browser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("path", "br", "meta", "link", "base"):
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}: broken nesting"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    def attr_values(self) -> list[str]:
        return [v for _, attrs in self.tags for v in attrs.values() if v]


def assert_inert(html: str, allowed_tags: set[str]) -> Parsed:
    parsed = Parsed(html)
    assert not parsed.open, f"unclosed elements: {parsed.open}"
    tags = {tag for tag, _ in parsed.tags}
    assert tags <= allowed_tags, f"unexpected elements: {tags - allowed_tags}"
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), f"event handler attribute on <{tag}>"
    return parsed


def gpu(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "NVIDIA H100 80GB HBM3",
        "util_gpu_percent": 97.0,
        "mem_used_bytes": 62 * GIB,
        "mem_total_bytes": 80 * GIB,
        "temp_celsius": 71.0,
        "power_draw_watts": 612.0,
        "power_limit_watts": 700.0,
        "processes": [{"pid": 4242, "user": "grace", "command": "python", "gpu_mem_bytes": 62 * GIB}],
    }
    base.update(overrides)
    return base


def host() -> dict[str, Any]:
    return {
        "cpu_percent": 45.0,
        "load_avg_1m": 12.0,
        "load_avg_5m": 11.5,
        "load_avg_15m": 10.25,
        "mem_used_bytes": 150 * GIB,
        "mem_total_bytes": 512 * GIB,
        "disks": [{"mount": "/", "used_bytes": 800 * GIB, "total_bytes": 1800 * GIB}],
        "net_rx_bytes_per_s": 123_456_789.0,
        "net_tx_bytes_per_s": 2_345_678.0,
        "uptime_s": 3_600_000,
    }


def lab_node(
    name: str = "gpu07", naming: Naming | None = None, gpus: int = 8
) -> tuple[NodeRegistry, ManualClock, int]:
    clock = ManualClock()
    registry = NodeRegistry(clock, names={name: naming} if naming else None)
    connection = registry.hello(
        Hello(node=name, agent_version="t", interval_s=1.0, host={"hostname": name, "os_name": "Debian"})
    )
    registry.delta(
        name,
        connection,
        Delta(
            1, 0.0, {"sampled_at": clock.wall(), "host": host(), "gpus": {str(i): gpu() for i in range(gpus)}}
        ),
    )
    return registry, clock, connection


# --------------------------------------------------------------------------- template contexts
# Each page with the templates it extends or includes: what its renderer has to pass.
_BASE = {"theme", "root_path", "back_query"}


def _reads(env: Environment, template: str) -> set[str]:
    """The variables ``template`` reads, with those of the templates it extends or includes."""
    assert env.loader is not None
    source = env.loader.get_source(env, template)[0]
    assert "|safe" not in source.replace(" ", ""), "agent text is never marked safe"
    tree = env.parse(source)
    names = set(meta.find_undeclared_variables(tree))
    for other in meta.find_referenced_templates(tree):
        assert other is not None, f"{template}: a template name computed at render time"
        names |= _reads(env, other)
    return names


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("_card.html", {"v", "card_id", "host_html", "cpu_spark", "gpu_lines"}),
        ("_summary.html", {"s", "now_epoch_s"}),
        (
            "page.html",
            {
                "theme",
                "density",
                "root_path",
                "title",
                "ws_path",
                "sort",
                "cycle_s",
                "summary_html",
                "cards",
                "hub_url",
                "filter_text",
                "unfiltered_query",
                "people_html",
                "memory_line",
                "memory_problem",
            },
        ),
        ("_people.html", {"p"}),
        ("users.html", _BASE | {"ws_path", "summary_html", "people_html"}),
        ("node.html", _BASE | {"d", "chart", "now_epoch_s", "stored_html"}),
        ("_stored.html", {"node_id", "charts", "problem", "chart", "events"}),
        ("events.html", _BASE | {"node", "kind", "kinds", "since", "until", "error", "events"}),
        ("_events.html", {"events"}),
        (
            "usage.html",
            _BASE
            | {
                "v",
                "ranges",
                "range_name",
                "keep_by",
                "user",
                "user_query",
                "keep_range",
                "from_text",
                "to_text",
                "by_choices",
                "error",
                "busy_above",
            },
        ),
        ("alerts.html", _BASE | {"a", "clock"}),
    ],
)
def test_template_contexts_are_pinned(template: str, context: set[str]) -> None:
    env = build_environment()
    assert env.autoescape is True
    assert _reads(env, template) == context


# --------------------------------------------------------------------------- fragment shape and size
def test_gpu_row_is_small_and_complete() -> None:
    html = Renderer().gpu(gpu_view("gpu07", "3", gpu(), RULE))
    assert html == (
        '<div id="gpu-3-gpu07" class="g b"><b>3</b><i>H100</i><u class="p97">97%</u>'
        '<u class="p78">62/80G</u><em>71°</em><em>612/700W</em><span class="us">grace 62G</span></div>'
    )
    assert len(html.encode()) <= 200


def test_gpu_row_states_in_words() -> None:
    renderer = Renderer()
    free = renderer.gpu(gpu_view("n", "0", gpu(util_gpu_percent=0.0, mem_used_bytes=0, processes=[]), RULE))
    assert 'class="g f"' in free and "✓ free" in free
    busy = renderer.gpu(gpu_view("n", "0", gpu(processes=[]), RULE))
    assert 'class="g b"' in busy and "● busy" in busy
    lost = renderer.gpu(gpu_view("n", "0", {"name": "A100", "error": "GPU is lost"}, RULE))
    assert 'class="g e"' in lost and "✖ GPU is lost" in lost
    gone = renderer.gpu(gpu_view("n", "0", gpu(processes=[]), RULE, node_live=False))
    assert 'class="g o"' in gone and "free" not in gone
    many = [{"pid": i, "user": f"u{i}", "gpu_mem_bytes": GIB * (i + 1)} for i in range(5)]
    crowded = renderer.gpu(gpu_view("n", "0", gpu(processes=many), RULE))
    assert ">u4 5.0G, u3 4.0G</span>" in crowded and '<span class="mo">+3 more</span>' in crowded


def test_host_part_is_small_and_keeps_its_ids() -> None:
    registry, _, _ = lab_node()
    html = Renderer().host(host_view(registry.nodes["gpu07"]))
    assert html.startswith('<div id="host-gpu07" class="host">')
    assert '<u class="p45">CPU 45%</u>' in html and '<u class="p44">DSK 44%</u>' in html
    assert "<span>load 12.00 11.50 10.25</span>" in html and "<span>up 41d 16h</span>" in html
    assert html.endswith("</div>\n</div>")
    assert len(html.encode()) <= 260
    late = Renderer().host(host_view(registry.nodes["gpu07"], sample_late_s=12))
    assert '<span class="late">⚠ no new sample for 12 s</span>' in late


def test_sparkline_is_inline_svg_with_integer_coordinates() -> None:
    points = [float(i * 3 % 100) for i in range(30)]
    html = Renderer().spark(spark_view("spark-gpu-0-gpu07", points, points))
    assert html.startswith('<svg id="spark-gpu-0-gpu07" class="sp" width="58" height="16"')
    coordinates = re.findall(r"[ M](-?[\d.]+),(-?[\d.]+)", html)
    assert 40 <= len(coordinates) <= 60 and all("." not in x + y for x, y in coordinates)
    assert len(html.encode()) <= 440


def test_whole_card_holds_every_part_once() -> None:
    registry, clock, _ = lab_node(naming=Naming("GPU 07", "vision"))
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    card = scene.card(registry.nodes["gpu07"])
    ids = re.findall(r' id="([^"]+)"', card)
    assert ids[:3] == ["node-gpu07", "host-gpu07", "spark-cpu-gpu07"]
    assert ids[3:] == [f"gpu-{i}-gpu07" for i in range(8)] + [f"spark-gpu-{i}-gpu07" for i in range(8)]
    assert 'data-node="gpu07"' in card and 'data-status="live"' in card and 'data-group="vision"' in card
    assert '<a class="nm" href="node/gpu07"' in card and ">GPU 07</a>" in card
    assert_inert(card, {"article", "header", "a", "span", "div", "u", "b", "i", "em", "svg", "path"})


# --------------------------------------------------------------------------- hostile strings
@pytest.mark.parametrize("payload", PAYLOADS)
def test_agent_strings_in_fragments_are_text(payload: str) -> None:
    renderer = Renderer()
    hostile = gpu(
        name=payload,
        processes=[{"pid": 1, "user": payload, "command": payload, "gpu_mem_bytes": GIB}] * 3
        + [{"pid": 2, "user": payload + "2", "gpu_mem_bytes": 2 * GIB}],
    )
    row = renderer.gpu(gpu_view("n1", "0", hostile, RULE))
    parsed = assert_inert(row, {"div", "b", "i", "u", "em", "span"})
    assert payload[:8] in parsed.all_text
    assert payload + "2 2.0G" in parsed.all_text, "the whole user name arrives, as text"
    in_container = gpu(
        processes=[{"pid": 3, "user": "c", "gpu_mem_bytes": 3 * GIB, "container_name": payload}]
    )
    row = renderer.gpu(gpu_view("n1", "0", in_container, RULE))
    assert f"c ({payload}) 3.0G" in assert_inert(row, {"div", "b", "i", "u", "em", "span"}).all_text
    error = renderer.gpu(gpu_view("n1", "0", {"error": payload}, RULE))
    assert f"✖ {payload}" in assert_inert(error, {"div", "b", "i", "span"}).all_text


@pytest.mark.parametrize("payload", PAYLOADS)
def test_names_and_facts_in_cards_summary_and_pages_are_text(payload: str) -> None:
    registry, clock, _ = lab_node(naming=Naming(payload, payload))
    node = registry.nodes["gpu07"]
    node.hello = Hello(
        node="gpu07",
        agent_version=payload,
        interval_s=1.0,
        host={"hostname": payload, "os_name": payload, "cpu_model": payload, "kernel": payload},
        gpu_driver={"driver_version": payload, "error": payload},
        gpus=[{"index": 0, "name": payload, "uuid": payload, "pci_bus_id": payload}],
    )
    node.state["gpus"]["0"] = gpu(
        name=payload,
        throttle_reasons=[payload],
        processes=[
            {"pid": 1, "user": payload, "command": payload, "gpu_mem_bytes": GIB},
            {"pid": 2, "container_runtime": payload, "container_name": payload},
            {"pid": 3, "pod_namespace": payload, "pod_name": payload, "pod_uid": payload},
            {"pid": 4, "slurm_job_id": 81234, "slurm_step": payload},
        ],
    )
    node.state["host"]["disks"] = [{"mount": payload, "used_bytes": 1, "total_bytes": 2}]
    renderer = Renderer()
    scene = Scene(registry, renderer, GpuFreeRule(), clock.wall)
    card = assert_inert(
        scene.card(node), {"article", "header", "a", "span", "div", "u", "b", "i", "em", "svg", "path"}
    )
    assert card.all_text.count(payload) >= 2, "display name and group"
    assert payload in card.attr_values(), "data-group holds the text itself"
    summary = assert_inert(scene.summary(scene.summary_view(ViewFilter())), {"div", "span", "b"})
    assert payload in summary.all_text
    page = renderer.node_page(scene.detail(node), root_path="", now_epoch_s=1.0, back_query="?x=" + payload)
    parsed = assert_inert(
        page,
        {
            "html",
            "head",
            "meta",
            "base",
            "title",
            "link",
            "body",
            "header",
            "a",
            "span",
            "div",
            "main",
            "section",
        }
        | {
            "h1",
            "h2",
            "h3",
            "figure",
            "figcaption",
            "svg",
            "path",
            "dl",
            "dt",
            "dd",
            "p",
            "table",
            "tr",
            "th",
            "td",
        }
        | {"u", "script"},
    )
    assert [attrs.get("src") for tag, attrs in parsed.tags if tag == "script"] == ["static/app.js"]
    assert parsed.all_text.count(payload) >= 8, "host facts, GPU facts, the process, the disk, the driver"
    cells = parsed.all_text
    assert f"{payload} {payload}" in cells, "a container: its runtime and name, as text"
    assert f"pod {payload}/{payload}" in cells and f"job 81234 step {payload}" in cells


UNSEEN = "\u202e\u2066\u200b\u200f\ufeff\x1b\x00"


def test_characters_that_change_how_text_looks_are_spelled_out() -> None:
    """Agent text with bidi overrides, isolates and marks, zero-width characters and control
    characters: unescaped, a GPU name ending in U+202E shows the summary's "3/8" after it as
    "8/3", and "alice\u200b" passes for "alice". Every page and fragment shows them as
    ``<U+202E>`` and holds none of them, in text or attributes."""
    payload = "A100" + UNSEEN + "x"
    shown = "A100<U+202E><U+2066><U+200B><U+200F><U+FEFF><U+001B><U+0000>x"
    registry, clock, _ = lab_node(naming=Naming(payload, payload))
    node = registry.nodes["gpu07"]
    node.hello = Hello(
        node="gpu07",
        agent_version=payload,
        interval_s=1.0,
        host={"hostname": payload, "os_name": payload, "cpu_model": payload, "kernel": payload},
        gpu_driver={"driver_version": payload, "error": payload},
        gpus=[{"index": 0, "name": payload, "uuid": payload, "pci_bus_id": payload}],
    )
    node.state["gpus"]["0"] = gpu(
        name=payload,
        throttle_reasons=[payload],
        processes=[{"pid": 1, "user": payload, "command": payload, "gpu_mem_bytes": GIB}],
    )
    node.state["gpus"]["1"] = gpu(error=payload)
    node.state["host"]["disks"] = [{"mount": payload, "used_bytes": 1, "total_bytes": 2}]
    renderer = Renderer()
    scene = Scene(registry, renderer, GpuFreeRule(), clock.wall)
    rendered = {
        "card": scene.card(node),
        "summary": scene.summary(scene.summary_view(ViewFilter())),
        "node page": renderer.node_page(scene.detail(node), root_path="", now_epoch_s=1.0, back_query=""),
    }
    for where, html in rendered.items():
        parsed = Parsed(html)
        for text in [parsed.all_text, *parsed.attr_values()]:
            assert not set(text) & set(UNSEEN), f"{where}: {text!r}"
        assert "<U+202E>" in parsed.all_text, where
    assert Parsed(rendered["card"]).all_text.count(shown) >= 4, "display name, group, user, error"
    assert Parsed(rendered["node page"]).all_text.count(shown) >= 8


def test_page_escapes_the_reflected_query() -> None:
    html = Renderer().page(
        root_path="",
        ws_path='/ws/view?node="><script>alert(1)</script>',
        summary_html="",
        cards=[],
    )
    parsed = assert_inert(
        html,
        {"html", "head", "meta", "base", "title", "link", "body", "header", "h1", "span", "div", "main"}
        | {"p", "code", "script"}
        | {"button", "form", "b", "label", "input", "ul"},  # the browser's own "notify me" watches
    )
    assert [attrs.get("src") for tag, attrs in parsed.tags if tag == "script"] == ["static/app.js"]
    assert (
        "body",
        {
            "data-page": "wall",
            "data-ws": '/ws/view?node="><script>alert(1)</script>',
            "data-sort": "name",
            "data-cycle": "0",
        },
    ) in parsed.tags


# --------------------------------------------------------------------------- what the scene renders
def test_a_change_renders_only_its_parts_and_skips_unchanged_rows() -> None:
    registry, clock, connection = lab_node(gpus=2)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    rendered = Rendered(registry)
    first = scene.render_change(NodeChange("gpu07", card=True))
    assert list(first) == ["node-gpu07"]
    clock.advance(1.0)
    registry.delta(
        "gpu07",
        connection,
        Delta(2, 0.0, {"host": {"cpu_percent": 46.0}, "gpus": {"1": {"util_gpu_percent": 50.0}}}),
    )
    assert list(scene.render_change(rendered.one())) == ["host-gpu07", "gpu-1-gpu07"]
    registry.delta("gpu07", connection, Delta(3, 0.0, {"gpus": {"1": {"power_draw_watts": 612.4}}}))
    assert scene.render_change(rendered.one()) == {}, "same text: nothing to send"
    registry.remove("gpu07")
    removal = scene.render_change(rendered.one())
    assert removal == {"node-gpu07": '<template id="node-gpu07" data-remove></template>'}
    assert "gpu07" not in scene.history.nodes


def test_sparklines_are_pushed_when_a_history_group_closes() -> None:
    registry, clock, connection = lab_node(gpus=2)
    history = History(900)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall, history)
    rendered = Rendered(registry)
    scene.render_change(NodeChange("gpu07", card=True))
    pushed_at = []
    for second in range(1, 61):
        clock.advance(1.0)
        patch = {"sampled_at": clock.wall(), "host": {"cpu_percent": float(second % 7)}}
        registry.delta("gpu07", connection, Delta(second, clock.wall(), patch))
        out = scene.render_change(rendered.one())
        if "spark-cpu-gpu07" in out:
            assert {"spark-gpu-0-gpu07", "spark-gpu-1-gpu07"} <= out.keys()
            pushed_at.append(second)
    group_s = BUCKET_S * CARD_GROUP
    assert len(pushed_at) == 3 and pushed_at[1] - pushed_at[0] == group_s == pushed_at[2] - pushed_at[1]
    card = scene.card(registry.nodes["gpu07"])
    assert re.search(r'<svg id="spark-cpu-gpu07"[^>]*><path d="M\d', card), "the card shows the history"


def test_offline_card_marks_rows_not_live() -> None:
    registry, clock, connection = lab_node(gpus=1)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    rendered = Rendered(registry)
    registry.disconnect("gpu07", connection)
    change = rendered.one()
    clock.advance(125)
    card = scene.render_change(change)["node-gpu07"]
    assert 'data-status="offline"' in card and "last seen 2 min ago" in card
    assert 'class="g o"' in card
    assert registry.nodes["gpu07"].status is NodeStatus.OFFLINE


def test_a_node_whose_samples_stopped_shows_no_gpu_as_free() -> None:
    """Heartbeats still come, samples don't (a hung NVML call): its GPU rows are old news."""
    registry, clock, connection = lab_node(gpus=1)
    registry.delta(
        "gpu07",
        connection,
        Delta(2, 0.0, {"gpus": {"0": gpu(util_gpu_percent=0.0, mem_used_bytes=0, processes=[])}}),
    )
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    rendered = Rendered(registry)
    scene.render_change(NodeChange("gpu07", card=True))
    assert scene.summary_view(ViewFilter()).gpus_free == 1
    cards = []
    for _ in range(4):
        clock.advance(1.0)
        registry.delta("gpu07", connection, Delta(3, 0.0, {}))  # a heartbeat
        registry.sweep()
        cards += [scene.render_change(c) for c in rendered.take() if c.card]
    [card] = cards
    assert 'class="g o"' in card["node-gpu07"] and "✓ free" not in card["node-gpu07"]
    assert "no new sample" in card["node-gpu07"]
    assert scene.summary_view(ViewFilter()).gpus_free == 0
    registry.delta("gpu07", connection, Delta(4, 0.0, {"sampled_at": clock.wall()}))
    change = rendered.one()
    assert change.card
    assert "✓ free" in scene.render_change(change)["node-gpu07"]
    assert scene.summary_view(ViewFilter()).gpus_free == 1


def test_view_filter_by_group_name_and_gpus() -> None:
    clock = ManualClock()
    registry = NodeRegistry(clock, names={"a": Naming("Alpha", "vision"), "b": Naming(group="nlp")})
    for name, gpus in (("a", [{"index": 0}]), ("b", []), ("c", [])):
        registry.hello(Hello(node=name, agent_version="t", interval_s=1.0, gpus=gpus))
    nodes: dict[str, Node] = registry.nodes
    matches = lambda f: sorted(n for n, node in nodes.items() if f.matches(node))  # noqa: E731
    assert matches(ViewFilter(groups=frozenset({"vision", "nlp"}))) == ["a", "b"]
    assert matches(ViewFilter(names=frozenset({"Alpha", "c"}))) == ["a", "c"]
    assert matches(ViewFilter(gpu_only=True)) == ["a"]
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    for name in nodes:
        scene.render_change(NodeChange(name, card=True))
    view = scene.summary_view(ViewFilter(groups=frozenset({"nlp"})))
    assert (view.live, view.gpus_total) == (1, 0)
    assert head_view(nodes["a"]).display_name == "Alpha"
    assert detail_view(nodes["c"], {}, 5.0, 0.0, RULE).gpus == ()


# --------------------------------------------------------------------------- what the page says
def test_a_filter_that_matches_nothing_says_so_not_no_nodes_yet() -> None:
    words = filter_text(view_filter_from({"group": "nonexistent,b", "node": "nosuch", "gpus": "1"}))
    assert words == "group b, nonexistent · node nosuch · nodes with GPUs"
    assert filter_text(view_filter_from({"theme": "light"})) == ""
    renderer = Renderer()
    filtered = renderer.page(
        root_path="",
        ws_path="/ws/view",
        summary_html="",
        cards=[],
        filter_text="node <nosuch>",
        unfiltered_query="theme=light",
    )
    empty = re.search(r'<p class="empty">(.*?)</p>', filtered, re.S)
    assert empty is not None
    assert "No node matches this filter: <b>node &lt;nosuch&gt;</b>" in empty[1]
    assert '<a href="./?theme=light">Show all nodes</a>' in empty[1]
    assert "No nodes yet" not in filtered
    unfiltered = renderer.page(root_path="", ws_path="/ws/view", summary_html="", cards=[])
    assert "No nodes yet" in unfiltered and "No node matches" not in unfiltered


def test_a_lab_without_gpus_says_no_gpus_in_the_top_bar() -> None:
    registry, clock, _ = lab_node(gpus=0)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    scene.render_change(NodeChange("gpu07", card=True))
    summary = Parsed(scene.summary(scene.summary_view(ViewFilter()))).all_text
    assert "no GPUs" in summary and "GPUs free" not in summary and "0/0" not in summary


def test_gpus_of_offline_nodes_are_not_called_no_gpus() -> None:
    registry, clock, connection = lab_node(gpus=2)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    rendered = Rendered(registry)
    registry.disconnect("gpu07", connection)
    scene.render_change(rendered.one())
    summary = Parsed(scene.summary(scene.summary_view(ViewFilter()))).all_text
    assert "no live GPUs (2 on offline nodes)" in summary and "0/0" not in summary


def test_the_node_pages_history_caption_says_how_far_back_its_charts_reach() -> None:
    registry, clock, connection = lab_node(gpus=1)
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall, History(900))
    rendered = Rendered(registry)
    node = registry.nodes["gpu07"]

    def captions() -> list[str]:
        page = Renderer().node_page(scene.detail(node), root_path="", now_epoch_s=clock.wall())
        return re.findall(r"<figcaption><span>([^<]*)</span>", page)

    assert captions() == ["no history yet"] * 2, "the host chart and the GPU's"
    for second in range(1, 121):  # two minutes of samples
        clock.advance(1.0)
        registry.delta("gpu07", connection, Delta(1 + second, 0.0, {"sampled_at": clock.wall()}))
        scene.render_change(rendered.one())
    assert captions() == ["−2 min"] * 2, "not the 15 minutes the history could hold"


def test_cpu_cores_on_the_node_page_are_numbered_with_their_percent() -> None:
    registry, clock, _ = lab_node(gpus=0)
    node = registry.nodes["gpu07"]
    node.state["host"]["cpu_percent_per_core"] = [float(i % 101) for i in range(128)]
    scene = Scene(registry, Renderer(), GpuFreeRule(), clock.wall)
    page = Renderer().node_page(scene.detail(node), root_path="", now_epoch_s=1.0)
    assert "<h3>CPU per core (128)</h3>" in page
    cores = re.findall(r'<u class="p(\d+)[^"]*"><b>(\d+)</b>(\d+)%</u>', page)
    assert [(int(core), int(text)) for _, core, text in cores] == [(i, i % 101) for i in range(128)]
