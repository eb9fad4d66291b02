"""The hot fragments, written as Python: a card's host part, its GPU rows and its sparklines.

The hub renders these for every changed node every second (thousands per second on a large
lab), and a Jinja2 template costs several times more than an f-string here (autoescape and
attribute lookups per expression), so these three are plain functions. Everything else (card
shell, summary, pages) is a template. The rule that keeps this safe: every string that comes
from an agent (node id, GPU name, user names, error text) goes through :func:`_e`,
:func:`_e_id` or the cached element ids (HTML-escaped, quotes included; :func:`visible`). What is placed as it is: integers, the fixed
class names and SVG path data that this module and the view models compute, and the view
models' number texts (``*_text`` fields and meter texts: numbers the protocol has already
checked to be numbers, formatted with numeric format specs and fixed units; escaping them
was a quarter of this module's cost). ``tests/test_render.py`` feeds hostile strings through
every agent field.

Markup is compact on purpose (a busy GPU row is about 180 bytes): short class names, no
whitespace, bar fills as classes ``p0``..``p100`` (no inline styles, so a strict CSP works).
"""

from __future__ import annotations

import functools
from html import escape as _escape

from frontend.element_ids import element_id
from frontend.viewmodels import GpuView, HostView, Meter, SparkView
from hub.domain.gpus import GpuState
from hub.domain.health import Level

# Characters that change how the text around them is shown without being seen themselves:
# bidi embeddings, overrides, isolates and marks (a GPU name ending in U+202E would show the
# summary's "3/8 free" after it as "8/3"), zero-width spaces and joiners that make "alice" and
# "alice\u200b" two users who look alike, and control characters. Agent text shows each as
# ``<U+202E>``: visible, and inert.
_UNSEEN = (
    *range(0x00, 0x09),
    0x0B,
    0x0C,
    *range(0x0E, 0x20),
    *range(0x7F, 0xA0),
    0xAD,
    0x061C,
    0x180E,
    *range(0x200B, 0x2010),
    *range(0x202A, 0x202F),
    *range(0x2060, 0x2070),
    0xFEFF,
)
_SHOW_UNSEEN = {code: f"<U+{code:04X}>" for code in _UNSEEN}


def visible(text: str) -> str:
    """``text`` with each character that changes its neighbours' look unseen spelled out."""
    return text.translate(_SHOW_UNSEEN)


def _e(text: str) -> str:
    return _escape(visible(text), quote=True)


@functools.lru_cache(maxsize=8192)
def _e_id(text: str) -> str:
    """Escaped GPU indexes, model names and user lists, which repeat (cached)."""
    return _escape(visible(text), quote=True)


@functools.lru_cache(maxsize=8192)
def _host_id(node_id: str) -> str:
    return _escape(element_id("host", node_id), quote=True)


# Every GPU row of the lab is rendered about once a second, in turn: a cache smaller than the
# lab's rows misses every time (least recently used goes first), so it holds 8 GPUs of 8,192 nodes.
@functools.lru_cache(maxsize=65536)
def _gpu_id(node_id: str, index: str) -> str:
    return _escape(element_id("gpu", node_id, index), quote=True)


def _meter(m: Meter) -> str:
    return f'<u class="p{m.p}{m.cls}">{m.text}</u>'


def host_html(h: HostView) -> str:
    """``<div id="host-<node>" class="host">``: CPU, memory and disk bars, then network,
    load averages and uptime (or the late-sample warning)."""
    if h.late_text:
        line = f'<span class="late">{h.late_text}</span>'
    else:
        line = f"<span>{h.net_text}</span><span>load {h.load_text}</span><span>up {h.uptime_text}</span>"
    return (
        f'<div id="{_host_id(h.node_id)}" class="host">'
        f'{_meter(h.cpu)}{_meter(h.mem)}{_meter(h.disk)}<div class="kv">{line}</div>\n</div>'
    )


# A GPU row's classes per state, made once: formatting an Enum member costs ~100 ns on Python 3.11
_ROW_CLASS = {state: f"g {state.value}" for state in GpuState}
_USERS_FALLBACK = {
    GpuState.FREE: "✓ free",
    GpuState.BUSY: "● busy",
    GpuState.NOT_CURRENT: "–",
    GpuState.FAULT: "–",
}
# A health badge's sign: unlike a lost GPU's "✖" and an offline node's dimmed row.
_HEALTH_SIGN = {Level.WARNING: "⚠", Level.FAULT: "⛔"}


def gpu_html(g: GpuView) -> str:
    """``<div id="gpu-<i>-<node>" class="g <state>">``: index, model, utilization and
    memory bars, temperature, power draw/limit, users (or the error)."""
    index = _e_id(g.gpu_index)
    head = f'<div id="{_gpu_id(g.node_id, g.gpu_index)}" class="{_ROW_CLASS[g.state]}"><b>{index}</b><i>{_e_id(g.name)}</i>'
    if g.error:
        return f'{head}<span class="er">✖ {_e(g.error)}</span></div>'
    temp = f'<em class="{g.temp_cls}">' if g.temp_cls else "<em>"
    users = _e_id(", ".join(g.users)) if g.users else _USERS_FALLBACK[g.state]
    if g.idle_text:  # "idle 47 min · alice (job 81234)"; app.js counts the minutes on
        users = f'<mark class="ih" data-since="{g.idle_since_epoch_s:.1f}">{g.idle_text}</mark> · {users}'
    if g.health_words:  # in words, before the users: a warning or a fault, never colour alone
        users = f'<mark class="hb {g.health[0]}">{_HEALTH_SIGN[g.health]} {_e(g.health_words)}</mark>{users}'
    more = f'<span class="mo">+{g.more_users} more</span>' if g.more_users else ""
    return (
        f"{head}{_meter(g.util)}{_meter(g.mem)}{temp}{g.temp_text}</em><em>{g.power_text}</em>"
        f'<span class="us">{users}</span>{more}</div>'
    )


def spark_html(s: SparkView) -> str:
    """An inline SVG of percents drawn 1:1 in pixels: a solid line and a dashed one (class
    ``m2``). Detail-page charts (those with a title) get a viewBox so they can scale."""
    if s.title:
        head = f'<svg id="{_e(s.element_id)}" class="sp" width="{s.width}" height="{s.height}" viewBox="0 0 {s.width} {s.height}" role="img"><title>{_e(s.title)}</title>'
    else:
        # not _e_id's cache: a lab has more sparklines than it holds, each redrawn every 20 s
        head = f'<svg id="{_e(s.element_id)}" class="sp" width="{s.width}" height="{s.height}">'
    return f'{head}<path d="{s.main}"/><path class="m2" d="{s.second}"/></svg>'
