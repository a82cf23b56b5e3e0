"""Research: de-identified data of patients who consented to research use (researchers).

Safe Harbor by default; a limited data set (dates shifted, still PHI) only when asked for
with ``mode=limited``, labelled as such in the answer and audited under its own resource
name so that every disclosure under a data use agreement can be accounted for.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from medtwin.api.deps import Caller, Services, Svc, audited, guard, require_role
from medtwin.api.problems import ApiError
from medtwin.api.routes import PATIENT_ERRORS
from medtwin.api.schemas import Id, ResearchPatient, ResearchRow, ResearchTimeline
from medtwin.security.deid import DeidMode
from medtwin.security.policy import Action, Grant
from medtwin.security.roles import Principal, Role

router = APIRouter(prefix="/research", tags=["research"], responses=PATIENT_ERRORS)

Mode = Annotated[DeidMode, Query(description="safe-harbor (default: no PHI) or limited (a "
                                 "HIPAA limited data set: dates shifted, still PHI; only "
                                 "under a data use agreement; audited as such)")]
DEID_HEADER = "X-Medtwin-Deidentification"


def _resource(name: str, mode: DeidMode) -> str:
    """The audit resource: limited-data-set disclosures are told apart from Safe Harbor."""
    return name if mode is DeidMode.SAFE_HARBOR else f"{name}-limited-data-set"


def _resolve(request: Request, svc: Services, who: Principal, pseudonym: str, resource: str
             ) -> tuple[str, Grant]:
    deid = svc.deidentifier()
    for pid in svc.store.patients()["id"]:
        if deid.pseudonym(pid) == pseudonym:
            try:
                return pid, guard(request, svc, who, pid, Action.RESEARCH, resource)
            except ApiError as exc:  # never echo the real id
                raise ApiError(exc.status, f"no patient {pseudonym!r}" if exc.status == 404
                               else exc.detail) from None
    svc.record(request, who, "research", resource, "not-found")
    raise ApiError(404, f"no patient {pseudonym!r}")


@router.get("/patients", response_model=list[ResearchPatient])
def list_consenting(request: Request, svc: Svc, who: Caller) -> list[ResearchPatient]:
    """Pseudonyms of patients who consented to research use (Safe Harbor fields only)."""
    require_role(request, svc, who, Role.RESEARCHER, resource="research")
    deid = svc.deidentifier()
    out = []
    for pid in svc.store.patients()["id"]:
        if svc.policy.has_research_consent(pid):
            p = deid.patient(svc.store.patient(pid), DeidMode.SAFE_HARBOR)
            out.append(ResearchPatient(pseudonym=p.id, gender=p.gender, birth_year=p.birth_year,
                                       age_group=p.identity.get("age_group")))
    svc.record(request, who, "research", "patients", "success", detail=f"{len(out)} listed")
    return out


@router.get("/patients/{pseudonym}/timeline", response_model=ResearchTimeline)
def research_timeline(request: Request, svc: Svc, who: Caller, pseudonym: Id,
                      mode: Mode = DeidMode.SAFE_HARBOR) -> ResearchTimeline:
    """A de-identified timeline: years only (Safe Harbor) or shifted times (limited)."""
    resource = _resource("research-timeline", mode)
    require_role(request, svc, who, Role.RESEARCHER, resource=resource)
    pid, grant = _resolve(request, svc, who, pseudonym, resource)
    df = svc.deidentifier().frame(svc.store.patient(pid), svc.store.timeline(pid), mode)
    audited(request, svc, who, grant, resource)
    rows = []
    for r in df.astype(object).where(df.notna(), None).to_dict("records"):
        when = r["time"]
        rows.append(ResearchRow(
            year=int(when) if isinstance(when, str) else when.year if when is not None
            else None,
            time=None if mode is DeidMode.SAFE_HARBOR or when is None else when.to_pydatetime(),
            kind=r["kind"], code=r["code"], display=r["display"],
            value=None if r["value"] is None else float(r["value"]), unit=r["unit"]))
    return ResearchTimeline(pseudonym=pseudonym, mode=mode.value, notice=mode.notice,
                            count=len(rows), items=rows)


@router.get("/patients/{pseudonym}/bundle", response_class=JSONResponse,
            responses={200: {"description": "A de-identified FHIR Bundle, labelled with its "
                             "mode in meta.security and meta.tag",
                             "content": {"application/fhir+json": {"schema": {"type": "object"}}}}})
def research_bundle(request: Request, svc: Svc, who: Caller, pseudonym: Id,
                    mode: Mode = DeidMode.SAFE_HARBOR) -> JSONResponse:
    """The de-identified record as a FHIR R4 Bundle (no free text; every reference resolves
    inside it)."""
    resource = _resource("research-bundle", mode)
    require_role(request, svc, who, Role.RESEARCHER, resource=resource)
    pid, grant = _resolve(request, svc, who, pseudonym, resource)
    bundle = svc.deidentifier().bundle(svc.store.patient(pid), svc.store.timeline(pid), mode)
    audited(request, svc, who, grant, resource)
    return JSONResponse(bundle, media_type="application/fhir+json",
                        headers={DEID_HEADER: mode.value})
