"""Bulk Data ``$export`` (FHIR Bulk Data Access IG v2): kick-off at ``/fhir/$export``
(system), ``/fhir/Patient/$export`` and ``/fhir/Group/{id}/$export``; status polling and
cancel at the ``Content-Location`` the kick-off gives; NDJSON files for the caller only.

Who gets what (decided at kick-off, fixed in the job, checked again at each download):

* clinicians: the patients of their care teams (and, at system level, shared resources
  such as Organization and Practitioner);
* patients: their own compartment only (the same data they read through the REST API;
  Group exports are refused);
* admins: everything, only with a break-glass reason (``X-Break-Glass-Reason``), at kick-off
  and at every download;
* researchers: de-identified (Safe Harbor) records of the patients who consent to research
  use, nothing shared;
* devices: refused.

Every kick-off and every file download is audited, one entry per patient covered. The files
need the caller's token (``requiresAccessToken: true``); another caller gets 404, as for a
job that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response

from medtwin.api.deps import BREAK_GLASS_HEADER, Caller, Services, Svc, require_role
from medtwin.api.openapi import BULK_DATA
from medtwin.api.problems import ApiError
from medtwin.api.routes.fhir import port
from medtwin.api.routes.fhir.common import FhirId, hidden, prefer
from medtwin.api.routes.fhir.export_jobs import CANCELLED, DONE, FAILED, ExportJob, ExportJobs
from medtwin.api.routes.fhir.export_work import make_worker
from medtwin.api.routes.fhir.formats import base_url
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.interop.fhir.search import compartment_of, date_range, reference_target
from medtwin.security.roles import Principal, Role

KEY = "fhir-export"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
KNOWN = {"_outputFormat", "_type", "_since", "_format"}
MAX_UNFINISHED = 4
RETRY_AFTER = "2"
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="an export job id")]
Seq = Annotated[int, Path(ge=1, le=1_000_000, description="a file's number")]


def jobs_of(svc: Services) -> ExportJobs:
    """The service's export runner (made on first use)."""
    jobs = svc.extras.get(KEY)
    if not isinstance(jobs, ExportJobs):
        jobs = ExportJobs(svc.store.engine, make_worker(svc.store, svc.deidentifier),
                          svc.keyring)
        svc.extras[KEY] = jobs
    return jobs


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Take up the jobs a stopped process left; release this process's at shutdown."""
    svc: Services = app.state.services
    jobs_of(svc).take_up_all()
    yield
    jobs = svc.extras.pop(KEY, None)
    if isinstance(jobs, ExportJobs):
        jobs.close()


router = APIRouter(lifespan=lifespan, default_response_class=Response)
_RAW = {BULK_DATA: True}
_ACCEPTED = {202: {"description": "accepted: poll the Content-Location URL"},
             429: {"description": "too many unfinished exports"}}
_STATUS = {200: {"description": "the manifest (complete)", "content": {"application/json": {
    "schema": {"type": "object", "required": ["transactionTime", "request",
                                              "requiresAccessToken", "output", "error"]}}}},
           202: {"description": "in progress (X-Progress, Retry-After)"},
           500: {"description": "the export failed (OperationOutcome)"}}
_FILE = {200: {"description": "NDJSON, one resource a line",
               "content": {NDJSON: {"schema": {"type": "string"}}}}}


# --- kick-off -----------------------------------------------------------------------------
def _types(values: list[str]) -> list[str] | None:
    out: list[str] = []
    for v in values:
        for name in (x.strip() for x in v.split(",")):
            if not name:
                continue
            try:
                port.check_type(name)
            except ApiError:
                raise ApiError(400, f"_type: {name!r} is not a FHIR R4 resource type") from None
            if name not in out:
                out.append(name)
    return out or None


def _parameters(request: Request) -> dict[str, Any]:
    """``_outputFormat``, ``_type``, ``_since``; the others ignored with a warning (400 with
    ``Prefer: handling=strict``)."""
    q = request.query_params
    for fmt in q.getlist("_outputFormat"):
        if fmt.strip().lower() not in OUTPUT_FORMATS:
            raise ApiError(400, f"_outputFormat {fmt!r} is not offered: use {NDJSON}")
    since = None
    if q.get("_since"):
        try:
            since = date_range(q["_since"], where="_since")[0].isoformat()
        except ValidationError as exc:
            raise ApiError(400, f"_since: {exc}") from None
    unknown = sorted({k for k in q if k not in KNOWN})
    if unknown and prefer(request, "handling") == "strict":
        raise ApiError(400, f"parameter(s) not supported by $export: {', '.join(unknown)} "
                       "(Prefer: handling=strict)")
    return {"types": _types(q.getlist("_type")), "since": since,
            "warnings": [f"parameter {k!r} is not supported and was ignored" for k in unknown]}


