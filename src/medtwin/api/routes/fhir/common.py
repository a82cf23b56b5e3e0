"""What the FHIR interactions share: the answer to a write (``Prefer: return=``), reading a
stored resource the caller may see, and path parameters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import Response

from medtwin.api.deps import Services
from medtwin.api.problems import ApiError, outcome
from medtwin.api.routes.fhir import access, port
from medtwin.api.routes.fhir.formats import base_url, fhir_response, resource_headers
from medtwin.core.errors import GoneError, NotFoundError
from medtwin.security.policy import Action
from medtwin.security.roles import Principal
from medtwin.store.resources import StoredResource

TypeName = Annotated[str, Path(pattern=r"^[A-Z][A-Za-z]{1,63}$",
                               description="A FHIR R4 resource type, e.g. Observation")]
FhirId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$", description="A FHIR id")]


def prefer(request: Request, name: str) -> str | None:
    """The value of one ``Prefer`` token (``return``, ``handling``, ``respond-async``)."""
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"').lower() or key.strip().lower()
    return None


def write_answer(request: Request, stored: StoredResource, status: int,
                 message: str) -> Response:
    """The answer to a create or update: the resource (``Prefer: return=representation``,
    the default), nothing (``minimal``) or an OperationOutcome; with Location and ETag."""
    resource = stored.resource()
    headers = resource_headers(resource, base_url(request))
    how = prefer(request, "return")
    if how == "minimal":
        return fhir_response(None, status, headers)
    if how == "operationoutcome":
        return fhir_response(outcome(status, message, severity="information",
                                     code="informational"), status, headers)
    return fhir_response(resource, status, headers)


def hidden(rtype: str, rid: str) -> ApiError:
    """The one refusal for absent and out-of-reach resources (existence not revealed)."""
    return ApiError(404, f"{rtype}/{rid} is not known")


def readable(request: Request, svc: Services, who: Principal, rtype: str, rid: str,
             version: int | None = None) -> StoredResource:
    """A stored resource (or one version) the caller may read, access checked and audited;
    404 when absent or out of reach, 410 when deleted."""
    rs = port.resources(svc.store)
    if rtype == "Patient":  # the compartment is known before the lookup: refuse roles first
        try:
            allowed(request, svc, who, rid, Action.READ, rtype, interaction="r")
        except ApiError as exc:
            raise hidden(rtype, rid) if exc.status == 404 else exc from None
    current = rs.current(rtype, rid)
    if current is None and rtype == "Patient" and version is None:
        current = legacy_patient(svc, rid)
    if current is None:
        svc.record(request, who, "read", rtype, "not-found")
        raise hidden(rtype, rid)
    try:
        allowed(request, svc, who, current.patient_id, Action.READ, rtype,
                interaction="r")
    except ApiError as exc:
        if exc.status == 404:
            raise hidden(rtype, rid) from None
        raise
    if version is None:
        if current.deleted:
            raise GoneError(f"{rtype}/{rid} was deleted (version {current.version}); "
                            "its history keeps the earlier versions")
        return current
    try:
        return rs.vread(rtype, rid, version)
    except GoneError:
        raise
    except NotFoundError:
        raise ApiError(404, f"{rtype}/{rid} has no version {version}") from None


def allowed(request: Request, svc: Services, who: Principal, patient_id: str | None,
            action: Action, rtype: str, *, interaction: str | None = None) -> None:
    """One resource's access check (its compartment's patient, or shared data)."""
    if patient_id is None:
        access.check_shared(request, svc, who, rtype, action, interaction=interaction)
    else:
        access.check_patient(request, svc, who, patient_id, action, rtype,
                             interaction=interaction)


def resource_of(stored: StoredResource) -> dict[str, Any]:
    """The resource JSON of a stored version."""
    return stored.resource()


def legacy_patient(svc: Services, rid: str) -> StoredResource | None:
    """A patient stored as a typed record only (before issue 13's resource store, or by a
    path that writes records alone), shown as the Patient resource medtwin derives from it
    (version 1, last updated when its row was recorded: the same answer on every read and
    from every service worker)."""
    import json

    from medtwin.interop.fhir.write import to_bundle

    recorded = svc.store.patient_recorded_at(rid)
    if recorded is None:
        return None
    resource = to_bundle(svc.store.patient(rid), [], validate=False)["entry"][0]["resource"]
    resource.pop("meta", None)
    return StoredResource("Patient", rid, 1, recorded, False, rid, json.dumps(resource))
