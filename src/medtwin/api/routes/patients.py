"""Patients and their timelines (identified data: clinicians, the patient, break-glass)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Query, Request, status

from medtwin.api.deps import (
    BREAK_GLASS_HEADER,
    Caller,
    Svc,
    audited,
    guard,
    patient_or_404,
    require_role,
)
from medtwin.api.problems import ApiError
from medtwin.api.routes import PATIENT_ERRORS
from medtwin.api.schemas import (
    Code,
    Id,
    ObservationIn,
    PatientOut,
    PatientSummary,
    StoredOut,
    TimelineItem,
    TimelineOut,
)
from medtwin.core.errors import NotFoundError
from medtwin.core.records import KIND_OF, Observation
from medtwin.security.policy import AccessDeniedError, Action, not_found
from medtwin.security.roles import Role

router = APIRouter(prefix="/patients", tags=["patients"], responses=PATIENT_ERRORS)
KINDS = tuple(KIND_OF.values())


@router.get("", response_model=list[PatientSummary])
def list_patients(request: Request, svc: Svc, who: Caller) -> list[PatientSummary]:
    """The patients the caller may see (no identifying fields)."""
    require_role(request, svc, who, Role.CLINICIAN, Role.PATIENT, Role.ADMIN,
                 resource="patients")
    df = svc.store.patients()
    ids = list(df["id"])
    if svc.settings.security_enabled:
        try:
            ids = svc.policy.visible_patients(
                who, ids, break_glass=request.headers.get(BREAK_GLASS_HEADER))
        except AccessDeniedError as exc:
            svc.record(request, who, "read", "patients", "denied", detail=str(exc))
            raise ApiError(exc.status, str(exc)) from None
    keep = set(ids)
    svc.record(request, who, "read", "patients", "success", detail=f"{len(keep)} listed")
    return [PatientSummary(id=r["id"], gender=r["gender"], events=int(r["events"]),
                           birth_year=None if pd.isna(r["birth_year"]) else int(r["birth_year"]))
            for r in df.to_dict("records") if r["id"] in keep]


@router.get("/{patient_id}", response_model=PatientOut)
def get_patient(request: Request, svc: Svc, who: Caller, patient_id: Id) -> PatientOut:
    """One patient with identity fields."""
    p = patient_or_404(request, svc, who, patient_id, "Patient")
    return PatientOut(id=p.id, gender=p.gender, birth_year=p.birth_year, deceased=p.deceased,
                      identity=p.identity)


@router.get("/{patient_id}/timeline", response_model=TimelineOut)
def timeline(request: Request, svc: Svc, who: Caller, patient_id: Id,
             code: Annotated[list[Code] | None, Query(max_length=50)] = None,
             kind: Annotated[list[str] | None, Query(max_length=10)] = None,
             since: datetime | None = None, until: datetime | None = None) -> TimelineOut:
    """A patient's events in time order, filtered by code, kind and [since, until)."""
    grant = guard(request, svc, who, patient_id, Action.READ, "timeline")
    if kind and not set(kind) <= set(KINDS):
        raise ApiError(422, f"unknown kind; use {', '.join(KINDS)}")
    since, until = (_aware(x) for x in (since, until))
    try:
        rows = svc.store.timeline_entries(patient_id, kinds=kind, codes=code, since=since,
                                          until=until)
    except NotFoundError:
        audited(request, svc, who, grant, "timeline", "not-found")
        raise not_found(patient_id) from None
    audited(request, svc, who, grant, "timeline")
    items = [TimelineItem.model_construct(**r) for r in rows]  # typed rows from the store
    return TimelineOut(patient_id=patient_id, count=len(items), items=items)


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


@router.post("/{patient_id}/observations", response_model=StoredOut,
             status_code=status.HTTP_201_CREATED)
def add_observation(request: Request, svc: Svc, who: Caller, patient_id: Id,
                    body: ObservationIn) -> StoredOut:
    """Store one numeric reading (clinicians of the care team; the bound device)."""
    grant = guard(request, svc, who, patient_id, Action.WRITE, "Observation")
    source_id = body.source_id or f"Observation/{uuid.uuid4()}"
    if not source_id.startswith("Observation/"):
        source_id = f"Observation/{source_id}"
    obs = Observation(subject=patient_id, code=body.code, system=body.system,
                      display=body.display, time=body.time, value=body.value, unit=body.unit,
                      source_id=source_id,
                      device=who.name if who.role is Role.DEVICE else None)
    try:
        res = svc.store.append(records=[obs])
    except NotFoundError:
        audited(request, svc, who, grant, "Observation", "not-found")
        raise not_found(patient_id) from None
    audited(request, svc, who, grant, "Observation")
    return StoredOut(stored=res.stored, duplicates=res.duplicates, source_ids=[source_id])
