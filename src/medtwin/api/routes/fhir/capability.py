"""``GET /fhir/metadata``: the CapabilityStatement, built from what the routes and the search
engine do (every type with indexed parameters, the interactions every type has, the
operations), never written by hand. A test walks it and exercises each entry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medtwin import __version__
from medtwin.api.deps import Svc
from medtwin.api.routes.fhir.bundles import now_instant
from medtwin.api.routes.fhir.formats import FHIR_JSON, base_url, fhir_response
from medtwin.api.routes.smart import smart_document
from medtwin.interop.fhir.search import COMMON, PARAMS

router = APIRouter()
TYPE_INTERACTIONS = ("read", "vread", "update", "delete", "history-instance",
                     "history-type", "create", "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
_COMMON_TYPES = {"_id": "token", "_lastUpdated": "date"}
EXPORT_URL = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
EVERYTHING_URL = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
SMART_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def resource_types() -> list[str]:
    """The types the server indexes for search (every other type is stored too, and read,
    written and searched by ``_id`` / ``_lastUpdated``; listed by the statement as well)."""
    return sorted(PARAMS)


def _resource(rtype: str) -> dict[str, Any]:
    params = [{"name": n, "type": t} for n, t in _COMMON_TYPES.items() if n in COMMON]
    params += [{"name": p.name, "type": p.kind} for p in PARAMS.get(rtype, ())]
    refs = [p.name for p in PARAMS.get(rtype, ()) if p.kind == "reference"]
    out: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": c} for c in TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True, "updateCreate": True, "conditionalCreate": True,
        "conditionalRead": "not-supported", "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": [f"{rtype}:{r}" for r in refs],
        "searchRevInclude": sorted(f"{src}:{p.name}" for src, ps in PARAMS.items()
                                   for p in ps if p.kind == "reference"
                                   and p.target in (None, rtype) and src != rtype)[:200],
        "searchParam": params,
    }
    if rtype == "Patient":
        out["operation"] = [{"name": "everything", "definition": EVERYTHING_URL},
                            {"name": "export", "definition": EXPORT_URL}]
    if rtype == "Group":
        out["operation"] = [{"name": "export", "definition": EXPORT_URL}]
    return out


def statement(base: str, smart: dict[str, Any]) -> dict[str, Any]:
    """The CapabilityStatement of this server at ``base``; ``smart``: its SMART
    configuration (the OAuth endpoints it names are repeated in ``rest.security``)."""
    root = base.removesuffix("/fhir")
    uris = [{"url": "token", "valueUri": smart["token_endpoint"]}]
    if smart.get("authorization_endpoint"):
        uris.append({"url": "authorize", "valueUri": smart["authorization_endpoint"]})
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": now_instant(),
        "kind": "instance", "fhirVersion": "4.0.1", "format": [FHIR_JSON, "json"],
        "software": {"name": "medtwin", "version": __version__},
        "implementation": {"description": "medtwin FHIR R4 server", "url": base},
        "rest": [{
            "mode": "server",
            "documentation": "Every interaction needs a bearer token (POST /auth/token or "
                             "an OpenID Connect provider) and is audited; results are "
                             "limited to the patients the caller may see.",
            "security": {
                "cors": False,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"}]}],
                "description": "OAuth2 bearer tokens with SMART v2 scopes; discovery (token "
                               "endpoint, scopes, capabilities) at "
                               f"{root}/.well-known/smart-configuration",
                "extension": [{"url": SMART_EXT, "extension": uris}]},
            "resource": [_resource(t) for t in resource_types()],
            "interaction": [{"code": c} for c in SYSTEM_INTERACTIONS],
            "operation": [{"name": "export", "definition": EXPORT_URL}],
        }],
    }


@router.get("/metadata", summary="capabilities")
def metadata(request: Request, svc: Svc) -> Response:
    """The CapabilityStatement (no token needed, as R4 and SMART expect)."""
    base = base_url(request)
    return fhir_response(statement(base, smart_document(base.removesuffix("/fhir"), svc)))
