"""``/ws/agent``'s refusals, in process (Starlette's TestClient against the hub's application):
a missing token is HTTP 401 and a wrong one 403, both before the WebSocket is accepted; a token
bound to another node, a first message that is no hello and a binary frame close the
connection with the protocol's close codes. The real-process checks are in
test_hardening_auth.py and test_hardening_input.py."""

from __future__ import annotations

import orjson
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.frames import CloseCode

from hub.app import create_app
from hub.clock import ManualClock
from hub.settings import HubSettings
from node_agent.protocol import Hello, encode


def client() -> TestClient:
    settings = HubSettings(
        agent_token="shared-token-1", node_tokens={"gpu07": "own-token-7"}, trusted_hosts=("*",)
    )
    return TestClient(create_app(settings, ManualClock()))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (bearer("wrong"), 403)])
def test_a_missing_or_wrong_token_is_refused_before_accept(headers: dict[str, str], status: int) -> None:
    with (
        client() as c,
        pytest.raises(WebSocketDenialResponse) as refused,
        c.websocket_connect("/ws/agent", headers=headers),
    ):
        pass
    assert refused.value.status_code == status
    assert ("missing" if status == 401 else "invalid") in refused.value.text
    assert c.app.state.hub.registry.nodes == {}


def test_the_shared_token_cannot_speak_for_a_node_with_its_own() -> None:
    with client() as c, c.websocket_connect("/ws/agent", headers=bearer("shared-token-1")) as ws:
        ws.send_text(encode(Hello(node="gpu07", agent_version="t", interval_s=1.0)))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == CloseCode.POLICY_VIOLATION


def test_the_first_message_must_be_a_hello_and_binary_frames_are_refused() -> None:
    with client() as c:
        with c.websocket_connect("/ws/agent", headers=bearer("shared-token-1")) as ws:
            ws.send_text(orjson.dumps({"type": "delta", "seq": 1, "ts": 0.0, "patch": {}}).decode())
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
        assert closed.value.code == CloseCode.POLICY_VIOLATION
        with c.websocket_connect("/ws/agent", headers=bearer("own-token-7")) as ws:
            ws.send_bytes(b"\x00")
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
        assert closed.value.code == CloseCode.UNSUPPORTED_DATA


def test_a_node_token_connects_its_node() -> None:
    with client() as c:
        with c.websocket_connect("/ws/agent", headers=bearer("own-token-7")) as ws:
            ws.send_text(encode(Hello(node="gpu07", agent_version="t", interval_s=1.0)))
            ws.send_text(
                orjson.dumps({"type": "delta", "seq": 1, "ts": 0.0, "patch": {"sampled_at": 1.0}}).decode()
            )
            ws.close()
        assert "gpu07" in c.app.state.hub.registry.nodes
