"""Who may look and from where: the view token, the ``Origin`` check, trusted proxies and hosts.

- The view token is off by default. When set, everything but ``/healthz``, ``/static`` and
  ``/ws/agent`` (which has its own bearer token) needs it: the pages, ``/api/*``, ``/metrics``
  and ``/ws/view``. Scripts send ``Authorization: Bearer <view token>``. A kiosk opens a page
  once with ``?token=...``: the hub answers with an HttpOnly,
  SameSite=Strict cookie and redirects to the same URL without the token, so the token does not
  stay in the address bar, the history or a screenshot. That redirect always stays on this hub
  (:func:`local_location`).
- ``/ws/view`` checks the browser's ``Origin`` against the hub's own origin (scheme from the
  scope, host from the ``Host`` header, or ``X-Forwarded-Host`` when the peer is a trusted proxy)
  and the configured ``allowed_origins``. Non-browser clients send no ``Origin`` and pass.
- Refused logins are logged at most once per source per minute (:class:`FailureLog`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from hub.settings import HubSettings

log = logging.getLogger("sers.hub")

VIEW_COOKIE = "sers_view"
VIEW_COOKIE_MAX_AGE_S = 30 * 24 * 3600
TRUSTED_PROXY_KEY = "sers.via_trusted_proxy"  # set in the scope by ProxyTrust
SECURITY_HEADERS = (
    (b"referrer-policy", b"no-referrer"),  # a token in a URL never leaks through Referer
    (b"x-content-type-options", b"nosniff"),
)


def tokens_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; ``None`` on either side never matches."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


MAX_TRACKED_SOURCES = 10_000


class FailureLog:
    """Logs a refused login at most once per source per ``every_s``, counting the rest.

    It tracks at most :data:`MAX_TRACKED_SOURCES` sources (an IPv6 network offers endless
    addresses): past that, within one window, refusals from further sources are counted
    together and logged once per window."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._prune_due = 0.0  # sources outside the window are forgotten at most once per window
        self._untracked = 0  # refusals from sources past the limit, since the last such log line
        self._untracked_logged = -float("inf")

    def refused(self, source: str, what: str) -> bool:
        """Records one refusal; logs it unless ``source`` was logged recently. Returns whether it logged."""
        now = self._clock()
        last = self._last.get(source)
        if last is not None and now - last < self._every_s:
            self._suppressed[source] = self._suppressed.get(source, 0) + 1
            return False
        if last is None and len(self._last) >= MAX_TRACKED_SOURCES:
            if now >= self._prune_due:
                self._prune_due = now + self._every_s
                self._last = {s: t for s, t in self._last.items() if now - t < self._every_s}
                self._suppressed = {s: n for s, n in self._suppressed.items() if s in self._last}
            if len(self._last) >= MAX_TRACKED_SOURCES:
                return self._refused_untracked(source, what, now)
        self._last[source] = now
        more = self._suppressed.pop(source, 0)
        extra = f" ({more} more from this source in the last {self._every_s:.0f} s)" if more else ""
        log.warning("refused %s from %s%s", what, source, extra)
        return True

    def _refused_untracked(self, source: str, what: str, now: float) -> bool:
        self._untracked += 1
        if now - self._untracked_logged < self._every_s:
            return False
        self._untracked_logged = now
        log.warning(
            "refused %s from %s (sources past the %d tracked per %.0f s: %d refusal(s) since the last such line)",
            what,
            source,
            MAX_TRACKED_SOURCES,
            self._every_s,
            self._untracked,
        )
        self._untracked = 0
        return True


def admin_token(settings: HubSettings) -> str | None:
    """The token for changes such as forgetting a node: ``admin_token``, else ``agent_token``."""
    return settings.admin_token or settings.agent_token


