"""Operations: ``Patient/{id}/$everything`` (the patient's compartment, and the shared
resources it refers to when the caller may read shared data)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Svc
from medtwin.api.problems import ApiError
from medtwin.api.routes.fhir import access, bundles, port
from medtwin.api.routes.fhir.common import FhirId, hidden
from medtwin.api.routes.fhir.formats import base_url, fhir_response
from medtwin.interop.fhir.search import reference_target
from medtwin.security.policy import Action
from medtwin.security.roles import Role

router = APIRouter()
MAX_EVERYTHING = 10_000


def _refs(node: object, out: set[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference":
                t = reference_target(v)
                if t:
                    out.add(t)
            else:
                _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)


@router.get("/Patient/{rid}/$everything", summary="Patient $everything")
def everything(request: Request, svc: Svc, who: Caller, rid: FhirId,
               count: int = Query(MAX_EVERYTHING, alias="_count", ge=1, le=MAX_EVERYTHING)
               ) -> Response:
    """A searchset of the Patient and its compartment (and, for callers who may read shared
    data, the Practitioners, Organizations ... it refers to)."""
    try:
        access.check_patient(request, svc, who, rid, Action.READ, "Patient", interaction="r")
    except ApiError as exc:
        raise hidden("Patient", rid) if exc.status == 404 else exc from None
    rs = port.resources(svc.store)
    page = rs.compartment(rid, count=count)
    if not page.resources:
        raise hidden("Patient", rid)
    found = page.resources
    included = []
    if who.role in (Role.CLINICIAN, Role.ADMIN) or not svc.settings.security_enabled:
        keys: set[tuple[str, str]] = set()
        for r in found:
            _refs(r.resource(), keys)
        have = {(r.resource_type, r.id) for r in found}
        included = [r for r in rs.read_many(keys - have, patients=[rid], shared=True)
                    if r.patient_id is None]
        for t in sorted({r.resource_type for r in included}):
            access.check_shared(request, svc, who, t, Action.READ, interaction="r")
    base = base_url(request)
    link = [{"relation": "self", "url": str(request.url)}]
    return fhir_response(bundles.searchset(base, [r.resource() for r in found],
                                           [r.resource() for r in included],
                                           total=page.total, link=link))
