"""``POST /fhir`` with a ``transaction`` Bundle (all or nothing, ``urn:uuid`` references
resolved to the ids the server assigns, conditional create inside) or a ``batch`` Bundle
(each entry on its own), answered with a ``transaction-response`` / ``batch-response``
(R4 http.html#transaction). Entries may POST (create), PUT (update) or DELETE; GETs are
answered in a batch. Every entry goes through the same access checks as the interaction it
stands for."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Services, Svc
from medtwin.api.problems import ApiError, outcome
from medtwin.api.routes.fhir import port
from medtwin.api.routes.fhir.bundles import now_instant
from medtwin.api.routes.fhir.common import allowed, hidden
from medtwin.api.routes.fhir.crud import care_for, check_write, conditional_match
from medtwin.api.routes.fhir.formats import base_url, fhir_response, read_json
from medtwin.core.errors import (
    ConflictError,
    GoneError,
    MedtwinError,
    NotFoundError,
    PreconditionFailedError,
)
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.security.policy import Action
from medtwin.security.roles import Principal
from medtwin.store.resources import ResourceWrite
from medtwin.store.rows import Batch

MAX_ENTRIES = 1000


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    """``node`` with every reference to a ``urn:uuid`` fullUrl of the bundle replaced by the
    ``Type/id`` the server gave that entry."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in ids:
                out[k] = ids[v]
            else:
                out[k] = _rewrite(v, ids)
        return out
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


def _entry_target(entry: dict[str, Any], i: int) -> tuple[str, str, str | None]:
    """(method, type, id) of a transaction entry's request."""
    req = entry.get("request")
    if not isinstance(req, dict) or "method" not in req or "url" not in req:
        raise ApiError(400, f"entry[{i}]: request.method and request.url are required")
    method = str(req["method"]).upper()
    url = str(req["url"]).split("?")[0].strip("/")
    parts = url.split("/")
    if method not in ("POST", "PUT", "DELETE", "GET"):
        raise ApiError(400, f"entry[{i}]: method {method} is not supported here")
    if method == "POST" and len(parts) != 1 or method in ("PUT", "DELETE") and len(parts) != 2:
        raise ApiError(400, f"entry[{i}]: {method} {req['url']!r} is not a type (POST) or "
                       "Type/id (PUT, DELETE) URL")
    port.check_type(parts[0])
    return method, parts[0], parts[1] if len(parts) > 1 else None


