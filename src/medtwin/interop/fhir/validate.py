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


class _DateKeys(dict[str, bool]):
    """Whether a key names a dateTime element (the zone rule's keys), remembered per key."""

    def __missing__(self, key: str) -> bool:
        known = self[key] = key in _DATETIME_KEYS or key.endswith(("DateTime", "Instant"))
        return known


_IS_DATE_KEY = _DateKeys()


def _rules_may_fire(node: dict[str, Any]) -> bool:
    """Whether :func:`_extra_rules` could report anything under this dict: the same tests
    without keeping paths, stopping at the first hit, and True for anything that is not
    plain JSON (the full walk then decides). Most resources pass with this alone."""
    if "start" in node and "end" in node and _period(node):
        return True
    for key, value in node.items():
        kind = type(value)
        if kind is str:
            if "<" in value:
                if (_UNSAFE_XHTML if key == "div" else _HTML_IN_STRING).search(value):
                    return True
            elif _IS_DATE_KEY[key] and _DATETIME_NO_ZONE.match(value):
                return True
        elif kind is dict:
            if _rules_may_fire(value):
                return True
        elif kind is list:
            if _list_may_fire(value):
                return True
        elif isinstance(value, str | dict | list):
            return True
    return False


def _list_may_fire(items: list[Any]) -> bool:
    for value in items:  # like _extra_rules, strings directly in a list are not tested
        kind = type(value)
        if kind is dict:
            if _rules_may_fire(value):
                return True
        elif kind is list:
            if _list_may_fire(value):
                return True
        elif isinstance(value, dict | list):
            return True
    return False


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
    if type(resource) is not dict or _rules_may_fire(resource):
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
    shells = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
        for e in entries
    ]
    issues = _shell_issues(bundle, _distinct_shells(shells), source) if shells else None
    if issues is None or issues:  # validate every entry, for the exact message and place
        issues = _shell_issues(bundle, shells, source)
    for i, e in enumerate(entries):
        full = e.get("fullUrl") if isinstance(e, dict) else None
        if isinstance(full, str) and not _ABSOLUTE.match(full):
            issues.append(FhirIssue(f"fullUrl must be an absolute URL (got {full!r})",
                                    element=f"entry[{i}].fullUrl", code="value", **where))
    return issues


def _shell_issues(bundle: dict[str, Any], shells: list[Any],
                  source: str | None) -> list[FhirIssue]:
    shell = dict(bundle)
    shell["entry"] = shells
    if not shells:
        shell.pop("entry")
    return validate_resource(shell, source=source)[1]


_URI_PLACEHOLDER = "urn:uuid:00000000-0000-0000-0000-000000000000"


@lru_cache(maxsize=1)
def _uri_checks() -> tuple[Any, Any]:
    """Validators of ``Bundle.entry.fullUrl`` and ``Bundle.entry.request.url``, exactly as
    the R4B models declare and configure those fields."""
    from fhir.resources.R4B.bundle import BundleEntry, BundleEntryRequest

    return tuple(pydantic.TypeAdapter(m.model_fields[f].annotation, config=m.model_config)
                 for m, f in ((BundleEntry, "fullUrl"), (BundleEntryRequest, "url")))


def _plain_uri(value: Any, check: Any) -> bool:
    """A non-empty string the field's own validator accepts as it is, which the extra rules
    cannot object to (no '<'; neither key is a dateTime key)."""
    if not isinstance(value, str) or not value or "<" in value:
        return False
    try:
        return check.validate_python(value) == value
    except (pydantic.ValidationError, ValueError, TypeError):
        return False


def _distinct_shells(shells: list[Any]) -> list[Any]:
    """The distinct entry shells once their fullUrl and request.url are replaced by one
    placeholder where they are valid: the shells of a bundle differ mostly in those two
    strings. Validating these (and, when any of them fails, every original shell again) gives
    the same verdict as validating every shell, at a fraction of the cost."""
    full_ok, url_ok = _uri_checks()
    out: dict[str, Any] = {}
    for e in shells:
        if isinstance(e, dict):
            if _plain_uri(e.get("fullUrl"), full_ok):
                e = {**e, "fullUrl": _URI_PLACEHOLDER}
            req = e.get("request")
            if isinstance(req, dict) and _plain_uri(req.get("url"), url_ok):
                e = {**e, "request": {**req, "url": _URI_PLACEHOLDER}}
        out.setdefault(repr(e), e)  # equal text, equal JSON: one verdict
    return list(out.values())
