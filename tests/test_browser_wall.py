"""The wall display in a real headless Chromium, against a real hub and real agent processes
whose GPUs come from the fake NVML scenarios (``tests/fakes.py``).

One lab (a hub and four agents) serves the tests that only look; the tests that kill an agent
or stop the hub get their own.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.protocol import MAX_STRING_CHARS
from tests import fakes, wsclients
from tests.browser import CHROMIUM, new_tab
from tests.procs import Hub, Proc, killed_at_exit, start_agent, start_hub, wait_until

pytest.importorskip("playwright.sync_api")

XSS_NAME = "<script>window.__xss=1</script>"
XSS_GROUP = '<img src=x onerror="window.__xss=2">'
XSS_GPU = '"><img src=x onerror="window.__xss=3">'
XSS_COMMAND = "<u>cmd</u>&lt;"  # a process name is at most 15 bytes (the kernel's comm)
LONG_NAME = "W" * MAX_STRING_CHARS  # the longest display name the settings take

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_tab(browser, viewport={"width": 1600, "height": 900}) as tab:
        yield tab


def fake_gpus(tmp: Path, name: str, scenario: dict[str, Any]) -> dict[str, str]:
    return fakes.fake_env(fakes.write_scenario(tmp / f"{name}.json", scenario))


def named_process(comm: str, log: Path) -> Proc:
    """A real process whose name (``/proc/<pid>/comm``) is ``comm``."""
    code = f"open('/proc/self/comm', 'w').write({comm!r}); import time; time.sleep(600)"
    popen = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proc = Proc(popen, log)
    wait_until(lambda: Path(f"/proc/{popen.pid}/comm").read_text().strip() == comm, 5, what="comm set")
    return proc


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub naming four nodes, and their agents: alpha (8 GPUs, a process with a hostile
    name), beta (a lost GPU), gamma (no GPUs, a 256-character display name), xss (hostile
    display name, group and GPU name)."""
    tmp = tmp_path_factory.mktemp("lab")
    config = tmp / "hub.toml"
    config.write_text(
        f"""
[names.alpha]
display_name = 'Alpha'
group = 'vision'
[names.beta]
group = 'nlp'
[names.gamma]
display_name = '{LONG_NAME}'
[names.xss]
display_name = '{XSS_NAME}'
group = '{XSS_GROUP}'
"""
    )
    with killed_at_exit() as started:
        hub = start_hub(started, tmp, "--config", str(config))
        worker = named_process(XSS_COMMAND, tmp / "worker.log")
        started.append(worker)
        scenarios = {
            "alpha": fakes.eight_gpus([worker.pid]),
            "beta": fakes.one_gpu_lost(),
            "gamma": fakes.no_library(),
            "xss": fakes.scenario([fakes.gpu(0, "A100", name=XSS_GPU)]),
        }
        for name, scenario in scenarios.items():
            started.append(start_agent(hub, name, interval_s=1.0, env=fake_gpus(tmp, name, scenario)))
        for name in scenarios:
            hub.wait_status(name, "live", timeout_s=30)
        yield hub


def open_wall(page: Any, hub: Hub, query: str = "", cards: int = 1) -> None:
    page.goto(hub.url + "/" + query)
    page.wait_for_function(
        "n => document.documentElement.dataset.conn === 'live' && document.querySelectorAll('article.n').length >= n",
        arg=cards,
    )


def shown_nodes(page: Any) -> list[str]:
    return list(
        page.eval_on_selector_all("article.n:not([hidden])", "cards => cards.map(c => c.dataset.node)")
    )