def admin_denial(settings: HubSettings, request: Request, failures: FailureLog) -> Response | None:
    """``None`` when ``request`` may change the hub; otherwise the 401/403 answer.

    With no token configured at all the hub is open (a loopback setup). With only per-node
    tokens, no one is an admin until ``admin_token`` is set.
    """
    expected = admin_token(settings)
    if expected is None:
        if not settings.node_tokens:
            return None
        return PlainTextResponse("set admin_token to allow this\n", status_code=403)
    given = bearer_token(request.headers)
    if tokens_equal(given, expected):
        return None
    failures.refused(client_address(request.scope), "an admin request with a wrong or no token")
    status = 401 if given is None else 403
    return PlainTextResponse(
        "needs Authorization: Bearer <admin token>\n",
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


# --------------------------------------------------------------------------- view token
def view_cookie_value(view_token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie never reveals it."""
    return hmac.new(view_token.encode(), b"sers-monitor view cookie v1", hashlib.sha256).hexdigest()


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
    return None


def route_path(scope: Scope) -> str:
    """The path below ``root_path`` (uvicorn puts the root path in front of ``path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def needs_view_token(path: str) -> bool:
    """Everything (pages, API, metrics, the browser WebSocket) but health, static files and agents."""
    return not (path == "/healthz" or path.startswith("/static/") or path == "/ws/agent")


# Characters a redirect's path keeps as they are; everything else, backslashes and control
# characters included, is percent-encoded (browsers read "\\" as "/" and drop tabs and newlines).
_PATH_SAFE = "/-._~!$&'()*+,;=:@"


def local_location(root_path: str, path: str) -> str:
    """A ``Location`` that can only name a page of this hub: ``root_path`` and the (decoded)
    request ``path`` with its leading slashes and backslashes collapsed into one, encoded again.

    ``//evil.example/`` (a scheme-relative URL, and so another site, when sent back as a
    Location) becomes ``/evil.example/``; so do ``/\\evil.example`` and their percent-encoded
    forms, which reach here decoded.
    """
    root = root_path.strip("/\\")
    return quote(("/" + root if root else "") + "/" + path.lstrip("/\\"), safe=_PATH_SAFE)


class ViewAuth:
    """ASGI middleware enforcing the view token (only installed when one is configured)."""

    def __init__(self, app: ASGIApp, view_token: str, admin_token: str | None, failures: FailureLog) -> None:
        self.app = app
        self._token = view_token
        self._admin_token = admin_token
        self._cookie = view_cookie_value(view_token)
        self._failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not needs_view_token(route_path(scope)):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if tokens_equal(_cookie(headers, VIEW_COOKIE), self._cookie):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        bearer = bearer_token(headers)
        if scope["type"] == "http" and bearer is not None:  # scripts, Prometheus
            if tokens_equal(bearer, self._token) or tokens_equal(bearer, self._admin_token):
                await self.app(scope, receive, send)
                return
            self._failures.refused(client_address(scope), f"a wrong bearer token for {path}")
        query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token")
        if scope["type"] == "http" and scope.get("method") == "GET" and given is not None:
            if tokens_equal(given, self._token):
                await self._login(scope, path, query)(scope, receive, send)
                return
            self._failures.refused(client_address(scope), "a wrong view token")
        response = PlainTextResponse(
            "This dashboard needs a view token: open it once as /?token=YOUR_TOKEN.\n",
            status_code=401,
            headers={"Cache-Control": "no-store"},
        )
        await response(scope, receive, send)

    def _login(self, scope: Scope, path: str, query: QueryParams) -> Response:
        rest = urlencode([(k, v) for k, v in query.multi_items() if k != "token"])
        location = local_location(scope.get("root_path", ""), path) + (f"?{rest}" if rest else "")
        response = RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            VIEW_COOKIE,
            self._cookie,
            max_age=VIEW_COOKIE_MAX_AGE_S,
            path=scope.get("root_path", "") or "/",
            secure=scope.get("scheme") == "https",
            httponly=True,
            samesite="strict",
        )
        return response


# --------------------------------------------------------------------------- proxies and origin
class ProxyTrust:
    """uvicorn's ``ProxyHeadersMiddleware`` (X-Forwarded-Proto/For from trusted proxies), plus the
    one fact it does not record: whether the direct peer was one of those trusted proxies.

    Only then is ``X-Forwarded-Host`` believed when the hub works out its own origin.
    """

    def __init__(self, app: ASGIApp, forwarded_allow_ips: str) -> None:
        self._proxy = ProxyHeadersMiddleware(app, forwarded_allow_ips)  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            scope[TRUSTED_PROXY_KEY] = peer is not None and peer[0] in self._proxy.trusted_hosts
        await self._proxy(scope, receive, send)  # type: ignore[arg-type]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case, the default port left out; ``None`` if malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def own_origin(scope: Scope) -> str | None:
    """The origin a browser on this hub's page sends: the scope's scheme (which uvicorn's proxy
    middleware sets from X-Forwarded-Proto for trusted proxies only) and the ``Host`` header, or
    the first ``X-Forwarded-Host`` when the peer is a trusted proxy."""
    headers = Headers(scope=scope)
    host = headers.get("host")
    forwarded = headers.get("x-forwarded-host")
    if forwarded and scope.get(TRUSTED_PROXY_KEY):
        host = forwarded.split(",")[0].strip()
    if not host:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", ""), scope.get("scheme", "http"))
    return normalize_origin(f"{scheme}://{host}")


class OriginPolicy:
    """Which browser origins may open ``/ws/view``: the hub's own and the configured ones."""

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        allowed = list(allowed_origins)
        self._any = "*" in allowed
        self._allowed = {o for o in (normalize_origin(a) for a in allowed if a != "*") if o}

    def allows(self, scope: Scope) -> bool:
        origin = Headers(scope=scope).get("origin")
        if origin is None:
            return True  # not a browser: an Origin check protects browsers only
        if self._any:
            return True
        normalized = normalize_origin(origin)
        return normalized is not None and (normalized == own_origin(scope) or normalized in self._allowed)