def _group_members(svc: Services, group_id: str) -> list[str]:
    """The active Patient members of a stored Group (404 when there is none)."""
    try:
        group = port.repository(svc.store).read("Group", group_id).resource()
    except NotFoundError:  # GoneError too
        raise hidden("Group", group_id) from None
    out = []
    for m in group.get("member") or []:
        target = reference_target((m.get("entity") or {}).get("reference"))
        if target and target[0] == "Patient" and not m.get("inactive"):
            out.append(target[1])
    return sorted(set(out))


def _reach(request: Request, svc: Services, who: Principal, level: str,
           candidates: list[str] | None) -> dict[str, Any]:
    """The patients (None: all), shared data and de-identification of the caller's export."""
    if not svc.settings.security_enabled:
        return {"patients": candidates, "shared": level == "system", "deidentify": False}
    if who.role is Role.RESEARCHER:
        ids = svc.store.patients()["id"] if candidates is None else candidates
        return {"patients": [p for p in ids if svc.policy.has_research_consent(p)],
                "shared": False, "deidentify": True}
    if who.role is Role.ADMIN:
        _break_glass(request, svc, who)
        return {"patients": candidates, "shared": level == "system", "deidentify": False}
    ids = list(svc.store.patients()["id"]) if candidates is None else candidates
    visible = svc.policy.visible_patients(who, ids)
    return {"patients": visible, "shared": level == "system" and who.role is Role.CLINICIAN,
            "deidentify": False}


def _break_glass(request: Request, svc: Services, who: Principal) -> None:
    if not (request.headers.get(BREAK_GLASS_HEADER) or "").strip():
        svc.record(request, who, "read", "$export", "denied",
                   detail="an admin exports only with a break-glass reason")
        raise ApiError(403, "an admin exports clinical data only in an emergency: give the "
                       f"reason in the {BREAK_GLASS_HEADER} header (it is audited)")


def kick_off(request: Request, svc: Services, who: Principal, level: str,
             group_id: str | None = None) -> Response:
    """Check, record and start an export; 202 with the status URL."""
    if prefer(request, "respond-async") is None:
        raise ApiError(400, "$export is asynchronous: send the header Prefer: respond-async")
    params = _parameters(request)
    roles = (Role.CLINICIAN, Role.ADMIN, Role.RESEARCHER) + (
        (Role.PATIENT,) if level != "group" else ())
    for rtype in params["types"] or ["*"]:  # the role, and SMART scopes on every type
        require_role(request, svc, who, *roles, resource=rtype, interaction="rs")
    candidates = _group_members(svc, group_id) if group_id is not None else None
    if level == "patient" and candidates is None and (
            not svc.settings.security_enabled or who.role is Role.ADMIN):
        candidates = list(svc.store.patients()["id"])
    reach = _reach(request, svc, who, level, candidates)
    jobs = jobs_of(svc)
    if jobs.count_unfinished(who.id) >= MAX_UNFINISHED:
        raise ApiError(429, f"you have {MAX_UNFINISHED} exports running: wait for one or "
                       "cancel one (DELETE its status URL)", headers={"Retry-After": "30"})
    spec = {"level": level, "group": group_id, **params, **reach,
            "role": who.role.value, "break_glass": (request.headers.get(
                BREAK_GLASS_HEADER) or "").strip()[:500] or None}
    job = jobs.create(who.id, str(request.url), spec)
    _audit(request, svc, who, spec, f"$export {job.id}: kick-off ({level})",
           reach["patients"] if reach["patients"] is not None else [None])
    return Response(status_code=202, headers={
        "Content-Location": f"{base_url(request)}/$export-poll-status/{job.id}"})


def _audit(request: Request, svc: Services, who: Principal, spec: dict[str, Any],
           detail: str, patients: list[str | None]) -> None:
    action = "research" if spec.get("deidentify") else "read"
    if spec.get("break_glass"):
        detail += f"; break-glass: {spec['break_glass']}"
    if spec.get("shared") and None not in patients:
        patients = [*patients, None]
    svc.record_many(request, who, action, "$export", "success", patients or [None],
                    detail=detail)


@router.get("/$export", summary="Bulk Data export: system", status_code=202,
            responses=_ACCEPTED, openapi_extra=_RAW)
def export_system(request: Request, svc: Svc, who: Caller) -> Response:
    """Every resource the caller may export (kick-off; ``Prefer: respond-async``)."""
    return kick_off(request, svc, who, "system")


@router.get("/Patient/$export", summary="Bulk Data export: all patients", status_code=202,
            responses=_ACCEPTED, openapi_extra=_RAW)
def export_patients(request: Request, svc: Svc, who: Caller) -> Response:
    """The compartments of every patient the caller may export (kick-off)."""
    return kick_off(request, svc, who, "patient")


@router.get("/Group/{rid}/$export", summary="Bulk Data export: a group", status_code=202,
            responses=_ACCEPTED, openapi_extra=_RAW)
def export_group(request: Request, svc: Svc, who: Caller, rid: FhirId) -> Response:
    """The compartments of the Group's active Patient members the caller may export."""
    return kick_off(request, svc, who, "group", rid)


