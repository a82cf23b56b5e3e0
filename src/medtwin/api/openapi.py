"""The OpenAPI document, completed with the error responses every operation can give."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from medtwin.api.problems import _TITLES

PROBLEM = {"$ref": "#/components/schemas/Problem"}
OUTCOME = {"type": "object", "properties": {"resourceType": {"const": "OperationOutcome"},
                                            "issue": {"type": "array"}},
           "required": ["resourceType", "issue"]}


def _error(path: str, code: str) -> dict[str, Any]:
    fhir = path.startswith("/fhir")
    ctype = "application/fhir+json" if fhir else "application/problem+json"
    return {"description": _TITLES.get(int(code), "Error"),
            "content": {ctype: {"schema": OUTCOME if fhir else PROBLEM}}}


FHIR_BODY = {"application/fhir+json": {"schema": {"type": "object"}}}
#: marks an operation whose success answers are not FHIR JSON (Bulk Data: 202 without a
#: body, a JSON manifest, NDJSON files): documented by the route itself
BULK_DATA = "x-medtwin-bulk-data"


def _fhir_success(method: str, op: dict[str, Any]) -> None:
    """FHIR answers are application/fhir+json (a write may be 200 or 201, or have no body
    with ``Prefer: return=minimal``; a delete 204); their errors 406 (XML asked for), 410
    (deleted), 412 (version conflict), 415 (not JSON) besides the usual ones."""
    responses = op.setdefault("responses", {})
    if op.pop(BULK_DATA, False):  # Bulk Data answers: as each route documents them
        responses.setdefault("406", {"description": _TITLES[406], "content": {
            "application/fhir+json": {"schema": OUTCOME}}})
        return
    for code in [c for c in responses if c.startswith("2")]:
        responses[code] = {"description": responses[code].get("description", "OK"),
                           "content": FHIR_BODY}
    if method in {"post", "put"}:
        for code in ("200", "201"):
            responses.setdefault(code, {"description": "the resource (or an "
                                        "OperationOutcome, or nothing: see Prefer)",
                                        "content": FHIR_BODY})
    if method == "delete":
        responses["204"] = {"description": "deleted (or nothing to delete)"}
        responses.setdefault("200", {"description": "OperationOutcome", "content": FHIR_BODY})
    for code in ("406", "410", "412", "415"):
        responses.setdefault(code, {"description": _TITLES[int(code)], "content": {
            "application/fhir+json": {"schema": OUTCOME}}})


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one whose 4xx responses are documented as they are sent:
    problem+json (or OperationOutcome under /fhir), 401/403 wherever a token is needed, 413
    wherever a body is read, 429 on login."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                if path.startswith("/fhir"):
                    _fhir_success(method, op)
                codes = set(op.get("responses", {})) | {"422"}
                if path != "/health":
                    codes |= {"401"} if path.startswith("/auth") else {"401", "403"}
                if "{" in path:
                    codes.add("404")
                if method in {"post", "put", "patch"}:
                    codes.add("413")
                if path == "/auth/token":
                    codes.add("429")
                for code in sorted(codes):
                    if code.startswith(("4", "5")):
                        op["responses"][code] = _error(path, code)
        doc.setdefault("components", {}).setdefault("schemas", {})
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
