"""The Jinja2 environment and the fragments the page and the hub's pushes share.

Autoescape is on for every template: agent-provided text (host, user, process and GPU names)
always arrives as text. Pre-rendered fragments are wrapped in ``Markup`` only here, because
they are our own escaped output.

The per-second fragments (host part, GPU rows, sparklines) are Python functions in
:mod:`frontend.fragments`; the rest are templates, rendered through the compiled template's
render function with a plain context (what ``Template.render`` does, minus its argument handling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, Template
from markupsafe import Markup

from frontend.element_ids import element_id
from frontend.fragments import gpu_html, host_html, spark_html, visible
from frontend.people import PeopleView
from frontend.usage_views import EventLine, StoredChart
from frontend.viewmodels import DetailView, GpuView, HeadView, HostView, SparkView, SummaryView


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` of the templates: text (not our own ``Markup``) with its unseen
    characters spelled out, as in the fragments (:func:`frontend.fragments.visible`)."""
    if value.__class__ is str:
        return visible(value)
    return value


def build_environment() -> Environment:
    return Environment(
        loader=PackageLoader("frontend", "templates"),
        autoescape=True,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def _fast(template: Template) -> Callable[[dict[str, Any]], str]:
    """A one-argument renderer for ``template`` (same output as ``template.render``)."""
    render_func = template.root_render_func
    new_context = template.new_context
    concat = template.environment.concat

    def render(variables: dict[str, Any]) -> str:
        return str(concat(render_func(new_context(variables))))

    return render


class Renderer:
    """Renders each fragment kind; the hub calls it once per change and caches the result."""

    def __init__(self, env: Environment | None = None) -> None:
        env = env or build_environment()
        self._card = _fast(env.get_template("_card.html"))
        self._summary = _fast(env.get_template("_summary.html"))
        self._page = env.get_template("page.html")
        self._node_page = env.get_template("node.html")
        self._people = _fast(env.get_template("_people.html"))
        self._users_page = env.get_template("users.html")
        self._usage_page = env.get_template("usage.html")
        self._events_page = env.get_template("events.html")
        self._stored = env.get_template("_stored.html")

    # the per-second fragments, called without a wrapper's frame (thousands per second)
    host: Callable[[HostView], str] = staticmethod(host_html)
    gpu: Callable[[GpuView], str] = staticmethod(gpu_html)
    spark: Callable[[SparkView], str] = staticmethod(spark_html)

    def card(
        self,
        head: HeadView,
        host_html: str,
        cpu_spark: str,
        gpu_lines: Sequence[tuple[str, str]],
    ) -> str:
        return self._card(
            {
                "v": head,
                "card_id": element_id("node", head.node_id),
                "host_html": Markup(host_html),
                "cpu_spark": Markup(cpu_spark),
                "gpu_lines": [(Markup(row), Markup(spark)) for row, spark in gpu_lines],
            }
        )

    def summary(self, view: SummaryView, now_epoch_s: float) -> str:
        return self._summary({"s": view, "now_epoch_s": round(now_epoch_s, 1)})

    def page(
        self,
        *,
        root_path: str,
        ws_path: str,
        summary_html: str,
        cards: Sequence[str],
        title: str = "sers-monitor",
        theme: str = "dark",
        density: str = "normal",
        sort: str = "name",
        cycle_s: float = 0,
        hub_url: str = "http://HUB:8000",
        filter_text: str = "",
        unfiltered_query: str = "",
        people_html: str = "",
        memory_line: str = "",
        memory_problem: str = "",
    ) -> str:
        """The wall. ``filter_text`` (the URL's filter in words) and ``unfiltered_query`` (the
        URL's other options) are for the line shown while no card matches."""
        return self._page.render(
            root_path=root_path,
            ws_path=ws_path,
            summary_html=Markup(summary_html),
            cards=[Markup(card) for card in cards],
            title=title,
            theme=theme,
            density=density,
            sort=sort,
            cycle_s=f"{cycle_s:g}",
            hub_url=hub_url,
            filter_text=filter_text,
            unfiltered_query=unfiltered_query,
            people_html=Markup(people_html),
            memory_line=memory_line,
            memory_problem=memory_problem,
        )

    def people(self, view: PeopleView) -> str:
        """The people board (``frontend/templates/_people.html``)."""
        return self._people({"p": view})

    def users_page(
        self,
        *,
        root_path: str,
        ws_path: str,
        summary_html: str,
        people_html: str,
        theme: str,
        back_query: str,
    ) -> str:
        """``/users``: the top bar and the people board, kept live over the view WebSocket."""
        return self._users_page.render(
            root_path=root_path,
            ws_path=ws_path,
            summary_html=Markup(summary_html),
            people_html=Markup(people_html),
            theme=theme,
            back_query=back_query,
        )

    def node_page(
        self,
        detail: DetailView,
        *,
        root_path: str,
        now_epoch_s: float,
        theme: str = "dark",
        back_query: str = "",
        stored_html: str = "",
    ) -> str:
        """``stored_html``: the stored history and recent events (:meth:`stored`), outside the
        part the page refreshes every few seconds."""
        return self._node_page.render(
            d=detail,
            now_epoch_s=round(now_epoch_s, 1),
            root_path=root_path,
            theme=theme,
            back_query=back_query,
            chart=lambda view: Markup(spark_html(view)),
            stored_html=Markup(stored_html),
        )

    def stored(
        self, node_id: str, charts: Sequence[StoredChart], events: Sequence[EventLine], problem: str
    ) -> str:
        return self._stored.render(
            node_id=node_id,
            charts=charts,
            events=events,
            problem=problem,
            chart=lambda view: Markup(spark_html(view)),
        )

    def usage_page(self, **context: Any) -> str:
        """``/usage``: ``v`` (a :class:`~frontend.usage_views.UsageView`) and the form's values."""
        return self._usage_page.render(**context)

    def events_page(self, **context: Any) -> str:
        """``/events``: ``events`` (:class:`~frontend.usage_views.EventLine`) and the filter's values."""
        return self._events_page.render(**context)