# --------------------------------------------------------------------------- the lab, looking only
def test_cards_show_nodes_gpus_and_the_lab_summary(page: Any, lab: Hub) -> None:
    open_wall(page, lab, cards=4)
    assert sorted(shown_nodes(page)) == ["alpha", "beta", "gamma", "xss"]
    alpha = page.locator("#node-alpha")
    assert alpha.locator(".nm").inner_text() == "Alpha"
    assert alpha.locator(".grp").inner_text() == "vision"
    assert alpha.locator(".st").inner_text().endswith("live")
    assert alpha.locator(".g").count() == 8
    row0 = page.locator("#gpu-0-alpha")
    assert row0.get_attribute("class") == "g b", "GPU 0 runs the worker process"
    assert row0.locator("b").inner_text() == "0" and row0.locator("i").inner_text() == "H100"
    assert "/80G" in row0.inner_text() and "/700W" in row0.inner_text()
    assert page.locator("#gpu-1-alpha").get_attribute("class") == "g f"
    assert "✓ free" in page.locator("#gpu-1-alpha").inner_text()
    assert "✖ GPU is lost" in page.locator("#gpu-1-beta").inner_text()
    assert page.locator("#gpu-1-beta").get_attribute("class") == "g e"
    assert page.locator("#node-gamma .g").count() == 0
    assert page.locator("#spark-cpu-alpha").count() == 1 and page.locator("#spark-gpu-7-alpha").count() == 1
    host = page.locator("#host-alpha").inner_text()
    assert "CPU" in host and "MEM" in host and "DSK" in host and "load" in host and "up" in host
    summary = page.locator("#summary").inner_text()
    assert "● 4 live" in summary
    # alpha: GPU 1 free (0 has the worker); beta: GPU 0 free, 1 lost; xss: its GPU is free
    assert "3/12 GPUs free" in summary and "✖ 1 GPU fault" in summary
    assert "H100 80GB HBM3 2/10" in summary and "GPU 0/1" in summary, "a GPU lost from the start has no name"
    assert page.locator("#clock").inner_text() != "--:--:--"
    assert page.locator("#conn").inner_text() == "live"


def test_values_change_in_place_without_reloading(page: Any, lab: Hub) -> None:
    open_wall(page, lab, cards=4)
    page.evaluate(
        """() => {
        window.__marker = 'still here';
        window.__card = document.getElementById('node-alpha');
        window.__host = document.getElementById('host-alpha');
        window.__hostText = window.__host.textContent;
    }"""
    )
    elements_before = page.evaluate("document.getElementsByTagName('*').length")
    page.wait_for_function(
        "document.getElementById('host-alpha').textContent !== window.__hostText", timeout=30_000
    )
    state = page.evaluate(
        """() => {
        const host = document.getElementById('host-alpha');
        return {
            marker: window.__marker,
            sameCard: document.getElementById('node-alpha') === window.__card,
            hostInCard: window.__card.contains(host),
            // updated in place (same element) or replaced by id (the old one is gone)
            inPlaceOrReplaced: host === window.__host || !document.contains(window.__host),
            hosts: document.querySelectorAll('[id="host-alpha"]').length,
            cards: document.querySelectorAll('[id="node-alpha"]').length,
        };
    }"""
    )
    assert state == {
        "marker": "still here",
        "sameCard": True,
        "hostInCard": True,
        "inPlaceOrReplaced": True,
        "hosts": 1,
        "cards": 1,
    }
    page.wait_for_timeout(2500)  # a few more updates
    elements_after = page.evaluate("document.getElementsByTagName('*').length")
    assert abs(elements_after - elements_before) <= 4, "the DOM does not grow with updates"


def test_url_filters_and_kiosk_options(page: Any, lab: Hub) -> None:
    open_wall(page, lab, "?group=vision")
    assert shown_nodes(page) == ["alpha"]
    assert "● 1 live" in page.locator("#summary").inner_text(), "the summary counts the filtered nodes"
    open_wall(page, lab, "?node=beta,gamma", cards=2)
    assert sorted(shown_nodes(page)) == ["beta", "gamma"]
    open_wall(page, lab, "?gpus=1", cards=3)
    assert sorted(shown_nodes(page)) == ["alpha", "beta", "xss"]
    open_wall(page, lab, "?theme=light&density=compact", cards=4)
    assert page.evaluate(
        "[document.documentElement.dataset.theme, document.documentElement.dataset.density]"
    ) == [
        "light",
        "compact",
    ]
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(11, 14, 19)"
    open_wall(page, lab, "?sort=free", cards=4)
    free = page.eval_on_selector_all(
        "article.n", "cards => cards.map(c => c.querySelectorAll('.g.f').length)"
    )
    assert free == sorted(free, reverse=True)
    open_wall(page, lab, "", cards=4)
    keys = page.eval_on_selector_all("article.n", "cards => cards.map(c => c.dataset.sort)")
    assert keys == sorted(keys), "by group, then name"


