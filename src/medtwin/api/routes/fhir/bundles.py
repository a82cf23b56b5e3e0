"""Bundles the FHIR API answers with: searchset and history, with absolute ``fullUrl``s and
``self``/``next``/``previous`` links carrying opaque page tokens.

A page token is the search (type, parameters) and an offset, encrypted and authenticated
(Fernet under a key derived from the service secret) and bound to the caller who searched:
another caller, or an altered token, gets 400. Following a link runs the search again with
the caller's reach of *now*, so a link never shows more than the caller may see at that
moment (and reveals nothing of the parameters: they may name a patient).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from cryptography.fernet import Fernet, InvalidToken

from medtwin.api.problems import ApiError

PAGE_PARAM = "_page_token"
PAGE_TTL_SECONDS = 3600
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "subsetted"}


def _fernet(secret: str) -> Fernet:
    digest = hashlib.sha256(b"medtwin fhir page tokens\0" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def page_token(secret: str, caller: str, rtype: str | None, params: list[tuple[str, str]],
               offset: int) -> str:
    """An opaque token for one page of a search."""
    body = json.dumps({"c": caller, "t": rtype, "q": params, "o": offset},
                      separators=(",", ":")).encode()
    return _fernet(secret).encrypt(body).decode()


def read_page_token(secret: str, caller: str, token: str
                    ) -> tuple[str | None, list[tuple[str, str]], int]:
    """(type, parameters, offset) of a token; 400 for a forged, expired or foreign one."""
    try:
        data = json.loads(_fernet(secret).decrypt(token.encode(), ttl=PAGE_TTL_SECONDS))
    except (InvalidToken, ValueError):
        raise ApiError(400, "invalid or expired page token: run the search again") from None
    if data.get("c") != caller:
        raise ApiError(400, "invalid or expired page token: run the search again")
    return data["t"], [(k, v) for k, v in data["q"]], int(data["o"])


def full_url(base: str, resource: dict[str, Any]) -> str:
    """The absolute URL of a stored resource."""
    return f"{base}/{resource['resourceType']}/{resource['id']}"


def now_instant() -> str:
    """The current time as a FHIR instant."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def search_url(base: str, rtype: str | None, params: list[tuple[str, str]]) -> str:
    """The GET URL of a search."""
    path = f"{base}/{rtype}" if rtype else base
    return f"{path}?{urlencode(params)}" if params else path


def links(base: str, rtype: str | None, self_params: list[tuple[str, str]], *,
          secret: str, caller: str, search: list[tuple[str, str]], offset: int, count: int,
          total: int | None, has_more: bool) -> list[dict[str, str]]:
    """``self`` (the search as run), ``first``, ``previous`` and ``next`` (page tokens)."""
    def page(at: int) -> str:
        token = page_token(secret, caller, rtype, search, at)
        return search_url(base, rtype, [(PAGE_PARAM, token)])

    out = [{"relation": "self", "url": search_url(base, rtype, self_params)}]
    if offset > 0 or has_more:
        out.append({"relation": "first", "url": page(0)})
    if offset > 0:
        out.append({"relation": "previous", "url": page(max(0, offset - count))})
    if has_more:
        out.append({"relation": "next", "url": page(offset + count)})
    if total is not None and count > 0 and (offset > 0 or has_more):
        out.append({"relation": "last", "url": page(max(0, (total - 1) // count * count))})
    return out


def searchset(base: str, matches: list[dict[str, Any]], included: list[dict[str, Any]], *,
              total: int | None, link: list[dict[str, str]],
              warnings: list[str] = ()) -> dict[str, Any]:
    """A searchset Bundle: matches, then included resources, then an OperationOutcome entry
    with the warnings (unknown parameters ignored in lenient mode)."""
    entries = [{"fullUrl": full_url(base, r), "resource": r, "search": {"mode": "match"}}
               for r in matches]
    entries += [{"fullUrl": full_url(base, r), "resource": r, "search": {"mode": "include"}}
                for r in included]
    if warnings:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported", "diagnostics": w}
            for w in warnings]}, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "timestamp": now_instant()}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = link
    if entries:
        bundle["entry"] = entries
    return bundle


def history_entry(base: str, rtype: str, rid: str, version: dict[str, Any]) -> dict[str, Any]:
    """One history entry: the version (absent when it is a deletion), its request and
    response."""
    resource = version.get("resource")
    vid = version["version"]
    deleted = bool(version.get("deleted"))
    created = str(vid) == "1"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{rtype}/{rid}"}
    if resource is not None and not deleted:
        entry["resource"] = resource
    entry["request"] = {"method": "DELETE" if deleted else "POST" if created else "PUT",
                        "url": f"{rtype}/{rid}" if not created or deleted else rtype}
    entry["response"] = {"status": "204" if deleted else "201" if created else "200",
                         "etag": f'W/"{vid}"'}
    if version.get("last_updated"):
        entry["response"]["lastModified"] = version["last_updated"]
    return entry


def history(base: str, entries: list[dict[str, Any]], *, total: int | None,
            link: list[dict[str, str]]) -> dict[str, Any]:
    """A history Bundle."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history",
                              "timestamp": now_instant(), "link": link}
    if total is not None:
        bundle["total"] = total
    if entries:
        bundle["entry"] = entries
    return bundle


def elements(resource: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``_elements``: only the named top-level elements (and the mandatory ones), tagged
    SUBSETTED."""
    keep = {"resourceType", "id", "meta", *names}
    out = {k: v for k, v in resource.items() if k in keep}
    meta = dict(out.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def without_text(resource: dict[str, Any]) -> dict[str, Any]:
    """``_summary=data``: the resource without its narrative, tagged SUBSETTED."""
    out = {k: v for k, v in resource.items() if k != "text"}
    meta = dict(out.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def _summary_elements(rtype: str) -> frozenset[str]:
    """The elements R4 marks "summary" for a type (from the fhir.resources R4B model)."""
    from medtwin.interop.fhir.validate import model_class

    cls = model_class(rtype)
    if cls is None:
        return frozenset()
    out = set()
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            out.add(f.alias or name)
    return frozenset(out)


def summary(mode: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``_summary=true`` (the summary elements) or ``text`` (text, id, meta only)."""
    def shape(resource: dict[str, Any]) -> dict[str, Any]:
        keep = ({"text"} if mode == "text"
                else set(_summary_elements(resource["resourceType"])))
        return elements(resource, sorted(keep))
    return shape
