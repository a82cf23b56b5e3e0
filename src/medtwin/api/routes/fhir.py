"""FHIR R4 endpoints for what medtwin stores: Patient read, Observation search and create,
Bundle import. Errors are OperationOutcome resources."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.responses import JSONResponse

from medtwin.api.deps import Caller, Services, Svc, audited, guard, patient_or_404, require_role
from medtwin.api.problems import ApiError
from medtwin.api.schemas import Code, Id
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.records import Observation, Patient
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.read import parse_fhir, parse_fhir_datetime
from medtwin.interop.fhir.write import to_bundle
from medtwin.security.policy import Action, not_found
from medtwin.security.roles import Principal, Role

FHIR_JSON = "application/fhir+json"
_OO = {"description": "OperationOutcome", "content": {FHIR_JSON: {"schema": {"type": "object"}}}}
_RES = {"description": "FHIR resource", "content": {FHIR_JSON: {"schema": {"type": "object"}}}}
router = APIRouter(prefix="/fhir", tags=["fhir"],
                   responses={s: _OO for s in (400, 401, 403, 404, 413, 422)})
Resource = Annotated[dict[str, Any], Body(description="A FHIR R4 resource (JSON)",
                                          media_type=FHIR_JSON)]
_PREFIXES = ("ge", "gt", "le", "lt", "eq")


def _fhir(body: dict[str, Any], code: int = 200) -> JSONResponse:
    return JSONResponse(body, code, media_type=FHIR_JSON)


@router.get("/Patient/{patient_id}", response_class=JSONResponse, responses={200: _RES})
def read_patient(request: Request, svc: Svc, who: Caller, patient_id: Id) -> JSONResponse:
    """A Patient resource with its identifying fields."""
    p = patient_or_404(request, svc, who, patient_id, "Patient")
    return _fhir(to_bundle(p, [], validate=False)["entry"][0]["resource"])


def _date_filter(values: list[str]) -> tuple[datetime | None, list[tuple[str, datetime]]]:
    """The lower bound to query with, and every (prefix, time) check to apply after."""
    since = None
    checks = []
    for v in values:
        prefix, text = (v[:2], v[2:]) if v[:2] in _PREFIXES else ("eq", v)
        t = parse_fhir_datetime(text, where="date")
        if prefix in ("ge", "gt"):
            since = t if since is None else max(since, t)
        checks.append((prefix, t))
    return since, checks


_TESTS = {"ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b,
          "lt": lambda a, b: a < b, "eq": lambda a, b: a == b}


def _match(t: datetime, checks: list[tuple[str, datetime]]) -> bool:
    return all(_TESTS[prefix](t, ref) for prefix, ref in checks)


@router.get("/Observation", response_class=JSONResponse, responses={200: _RES})
def search_observations(
    request: Request, svc: Svc, who: Caller,
    patient: Annotated[str, Query(pattern=r"^(Patient/)?[A-Za-z0-9\-.]{1,64}$",
                                  description="Patient id or Patient/id (required)")],
    code: Annotated[list[Code] | None, Query(max_length=50, description="LOINC code")] = None,
    date: Annotated[list[Annotated[str, Query(max_length=40)]] | None,
                    Query(max_length=4, description="ge/gt/le/lt/eq + FHIR dateTime")] = None,
) -> JSONResponse:
    """A searchset Bundle of a patient's observations, by code and date."""
    patient = patient.removeprefix("Patient/")
    grant = guard(request, svc, who, patient, Action.READ, "Observation")
    try:
        since, checks = _date_filter(date or [])
    except ValidationError as exc:
        raise ApiError(400, f"bad date parameter: {exc.message}") from None
    codes = [c.rsplit("|", 1)[-1] for c in code] if code else None
    try:
        recs = svc.store.timeline(patient, kinds=["observation"], codes=codes, since=since)
        p = svc.store.patient(patient)
    except NotFoundError:
        audited(request, svc, who, grant, "Observation", "not-found")
        raise not_found(patient) from None
    recs = [r for r in recs if isinstance(r, Observation) and _match(r.time, checks)]
    audited(request, svc, who, grant, "Observation")
    full = to_bundle(p, recs, validate=False)
    entries = [dict(e, search={"mode": "match"}) for e in full["entry"][1:]]
    return _fhir({"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                  "timestamp": datetime.now(UTC).isoformat(), "entry": entries})


def _writable(request: Request, svc: Services, who: Principal, patients: list[Patient],
              subjects: set[str]) -> None:
    """Every subject must be writable by the caller; new patients only by clinicians (their
    care teams then care for them)."""
    known = set(svc.store.patients()["id"]) if patients else set()
    for p in patients:
        if p.id in known:
            subjects.add(p.id)
        elif svc.settings.security_enabled and who.role is not Role.CLINICIAN:
            svc.record(request, who, "create", "Patient", "denied", patient_id=p.id)
            raise ApiError(403, f"the {who.role.value} role may not create patients")
    for pid in sorted(subjects):
        guard(request, svc, who, pid, Action.WRITE, "Bundle")


def _store_parsed(request: Request, svc: Services, who: Principal, data: Any,
                  resource: str) -> tuple[int, int, int]:
    parsed = parse_fhir(data, source="request")
    if parsed.issues:
        raise FhirImportError(parsed.issues, summary="some entries are invalid; nothing "
                              "was stored")
    new_ids = {p.id for p in parsed.patients}
    subjects = {r.subject for r in parsed.records if r.subject} - new_ids
    _writable(request, svc, who, parsed.patients, subjects)
    try:
        res = svc.store.append(parsed.patients, parsed.records)
    except NotFoundError as exc:
        raise ApiError(404, str(exc).split(";")[0]) from None
    if who.role is Role.CLINICIAN and svc.settings.security_enabled:
        for team in svc.directory.teams_of(who.id):
            for pid in new_ids:
                svc.directory.add_to_team(team, patient_id=pid)
    for pid in sorted(new_ids | subjects):
        svc.record(request, who, "write", resource, "success", patient_id=pid)
    return res.stored, res.duplicates, res.patients_added


@router.post("/Observation", response_class=JSONResponse, status_code=status.HTTP_201_CREATED,
             responses={201: _RES})
def create_observation(request: Request, svc: Svc, who: Caller,
                       body: Resource) -> JSONResponse:
    """Store one FHIR Observation (its subject must be writable by the caller)."""
    if body.get("resourceType") != "Observation":
        raise ApiError(422, "the body must be an Observation resource")
    _store_parsed(request, svc, who, body, "Observation")
    return _fhir(body, 201)


@router.post("/Bundle", response_class=JSONResponse, responses={200: _RES})
def post_bundle(request: Request, svc: Svc, who: Caller, body: Resource) -> JSONResponse:
    """Import a Bundle (all-or-nothing); answers an OperationOutcome with the counts."""
    require_role(request, svc, who, Role.CLINICIAN, Role.ADMIN, resource="Bundle")
    if body.get("resourceType") != "Bundle":
        raise ApiError(422, "the body must be a Bundle resource")
    stored, dups, added = _store_parsed(request, svc, who, body, "Bundle")
    return _fhir({"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational",
        "diagnostics": f"stored {stored}, duplicates {dups}, patients added {added}"}]})

