"""History: of one resource, of a type, of the whole system (R4 http.html#history), newest
first, with ``_count``, ``_since`` and ``_at``-less paging by opaque tokens. Type and system
history are restricted to the caller's reach before they run (a version is in the
compartment of the patient it named when it was written)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Services, Svc
from medtwin.api.problems import ApiError
from medtwin.api.routes.fhir import access, bundles, port
from medtwin.api.routes.fhir.common import FhirId, TypeName, hidden
from medtwin.api.routes.fhir.formats import base_url, fhir_response
from medtwin.core.errors import ValidationError
from medtwin.interop.fhir.search import date_range
from medtwin.security.policy import Action
from medtwin.security.roles import Principal

router = APIRouter()
DEFAULT_COUNT = 50
MAX_COUNT = 1000


def _paging(request: Request, svc: Services, who: Principal, scope: str
            ) -> tuple[int, int, datetime | None, list[tuple[str, str]]]:
    """(count, offset, since, the parameters to repeat in links) of a history request."""
    params = [(k, v) for k, v in request.query_params.multi_items()
              if k not in ("_format", "_pretty")]
    offset = 0
    token = request.query_params.get(bundles.PAGE_PARAM)
    if token:
        ttype, params, offset = bundles.read_page_token(svc.settings.token_secret, who.id,
                                                        token)
        if ttype != scope:
            raise ApiError(400, "this page token belongs to another history")
    count, since = DEFAULT_COUNT, None
    kept = []
    for k, v in params:
        if k == "_count":
            if not v.isdigit() or int(v) < 1:
                raise ApiError(400, f"_count={v!r}: a whole number >= 1 is needed")
            count = min(int(v), MAX_COUNT)
        elif k == "_since":
            try:
                since = date_range(v, where="_since")[0]
            except ValidationError as exc:
                raise ApiError(400, f"bad _since: {exc}") from None
        elif k == bundles.PAGE_PARAM:
            continue
        else:
            raise ApiError(400, f"history does not take the parameter {k!r} (use _count, "
                           "_since)")
        kept.append((k, v))
    return count, offset, since, kept


def _answer(request: Request, svc: Services, who: Principal, scope: str,
            rtype: str | None, rid: str | None, reach: access.Reach | None) -> Response:
    hist = f"{scope}/_history" if scope else "_history"
    count, offset, since, params = _paging(request, svc, who, hist)
    rs = port.resources(svc.store)
    page = rs.history(rtype, rid, since=since, count=count, offset=offset,
                      patients=None if reach is None else reach.patients,
                      shared=True if reach is None else reach.shared)
    if rid is None:
        for t in sorted({v.resource_type for v in page.resources}):
            access.check_returned(request, svc, who, t, [v.patient_id for v in page.resources
                                                         if v.resource_type == t])
        if not page.resources:
            svc.record(request, who, "read", rtype or "history", "success",
                       detail="history: empty")
    base = base_url(request)
    entries = []
    for v in page.resources:
        entries.append(bundles.history_entry(base, v.resource_type, v.id, {
            "version": v.version, "deleted": v.deleted,
            "resource": None if v.deleted else v.resource(),
            "last_updated": v.resource()["meta"]["lastUpdated"] if not v.deleted
            else v.last_updated.isoformat().replace("+00:00", "Z")}))
    link = bundles.links(base, hist, params
                         if not request.query_params.get(bundles.PAGE_PARAM) else
                         [*params, ("_offset", str(offset))],
                         secret=svc.settings.token_secret, caller=who.id, search=params,
                         offset=offset, count=count, total=page.total, has_more=page.more)
    return fhir_response(bundles.history(base, entries, total=page.total, link=link))


@router.get("/_history", summary="history-system")
def history_system(request: Request, svc: Svc, who: Caller) -> Response:
    """Every version the caller may see, of every type."""
    reach = access.read_reach(request, svc, who, "Resource", svc.store.patients()["id"])
    return _answer(request, svc, who, "", None, None, reach)


@router.get("/{rtype}/_history", summary="history-type")
def history_type(request: Request, svc: Svc, who: Caller, rtype: TypeName) -> Response:
    """Every version of a type's resources the caller may see."""
    port.check_type(rtype)
    reach = access.read_reach(request, svc, who, rtype, svc.store.patients()["id"])
    return _answer(request, svc, who, rtype, rtype, None, reach)


@router.get("/{rtype}/{rid}/_history", summary="history-instance")
def history_instance(request: Request, svc: Svc, who: Caller, rtype: TypeName,
                     rid: FhirId) -> Response:
    """Every version of one resource, deletes included."""
    port.check_type(rtype)
    current = port.resources(svc.store).current(rtype, rid)
    if current is None:
        svc.record(request, who, "read", rtype, "not-found")
        raise hidden(rtype, rid)
    try:
        if current.patient_id is None:
            access.check_shared(request, svc, who, rtype, Action.READ, interaction="r")
        else:
            access.check_patient(request, svc, who, current.patient_id, Action.READ, rtype,
                                 interaction="r")
    except ApiError as exc:
        if exc.status == 404:
            raise hidden(rtype, rid) from None
        raise
    # the versions of a resource moved between patients: every one must be reachable
    rs = port.resources(svc.store)
    others = {v.patient_id for v in rs.history(rtype, rid, count=MAX_COUNT).resources}
    for pid in sorted(p for p in others if p and p != current.patient_id):
        try:
            access.check_patient(request, svc, who, pid, Action.READ, rtype, interaction="r")
        except ApiError as exc:
            raise hidden(rtype, rid) if exc.status == 404 else exc from None
    return _answer(request, svc, who, f"{rtype}/{rid}", rtype, rid, None)
