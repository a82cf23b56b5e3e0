"""WebSocket: a patient's new readings, pushed as they are stored (from any source)."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from medtwin.api.deps import BREAK_GLASS_HEADER, Services, audited, authenticate, scope_refusal
from medtwin.api.problems import ApiError
from medtwin.core.errors import NotFoundError
from medtwin.security.policy import AccessDeniedError, Action
from medtwin.security.roles import Principal
from medtwin.store.alerts import AlertStore

router = APIRouter(tags=["live"])
POLICY_VIOLATION = 1008
SUBPROTOCOL = "medtwin.live"  # what the server accepts with, so the token is never echoed
BEARER_PREFIX = "bearer."


RECHECK_SECONDS = 5.0  # an open feed re-checks its caller's access this often


def _still_allowed(ws: WebSocket, svc: Services, patient_id: str) -> str | None:
    """None while the feed's caller may still read the patient; else why not. An open
    WebSocket outlives the checks made when it opened: a logout, a revoked session, an
    expired token, a disabled user or a care-team change must end it too."""
    try:
        who = authenticate(svc, credential_of(ws))
        svc.policy.check(who, patient_id, Action.READ,
                         break_glass=ws.headers.get(BREAK_GLASS_HEADER))
    except (ApiError, AccessDeniedError, NotFoundError) as exc:
        return exc.detail if isinstance(exc, ApiError) else str(exc)
    return None


def credential_of(ws: WebSocket) -> str | None:
    """The bearer credential from ``Authorization: Bearer`` or, for browsers (which cannot
    set headers on a WebSocket), a ``bearer.<token>`` entry of ``Sec-WebSocket-Protocol``.
    Never from the URL: query strings end up in access logs."""
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return proto[len(BEARER_PREFIX):]
    return None


@router.websocket("/ws/patients/{patient_id}/readings")
async def readings(ws: WebSocket, patient_id: str) -> None:
    """Send each new observation (``{"type": "reading"}``) and each new alert (``{"type":
    "alert"}``) of the patient as JSON. Authenticate with the ``Authorization: Bearer``
    header or, from a browser, offer the subprotocols ``medtwin.live`` and
    ``bearer.<token>`` (``new WebSocket(url, ["medtwin.live", "bearer." + token])``); the
    server accepts with ``medtwin.live``. A token in the URL is refused."""
    svc: Services = ws.app.state.services
    who: Principal | None = None
    request = ws  # an HTTP connection: the audit takes its client address
    try:
        if svc.settings.security_enabled:
            if "token" in ws.query_params:
                raise ApiError(400, "a token in the URL is refused (URLs are logged): send it "
                               "as Authorization: Bearer or the bearer.<token> subprotocol")
            who = await run_in_threadpool(authenticate, svc, credential_of(ws))
            grant = await run_in_threadpool(
                svc.policy.check, who, patient_id, Action.READ,
                break_glass=ws.headers.get(BREAK_GLASS_HEADER))
            if refused := scope_refusal(ws, svc, who, "live-readings", "read", None,
                                        patient_id, audit=False):  # SMART scopes
                raise refused
            if not await run_in_threadpool(svc.store.has_patient, patient_id):
                raise NotFoundError(patient_id)
            await run_in_threadpool(audited, request, svc, who, grant, "live-readings")
    except (ApiError, AccessDeniedError, NotFoundError) as exc:
        detail = (exc.detail if isinstance(exc, ApiError) else str(exc)
                  if isinstance(exc, AccessDeniedError) else "no such patient")
        if who is None:  # no valid credential: counted, aggregated (a flood is a few rows)
            reason = ("live feed: a token in the URL is refused" if "token" in ws.query_params
                      else "live feed: no valid credential")  # fixed texts: grouped
            await run_in_threadpool(svc.anonymous_failure, request, reason)
        else:
            await run_in_threadpool(svc.record, request, who, "subscribe", "live-readings",
                                    "denied", patient_id=patient_id, detail=detail[:200])
        await ws.close(code=POLICY_VIOLATION, reason="not allowed or not found")
        return
    # the marks are taken before accepting: whatever is written once the client sees the
    # connection open comes after them, so it is pushed (after accept, it could slip between)
    alerts = AlertStore(svc.store)
    last = await run_in_threadpool(svc.store.last_seq)
    last_alert = await run_in_threadpool(alerts.last_id)
    offered = ws.scope.get("subprotocols", [])
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    checked = time.monotonic()
    try:
        while True:
            if who is not None and time.monotonic() - checked >= RECHECK_SECONDS:
                checked = time.monotonic()
                why = await run_in_threadpool(_still_allowed, ws, svc, patient_id)
                if why is not None:  # logged out, token expired or reused, user disabled,
                    await run_in_threadpool(svc.record, request, who, "subscribe",  # no
                                            "live-readings", "ended", patient_id=patient_id,
                                            detail=why[:200])  # longer in the care team
                    await ws.close(code=POLICY_VIOLATION, reason="access ended")
                    return
            new = await run_in_threadpool(svc.store.records_after, patient_id, last,
                                          kinds=["observation"])
            for seq, rec in new:
                await ws.send_text(json.dumps({"type": "reading", "seq": seq,
                                               "observation": rec.to_dict()}))
                last = seq
            for a in await run_in_threadpool(alerts.raised_after, patient_id, last_alert):
                await ws.send_text(json.dumps({"type": "alert", "alert": a.to_dict()}))
                last_alert = a.id
            await asyncio.sleep(svc.settings.ws_poll_seconds)
    except (WebSocketDisconnect, RuntimeError):
        return
