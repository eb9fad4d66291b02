"""A viewer filtered to one group receives only that group's nodes, also in pushed updates."""

from __future__ import annotations

import re
import time
from pathlib import Path

from websockets.sync.client import connect

from frontend.element_ids import node_of_part
from hub.fanout import MAX_VIEW_FILTERS
from tests.procs import Hub, Proc, free_port, start_agent, wait_until
from tests.wsclients import close_code, open_viewer, recv_text


def test_group_filtered_viewer_receives_only_its_group(tmp_path: Path, procs: list[Proc]) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[names."in-a"]\ngroup = "room-a"\n[names."in-b"]\ngroup = "room-b"\n')
    hub = Hub(port=free_port(), tmp=tmp_path, args=("--config", str(config))).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    for name in ("in-a", "in-b"):
        procs.append(start_agent(hub, name, interval_s=0.3))
        hub.wait_status(name, "live")
    ids: list[str] = []
    everything: list[str] = []
    with (
        connect(hub.ws_url + "/ws/view?group=room-a") as filtered,
        connect(hub.ws_url + "/ws/view") as unfiltered,
    ):
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            ids += re.findall(r'id="([^"]+)"', filtered.recv(timeout=5).decode())  # type: ignore[union-attr]
            everything += re.findall(r'id="([^"]+)"', unfiltered.recv(timeout=5).decode())  # type: ignore[union-attr]
    assert "host-in-a" in ids, "updates of its own group arrive"
    assert owners(ids) == {"in-a"}, "nothing of the other group"
    assert owners(everything) == {"in-a", "in-b"}, "an unfiltered viewer sees both"


def owners(element_ids: list[str]) -> set[str]:
    """The nodes whose cards or parts these are."""
    cards = {i.removeprefix("node-") for i in element_ids if i.startswith("node-")}
    return cards | {node for node in map(node_of_part, element_ids) if node}


def test_filters_made_up_per_connection_are_refused_past_the_limit(hub: Hub) -> None:
    """Each different filter costs the hub a pass over the nodes every tick: a client that opens
    viewers with ever new filters gets up to MAX_VIEW_FILTERS of them, then 1008 for a new one,
    while a filter already in use, and a new one once another has gone, are still served."""
    viewers = [open_viewer(hub, f"/ws/view?node=made-up-{i}") for i in range(MAX_VIEW_FILTERS)]
    try:
        for viewer in viewers:
            assert 'id="summary"' in recv_text(viewer)
        one_too_many = open_viewer(hub, "/ws/view?node=one-too-many")
        assert close_code(one_too_many) == (1008, f"over {MAX_VIEW_FILTERS} different filters in use")
        with open_viewer(hub, "/ws/view?node=made-up-0") as same_filter:
            assert 'id="summary"' in recv_text(same_filter)
        viewers.pop().close()
        wait_until(lambda: hub.get("/healthz")["viewers"] == MAX_VIEW_FILTERS - 1, what="a viewer to go")
        with open_viewer(hub, "/ws/view?node=one-too-many") as new_filter:
            assert 'id="summary"' in recv_text(new_filter)
    finally:
        for viewer in viewers:
            viewer.close()
    assert hub.proc is not None
    assert "refused a viewer with one filter too many from 127.0.0.1" in hub.proc.log()
