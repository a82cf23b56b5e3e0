"""``POST /fhir`` with a ``transaction`` Bundle (all or nothing, ``urn:uuid`` references
resolved to the ids the server assigns, conditional create inside) or a ``batch`` Bundle
(each entry on its own), answered with a ``transaction-response`` / ``batch-response``
(R4 http.html#transaction). Entries may POST (create), PUT (update) or DELETE.

Every entry first goes through the same access checks as the interaction it stands for
(its compartment found through the bundle's own references); then the whole bundle is
written by :meth:`FhirRepository.transaction <medtwin.interop.fhir.repository.
FhirRepository.transaction>` (validation, reference resolution, typed records, one database
transaction). A conditional create (``ifNoneExist``) matches only what the caller can see,
so it never returns nor reveals another's resource."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Services, Svc
from medtwin.api.problems import ApiError, outcome
from medtwin.api.routes.fhir import port
from medtwin.api.routes.fhir.bundles import now_instant
from medtwin.api.routes.fhir.common import allowed, hidden
from medtwin.api.routes.fhir.crud import care_for, check_write, conditional_match
from medtwin.api.routes.fhir.formats import base_url, fhir_response, read_json, version_of_etag
from medtwin.core.errors import (
    ConflictError,
    GoneError,
    MedtwinError,
    NotFoundError,
    PreconditionFailedError,
)
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.repository import TxEntry
from medtwin.security.policy import Action
from medtwin.security.roles import Principal, Role
from medtwin.store.resources import StoredResource

MAX_ENTRIES = 1000
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    """One entry's request: for a POST, ``id`` is a placeholder for the access checks (the
    repository assigns the real one); ``existing`` is a conditional create's match."""

    index: int
    method: str
    type: str
    id: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_match: int | None
    if_none_exist: str | None
    existing: StoredResource | None = None


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    """``node`` with every reference to one of ``ids`` (fullUrls) replaced by its
    ``Type/id``."""
    if isinstance(node, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str)
                    else _rewrite(v, ids)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


def _version(value: Any) -> int | None:
    if value in (None, ""):
        return None
    v = version_of_etag(str(value))
    if not v.isdigit():
        raise ApiError(400, f"ifMatch {value!r} is not a version (send W/\"n\")")
    return int(v)


def entries_of(bundle: dict[str, Any], start: int = 0) -> list[Entry]:
    """The entries' requests, checked for shape (400 naming the entry otherwise);
    ``start``: the index of the first (a batch checks one entry at a time)."""
    raw = bundle.get("entry") or []
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise ApiError(400, f"Bundle.entry must be a list of at most {MAX_ENTRIES} entries")
    out = []
    for i, e in enumerate(raw, start):
        if not isinstance(e, dict):
            raise ApiError(400, f"entry[{i}] is not an object")
        req = e.get("request")
        if not isinstance(req, dict) or "method" not in req or "url" not in req:
            raise ApiError(400, f"entry[{i}]: request.method and request.url are required")
        method, url = str(req["method"]).upper(), str(req["url"])
        parts = url.strip("/").split("/")
        if method not in ("POST", "PUT", "DELETE"):
            raise ApiError(400, f"entry[{i}]: method {method} is not supported here "
                           "(POST, PUT, DELETE)")
        if "?" in url or (method == "POST" and len(parts) != 1) or (
                method in ("PUT", "DELETE") and len(parts) != 2):
            raise ApiError(400, f"entry[{i}]: {method} {url!r} is not a type (POST) or "
                           "Type/id (PUT, DELETE) URL (conditional update and delete are "
                           "not supported)")
        port.check_type(parts[0])
        resource = e.get("resource")
        if method != "DELETE":
            resource = port.body_of(resource, parts[0], parts[1] if method == "PUT" else None)
        full = e.get("fullUrl")
        out.append(Entry(i, method, parts[0], parts[1] if len(parts) > 1 else str(uuid.uuid4()),
                         resource, full if isinstance(full, str) else None,
                         _version(req.get("ifMatch")),
                         req.get("ifNoneExist") if method == "POST" else None))
    return out


def check_entries(request: Request, svc: Services, who: Principal, entries: list[Entry]
                  ) -> list[tuple[Entry, str]]:
    """Every entry's access check (nothing is written); the entries that create a patient
    the caller will care for, with the id the check saw."""
    for e in entries:
        if e.if_none_exist:
            found = conditional_match(request, svc, who, e.type, str(e.if_none_exist))
            if len(found) > 1:
                raise ApiError(412, f"entry[{e.index}]: ifNoneExist matches more than one")
            if found:
                allowed(request, svc, who, found[0].patient_id, Action.READ, e.type,
                        interaction="r")
                e.existing = found[0]
    ids = {e.full_url: f"{e.type}/{e.existing.id if e.existing else e.id}"
           for e in entries if e.full_url and e.method in ("POST", "PUT")}
    creating = frozenset(e.id for e in entries if e.type == "Patient" and e.existing is None
                         and e.method in ("POST", "PUT") and e.id is not None
                         and not svc.store.has_patient(e.id))
    rs = port.resources(svc.store)
    new_patients = []
    for e in entries:
        if e.existing is not None:
            continue
        assert e.id is not None
        before = rs.current(e.type, e.id) if e.method != "POST" else None
        live = before is not None and not before.deleted
        try:
            if e.method == "DELETE":
                if live:
                    allowed(request, svc, who, before.patient_id, Action.WRITE, e.type,
                            interaction="d")
                continue
            if live:
                allowed(request, svc, who, before.patient_id, Action.READ, e.type,
                        interaction="u")
        except ApiError as exc:
            raise hidden(e.type, e.id) if exc.status == 404 else exc from None
        view = _rewrite({**(e.resource or {}), "id": e.id}, ids)
        pid = check_write(request, svc, who, view, before, creating)
        if pid is not None:
            new_patients.append((e, pid))
    return new_patients