def test_hostile_strings_render_as_text_and_long_names_keep_the_layout(page: Any, lab: Hub) -> None:
    open_wall(page, lab, cards=4)
    page.wait_for_timeout(1500)  # several rounds of pushed fragments
    found = page.evaluate(
        """() => ({
        xss: window.__xss === undefined ? null : window.__xss,
        injected: document.querySelectorAll('#nodes img, #nodes script, #summary img, #summary script').length,
        name: document.querySelector('#node-xss .nm').textContent,
        group: document.querySelector('#node-xss .grp').textContent,
        gpuName: document.querySelector('#gpu-0-xss i').textContent,
        summary: document.getElementById('summary').textContent,
        scrollX: document.documentElement.scrollWidth - innerWidth,
    })"""
    )
    assert found["xss"] is None and found["injected"] == 0
    assert found["name"] == XSS_NAME and found["group"] == XSS_GROUP
    assert found["gpuName"] == XSS_GPU[:5], "the row shows five characters of the model, as text"
    assert XSS_GPU in found["summary"], "the summary shows the whole model name, as text"
    assert found["scrollX"] <= 0, "no horizontal scrolling"
    boxes = page.evaluate(
        """() => ['alpha', 'gamma'].map(n => {
            const card = document.getElementById('node-' + n).getBoundingClientRect();
            const head = document.querySelector('#node-' + n + ' header').getBoundingClientRect();
            return [Math.round(card.width), Math.round(head.height)];
        })"""
    )
    assert boxes[0] == boxes[1], "a 300-character name is cut with an ellipsis, the card keeps its size"
    assert page.locator("#node-gamma .nm").inner_text() == LONG_NAME
    # the node page lists the process by its (hostile) name, as text
    page.goto(lab.url + "/node/alpha")
    cell = page.locator("#gpu-0 td.cmd").first
    assert cell.inner_text() == XSS_COMMAND
    assert cell.evaluate("td => td.children.length") == 0
    assert page.evaluate("window.__xss === undefined")


@pytest.mark.parametrize(
    ("query", "words", "unfiltered"),
    [
        ("?group=nonexistent", "group nonexistent", ""),
        ("?node=nosuch&theme=light", "node nosuch", "?theme=light"),
    ],
)
def test_a_filter_that_matches_nothing_says_so(
    page: Any, lab: Hub, query: str, words: str, unfiltered: str
) -> None:
    page.goto(lab.url + "/" + query)
    page.wait_for_function("document.documentElement.dataset.conn === 'live'")
    empty = page.locator(".empty")
    assert empty.is_visible()
    assert empty.inner_text() == f"No node matches this filter: {words}. Show all nodes"
    empty.locator("a").click()
    page.wait_for_url(lab.url + "/" + unfiltered)
    page.wait_for_function("document.querySelectorAll('article.n').length === 4")
    assert not empty.is_visible()


def test_pages_load_without_a_failed_request_and_show_an_icon(page: Any, lab: Hub) -> None:
    failed: list[str] = []
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    for path in ("/", "/node/alpha"):
        page.goto(lab.url + path)
        page.wait_for_function("document.documentElement.dataset.conn === 'live'")
        icon = page.evaluate("document.querySelector('link[rel=icon]')?.href")
        assert icon, f"{path} names its icon (or browsers ask for /favicon.ico, a 404)"
        response = page.request.get(icon)
        assert response.status == 200 and response.headers["content-type"].startswith("image/svg+xml")
    assert failed == []


