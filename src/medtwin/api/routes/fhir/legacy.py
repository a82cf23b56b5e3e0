"""``POST /fhir/Bundle``: medtwin's import of a collection Bundle (all or nothing), kept for
the clients that used it before ``POST /fhir`` (transaction/batch) existed. Each resource is
stored as received under its own id (one without an id gets a new one) and its typed records
derived, through the same access checks and the same repository transaction as a
``transaction`` Bundle."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Svc, require_role
from medtwin.api.problems import ApiError, outcome
from medtwin.api.routes.fhir import port
from medtwin.api.routes.fhir.formats import fhir_response, read_json
from medtwin.api.routes.fhir.transaction import MAX_ENTRIES, Entry, run_entries
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
    raw = body.get("entry") or []
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise ApiError(400, f"Bundle.entry must be a list of at most {MAX_ENTRIES} entries")
    entries = []
    for i, e in enumerate(raw):
        resource = e.get("resource") if isinstance(e, dict) else None
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(rtype, str):
            raise ApiError(422, f"entry[{i}] has no resource with a resourceType")
        port.check_type(rtype)
        rid = resource.get("id")
        full = e.get("fullUrl")
        entries.append(Entry(i, "PUT" if isinstance(rid, str) else "POST", rtype,
                             rid if isinstance(rid, str) else str(uuid.uuid4()),
                             port.body_of(resource, rtype), full if isinstance(full, str)
                             else None, None, None))
    results = run_entries(request, svc, who, entries, may_amend=False)
    changed = sum(1 for _, s in results if s is not None and s.changed)
    return fhir_response(outcome(200, f"stored {changed}, unchanged {len(results) - changed}",
                                 severity="information", code="informational"))