def run_entries(request: Request, svc: Services, who: Principal, entries: list[Entry],
                *, may_amend: bool = True) -> list[tuple[int, StoredResource | None]]:
    """Check, then write ``entries`` in one transaction; (status, stored) per entry."""
    new_patients = check_entries(request, svc, who, entries)
    matched = {e.full_url: f"{e.type}/{e.existing.id}" for e in entries
               if e.existing is not None and e.full_url}
    todo = [e for e in entries if e.existing is None]
    tx = [TxEntry(e.method, e.type if e.method == "POST" else f"{e.type}/{e.id}",
                  _rewrite(e.resource, matched) if matched and e.resource else e.resource,
                  full_url=e.full_url, if_match=e.if_match) for e in todo]
    done = port.repository(svc.store).transaction(tx, may_amend=may_amend) if tx else []
    by_entry = {e.index: (r.status, r.stored) for e, r in zip(todo, done, strict=True)}
    for e, _pid in new_patients:  # the clinician who created a patient cares for them
        stored = by_entry[e.index][1]
        care_for(svc, who, stored.id if stored is not None else None)
    return [(200, e.existing) if e.existing is not None else by_entry[e.index]
            for e in entries]


def _answer(base: str, status: int, stored: StoredResource | None,
            problem: dict[str, Any] | None = None) -> dict[str, Any]:
    resp: dict[str, Any] = {"status": _STATUS_TEXT.get(status, str(status))}
    if stored is not None and stored.deleted:
        resp["etag"] = stored.etag
    elif stored is not None:
        resp["location"] = f"{base}/{stored.resource_type}/{stored.id}/_history/{stored.version}"
        resp["etag"] = stored.etag
        resp["lastModified"] = stored.resource()["meta"]["lastUpdated"]
    if problem is not None:
        resp["outcome"] = problem
    return {"response": resp}


async def transaction(request: Request, svc: Svc, who: Caller) -> Response:
    """Process a transaction (all or nothing) or batch (each entry alone) Bundle."""
    bundle = await read_json(request)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ApiError(400, "POST /fhir takes a Bundle of type transaction or batch")
    kind = bundle.get("type")
    base = base_url(request)
    may_amend = who.role is not Role.DEVICE
    if kind == "transaction":
        results = run_entries(request, svc, who, entries_of(bundle), may_amend=may_amend)
        return fhir_response({"resourceType": "Bundle", "type": "transaction-response",
                              "timestamp": now_instant(),
                              "entry": [_answer(base, s, r) for s, r in results]})
    if kind == "batch":
        raw = bundle.get("entry") or []
        if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
            raise ApiError(400, f"Bundle.entry must be a list of at most {MAX_ENTRIES} "
                           "entries")
        answers = []
        for i, e in enumerate(raw):
            try:
                (entry,) = entries_of({"entry": [e]}, i)
                ((status, stored),) = run_entries(request, svc, who, [entry],
                                                  may_amend=may_amend)
                answers.append(_answer(base, status, stored))
            except ApiError as exc:
                answers.append(_answer(base, exc.status, None, outcome(
                    exc.status, exc.detail if exc.detail.startswith("entry[")
                    else f"entry[{i}]: {exc.detail}")))
            except MedtwinError as exc:
                status = _status(exc)
                answers.append(_answer(base, status, None, exc.outcome()
                                       if isinstance(exc, FhirImportError) else outcome(
                                           status, f"entry[{i}]: {str(exc)[:500]}")))
        return fhir_response({"resourceType": "Bundle", "type": "batch-response",
                              "timestamp": now_instant(), "entry": answers})
    raise ApiError(400, f"Bundle.type {kind!r}: POST /fhir takes transaction or batch; "
                   "to import a collection use POST /fhir/Bundle")


def _status(exc: MedtwinError) -> int:
    """The HTTP status of an entry's failure in a batch (as the problem handlers map it)."""
    for cls, code in ((GoneError, 410), (PreconditionFailedError, 412), (NotFoundError, 404),
                      (ConflictError, 409), (FhirImportError, 422)):
        if isinstance(exc, cls):
            return code
    return 400
