"""Patients and their timelines (identified data: clinicians, the patient, break-glass)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import TypeAdapter
from typing_extensions import TypedDict

from medtwin.api.deps import (
    BREAK_GLASS_HEADER,
    Caller,
    Services,
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
    HistoryOut,
    Id,
    ObservationIn,
    PatientOut,
    PatientSummary,
    StoredOut,
    TimelineItem,
    TimelineOut,
    VersionOut,
)
from medtwin.api.timeline_cursor import decode_cursor, encode_cursor
from medtwin.core.errors import ConflictError, NotFoundError, ValidationError
from medtwin.core.records import KIND_OF, Observation
from medtwin.interop.fhir.write import record_writes
from medtwin.interop.quality import Admitted, admit
from medtwin.security.policy import AccessDeniedError, Action, not_found
from medtwin.security.roles import Role
from medtwin.store.alerts import AlertStore

router = APIRouter(prefix="/patients", tags=["patients"], responses=PATIENT_ERRORS)
KINDS = tuple(KIND_OF.values())
DEFAULT_PAGE, MAX_PAGE = 1000, 10_000  # timeline rows per page
# TimelineOut and its items as typed dicts (same fields, types and order), to serialise the
# store's rows (dicts in field order, see EventStore.timeline_page) without validating them
_TimelineRow = TypedDict("_TimelineRow", {  # type: ignore[misc]
    name: f.annotation for name, f in TimelineItem.model_fields.items()})
_TimelineJson = TypedDict("_TimelineJson", {  # type: ignore[misc]
    **{name: f.annotation for name, f in TimelineOut.model_fields.items()},
    "items": list[_TimelineRow]})  # type: ignore[valid-type]
_TIMELINE_JSON = TypeAdapter(_TimelineJson)


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
             since: datetime | None = None, until: datetime | None = None,
             limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
             cursor: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    """A page of a patient's events in time order, filtered by code, kind and [since,
    until); ``next`` is the cursor of the following page. Flagged readings (e.g. dated in
    the future) are listed with their ``quality`` flag: they are kept, never scored."""
    grant = guard(request, svc, who, patient_id, Action.READ, "timeline")
    if kind and not set(kind) <= set(KINDS):
        raise ApiError(422, f"unknown kind; use {', '.join(KINDS)}")
    since, until = _aware(since, "since"), _aware(until, "until")
    after = decode_cursor(cursor) if cursor else None
    try:
        rows, more = svc.store.timeline_page(patient_id, kinds=kind, codes=code, since=since,
                                             until=until, limit=limit, after=after)
    except NotFoundError:
        audited(request, svc, who, grant, "timeline", "not-found")
        raise not_found(patient_id) from None
    audited(request, svc, who, grant, "timeline")
    # serialised once, in pydantic's core, from the store's rows: the bytes FastAPI sends for
    # the TimelineOut (the declared response model), without a model object per row
    return Response(_TIMELINE_JSON.dump_json({
        "patient_id": patient_id, "count": len(rows), "items": rows,
        "next": encode_cursor(more) if more else None}), media_type="application/json")


@router.get("/{patient_id}/observations/{source_id:path}/history", response_model=HistoryOut)
def observation_history(request: Request, svc: Svc, who: Caller, patient_id: Id,
                        source_id: Annotated[str, Path(max_length=200)]) -> HistoryOut:
    """Every stored version of one observation, oldest first (records are append-only:
    an amendment adds a version and keeps the previous one)."""
    grant = guard(request, svc, who, patient_id, Action.READ, "history")
    try:
        versions = svc.store.history(patient_id, "observation", source_id)
    except NotFoundError:
        audited(request, svc, who, grant, "history", "not-found")
        raise not_found(patient_id) from None
    if not versions:
        audited(request, svc, who, grant, "history", "not-found")
        raise ApiError(404, f"patient {patient_id!r} has no observation {source_id!r}; the "
                       "timeline lists source ids")
    audited(request, svc, who, grant, "history")
    return HistoryOut(patient_id=patient_id, source_id=source_id, versions=[
        VersionOut(version=v["version"], recorded_at=v["recorded_at"], quality=v["quality"],
                   time=v["record"].time, code=v["record"].code, value=v["record"].value,
                   unit=v["record"].unit, status=v["record"].status,
                   record=v["record"].to_dict()) for v in versions])


def _aware(t: datetime | None, name: str) -> datetime | None:
    """``t`` in UTC (naive means UTC); 422 when it lies outside the calendar once in UTC."""
    if t is None:
        return None
    try:
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:
        raise ApiError(422, f"{name}: {t.isoformat()} is outside the calendar once converted "
                       "to UTC (years 1 to 9999)") from None


@router.post("/{patient_id}/observations", response_model=StoredOut,
             status_code=status.HTTP_201_CREATED)
def add_observation(request: Request, svc: Svc, who: Caller, patient_id: Id,
                    body: ObservationIn) -> StoredOut:
    """Store one numeric reading (clinicians of the care team; the bound device).

    The reading passes the clinical-data policy: its unit is normalised (104 [degF] is
    stored as 40 Cel; a unit of another quantity is 422), an impossible value is 422 naming
    the field, and a time beyond the clock-skew tolerance in the future is stored
    quarantined (never scored) with a data-quality alert naming the sender. POST never
    amends: a source id that already holds another record is 409."""
    grant = guard(request, svc, who, patient_id, Action.WRITE, "Observation")
    source_id = body.source_id or f"Observation/{uuid.uuid4()}"
    if not source_id.startswith("Observation/"):
        source_id = f"Observation/{source_id}"
    sender = who.name if who.role is Role.DEVICE else None
    try:
        obs = Observation(subject=patient_id, code=body.code, system=body.system,
                          display=body.display, time=body.time, value=body.value,
                          unit=body.unit, source_id=source_id, device=sender)
        admitted = admit(obs, where="body", tolerance=timedelta(
            seconds=svc.settings.clock_skew_seconds))
    except (ValidationError, OverflowError) as exc:
        audited(request, svc, who, grant, "Observation", "invalid")
        detail = str(exc) if isinstance(exc, ValidationError) else \
            "body.time: out of the supported range of times; send an ISO 8601 time with a zone"
        raise ApiError(422, detail) from None
    try:
        res = svc.store.append(records=[admitted.observation], quality=[admitted.quality],
                               may_amend=False, resources=record_writes(
                                   [admitted.observation], [admitted.quality]))
    except NotFoundError:
        audited(request, svc, who, grant, "Observation", "not-found")
        raise not_found(patient_id) from None
    except ConflictError as exc:
        audited(request, svc, who, grant, "Observation", "conflict")
        raise ApiError(409, f"{exc}. POST only adds new readings; see the record's versions "
                       f"at GET /patients/{patient_id}/observations/{source_id}/history"
                       ) from None
    audited(request, svc, who, grant, "Observation")
    if admitted.quality and res.stored:
        _data_quality_alert(svc, patient_id, admitted, sender or f"user {who.name}")
    return StoredOut(stored=res.stored, duplicates=res.duplicates, source_ids=[source_id],
                     quarantined=[source_id] if admitted.quality else [])


def _data_quality_alert(svc: Services, patient_id: str, admitted: Admitted,
                        sender: str) -> None:
    """Raise the advisory alert that tells clinicians a sender's readings are quarantined."""
    obs = admitted.observation
    AlertStore(svc.store).raise_alert(
        patient_id, f"data-quality:{sender}"[:64], 1,
        f"{sender} sent a reading dated {obs.time.isoformat()}, in the future; quarantined, "
        "not scored: check the sender's clock",
        {"device": sender, "flag": admitted.quality, "source_ids": [obs.source_id]},
        data_time=None)
