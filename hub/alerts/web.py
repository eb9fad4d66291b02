"""``/alerts`` (firing, recently resolved, silences, channel health), its JSON twin
``/api/v1/alerts``, and silences: ``POST /api/v1/silences`` and ``DELETE /api/v1/silences/{id}``
(both need the admin token, as other changes to the hub do: :func:`hub.security.admin_denial`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from frontend.render import build_environment
from hub.alerts.engine import Alert, Silence
from hub.alerts.service import AlertService
from hub.pages import theme_from
from hub.security import admin_denial
from hub.state import HubState

log = logging.getLogger("sers.hub")

MAX_BODY_BYTES = 4096
_ENV = build_environment()


def _clock(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s)) if epoch_s else "—"


def _alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "rule": alert.rule.name,
        "when": alert.rule.when.value,
        "severity": alert.rule.severity.value,
        "subject": alert.subject.key,
        "node": alert.subject.node,
        "gpu": alert.subject.gpu,
        "text": alert.text,
        "fired_epoch_s": alert.fired_wall or None,
        "resolved_epoch_s": alert.resolved_wall or None,
        "notified": alert.notified,
    }


def _silence_json(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.silence_id,
        "rule": silence.rule,
        "node": silence.node,
        "gpu": silence.gpu,
        "comment": silence.comment,
        "created_by": silence.created_by,
        "starts_epoch_s": silence.starts_wall,
        "ends_epoch_s": silence.ends_wall,
    }


def alerts_json(service: AlertService | None) -> dict[str, Any]:
    if service is None:
        return {"enabled": False, "firing": [], "resolved": [], "silences": [], "channels": []}
    engine = service.engine
    channels = [
        {
            "name": worker.name,
            "ok": worker.health.ok,
            "delivered": worker.health.delivered,
            "failed": worker.health.failed,
            "retried": worker.health.retried,
            "dropped": worker.health.dropped,
            "queued": worker.health.queued,
            "last_error": worker.health.last_error,
            "last_error_epoch_s": worker.health.last_error_wall or None,
        }
        for worker in service.delivery.workers.values()
    ] + [
        {"name": name, "ok": False, "last_error": reason} for name, reason in service.delivery.broken.items()
    ]
    return {
        "enabled": True,
        "firing": [_alert_json(a) for a in engine.firing()],
        "resolved": [_alert_json(a) for a in engine.recent_resolved],
        "silences": [_silence_json(s) for s in sorted(engine.silences.values(), key=lambda s: s.ends_wall)],
        "channels": channels,
    }


async def api_alerts(request: Request) -> Response:
    return JSONResponse(alerts_json(request.app.state.alerts))


async def alerts_page(request: Request) -> Response:
    data = alerts_json(request.app.state.alerts)
    html = _ENV.get_template("alerts.html").render(
        a=data,
        clock=_clock,
        root_path=request.scope.get("root_path", "").rstrip("/"),
        theme=theme_from(request.query_params),
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError(f"{key}: expected text of at most 200 characters")
    return value


async def create_silence(request: Request) -> Response:
    """``POST /api/v1/silences`` with JSON ``{"rule", "node" (a glob), "gpu", "duration_s",
    "comment", "created_by"}``: a rule or a node is needed, and a comment."""
    hub: HubState = request.app.state.hub
    denial = admin_denial(hub.settings, request, request.app.state.failures)
    if denial is not None:
        return denial
    service: AlertService | None = request.app.state.alerts
    if service is None:
        return JSONResponse({"error": "no alert rules are configured"}, status_code=404)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # a cross-site form or no-cors fetch cannot send this type without a preflight
        return JSONResponse({"error": "send Content-Type: application/json"}, status_code=415)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        duration = body.get("duration_s")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
            raise ValueError("duration_s: expected a number of seconds")
        comment = _optional_text(body, "comment")
        if comment is None:
            raise ValueError("comment: say why (it is shown with the silence)")
        silence = service.engine.add_silence(
            comment,
            _optional_text(body, "created_by") or (request.client.host if request.client else "?"),
            float(duration),
            rule=_optional_text(body, "rule"),
            node=_optional_text(body, "node"),
            gpu=_optional_text(body, "gpu"),
        )
    except (ValueError, orjson.JSONDecodeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    log.info("alerts: silence %d created: %s", silence.silence_id, silence.comment)
    return JSONResponse(_silence_json(silence), status_code=201)


async def expire_silence(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    denial = admin_denial(hub.settings, request, request.app.state.failures)
    if denial is not None:
        return denial
    service: AlertService | None = request.app.state.alerts
    try:
        silence_id = int(request.path_params["silence_id"])
    except ValueError:
        return JSONResponse({"error": "not a silence id"}, status_code=400)
    if service is None or not service.engine.expire_silence(silence_id):
        return JSONResponse({"error": f"no silence {silence_id}"}, status_code=404)
    log.info("alerts: silence %d expired", silence_id)
    return JSONResponse({"expired": silence_id})


def alert_routes() -> list[Route]:
    return [
        Route("/alerts", alerts_page),
        Route("/api/v1/alerts", api_alerts),
        Route("/api/v1/silences", create_silence, methods=["POST"]),
        Route("/api/v1/silences/{silence_id}", expire_silence, methods=["DELETE"]),
    ]
