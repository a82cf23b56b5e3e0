"""The FHIR API's one door to stored resources.

Every write goes through :class:`~medtwin.interop.fhir.repository.FhirRepository`: it
validates the resource, resolves ``urn:uuid`` references, derives the typed records
(``core.records``: the twins' input), passes observations through the clinical-time policy
(``interop.quality.admit``) and writes resource and records in one transaction. The routes
add what only they know (who asks, and may they) before calling it; they never write to the
store themselves. Reads go to the repository's resource store (``repo.store``) for the
version-level lookups (``current`` with deletions, ``include``, ``compartment``) the access
checks need.
"""

from __future__ import annotations

from typing import Any

from medtwin.api.problems import ApiError
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.interop.fhir.validate import model_class
from medtwin.store.event_store import EventStore
from medtwin.store.resources import ResourceStore


def repository(store: EventStore) -> FhirRepository:
    """The FHIR repository over the service's event store (cheap: stateless)."""
    return FhirRepository(store)


def resources(store: EventStore) -> ResourceStore:
    """The resource store, for reads."""
    return repository(store).store


def check_type(rtype: str) -> str:
    """``rtype`` if it is a FHIR R4 resource type; 404 (OperationOutcome) otherwise."""
    if not rtype[:1].isupper() or model_class(rtype) is None or rtype in {"Bundle"}:
        raise ApiError(404, f"unknown resource type {rtype!r}: this server serves FHIR R4 "
                       "resource types (see /fhir/metadata)")
    return rtype


def body_of(resource: Any, rtype: str, rid: str | None = None) -> dict[str, Any]:
    """The body's shape before any access check: a JSON object of type ``rtype`` (with id
    ``rid`` for an update, as R4 requires), 400 otherwise. Whether it
    is valid FHIR R4 is the repository's to say (422 with the issues) when it is written."""
    if not isinstance(resource, dict):
        raise ApiError(400, "the body must be a JSON object (a FHIR resource)")
    if resource.get("resourceType") != rtype:
        raise ApiError(400, f"the body is a {resource.get('resourceType')!r}, not a {rtype}")
    if rid is not None and resource.get("id") != rid:
        raise ApiError(400, f"the body's id {resource.get('id')!r} is not the id in the URL "
                       f"({rid!r}); they must match for an update")
    return resource
