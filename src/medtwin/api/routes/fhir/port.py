"""The FHIR API's one door to the resource store (``store.resources``) and the FHIR side of
indexing (``interop.fhir.search``): validate, derive the typed records, index, write.

A write stores the resource as received (versioned) and, in the same transaction, the typed
records medtwin derives from it (``core.records``: the twins' input); an Observation passes
the clinical-time policy (``interop.quality.admit``: units normalised, implausible values
refused, future-dated readings flagged) on its way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtwin.api.problems import ApiError
from medtwin.core.records import Observation
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.read import parse_fhir
from medtwin.interop.fhir.search import compartment_of, index_rows
from medtwin.interop.fhir.validate import model_class, validate_resource
from medtwin.interop.quality import admit
from medtwin.store.event_store import EventStore
from medtwin.store.resources import (
    ResourceBatch,
    ResourceStore,
    ResourceWrite,
    StoredResource,
    canonical,
    check_id,
)
from medtwin.store.rows import Batch


def resources(store: EventStore) -> ResourceStore:
    """The resource store over the service's event store."""
    return ResourceStore(store)


def check_type(rtype: str) -> str:
    """``rtype`` if it is a FHIR R4 resource type; 404 (OperationOutcome) otherwise."""
    if not rtype[:1].isupper() or model_class(rtype) is None or rtype in {"Bundle"}:
        raise ApiError(404, f"unknown resource type {rtype!r}: this server serves FHIR R4 "
                       "resource types (see /fhir/metadata)")
    return rtype


def validated(resource: Any, rtype: str, rid: str | None = None) -> dict[str, Any]:
    """The body, checked: a JSON object of type ``rtype`` (with id ``rid`` for an update),
    structurally valid FHIR R4 (422 with the issues otherwise)."""
    if not isinstance(resource, dict):
        raise ApiError(400, "the body must be a JSON object (a FHIR resource)")
    if resource.get("resourceType") != rtype:
        raise ApiError(400, f"the body is a {resource.get('resourceType')!r}, not a {rtype}")
    if rid is not None:
        if resource.get("id") != rid:
            raise ApiError(400, f"the body's id {resource.get('id')!r} is not the id in the "
                           f"URL ({rid!r}); they must match for an update")
        check_id(rid)
    _model, issues = validate_resource(resource)
    if issues:
        outcome = FhirImportError(issues, summary="the resource is not valid FHIR R4")
        raise ApiError(422, str(outcome).splitlines()[0], issues=outcome.outcome()["issue"])
    return resource


def prepare(resource: dict[str, Any], *, if_match: int | None = None
            ) -> tuple[ResourceWrite, Batch]:
    """The store write of a validated resource and the typed records derived from it
    (Observations admitted by the clinical-time policy)."""
    text, digest = canonical(resource)
    write = ResourceWrite(resource["resourceType"], resource["id"], text, digest,
                          compartment_of(resource), tuple(index_rows(resource)), if_match)
    parsed = parse_fhir(resource, source="request")
    if parsed.issues:
        raise FhirImportError(parsed.issues, summary="the resource cannot be mapped; nothing "
                              "was stored")
    records, quality = [], []
    for r in parsed.records:
        if isinstance(r, Observation):
            admitted = admit(r, where=f"{resource['resourceType']}/{resource['id']}")
            records.append(admitted.observation)
            quality.append(admitted.quality)
        else:
            records.append(r)
            quality.append(None)
    return write, Batch(parsed.patients, records, quality=quality)


def write(store: EventStore, items: Sequence[tuple[ResourceWrite, Batch]], *,
          may_amend: bool = False) -> list[StoredResource]:
    """Resources and their typed records in one transaction (all or nothing); ``may_amend``
    (an update) lets a record's new content be a new version of it."""
    rs = resources(store)
    batches = [ResourceBatch(b, [w], [0] * len(b.records)) for w, b in items]
    with rs.transaction() as conn:
        rs.events.append_in(conn, [rb.batch for rb in batches], may_amend=may_amend)
        return rs.write_in(conn, [w for w, _ in items])


def delete(store: EventStore, rtype: str, rid: str, *, if_match: int | None = None
           ) -> StoredResource:
    """A logical delete (a version without content)."""
    return resources(store).write([ResourceWrite(rtype, rid, None, if_match=if_match)])[0]

