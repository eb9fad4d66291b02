"""The view-token middleware (hub/security.py ``ViewAuth``), in process: Starlette's TestClient
against the hub's own application. The real-process checks are in test_hardening_auth.py."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from hub.app import create_app
from hub.clock import ManualClock
from hub.security import VIEW_COOKIE
from hub.settings import HubSettings

TOKEN = "view-secret-123"
ADMIN = "admin-secret-456"


def client() -> TestClient:
    settings = HubSettings(view_token=TOKEN, admin_token=ADMIN, trusted_hosts=("*",))
    return TestClient(create_app(settings, ManualClock()), follow_redirects=False)


def test_pages_api_and_metrics_need_the_token_health_and_static_do_not() -> None:
    with client() as c:
        for path in ("/", "/api/v1/nodes", "/api/v1/users", "/users", "/metrics", "/node/n1"):
            response = c.get(path)
            assert response.status_code == 401 and "view token" in response.text, path
            assert response.headers["cache-control"] == "no-store"
        assert c.get("/healthz").status_code == 200
        assert c.get("/static/app.js").status_code == 200


def test_the_token_in_the_url_sets_a_cookie_and_redirects_without_it() -> None:
    with client() as c:
        response = c.get("/?token=" + TOKEN + "&group=a")
        assert response.status_code == 303 and response.headers["location"] == "/?group=a"
        cookie = response.cookies.get(VIEW_COOKIE)
        assert cookie and TOKEN not in cookie, "the cookie holds a value derived from the token"
        c.cookies.set(VIEW_COOKIE, cookie)
        assert c.get("/api/v1/nodes").status_code == 200
        assert c.get("/?token=wrong").status_code == 200, "a valid cookie is enough"


def test_a_bearer_token_works_for_scripts_and_a_wrong_one_is_refused() -> None:
    with client() as c:
        assert c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/api/v1/nodes", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        assert c.get("/api/v1/nodes", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/v1/users", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"users": []}
        assert c.get("/?token=nope").status_code == 401


def test_the_viewer_websocket_needs_the_token() -> None:
    with client() as c, pytest.raises(WebSocketDenialResponse) as refused, c.websocket_connect("/ws/view"):
        pass
    assert refused.value.status_code == 401
