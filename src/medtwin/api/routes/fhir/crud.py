"""Instance and type interactions: read, vread, create (conditional with If-None-Exist),
update (If-Match; creates when absent), delete (logical; a later read is 410)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Services, Svc
from medtwin.api.problems import ApiError, outcome
from medtwin.api.routes.fhir import access, port
from medtwin.api.routes.fhir.common import (
    FhirId,
    TypeName,
    allowed,
    hidden,
    readable,
    write_answer,
)
from medtwin.api.routes.fhir.formats import (
    base_url,
    fhir_response,
    read_json,
    resource_headers,
    version_of_etag,
)
from medtwin.interop.fhir.search import compartment_of, parse_search
from medtwin.security.policy import Action
from medtwin.security.roles import Principal, Role
from medtwin.store.resources import StoredResource

router = APIRouter()


def _version(text: str) -> int:
    v = version_of_etag(text)
    if not v.isdigit():
        raise ApiError(400, f"version {v!r} is not a number")
    return int(v)


def check_write(request: Request, svc: Services, who: Principal, resource: dict[str, Any],
                before: StoredResource | None, creating: frozenset[str] = frozenset()
                ) -> str | None:
    """Access for writing ``resource`` (over ``before``, the current version if any): the
    patient of both compartments, or shared data. A new Patient: clinicians only (they then
    care for it); ``creating``: patients created (and so checked) in the same request.
    Returns the new patient id to add to the caller's care teams."""
    rtype = resource["resourceType"]
    interaction = "u" if before is not None else "c"
    pid = compartment_of(resource)
    new_patient = None
    if rtype == "Patient" and (before is None or before.deleted):
        known = svc.store.has_patient(resource["id"])
        if not known:
            if svc.settings.security_enabled and who.role is not Role.CLINICIAN:
                svc.record(request, who, "create", "Patient", "denied",
                           patient_id=resource["id"])
                raise ApiError(403, f"the {who.role.value} role may not create patients")
            access.require_role(request, svc, who, Role.CLINICIAN, Role.ADMIN,
                                resource="Patient", interaction="c")
            svc.record(request, who, "create", "Patient", "success", patient_id=resource["id"])
            return resource["id"]
    if pid is not None and pid in creating and (before is None or before.deleted):
        return None
    if before is not None and not before.deleted and before.patient_id != pid:
        allowed(request, svc, who, before.patient_id, Action.WRITE, rtype,
                interaction=interaction)
    allowed(request, svc, who, pid, Action.WRITE, rtype, interaction=interaction)
    return new_patient


def care_for(svc: Services, who: Principal, patient_id: str | None) -> None:
    """A clinician who created a patient cares for them (their care teams gain them)."""
    if patient_id and who.role is Role.CLINICIAN and svc.settings.security_enabled:
        for team in svc.directory.teams_of(who.id):
            svc.directory.add_to_team(team, patient_id=patient_id)


@router.get("/{rtype}/{rid}", summary="read")
def read(request: Request, svc: Svc, who: Caller, rtype: TypeName, rid: FhirId) -> Response:
    """The current version (404 when absent or out of reach, 410 when deleted)."""
    port.check_type(rtype)
    stored = readable(request, svc, who, rtype, rid)
    resource = stored.resource()
    return fhir_response(resource, 200, resource_headers(resource, base_url(request)))


@router.get("/{rtype}/{rid}/_history/{vid}", summary="vread")
def vread(request: Request, svc: Svc, who: Caller, rtype: TypeName, rid: FhirId,
          vid: FhirId) -> Response:
    """One version of a resource (410 when that version is a delete)."""
    port.check_type(rtype)
    if not vid.isdigit():
        raise hidden(rtype, f"{rid}/_history/{vid}")
    stored = readable(request, svc, who, rtype, rid, int(vid))
    resource = stored.resource()
    return fhir_response(resource, 200, resource_headers(resource, base_url(request)))


