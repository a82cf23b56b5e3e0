"""Admin: verify the audit chain and export entries as FHIR AuditEvents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from medtwin.api.deps import Caller, Svc, require_role
from medtwin.api.routes import AUTH_ERRORS
from medtwin.api.schemas import Id, VerifyOut
from medtwin.security.audit_fhir import audit_bundle
from medtwin.security.roles import Role

router = APIRouter(prefix="/audit", tags=["audit"], responses=AUTH_ERRORS)


@router.get("/verify", response_model=VerifyOut)
def verify(request: Request, svc: Svc, who: Caller) -> VerifyOut:
    """Walk the keyed chain a page at a time and check it against its anchors outside the
    database; list changed, removed, re-ordered, forged or unkeyed entries and anchors the
    chain no longer agrees with (dropped tail, rewrite, wipe and restart) (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="audit")
    v = svc.audit.verify()
    svc.record(request, who, "verify", "audit", "success", detail=f"ok={v.ok}")
    return VerifyOut(ok=v.ok, entries=v.entries, head_seq=v.head_seq, head_hash=v.head_hash,
                     problems=[str(p) for p in v.problems])


@router.get("/AuditEvent", response_class=JSONResponse,
            responses={200: {"description": "A Bundle of AuditEvent",
                             "content": {"application/fhir+json": {"schema": {"type": "object"}}}}})
def export(request: Request, svc: Svc, who: Caller, patient: Id | None = None,
           after: Annotated[int, Query(ge=0)] = 0,
           count: Annotated[int, Query(ge=1, le=5000)] = 500) -> JSONResponse:
    """Audit entries as a Bundle of FHIR AuditEvent, in chain order (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="audit")
    entries = svc.audit.entries(patient_id=patient, since_seq=after, limit=count)
    svc.record(request, who, "read", "audit", "success", patient_id=patient)
    return JSONResponse(audit_bundle(entries), media_type="application/fhir+json")
