"""The people board (``/users``, and the wall's ``?panel=users``) in a real headless Chromium,
against a real hub (``min_idle_s`` of 2 s) and a real agent over the fake NVML: rows appear
without a reload, change in place, and sort by the links. Real processes of three users
(root, daemon, nobody) hold the GPUs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fakes
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.fakes import GIB
from tests.procs import Hub, Proc, free_port, start_agent, wait_for_exec
from tests.test_hardening_faults import write_atomically

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
TIMEOUT_MS = 20_000


@pytest.fixture
def users_procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One sleeping process per user, started in order: daemon's is the oldest."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name, user in (("daemon", "daemon"), ("root", None), ("nobody", "nobody"), ("nobody2", "nobody")):
        child = subprocess.Popen(["sleep", "300"], user=user)
        wait_for_exec(child)
        started[name] = child
        subprocess.run(["sleep", "1.1"], check=True)  # start times a second apart
    yield started
    for child in started.values():
        child.kill()
        child.wait()


def scenario(pids: dict[str, subprocess.Popen[bytes]], root_mem_gib: int) -> dict[str, Any]:
    def on(pid_name: str, util: int, mem_gib: int = 1) -> dict[str, Any]:
        return {"util_gpu": util, "compute_processes": [fakes.process(pids[pid_name].pid, mem_gib * GIB)]}

    return fakes.scenario(
        [
            fakes.gpu(0, **on("root", 0, root_mem_gib)),  # idle-held after 2 s
            fakes.gpu(1, **on("daemon", 70)),
            fakes.gpu(2, **on("nobody", 80)),
            fakes.gpu(3, **on("nobody2", 90)),
        ],
        live_reload=True,
    )


def rows(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#people tbody tr[data-user]", "rs => rs.map(r => r.dataset.user)"))


def test_the_people_board_fills_changes_in_place_and_sorts(
    tmp_path: Path, procs: list[Proc], users_procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[idle_holders]\nmin_idle_s = 2\n")
    hub = Hub(port=free_port(), tmp=tmp_path, args=("--config", str(config))).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(hub.url + "/users?sort=held")
            page.wait_for_function("document.documentElement.dataset.conn === 'live'")
            assert "Nobody holds a GPU right now." in page.inner_text("#people")

            # rows appear, without a reload
            path = tmp_path / "nvml.json"
            write_atomically(path, scenario(users_procs, root_mem_gib=1))
            procs.append(start_agent(hub, "gpu07", env=fakes.fake_env(path, base={})))
            page.wait_for_function("document.querySelectorAll('#people tr[data-user]').length === 3")
            assert rows(page) == ["daemon", "root", "nobody"], "longest held first: the oldest process"
            nobody = page.inner_text("#people tr[data-user=nobody]")
            assert "2 2× H100" in nobody and "gpu07/2, gpu07/3" in nobody

            # a change in place: the same row element, new texts (idle-held, then more memory)
            page.eval_on_selector("#people tr[data-user=root]", "r => { window.rootRow = r }")
            page.wait_for_function(
                "document.querySelector('#people tr[data-user=root] .ih')?.textContent.startsWith('idle ')"
            )
            write_atomically(path, scenario(users_procs, root_mem_gib=7))
            page.wait_for_function(
                "document.querySelector('#people tr[data-user=root]').textContent.includes('7.0G')"
            )
            assert page.eval_on_selector("#people tr[data-user=root]", "r => r === window.rootRow")
            assert "◷ 1 idle-held" in page.inner_text("#summary")

            # sorting by the links
            page.click("#people .sorts a:text('most idle')")
            page.wait_for_url("**/users?sort=idle")
            page.wait_for_function("document.documentElement.dataset.conn === 'live'")
            assert rows(page)[0] == "root"
            page.click("#people .sorts a:text('most GPUs')")
            page.wait_for_url("**/users?sort=gpus")
            assert rows(page)[0] == "nobody"

            # the kiosk wall with the board beside the cards
            page.goto(hub.url + "/?panel=users")
            page.wait_for_function("document.documentElement.dataset.conn === 'live'")
            page.wait_for_selector("article.n")
            assert set(rows(page)) == {"root", "daemon", "nobody"}
            row = page.inner_text("#gpu-0-gpu07")
            assert "idle " in row and "root" in row
        finally:
            browser.close()