# --- status, cancel, files ----------------------------------------------------------------
def _own_job(request: Request, svc: Services, who: Principal, job_id: str) -> ExportJob:
    job = jobs_of(svc).get(job_id)
    if job is None or job.owner != who.id or job.status == CANCELLED:
        svc.record(request, who, "read", "$export", "not-found")
        raise ApiError(404, f"no export {job_id!r} of yours (finished ones are kept until "
                       "cancelled; cancelled ones are gone)")
    return job


@router.get("/$export-poll-status/{job_id}", summary="Bulk Data export: status",
            responses=_STATUS, openapi_extra=_RAW)
def export_status(request: Request, svc: Svc, who: Caller, job_id: JobId) -> Response:
    """202 while running (``X-Progress``, ``Retry-After``), 200 with the manifest when done,
    500 with an OperationOutcome when the export failed."""
    job = _own_job(request, svc, who, job_id)
    jobs = jobs_of(svc)
    if job.status == FAILED:
        raise ApiError(500, f"the export failed: {job.error or 'unknown error'}")
    if job.status != DONE:
        jobs.take_up(job)  # its runner is gone: run it here
        return Response(status_code=202, headers={"X-Progress": job.progress or job.status,
                                                  "Retry-After": RETRY_AFTER})
    base = base_url(request)
    parts = jobs.parts(job.id)
    url = f"{base}/$export-file/{job.id}"
    manifest = {
        "transactionTime": _instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": True,
        "output": [{"type": p.type, "url": f"{url}/{p.seq}", "count": p.count}
                   for p in parts if p.type != "OperationOutcome"],
        "error": [{"type": "OperationOutcome", "url": f"{url}/{p.seq}"}
                  for p in parts if p.type == "OperationOutcome"],
    }
    if job.spec.get("deidentify"):
        manifest["extension"] = {"https://medtwin.dev/fhir/deidentification": "safe-harbor"}
    return JSONResponse(manifest, headers={"Cache-Control": "no-store"})


@router.delete("/$export-poll-status/{job_id}", summary="Bulk Data export: cancel",
               status_code=202, responses={202: {"description": "cancelled"}},
               openapi_extra=_RAW)
def export_cancel(request: Request, svc: Svc, who: Caller, job_id: JobId) -> Response:
    """Cancel the export and delete its files (a later status request is 404)."""
    _own_job(request, svc, who, job_id)
    jobs_of(svc).cancel(job_id)
    svc.record(request, who, "delete", "$export", "success", detail=f"$export {job_id}")
    return Response(status_code=202)


@router.get("/$export-file/{job_id}/{seq}", summary="Bulk Data export: one file",
            responses=_FILE, openapi_extra=_RAW)
def export_file(request: Request, svc: Svc, who: Caller, job_id: JobId, seq: Seq
                ) -> Response:
    """One NDJSON file of a finished export, for the caller who asked for it."""
    job = _own_job(request, svc, who, job_id)
    jobs = jobs_of(svc)
    text = jobs.content(job_id, seq) if job.status == DONE else None
    if text is None:
        raise ApiError(404, f"export {job_id} has no file {seq} (yet)")
    patients = _patients_of(svc, job, text)
    _still_allowed(request, svc, who, job, patients)
    _audit(request, svc, who, job.spec, f"$export {job_id}: file {seq}", patients)
    return Response(text, media_type=NDJSON, headers={"Cache-Control": "no-store"})


def _patients_of(svc: Services, job: ExportJob, text: str) -> list[str | None]:
    """The (real) patients whose data a file holds; None for shared resources."""
    import json

    pseudonyms = ({svc.deidentifier().pseudonym(p): p for p in job.spec.get("patients") or []}
                  if job.spec.get("deidentify") else None)
    out: set[str | None] = set()
    for line in text.splitlines():
        if not line:
            continue
        resource = json.loads(line)
        if resource.get("resourceType") == "OperationOutcome":
            continue
        pid = compartment_of(resource)
        out.add(pseudonyms.get(pid or "") if pseudonyms is not None else pid)
    return sorted(out, key=lambda p: (p is None, p or ""))


def _still_allowed(request: Request, svc: Services, who: Principal, job: ExportJob,
                   patients: list[str | None]) -> None:
    """A download needs the access of its kick-off still: care team, consent, break-glass."""
    if not svc.settings.security_enabled:
        return
    if who.role is Role.ADMIN:
        _break_glass(request, svc, who)
        return
    real = [p for p in patients if p is not None]
    if who.role is Role.RESEARCHER:
        lost = [p for p in real if not svc.policy.has_research_consent(p)]
    else:
        visible = set(svc.policy.visible_patients(who, real))
        lost = [p for p in real if p not in visible]
    if lost:
        svc.record_many(request, who, "read", "$export", "denied", list(lost),
                        detail=f"$export {job.id}: access changed since the kick-off")
        raise ApiError(403, "your access to some of these patients changed since the export "
                       "started: start a new export")


def _instant(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
