"""Alerts: list those of the patients the caller may see; acknowledge one (audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from medtwin.api.deps import BREAK_GLASS_HEADER, Caller, Svc, audited, guard, require_role
from medtwin.api.problems import ApiError
from medtwin.api.routes import PATIENT_ERRORS
from medtwin.api.schemas import AlertOut, Id
from medtwin.core.errors import NotFoundError
from medtwin.security.policy import AccessDeniedError, Action
from medtwin.security.roles import Role
from medtwin.store.alerts import Alert, AlertStore

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=PATIENT_ERRORS)
INT64_MAX = 2**63 - 1
AlertId = Annotated[int, Path(ge=1, le=INT64_MAX, description="The alert's id.")]


def _out(a: Alert) -> AlertOut:
    return AlertOut(**a.to_dict())


@router.get("", response_model=list[AlertOut])
def list_alerts(request: Request, svc: Svc, who: Caller, patient: Id | None = None,
                include_resolved: bool = False) -> list[AlertOut]:
    """Active alerts (newest first) of the patients the caller may see, or of one patient."""
    store = AlertStore(svc.store)
    if patient is not None:
        grant = guard(request, svc, who, patient, Action.READ, "alerts")
        rows = store.all(patient) if include_resolved else store.active(patient)
        audited(request, svc, who, grant, "alerts")
        return [_out(a) for a in rows]
    require_role(request, svc, who, Role.CLINICIAN, Role.PATIENT, Role.ADMIN, resource="alerts")
    rows = store.all() if include_resolved else store.active()
    if svc.settings.security_enabled:
        try:
            allowed = set(svc.policy.visible_patients(
                who, sorted({a.patient_id for a in rows}),
                break_glass=request.headers.get(BREAK_GLASS_HEADER)))
        except AccessDeniedError as exc:
            svc.record(request, who, "read", "alerts", "denied", detail=str(exc))
            raise ApiError(exc.status, str(exc)) from None
        rows = [a for a in rows if a.patient_id in allowed]
    svc.record(request, who, "read", "alerts", "success", detail=f"{len(rows)} listed")
    return [_out(a) for a in rows]


@router.post("/{alert_id}/acknowledge", response_model=AlertOut)
def acknowledge(request: Request, svc: Svc, who: Caller, alert_id: AlertId) -> AlertOut:
    """Record that the caller has seen the alert (clinicians; admins with break-glass).

    An alert that does not exist and one of a patient the caller cannot reach get the same
    404, so an alert id reveals nothing about its patient."""
    require_role(request, svc, who, Role.CLINICIAN, Role.ADMIN, resource="alert")
    if (svc.settings.security_enabled and who.role is Role.ADMIN
            and not (request.headers.get(BREAK_GLASS_HEADER) or "").strip()):
        # refused (403) before the lookup, so the answer does not depend on the alert
        detail = (f"an admin acknowledges alerts only in an emergency: give the reason in "
                  f"the {BREAK_GLASS_HEADER} header (it is audited)")
        svc.record(request, who, "write", "alert", "denied", detail=detail)
        raise ApiError(403, detail)
    store = AlertStore(svc.store)
    missing = ApiError(404, f"no alert {alert_id}")
    try:
        found = store.get(alert_id)
    except NotFoundError:
        svc.record(request, who, "write", "alert", "not-found", detail=f"alert {alert_id}")
        raise missing from None
    try:
        grant = guard(request, svc, who, found.patient_id, Action.WRITE, "alert")
    except ApiError:
        raise missing from None  # the refusal was audited (with the patient) by guard
    try:
        acked = store.acknowledge(alert_id, who.name)
    except NotFoundError:
        raise missing from None
    audited(request, svc, who, grant, "alert")
    return _out(acked)
