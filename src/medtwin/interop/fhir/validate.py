"""Structural validation of FHIR R4 JSON with ``fhir.resources`` (its R4B models read R4).

What is checked (structure, as the HL7 validator's base checks): known elements only,
primitive formats (id, date, dateTime, decimal, uri ...), required elements, cardinality
(array vs single), resource ids (characters and length), dateTimes with a time carrying a
zone, and absolute ``fullUrl`` in bundles. What is *not* checked here (semantic rules):
value-set bindings, terminology displays, FHIRPath invariants other than those medtwin
enforces when mapping (e.g. Encounter ``per-1``), profiles, and narrative XHTML content.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import pydantic

from medtwin.interop.fhir.issues import FhirIssue

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATETIME_NO_ZONE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_ABSOLUTE = re.compile(r"^(urn:uuid:|urn:oid:|[A-Za-z][A-Za-z0-9+.\-]*://)")
_HTML_IN_STRING = re.compile(r"<\s*/?\s*(script|iframe|object|embed|img|a|form|style|link|meta|"
                             r"svg|body|html)\b", re.I)
_UNSAFE_XHTML = re.compile(r"<\s*(script|iframe|object|embed|form|input|button|style|link|meta|"
                           r"base|applet|frame)\b|\son[a-z]+\s*=|javascript:", re.I)
_DATETIME_KEYS = {"start", "end", "issued", "authoredOn", "recorded", "lastUpdated",
                  "timestamp", "dateAsserted", "measurementPeriod", "date"}


@lru_cache(maxsize=128)
def model_class(resource_type: str) -> type[Any] | None:
    """The fhir.resources R4B model class for a resource type, or None if unknown."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, ImportError, AttributeError):
        return None


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _friendly(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown element (not in FHIR R4); remove it or check its spelling"
    if kind.endswith("missing"):
        return "required element is missing"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str | int | float) and len(str(value)) < 80:
        msg += f" (got {value!r})"
    return msg


def _path(stack: list[str | int]) -> str:
    out = ""
    for part in stack:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _period(node: dict[str, Any]) -> str | None:
    """Invariant per-1: a period's start is not after its end, at the precision both give."""
    start, end = node.get("start"), node.get("end")
    if not (isinstance(start, str) and isinstance(end, str)):
        return None
    n = min(len(start), len(end), 19 if "T" in start and "T" in end else 10)
    a, b = start[:n], end[:n]
    if a > b or (a == b and len(start) != len(end) and min(len(start), len(end)) <= 10):
        return (f"per-1: period start {start!r} is not before end {end!r} (at the precision "
                "both give)")
    return None


def _extra_rules(node: Any, stack: list[str | int], out: list[tuple[str, str, str]]) -> None:
    """Rules fhir.resources does not check: zones on dateTimes, per-1, and the HL7 validator's
    security checks (embedded HTML in strings, active content in narrative XHTML)."""
    if isinstance(node, dict):
        if "start" in node and "end" in node and (msg := _period(node)):
            out.append((_path(stack), msg, "invariant"))
        for key, value in node.items():
            if isinstance(value, str):
                if "<" in value:
                    if key == "div":
                        if _UNSAFE_XHTML.search(value):
                            out.append((_path([*stack, key]), "narrative XHTML holds active "
                                        "content (script, event handler, form ...); only basic "
                                        "formatting is allowed", "security"))
                    elif _HTML_IN_STRING.search(value):
                        out.append((_path([*stack, key]), "string holds what looks like "
                                    "embedded HTML tags", "security"))
                elif (key in _DATETIME_KEYS or key.endswith(("DateTime", "Instant"))) and \
                        _DATETIME_NO_ZONE.match(value):
                    out.append((_path([*stack, key]), "a dateTime with a time must have a time "
                                f"zone (got {value!r})", "value"))
            elif isinstance(value, dict | list):
                stack.append(key)
                _extra_rules(value, stack, out)
                stack.pop()
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict | list):
                stack.append(i)
                _extra_rules(value, stack, out)
                stack.pop()


def validate_resource(resource: Any, *, entry: int | None = None,
                      source: str | None = None) -> tuple[Any | None, list[FhirIssue]]:
    """Validate one resource (a JSON object); return (the R4B model or None, issues)."""
    if not isinstance(resource, dict):
        return None, [FhirIssue("a resource must be a JSON object", entry=entry, source=source)]
    rtype = resource.get("resourceType")
    rid = resource.get("id") if isinstance(resource.get("id"), str) else None
    where = {"entry": entry, "resource_type": rtype if isinstance(rtype, str) else None,
             "resource_id": rid, "source": source}
    if not isinstance(rtype, str):
        return None, [FhirIssue("resourceType is missing", element="resourceType", **where)]
    cls = model_class(rtype)
    if cls is None:
        return None, [FhirIssue(f"unknown resourceType {rtype!r} (not an R4 resource)",
                                element="resourceType", code="not-supported", **where)]
    issues: list[FhirIssue] = []
    if "id" in resource and not (isinstance(rid, str) and _ID.match(rid)):
        issues.append(FhirIssue(
            "invalid resource id: 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"
            f" (got {resource.get('id')!r})", element="id", code="value", **where))
    rules: list[tuple[str, str, str]] = []
    _extra_rules(resource, [], rules)
    issues.extend(FhirIssue(msg, element=p, code=code, **where) for p, msg, code in rules)
    try:
        model = cls.model_validate(resource)
    except pydantic.ValidationError as exc:
        seen = {i.element for i in issues}  # one message per element is enough
        issues.extend(FhirIssue(_friendly(e), element=_loc_to_path(tuple(e["loc"])),
                                code="structure", **where) for e in exc.errors()
                      if _loc_to_path(tuple(e["loc"])) not in seen)
        return None, issues
    except (ValueError, TypeError) as exc:  # fhir.resources raises these for odd shapes
        issues.append(FhirIssue(str(exc).splitlines()[0], code="structure", **where))
        return None, issues
    return (None if issues else model), issues


def validate_bundle_shell(bundle: dict[str, Any], *,
                          source: str | None = None) -> list[FhirIssue]:
    """Validate a Bundle without its entries' resources (those are validated one by one)."""
    where = {"resource_type": "Bundle", "resource_id": bundle.get("id"), "source": source}
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return [FhirIssue("Bundle.entry must be an array", element="entry", **where)]
    shell = dict(bundle)
    shell["entry"] = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
        for e in entries
    ]
    if not shell["entry"]:
        shell.pop("entry")
    _, issues = validate_resource(shell, source=source)
    for i, e in enumerate(entries):
        full = e.get("fullUrl") if isinstance(e, dict) else None
        if isinstance(full, str) and not _ABSOLUTE.match(full):
            issues.append(FhirIssue(f"fullUrl must be an absolute URL (got {full!r})",
                                    element=f"entry[{i}].fullUrl", code="value", **where))
    return issues
