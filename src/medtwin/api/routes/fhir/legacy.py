"""``POST /fhir/Bundle``: medtwin's import of a collection Bundle (all or nothing), kept for
the clients that used it before ``POST /fhir`` (transaction/batch) existed. Each resource is
stored as received and its typed records derived, with the same access rules as a create."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Svc, require_role
from medtwin.api.problems import ApiError, outcome
from medtwin.api.routes.fhir import port
from medtwin.api.routes.fhir.crud import care_for, check_write
from medtwin.api.routes.fhir.formats import fhir_response, read_json
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.read import parse_fhir
from medtwin.security.roles import Role

router = APIRouter()


@router.post("/Bundle", summary="import a collection Bundle (medtwin)")
async def post_bundle(request: Request, svc: Svc, who: Caller) -> Response:
    """Import a Bundle (all-or-nothing); answers an OperationOutcome with the counts."""
    require_role(request, svc, who, Role.CLINICIAN, Role.ADMIN, resource="Bundle",
                 interaction="c")
    body = await read_json(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise ApiError(422, "the body must be a Bundle resource")
    parsed = parse_fhir(body, source="request")
    if parsed.issues:
        raise FhirImportError(parsed.issues, summary="some entries are invalid; nothing "
                              "was stored")
    resources = parsed.resources
    rs = port.resources(svc.store)
    new_patients, items = [], []
    for r in resources:
        r = port.validated(r, r.get("resourceType", ""))
        before = rs.current(r["resourceType"], r["id"])
        new_patients.append(check_write(request, svc, who, r, before)
                            if r["resourceType"] == "Patient" else None)
    creating = frozenset(p for p in new_patients if p)
    for r in resources:
        if r["resourceType"] != "Patient":
            before = rs.current(r["resourceType"], r["id"])
            check_write(request, svc, who, r, before, creating)
        items.append(port.prepare(r))
    stored = port.write(svc.store, items)
    for pid in new_patients:
        care_for(svc, who, pid)
    changed = sum(1 for s in stored if s.changed)
    return fhir_response(outcome(200, f"stored {changed}, unchanged {len(stored) - changed}",
                                 severity="information", code="informational"))
