"""The Jinja2 environment and the fragments the page and the hub's pushes share.

Autoescape is on for every template: agent-provided text (host, user, process and GPU names)
always arrives as text. Pre-rendered fragments are wrapped in ``Markup`` only here, because
they are our own escaped output.
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from frontend.viewmodels import GpuView, HeadView, HostView, SummaryView


def build_environment() -> Environment:
    return Environment(
        loader=PackageLoader("frontend", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


class Renderer:
    """Renders each fragment kind; the hub calls it once per change and caches the result."""

    def __init__(self, env: Environment | None = None) -> None:
        env = env or build_environment()
        self._host = env.get_template("_host.html")
        self._gpu = env.get_template("_gpu.html")
        self._card = env.get_template("_card.html")
        self._summary = env.get_template("_summary.html")
        self._page = env.get_template("page.html")

    def host(self, view: HostView) -> str:
        return self._host.render(h=view)

    def gpu(self, view: GpuView) -> str:
        return self._gpu.render(g=view)

    def card(self, head: HeadView, host_html: str, gpu_htmls: Sequence[str]) -> str:
        return self._card.render(
            v=head, host_html=Markup(host_html), gpu_htmls=[Markup(row) for row in gpu_htmls]
        )

    def summary(self, view: SummaryView, now_epoch_s: float) -> str:
        return self._summary.render(s=view, now_epoch_s=round(now_epoch_s, 1))

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
    ) -> str:
        return self._page.render(
            root_path=root_path,
            ws_path=ws_path,
            summary_html=Markup(summary_html),
            cards=[Markup(card) for card in cards],
            title=title,
            theme=theme,
            density=density,
        )
