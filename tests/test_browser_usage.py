"""``/usage``, its CSV, ``/events`` and the node page's stored part in a real headless Chromium,
against a real hub and a real agent whose fake GPU lists a real process of this test's user."""

from __future__ import annotations

import csv
import io
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import fakes
from tests.browser import CHROMIUM, new_tab
from tests.procs import Hub, Proc, free_port, start_agent, wait_until

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

USER = pwd.getpwuid(os.getuid()).pw_name
XSS_MODEL = '<img src=x onerror="window.__xss=1">'
GIB = 1024**3


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub writing its memory every second, and one agent: GPU 0 (a hostile model name) held
    by a real ``sleep`` of this user."""
    tmp = tmp_path_factory.mktemp("usage-lab")
    (tmp / "hub.toml").write_text("[memory]\nflush_every_s = 1.0\n")
    hub = Hub(port=free_port(), tmp=tmp, args=("--config", str(tmp / "hub.toml"))).start()
    sleeper = subprocess.Popen(["sleep", "600"])
    gpu = fakes.gpu(
        0, "A100", name=XSS_MODEL, util_gpu=70, compute_processes=[fakes.process(sleeper.pid, 2 * GIB)]
    )
    env = fakes.fake_env(fakes.write_scenario(tmp / "gpu.json", fakes.scenario([gpu, fakes.gpu(1, "A100")])))
    agent: Proc = start_agent(hub, "gpu01", interval_s=0.5, env=env)
    try:
        hub.wait_status("gpu01", "live")
        wait_until(lambda: hub.get("/api/v1/usage?range=today")["rows"], 15, what="the first usage row")
        yield hub
    finally:
        agent.kill()
        assert hub.proc is not None
        hub.proc.kill()
        sleeper.kill()
        sleeper.wait()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_tab(browser, viewport={"width": 1400, "height": 900}, accept_downloads=True) as tab:
        failed: list[str] = []
        tab.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        yield tab
        assert failed == []


def test_the_usage_page_its_user_detail_and_its_csv(page: Any, lab: Hub) -> None:
    page.goto(lab.url + "/")
    page.locator("a.memory-line").click()  # the header's line about the store
    page.wait_for_url("**/usage")
    rows = page.locator("#usage-table tr")
    assert rows.nth(1).locator("td").first.inner_text() == USER
    held_text = rows.nth(1).locator("td").nth(1).inner_text()  # hours: "0.00" for seconds
    (api_row,) = lab.get("/api/v1/usage?range=today")["rows"]
    assert float(held_text) == pytest.approx(api_row["gpu_seconds"] / 3600, abs=0.01)
    assert page.locator("#daily rect").count() == 1
    page.locator("select[name=by]").select_option("model")
    page.locator("form.filters button").click()
    page.wait_for_url("**/usage?*by=model*")
    assert page.locator("#usage-table tr").nth(1).locator("td").first.inner_text() == XSS_MODEL
    assert page.evaluate("window.__xss") is None
    page.locator("a.rng", has_text="7 days").click()
    page.wait_for_url("**range=7d*")
    page.goto(lab.url + "/usage?range=today")
    page.locator("#usage-table a", has_text=USER).click()  # the user's detail, by node
    page.wait_for_url("**user=*")
    assert page.locator("h1").inner_text().startswith(f"GPU-hours of {USER} by node")
    assert page.locator("#usage-table tr").nth(1).locator("td").first.inner_text() == "gpu01"
    with page.expect_download() as download_info:
        page.locator("#csv").click()
    download = download_info.value
    assert download.suggested_filename.startswith("usage-by-node-")
    rows_csv = list(csv.reader(io.StringIO(Path(download.path()).read_text())))
    assert rows_csv[0] == [
        "node",
        "gpu_seconds",
        "busy_gpu_seconds",
        "idle_held_gpu_seconds",
        "gpu_mem_byte_seconds",
    ]
    assert rows_csv[1][0] == "gpu01" and float(rows_csv[1][1]) > 0
    # GPU-seconds are written to 0.1 s
    assert float(rows_csv[1][4]) == pytest.approx(float(rows_csv[1][1]) * 2 * GIB, abs=0.05 * 2 * GIB)


def test_the_events_page_filters_by_kind_and_node(page: Any, lab: Hub) -> None:
    page.goto(lab.url + "/events")
    first = page.locator("#event-table tr").nth(1)
    assert first.locator("td").nth(1).inner_text() == "gpu01"
    assert "offline → live (hello)" in page.locator("#event-table").inner_text()
    page.locator("select[name=kind]").select_option("driver")
    page.locator("form.filters button").click()
    page.wait_for_url("**kind=driver*")
    assert page.locator("#event-table").inner_text().endswith("No events.")
    page.goto(lab.url + "/events?node=gpu01&kind=status")
    page.locator("#event-table a", has_text="gpu01").first.click()
    page.wait_for_url("**/node/gpu01")


def test_the_node_page_shows_stored_charts_and_events_that_survive_its_refresh(page: Any, lab: Hub) -> None:
    page.goto(lab.url + "/node/gpu01")
    stored = page.locator("#stored")
    assert stored.locator("svg.sp").count() == 6  # host and 2 GPUs, for 24 hours and 7 days
    assert stored.locator("svg.sp path").first.get_attribute("d")  # drawn from the file
    assert "offline → live (hello)" in stored.inner_text()
    page.evaluate("window.__old = document.getElementById('detail')")
    page.wait_for_function("document.getElementById('detail') !== window.__old")
    assert page.locator("#stored svg.sp").count() == 6