def test_a_click_opens_the_node_page_which_refreshes_itself(page: Any, lab: Hub) -> None:
    open_wall(page, lab, "?theme=light", cards=4)
    page.locator("#node-alpha .hw").click()
    page.wait_for_url("**/node/alpha?theme=light")
    assert page.locator("#detail h1").inner_text() == "Alpha"
    assert page.locator("#detail section.panel[id^=gpu-]").count() == 8
    assert page.locator("#gpu-0 table.procs tr").count() == 2, "header + the worker process"
    assert "GPU is lost" not in page.content()
    assert page.locator("#detail svg.sp").count() == 9, "host and per-GPU history charts"
    text = page.locator("#detail").inner_text()
    for label in ("hostname", "kernel", "load average 15 min", "driver version", "UUID", "PCI bus id", "ECC"):
        assert label in text
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    page.evaluate("window.__old = document.getElementById('detail'); window.__marker = 1")
    page.wait_for_function("document.getElementById('detail') !== window.__old && window.__marker === 1")
    page.locator("a.back").click()
    page.wait_for_url("**/?theme=light")
    assert page.locator("#node-beta").count() == 1


def test_cycle_mode_turns_pages_when_nodes_do_not_fit(browser: Any, lab: Hub) -> None:
    with new_tab(browser, viewport={"width": 420, "height": 520}) as page:
        open_wall(page, lab, "?cycle=3", cards=4)
        page.wait_for_function("!document.getElementById('pager').hidden")
        first = shown_nodes(page)
        assert 1 <= len(first) < 4
        assert page.locator("#pager").inner_text().startswith("page 1/")
        page.wait_for_function(
            "first => { const now = [...document.querySelectorAll('article.n:not([hidden])')].map(c => c.dataset.node);"
            " return now.length && now.join() !== first.join(); }",
            arg=first,
            timeout=10_000,
        )
        assert page.locator("#pager").inner_text().startswith("page 2/")
        assert page.evaluate("document.documentElement.scrollHeight <= innerHeight + 1"), "one screenful"


def test_a_lab_without_gpus_and_a_node_with_256_cores(page: Any, hub: Hub) -> None:
    """The top bar says "no GPUs" (not "0/0 GPUs free"); every core on the node page has its
    number and percent, big enough to read, none cut off."""
    agent = wsclients.open_agent(hub)
    try:
        agent.send(wsclients.hello("cpu-only"))
        sample = wsclients.snapshot()
        sample["host"]["cpu_percent_per_core"] = [float(i * 7 % 101) for i in range(256)]
        agent.send(wsclients.delta(1, sample))
        hub.wait_status("cpu-only", "live")
        open_wall(page, hub)
        summary = page.locator("#summary").inner_text()
        assert "no GPUs" in summary and "GPUs free" not in summary
        page.goto(hub.url + "/node/cpu-only")
        cores = page.evaluate(
            """() => [...document.querySelectorAll('.cores u')].map(u => {
                const box = u.getBoundingClientRect();
                return {text: u.innerText.replace(/\\s+/g, ' '), width: box.width, height: box.height,
                        cut: u.scrollWidth > u.clientWidth,
                        px: parseFloat(getComputedStyle(u).fontSize)};
            })"""
        )
    finally:
        agent.close()
    assert [c["text"] for c in cores] == [f"{i} {i * 7 % 101}%" for i in range(256)]
    assert all(c["width"] >= 60 and c["height"] >= 16 and c["px"] >= 11 and not c["cut"] for c in cores)


