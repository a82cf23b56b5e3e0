"""Content negotiation and bodies for the FHIR API: JSON only, said plainly.

Every answer is ``application/fhir+json``. A request for XML (``_format=xml``, an ``Accept``
that lists only XML types, an XML body) gets 406 or 415 with an OperationOutcome, never JSON
labelled as something it is not (R4 http.html, "Content Types and encodings").
"""

from __future__ import annotations

import json
from email.utils import format_datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from medtwin.api.problems import ApiError

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir",
               "text/json", "*/*", "application/*", "application/ndjson",
               "application/fhir+ndjson"}
_JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir",
                 "text/json"}
_XML_HINT = "this server speaks FHIR JSON only: ask for application/fhir+json (or _format=json)"


def _media_types(accept: str) -> list[tuple[str, float]]:
    """(type, q) of an Accept header, parameters other than q and fhirVersion ignored."""
    out = []
    for part in accept.split(","):
        bits = [b.strip() for b in part.split(";")]
        if not bits[0]:
            continue
        q = 1.0
        for b in bits[1:]:
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
            elif b.startswith("fhirVersion=") and b[12:] not in {"4.0", "4.0.1"}:
                q = 0.0  # another FHIR version cannot be served
        out.append((bits[0].lower(), q))
    return out


def negotiate(request: Request) -> None:
    """Refuse (406) a request that accepts no FHIR JSON, and (415) a body that is not JSON."""
    fmt = request.query_params.getlist("_format")
    for f in fmt:
        if f.strip().lower() not in _JSON_FORMATS:
            raise ApiError(406, f"_format={f!r} is not served; {_XML_HINT}")
    accept = request.headers.get("accept", "")
    if accept and not fmt:
        types = _media_types(accept)
        if types and not any(t in _JSON_TYPES and q > 0 for t, q in types):
            raise ApiError(406, f"nothing in Accept: {accept[:100]!r} can be served; "
                           f"{_XML_HINT}")
    ctype = request.headers.get("content-type", "")
    if request.method in {"POST", "PUT", "PATCH"} and ctype:
        base = ctype.split(";")[0].strip().lower()
        if base not in {"application/fhir+json", "application/json", "application/json+fhir",
                        "application/x-www-form-urlencoded", "text/json"}:
            raise ApiError(415, f"Content-Type {base!r} is not read; send {FHIR_JSON}")


async def read_json(request: Request) -> Any:
    """The JSON body (400 with an OperationOutcome when it is not JSON)."""
    raw = await request.body()
    if not raw:
        raise ApiError(400, "a FHIR JSON body is required")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


def weak_etag(version: str | int) -> str:
    """``W/"n"`` as R4 puts a version in ETag."""
    return f'W/"{version}"'


def version_of_etag(value: str) -> str:
    """The version in ``W/"n"`` (or ``"n"`` or ``n``); 400 when empty."""
    v = value.strip()
    v = v[2:] if v.startswith(("W/", "w/")) else v
    v = v.strip('"').strip()
    if not v:
        raise ApiError(400, f"cannot read a version in {value!r}; send If-Match: W/\"n\"")
    return v


def resource_headers(resource: dict[str, Any], base: str) -> dict[str, str]:
    """ETag, Last-Modified and Location (with its version) of a stored resource."""
    meta = resource.get("meta", {})
    headers = {}
    version = meta.get("versionId")
    if version is not None:
        headers["ETag"] = weak_etag(version)
        headers["Location"] = (f"{base}/{resource['resourceType']}/{resource['id']}"
                               f"/_history/{version}")
    if meta.get("lastUpdated"):
        from medtwin.interop.fhir.read import parse_fhir_datetime

        when = parse_fhir_datetime(meta["lastUpdated"], where="meta.lastUpdated")
        headers["Last-Modified"] = format_datetime(when, usegmt=True)
    return headers


def fhir_response(body: dict[str, Any] | None, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer (``body`` None: no content, e.g. ``Prefer: return=minimal``)."""
    if body is None:
        return Response(status_code=status, headers=headers, media_type=FHIR_JSON)
    return JSONResponse(body, status, headers=headers, media_type=FHIR_JSON)


def base_url(request: Request) -> str:
    """The absolute base of the FHIR API as the caller reached it (``.../fhir``)."""
    return str(request.base_url).rstrip("/") + "/fhir"
