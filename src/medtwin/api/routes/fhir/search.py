"""Search: ``GET /fhir/{type}``, ``POST /fhir/{type}/_search`` and ``GET /fhir?_type=``-less
system search is not offered. FHIR semantics come from ``interop.fhir.search``; this module
adds the caller's reach (restricted before the query runs), paging links with opaque tokens,
``_include``/``_revinclude`` within the same reach, ``_summary``, ``_elements`` and the
lenient/strict handling of unknown parameters (R4 Search 3.1.1.2)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medtwin.api.deps import Caller, Services, Svc
from medtwin.api.problems import ApiError
from medtwin.api.routes.fhir import access, bundles, port
from medtwin.api.routes.fhir.common import TypeName, prefer
from medtwin.api.routes.fhir.formats import base_url, fhir_response
from medtwin.core.errors import ValidationError
from medtwin.interop.fhir.search import parse_search, reference_target
from medtwin.security.policy import Action
from medtwin.security.roles import Principal
from medtwin.store.resources import FHIR_ID

router = APIRouter()
DEFAULT_COUNT = 50
MAX_COUNT = 1000
_IGNORED = {"_format", "_pretty", bundles.PAGE_PARAM}


def _params(request: Request, form: list[tuple[str, str]] | None = None
            ) -> list[tuple[str, str]]:
    pairs = list(request.query_params.multi_items()) + (form or [])
    return [(k, v) for k, v in pairs if k not in _IGNORED]


def run_search(request: Request, svc: Services, who: Principal, rtype: str,
               params: list[tuple[str, str]]) -> dict[str, Any]:
    """The searchset Bundle of one search (one page of it)."""
    token = request.query_params.get(bundles.PAGE_PARAM)
    secret = svc.settings.token_secret
    offset_from_token = None
    if token:
        ttype, params, offset_from_token = bundles.read_page_token(secret, who.id, token)
        if ttype != rtype:
            raise ApiError(400, "this page token belongs to a search of another type")
    try:
        search = parse_search(rtype, params, max_count=MAX_COUNT)
    except ValidationError as exc:
        raise ApiError(400, f"bad search: {exc}") from None
    strict = prefer(request, "handling") == "strict"
    if search.unknown and strict:
        raise ApiError(400, f"unknown search parameter(s) for {rtype}: "
                       f"{', '.join(search.unknown)} (Prefer: handling=strict)")
    warnings = [f"parameter {name!r} is not supported for {rtype} and was ignored"
                for name in search.unknown]
    for pid in _named_patients(rtype, params):  # a search of one patient: that patient's rules
        access.check_patient(request, svc, who, pid, Action.READ, rtype, interaction="s")
    reach = access.read_reach(request, svc, who, rtype, svc.store.patients()["id"])
    rs = port.resources(svc.store)
    count = DEFAULT_COUNT if search.count is None else search.count
    offset = search.offset if offset_from_token is None else offset_from_token
    want_total = search.total != "none"
    if search.summary == "count":
        count = 0
    page = rs.search(search.query, count=count, offset=offset, total=want_total or not count,
                     patients=reach.patients, shared=reach.shared)
    found = page.resources
    included = []
    for src, pname, target in search.include:
        if src == rtype:
            included += rs.include(found, pname, target, patients=reach.patients,
                                   shared=reach.shared)
    for src, pname, target in search.revinclude:
        got = rs.revinclude(found, src, pname, patients=reach.patients, shared=reach.shared)
        included += [r for r in got if target is None or r.resource_type == src]
    seen = {(r.resource_type, r.id) for r in found}
    extra = []
    for r in included:
        if (r.resource_type, r.id) not in seen:
            seen.add((r.resource_type, r.id))
            extra.append(r)
    # every patient whose data leaves goes through guard and is audited
    access.check_returned(request, svc, who, rtype, [r.patient_id for r in found])
    for xtype in sorted({r.resource_type for r in extra}):
        access.check_returned(request, svc, who, xtype,
                              [r.patient_id for r in extra if r.resource_type == xtype])
    if not found:
        svc.record(request, who, "read", rtype, "success", detail="search: no match")
    base = base_url(request)
    search_params = [(k, v) for k, v in search.used if k not in ("_offset",)]
    link = bundles.links(base, rtype, search.used if not token else
                         [*search_params, ("_offset", str(offset))], secret=secret,
                         caller=who.id, search=search_params, offset=offset, count=count,
                         total=page.total, has_more=page.more)
    shape = _shaper(search.summary, search.elements)
    return bundles.searchset(base, [shape(r.resource()) for r in found],
                             [shape(r.resource()) for r in extra],
                             total=page.total, link=link, warnings=warnings)


def _named_patients(rtype: str, params: list[tuple[str, str]]) -> list[str]:
    """The patients a search names by ``patient=`` / ``subject=Patient/..`` (or ``_id`` of a
    Patient search)."""
    out = []
    for k, v in params:
        name = k.partition(":")[0]
        if name in ("patient", "subject") or (rtype == "Patient" and name == "_id"):
            for one in v.split(","):
                target = reference_target(one) or (("Patient", one) if "/" not in one
                                                   else None)
                if target and target[0] == "Patient" and FHIR_ID.match(target[1]):
                    out.append(target[1])
    return sorted(set(out))


def _shaper(summary: str | None, elements: list[str] | None) -> Any:
    if elements:
        return lambda r: bundles.elements(r, elements)
    if summary in ("data", "true", "text"):
        return bundles.without_text if summary == "data" else bundles.summary(summary)
    return lambda r: r


@router.get("/{rtype}", summary="search-type")
def search_get(request: Request, svc: Svc, who: Caller, rtype: TypeName) -> Response:
    """A searchset Bundle (see the CapabilityStatement for each type's parameters)."""
    port.check_type(rtype)
    return fhir_response(run_search(request, svc, who, rtype, _params(request)))


@router.post("/{rtype}/_search", summary="search-type (POST)")
async def search_post(request: Request, svc: Svc, who: Caller, rtype: TypeName) -> Response:
    """The same search with its parameters in an application/x-www-form-urlencoded body."""
    port.check_type(rtype)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        raise ApiError(415, "POST _search takes application/x-www-form-urlencoded parameters")
    raw = (await request.body()).decode("utf-8", errors="strict")
    form = parse_qsl(raw, keep_blank_values=True)
    return fhir_response(run_search(request, svc, who, rtype, _params(request, form)))