def _plan(request: Request, svc: Services, who: Principal, bundle: dict[str, Any]
          ) -> list[dict[str, Any]]:
    """Each entry's action, after ids are assigned and references rewritten."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ApiError(400, f"Bundle.entry must be a list of at most {MAX_ENTRIES} entries")
    ids: dict[str, str] = {}
    plans = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ApiError(400, f"entry[{i}] is not an object")
        method, rtype, rid = _entry_target(e, i)
        plan = {"i": i, "method": method, "type": rtype, "id": rid,
                "if_none_exist": e["request"].get("ifNoneExist"),
                "if_match": e["request"].get("ifMatch"), "resource": e.get("resource")}
        if method == "POST":
            plan["id"] = str(uuid.uuid4())
            criteria = plan["if_none_exist"]
            if criteria:
                found = conditional_match(request, svc, who, rtype, criteria)
                if len(found) > 1:
                    raise ApiError(412, f"entry[{i}]: ifNoneExist matches more than one")
                if found:
                    plan["existing"] = found[0]
                    plan["id"] = found[0].id
        full = e.get("fullUrl")
        if isinstance(full, str) and plan["id"] and method in ("POST", "PUT"):
            ids[full] = f"{rtype}/{plan['id']}"
        plans.append(plan)
    for plan in plans:
        if plan["method"] in ("POST", "PUT"):
            body = _rewrite(plan["resource"], ids)
            if not isinstance(body, dict):
                raise ApiError(400, f"entry[{plan['i']}]: a resource is required")
            plan["resource"] = {**body, "id": plan["id"]}
    return plans


def _execute(request: Request, svc: Services, who: Principal, plans: list[dict[str, Any]],
             ) -> tuple[list[tuple[Any, Any]], list[dict[str, Any]], list[str | None]]:
    """Check every entry and prepare the writes (nothing is written yet)."""
    rs = port.resources(svc.store)
    writes: list[tuple[Any, Any]] = []
    answers: list[dict[str, Any]] = []
    new_patients: list[str | None] = []
    creating = frozenset(p["id"] for p in plans if p["type"] == "Patient"
                         and p["method"] in ("POST", "PUT") and p.get("existing") is None
                         and not svc.store.has_patient(p["id"]))
    for plan in plans:
        rtype, rid = plan["type"], plan["id"]
        if plan.get("existing") is not None:
            answers.append({"status": "200 OK", "existing": plan["existing"]})
            continue
        if plan["method"] == "DELETE":
            before = rs.current(rtype, rid)
            if before is not None:
                try:
                    allowed(request, svc, who, before.patient_id, Action.WRITE, rtype,
                            interaction="d")
                except ApiError as exc:
                    raise hidden(rtype, rid) if exc.status == 404 else exc from None
            writes.append((ResourceWrite(rtype, rid, None), Batch()))
            answers.append({"status": "204 No Content", "write": len(writes) - 1,
                            "deleted": True})
            continue
        resource = port.validated(plan["resource"], rtype)
        before = rs.current(rtype, rid)
        if before is not None and not before.deleted:
            try:
                allowed(request, svc, who, before.patient_id, Action.READ, rtype,
                        interaction="u")
            except ApiError as exc:
                raise hidden(rtype, rid) if exc.status == 404 else exc from None
        new_patients.append(check_write(request, svc, who, resource, before, creating))
        match = plan["if_match"]
        version = int(str(match).strip('W/"')) if match else None
        writes.append(port.prepare(resource, if_match=version))
        answers.append({"status": "201 Created" if before is None or before.deleted
                        else "200 OK", "write": len(writes) - 1})
    return writes, answers, new_patients


def _response(base: str, answers: list[dict[str, Any]], stored: list[Any],
              kind: str) -> dict[str, Any]:
    entries = []
    for a in answers:
        s = a.get("existing") or (stored[a["write"]] if "write" in a else a.get("stored"))
        resp: dict[str, Any] = {"status": a["status"]}
        if s is not None and a.get("deleted"):
            resp["etag"] = s.etag
        elif s is not None:
            resp["location"] = f"{base}/{s.resource_type}/{s.id}/_history/{s.version}"
            resp["etag"] = s.etag
            resp["lastModified"] = s.resource()["meta"]["lastUpdated"]
        if a.get("outcome"):
            resp["outcome"] = a["outcome"]
        entries.append({"response": resp})
    return {"resourceType": "Bundle", "type": kind, "timestamp": now_instant(),
            "entry": entries}


async def transaction(request: Request, svc: Svc, who: Caller) -> Response:
    """Process a transaction (all or nothing) or batch (each entry alone) Bundle."""
    bundle = await read_json(request)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ApiError(400, "POST /fhir takes a Bundle of type transaction or batch")
    kind = bundle.get("type")
    base = base_url(request)
    if kind == "transaction":
        plans = _plan(request, svc, who, bundle)
        writes, answers, new_patients = _execute(request, svc, who, plans)
        stored = port.write(svc.store, writes, may_amend=True) if writes else []
        for pid in new_patients:
            care_for(svc, who, pid)
        return fhir_response(_response(base, answers, stored, "transaction-response"))
    if kind == "batch":
        answers = []
        for i, e in enumerate(bundle.get("entry") or []):
            one = {"resourceType": "Bundle", "type": "transaction", "entry": [e]}
            try:
                plans = _plan(request, svc, who, one)
                writes, ans, new_patients = _execute(request, svc, who, plans)
                stored = port.write(svc.store, writes, may_amend=True) if writes else []
                for a in ans:
                    if "write" in a:
                        a = {**a, "stored": stored[a.pop("write")]}
                    answers.append(a)
                for pid in new_patients:
                    care_for(svc, who, pid)
            except ApiError as exc:
                answers.append({"status": str(exc.status), "outcome": outcome(
                    exc.status, f"entry[{i}]: {exc.detail}")})
            except MedtwinError as exc:
                status = _status(exc)
                answers.append({"status": str(status), "outcome": outcome(
                    status, f"entry[{i}]: {str(exc)[:500]}")})
        return fhir_response(_response(base, answers, [], "batch-response"))
    raise ApiError(400, f"Bundle.type {kind!r}: POST /fhir takes transaction or batch; "
                   "to import a collection use POST /fhir/Bundle")


def _status(exc: MedtwinError) -> int:
    """The HTTP status of an entry's failure in a batch (as the problem handlers map it)."""
    for cls, code in ((GoneError, 410), (PreconditionFailedError, 412), (NotFoundError, 404),
                      (ConflictError, 409), (FhirImportError, 422)):
        if isinstance(exc, cls):
            return code
    return 400
