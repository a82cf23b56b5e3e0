"""Research: de-identified data of patients who consented to research use (researchers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from medtwin.api.deps import Caller, Services, Svc, audited, guard, require_role
from medtwin.api.problems import ApiError
from medtwin.api.routes import PATIENT_ERRORS
from medtwin.api.schemas import Id, ResearchPatient, ResearchRow, ResearchTimeline
from medtwin.security.policy import Action, Grant
from medtwin.security.roles import Principal, Role

router = APIRouter(prefix="/research", tags=["research"], responses=PATIENT_ERRORS)


def _resolve(request: Request, svc: Services, who: Principal, pseudonym: str
             ) -> tuple[str, Grant]:
    deid = svc.deidentifier()
    for pid in svc.store.patients()["id"]:
        if deid.pseudonym(pid) == pseudonym:
            try:
                return pid, guard(request, svc, who, pid, Action.RESEARCH, "research")
            except ApiError as exc:  # never echo the real id
                raise ApiError(exc.status, f"no patient {pseudonym!r}" if exc.status == 404
                               else exc.detail) from None
    svc.record(request, who, "research", "research", "not-found")
    raise ApiError(404, f"no patient {pseudonym!r}")


@router.get("/patients", response_model=list[ResearchPatient])
def list_consenting(request: Request, svc: Svc, who: Caller) -> list[ResearchPatient]:
    """Pseudonyms of patients who consented to research use."""
    require_role(request, svc, who, Role.RESEARCHER, resource="research")
    deid = svc.deidentifier()
    out = []
    for pid in svc.store.patients()["id"]:
        if svc.policy.has_research_consent(pid):
            p = deid.patient(svc.store.patient(pid))
            out.append(ResearchPatient(pseudonym=p.id, gender=p.gender, birth_year=p.birth_year))
    svc.record(request, who, "research", "patients", "success", detail=f"{len(out)} listed")
    return out


@router.get("/patients/{pseudonym}/timeline", response_model=ResearchTimeline)
def research_timeline(request: Request, svc: Svc, who: Caller, pseudonym: Id
                      ) -> ResearchTimeline:
    """A de-identified timeline: dates shifted per patient, ids pseudonymised."""
    require_role(request, svc, who, Role.RESEARCHER, resource="research")
    pid, grant = _resolve(request, svc, who, pseudonym)
    df = svc.deidentifier().frame(svc.store.patient(pid), svc.store.timeline(pid))
    audited(request, svc, who, grant, "research-timeline")
    rows = [ResearchRow(time=r["time"].to_pydatetime() if r["time"] is not None else None,
                        kind=r["kind"], code=r["code"], display=r["display"],
                        value=None if r["value"] is None or r["value"] != r["value"]
                        else float(r["value"]), unit=r["unit"])
            for r in df.astype(object).where(df.notna(), None).to_dict("records")]
    return ResearchTimeline(pseudonym=pseudonym, count=len(rows), items=rows)


@router.get("/patients/{pseudonym}/bundle", response_class=JSONResponse,
            responses={200: {"description": "A de-identified FHIR Bundle",
                             "content": {"application/fhir+json": {"schema": {"type": "object"}}}}})
def research_bundle(request: Request, svc: Svc, who: Caller, pseudonym: Id) -> JSONResponse:
    """The de-identified record as a FHIR R4 Bundle."""
    require_role(request, svc, who, Role.RESEARCHER, resource="research")
    pid, grant = _resolve(request, svc, who, pseudonym)
    bundle = svc.deidentifier().bundle(svc.store.patient(pid), svc.store.timeline(pid))
    audited(request, svc, who, grant, "research-bundle")
    return JSONResponse(bundle, media_type="application/fhir+json")
