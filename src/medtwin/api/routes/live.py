"""WebSocket: a patient's new readings, pushed as they are stored (from any source)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from medtwin.api.deps import BREAK_GLASS_HEADER, Services, audited, authenticate
from medtwin.api.problems import ApiError
from medtwin.core.errors import NotFoundError
from medtwin.security.policy import AccessDeniedError, Action
from medtwin.store.alerts import AlertStore

router = APIRouter(tags=["live"])
POLICY_VIOLATION = 1008


@router.websocket("/ws/patients/{patient_id}/readings")
async def readings(ws: WebSocket, patient_id: str) -> None:
    """Send each new observation (``{"type": "reading"}``) and each new alert (``{"type":
    "alert"}``) of the patient as JSON. Authenticate with the ``Authorization: Bearer``
    header or, for browsers, a ``token`` query parameter."""
    svc: Services = ws.app.state.services
    header = ws.headers.get("authorization", "")
    credential = header[7:] if header.lower().startswith("bearer ") else ws.query_params.get(
        "token")
    try:
        if svc.settings.security_enabled:
            who = await run_in_threadpool(authenticate, svc, credential)
            grant = await run_in_threadpool(
                svc.policy.check, who, patient_id, Action.READ,
                break_glass=ws.headers.get(BREAK_GLASS_HEADER))
            if not await run_in_threadpool(svc.store.has_patient, patient_id):
                raise NotFoundError(patient_id)
            await run_in_threadpool(audited, None, svc, who, grant, "live-readings")
    except (ApiError, AccessDeniedError, NotFoundError) as exc:
        await run_in_threadpool(svc.record, None, None, "subscribe", "live-readings", "denied",
                                patient_id=patient_id, detail=type(exc).__name__)
        await ws.close(code=POLICY_VIOLATION, reason="not allowed or not found")
        return
    # the marks are taken before accepting: whatever is written once the client sees the
    # connection open comes after them, so it is pushed (after accept, it could slip between)
    alerts = AlertStore(svc.store)
    last = await run_in_threadpool(svc.store.last_seq)
    last_alert = await run_in_threadpool(alerts.last_id)
    await ws.accept()
    try:
        while True:
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