def conditional_match(request: Request, svc: Services, who: Principal, rtype: str,
                      criteria: str) -> list[StoredResource]:
    """The resources the caller can see that match a conditional create's criteria."""
    params = parse_qsl(criteria.lstrip("?"), keep_blank_values=True)
    search = parse_search(rtype, params)
    if search.unknown:
        raise ApiError(400, f"If-None-Exist: unknown search parameter(s) "
                       f"{', '.join(search.unknown)}")
    rs = port.resources(svc.store)
    reach = access.read_reach(request, svc, who, rtype, svc.store.patients()["id"]) \
        if who.role is not Role.DEVICE else access.Reach(
            frozenset([who.patient_id] if who.patient_id else []), False)
    page = rs.search(search.query, count=2, patients=reach.patients, shared=reach.shared)
    return page.resources


@router.post("/{rtype}", status_code=201, summary="create")
async def create(request: Request, svc: Svc, who: Caller, rtype: TypeName) -> Response:
    """Store a new resource under a server-assigned id (201 with Location, ETag,
    Last-Modified); with ``If-None-Exist`` only when nothing the caller can see matches."""
    port.check_type(rtype)
    body = port.body_of(await read_json(request), rtype)
    criteria = request.headers.get("if-none-exist")
    if criteria:  # matched within the caller's reach only (never reveals another's)
        found = conditional_match(request, svc, who, rtype, criteria)
        if len(found) > 1:
            raise ApiError(412, f"If-None-Exist matches more than one {rtype}; be more "
                           "specific")
        if found:
            allowed(request, svc, who, found[0].patient_id, Action.READ, rtype,
                    interaction="r")
            return write_answer(request, found[0], 200, f"{rtype}/{found[0].id} already "
                                "exists; nothing was created")
    # the server assigns the id (R4 create); a new Patient's is known after the write
    new_patient = check_write(request, svc, who, {**body, "id": str(uuid.uuid4())}, None)
    stored = port.repository(svc.store).create(body, may_amend=False)
    care_for(svc, who, stored.id if new_patient else None)
    return write_answer(request, stored, 201, f"created {rtype}/{stored.id}")


@router.put("/{rtype}/{rid}", summary="update")
async def update(request: Request, svc: Svc, who: Caller, rtype: TypeName,
                 rid: FhirId) -> Response:
    """Replace a resource by a new version (200), or create it under this id (201);
    ``If-Match: W/"n"`` makes it conditional on the current version (412 otherwise)."""
    port.check_type(rtype)
    body = port.body_of(await read_json(request), rtype, rid)
    if_match = request.headers.get("if-match")
    version = _version(if_match) if if_match else None
    before = port.resources(svc.store).current(rtype, rid)
    if before is not None and not before.deleted:
        try:
            allowed(request, svc, who, before.patient_id, Action.READ, rtype,
                    interaction="u")
        except ApiError as exc:
            if exc.status == 404:
                raise hidden(rtype, rid) from None
            raise
    new_patient = check_write(request, svc, who, body, before)
    # a device adds readings; it never rewrites a stored record (issue 12's may_amend)
    stored = port.repository(svc.store).update(rtype, rid, body, if_match=version,
                                               may_amend=who.role is not Role.DEVICE)
    care_for(svc, who, new_patient)
    return write_answer(request, stored, 201 if stored.created else 200,
                        f"{'created' if stored.created else 'updated'} {rtype}/{rid}")


@router.delete("/{rtype}/{rid}", summary="delete")
def delete(request: Request, svc: Svc, who: Caller, rtype: TypeName, rid: FhirId) -> Response:
    """A logical delete: a new version without content; reads then answer 410, the history
    keeps every version. Deleting what is absent or deleted already is 204 too."""
    port.check_type(rtype)
    rs = port.resources(svc.store)
    before = rs.current(rtype, rid)
    if before is None:
        svc.record(request, who, "delete", rtype, "not-found")
        return fhir_response(None, 204)
    try:
        allowed(request, svc, who, before.patient_id, Action.WRITE, rtype, interaction="d")
    except ApiError as exc:
        if exc.status == 404:
            raise hidden(rtype, rid) from None
        raise
    if_match = request.headers.get("if-match")
    stored = port.repository(svc.store).delete(
        rtype, rid, if_match=_version(if_match) if if_match else None)
    headers = {"ETag": stored.etag} if stored is not None else {}
    if (request.headers.get("prefer") or "").lower().find("operationoutcome") >= 0:
        return fhir_response(outcome(200, f"deleted {rtype}/{rid}", severity="information",
                                     code="informational"), 200, headers)
    return fhir_response(None, 204, headers)