# --------------------------------------------------------------------------- things going away
def test_a_killed_agent_turns_its_card_offline_and_the_age_counts_on(
    page: Any, hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    agent = start_agent(hub, "alpha", interval_s=0.5, env=fake_gpus(tmp_path, "alpha", fakes.eight_gpus()))
    procs.append(agent)
    open_wall(page, hub)
    agent.kill()
    page.wait_for_function("document.getElementById('node-alpha').dataset.status === 'offline'")
    status = page.locator("#node-alpha .st")
    first = status.inner_text()
    assert first.startswith("last seen ") and first.endswith(" s ago")
    glyph = page.evaluate("getComputedStyle(document.querySelector('#node-alpha .st'), '::before').content")
    assert glyph == '"○ "', "a shape, not only a color"
    page.wait_for_function(
        "first => document.querySelector('#node-alpha .st').innerText !== first", arg=first, timeout=5000
    )
    assert page.locator("#gpu-1-alpha").get_attribute("class") == "g o", "no longer claimed free"
    assert "○ 1 offline" in page.locator("#summary").inner_text()
    assert "no live GPUs (8 on offline nodes)" in page.locator("#summary").inner_text()


WALL_STATUS = """() => Object.fromEntries([...document.querySelectorAll('article.n')].map(
    card => [card.dataset.node, card.dataset.status]))"""
DUPLICATE_IDS = """() => { const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
    return ids.filter((id, i) => ids.indexOf(id) !== i); }"""


def test_nodes_named_like_each_others_parts_keep_their_own_status(
    page: Any, hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    """``gpu1-host`` and ``gpu1-gpu-0`` are legal names, and were once the ids of ``gpu1``'s host
    part and GPU row: ``gpu1-host`` going offline must show on its own card, nowhere else."""
    names = ("gpu1", "gpu1-host", "gpu1-gpu-0")
    agents = {}
    for name in names:
        scenario = fakes.scenario([fakes.gpu(0, "A100")])
        agents[name] = start_agent(hub, name, interval_s=0.5, env=fake_gpus(tmp_path, name, scenario))
        procs.append(agents[name])
    for name in names:
        hub.wait_status(name, "live", timeout_s=30)
    open_wall(page, hub, cards=3)
    assert page.evaluate(DUPLICATE_IDS) == []
    assert page.evaluate(WALL_STATUS) == dict.fromkeys(names, "live")
    agents["gpu1-host"].kill()
    hub.wait_status("gpu1-host", "offline", timeout_s=30)
    page.wait_for_function(
        "() => [...document.querySelectorAll('article[data-node=\"gpu1-host\"]')].every("
        " card => card.dataset.status === 'offline')",
        timeout=10_000,
    )
    host_text = page.locator("article[data-node=gpu1] #host-gpu1").inner_text()
    page.wait_for_function(  # gpu1 goes on reporting into its own card
        "old => document.querySelector('article[data-node=gpu1] #host-gpu1').innerText !== old",
        arg=host_text,
    )
    api = {name: node["status"] for name, node in hub.nodes().items()}
    assert api == {"gpu1": "live", "gpu1-host": "offline", "gpu1-gpu-0": "live"}
    assert page.evaluate(WALL_STATUS) == api, "the wall agrees with the API, card by card"
    assert page.evaluate(DUPLICATE_IDS) == []
    assert page.locator("article.n").count() == 3, "no card inside another"
    assert page.locator("#gpu-0-gpu1").get_attribute("class") != "g o", "gpu1's GPU row is its own"


def test_a_stopped_hub_shows_as_lost_and_a_restarted_one_recovers_without_reload(
    page: Any, hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    procs.append(
        start_agent(hub, "alpha", interval_s=0.5, env=fake_gpus(tmp_path, "alpha", fakes.eight_gpus()))
    )
    open_wall(page, hub)
    page.evaluate("window.__marker = 'no reload'")
    assert not page.locator("#lost").is_visible()
    assert hub.proc is not None
    hub.proc.stop()
    page.wait_for_function("document.documentElement.dataset.conn === 'lost'", timeout=6000)
    assert page.locator("#lost").is_visible()
    assert "NOT live" in page.locator("#lost").inner_text()
    assert page.locator("#conn").inner_text() != "live"
    assert float(page.evaluate("getComputedStyle(document.getElementById('nodes')).opacity")) < 0.5
    hub.start()
    assert hub.proc is not None
    procs.append(hub.proc)
    page.wait_for_function(
        "document.documentElement.dataset.conn === 'live'"
        " && document.getElementById('node-alpha')?.dataset.status === 'live'",
        timeout=40_000,
    )
    assert not page.locator("#lost").is_visible()
    assert page.evaluate("window.__marker") == "no reload"
    assert page.locator("#node-alpha .g").count() == 8
    assert page.locator("article.n").count() == 1, "the full state replaced the old cards"


# --------------------------------------------------------------------------- the page's own rules
# The real page from a real hub, but its WebSocket replaced by one the test drives: messages in
# exactly the order a test needs, and a connection that never opens.
FAKE_SOCKET = """
window.__sockets = [];
class FakeSocket {
  constructor(url) {
    this.url = url; this.readyState = 0; window.__sockets.push(this);
    if (!window.__neverOpen) setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen({}); }, 0);
  }
  send() {}
  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => { if (this.onclose) this.onclose({}); }, 0);
  }
}
FakeSocket.CONNECTING = 0; FakeSocket.OPEN = 1; FakeSocket.CLOSING = 2; FakeSocket.CLOSED = 3;
window.WebSocket = FakeSocket;
window.__push = (text) => window.__sockets[window.__sockets.length - 1].onmessage({ data: text });
"""


def fake_card(node: str, row: str) -> str:
    return (
        f'<article id="node-{node}" class="n" data-node="{node}" data-status="live" data-sort="0\x1f{node}\x1f{node}">'
        f'<header><span class="st">live</span></header><div class="gw"><div class="gr">{row}</div></div></article>'
    )


def fake_row(node: str, text: str) -> str:
    return f'<div id="gpu-0-{node}" class="g b"><b>0</b><span class="us">{text}</span></div>'


def test_a_part_applied_at_once_is_not_undone_by_an_older_stashed_one(browser: Any, hub: Hub) -> None:
    """Parts of cards off the screen wait in a stash; a message with a whole card applies every
    part in it at once, and the stash must then forget the older part of the same element."""
    with new_tab(browser, viewport={"width": 800, "height": 300}) as page:
        page.add_init_script(FAKE_SOCKET)
        page.goto(hub.url + "/")
        nodes = [f"n{i:02d}" for i in range(12)]
        full = '<main id="nodes" class="grid">' + "".join(
            fake_card(n, fake_row(n, "busy alice")) for n in nodes
        )
        page.evaluate("html => window.__push(html)", full + "</main>")
        far = nodes[-1]
        page.wait_for_function(
            "id => document.getElementById(id).getBoundingClientRect().top > innerHeight", arg=f"node-{far}"
        )
        page.wait_for_timeout(300)  # the observer has reported which cards are on screen
        page.evaluate("html => window.__push(html)", fake_row(far, "busy bob"))  # off screen: stashed
        page.evaluate(
            "html => window.__push(html)",
            fake_card(nodes[0], fake_row(nodes[0], "free")) + fake_row(far, "carol"),
        )
        assert page.locator(f"#gpu-0-{far} .us").inner_text() == "carol", "a card message applies at once"
        page.evaluate("id => document.getElementById(id).scrollIntoView()", f"node-{far}")
        page.wait_for_timeout(1500)  # the observer, and the once-a-second flush
        assert page.locator(f"#gpu-0-{far} .us").inner_text() == "carol", "the older stashed part stays void"


def test_a_connection_that_never_opens_shows_as_lost_and_is_retried(page: Any, hub: Hub) -> None:
    """A proxy that holds the WebSocket upgrade forever: the page must not sit at 'connecting…'
    over numbers that age."""
    page.add_init_script("window.__neverOpen = true;" + FAKE_SOCKET)
    page.goto(hub.url + "/")
    page.wait_for_function("document.documentElement.dataset.conn === 'lost'", timeout=10_000)
    assert page.locator(".lost").is_visible(), "the banner, over greyed-out numbers"
    page.wait_for_function("window.__sockets.length >= 2", timeout=10_000)


def test_the_node_page_says_lost_when_the_hub_stops_answering(
    page: Any, hub: Hub, procs: list[Proc], tmp_path: Path
) -> None:
    procs.append(
        start_agent(hub, "alpha", interval_s=1.0, env=fake_gpus(tmp_path, "alpha", fakes.no_library()))
    )
    hub.wait_status("alpha", "live", timeout_s=30)
    page.goto(hub.url + "/node/alpha")
    page.wait_for_function("document.documentElement.dataset.conn === 'live'")
    page.route("**/node/alpha", lambda route: None)  # the hub hangs: requests are never answered
    page.wait_for_function("document.documentElement.dataset.conn === 'lost'", timeout=15_000)
    assert page.locator("#conn").inner_text() == "no answer from hub"
