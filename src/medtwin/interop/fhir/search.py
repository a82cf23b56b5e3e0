"""FHIR R4 search parameters: what each type is indexed by, and search URLs parsed into a
:class:`~medtwin.store.search_index.Query` (R4 Search, https://hl7.org/fhir/R4/search.html).

Semantics implemented (the section of the R4 Search page in brackets):

- several values of one parameter separated by commas are OR-ed, a repeated parameter is
  AND-ed (3.1.1.4 "composite"/"OR"/"AND"); ``\\,`` is a literal comma;
- token ``[code]``, ``[system]|[code]``, ``|[code]`` (no system), ``[system]|`` (any code of
  the system), modifier ``:not`` (3.1.1.4.10); ``:missing`` on every parameter;
- date prefixes eq ne lt le gt ge sa eb, with the search value's precision as its range
  (``2026-01-05`` is the whole day) and the target's own range (a Period, a date) compared
  as 3.1.1.4.3 says (eq: the search range contains the target; gt: the target goes beyond;
  ge: gt or eq; sa: the target starts after; eb: the target ends before ...);
- string: case- and accent-insensitive starts-with, ``:exact`` (as written),
  ``:contains`` (3.1.1.4.12);
- reference ``[id]``, ``[type]/[id]``, an absolute URL, ``:[type]`` (3.1.1.4.13);
- ``_id``, ``_lastUpdated``, ``_sort`` (``-`` for descending), ``_count``, ``_offset``,
  ``_include``/``_revinclude``, ``_summary``, ``_elements``, ``_total``.

Identifying parameters (:attr:`SearchParam.blind`: a Patient's names, address, telecom,
birth and death dates, and every type's ``identifier``) are indexed *blind*: a store with a
key ring keeps only keyed hashes of their values (the resource itself is sealed), so a dump
of the database shows no identity. What can be asked of them is what equality of hashes
answers: a string by the start of a word part (its prefixes up to
:data:`~medtwin.store.search_index.MAX_PREFIX` characters are indexed; a longer search value
is compared on that many) or ``:exact``, never ``:contains``; a token exactly; a date by
``eq``/``ne`` at year, month or day precision, or by a range prefix whose edge is a year
boundary (``ge1970``, ``lt1980-01-01``: the year stays in the clear, as medtwin keeps a
patient's birth year); no ``_sort``. Anything else is a :class:`ValidationError` (HTTP 400)
that says so. Stores without a key ring index the same rows in the clear (same answers).
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from medtwin.core.errors import ValidationError
from medtwin.store.resources import ResourceWrite, canonical
from medtwin.store.search_index import (
    ANY,
    HIGH,
    LOW,
    MAX_PREFIX,
    Clause,
    DateTest,
    IndexRow,
    Query,
    ReferenceTest,
    SortKey,
    StringTest,
    Test,
    TokenTest,
)


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter: its type (token, reference, date, string), the element paths it
    reads (``a.b``; ``x[x]`` is a choice element) and, for a reference, its target type."""

    name: str
    kind: str
    paths: tuple[str, ...]
    target: str | None = None
    blind: bool = False  # identifying: indexed as keyed hashes (see the module docstring)

    @property
    def documentation(self) -> str | None:
        """What a blind parameter cannot do (for the CapabilityStatement), else None."""
        if not self.blind:
            return None
        what = {"string": "starts-with on a word part (first 32 characters) and :exact; "
                          "no :contains",
                "token": "exact codes (system|code, code, system|)",
                "date": "eq/ne at year, month or day precision; other prefixes only at a "
                        "year boundary (ge1970, lt1980-01-01)"}.get(self.kind, "")
        return (f"identifying: indexed blind (keyed hashes, encrypted at rest): {what}; "
                "no _sort")


def _p(name: str, kind: str, *paths: str, target: str | None = None) -> SearchParam:
    return SearchParam(name, kind, paths, target)


_CLINICAL = (_p("patient", "reference", "subject", target="Patient"),
             _p("subject", "reference", "subject"),
             _p("encounter", "reference", "encounter"),
             _p("identifier", "token", "identifier"),
             _p("status", "token", "status"))

PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (_p("name", "string", "name"), _p("family", "string", "name.family"),
                _p("given", "string", "name.given"), _p("birthdate", "date", "birthDate"),
                _p("gender", "token", "gender"), _p("identifier", "token", "identifier"),
                _p("active", "token", "active"), _p("address", "string", "address"),
                _p("address-city", "string", "address.city"),
                _p("address-postalcode", "string", "address.postalCode"),
                _p("telecom", "token", "telecom"),
                _p("general-practitioner", "reference", "generalPractitioner"),
                _p("organization", "reference", "managingOrganization"),
                _p("death-date", "date", "deceasedDateTime")),
    "Observation": (*_CLINICAL, _p("code", "token", "code"),
                    _p("category", "token", "category"),
                    _p("date", "date", "effective[x]"),
                    _p("combo-code", "token", "code", "component.code"),
                    _p("component-code", "token", "component.code"),
                    _p("value-concept", "token", "valueCodeableConcept"),
                    _p("device", "reference", "device"),
                    _p("performer", "reference", "performer"),
                    _p("based-on", "reference", "basedOn"),
                    _p("has-member", "reference", "hasMember"),
                    _p("derived-from", "reference", "derivedFrom")),
    "Encounter": (*_CLINICAL, _p("date", "date", "period"), _p("class", "token", "class"),
                  _p("type", "token", "type"),
                  _p("participant", "reference", "participant.individual"),
                  _p("practitioner", "reference", "participant.individual",
                     target="Practitioner"),
                  _p("service-provider", "reference", "serviceProvider"),
                  _p("location", "reference", "location.location"),
                  _p("reason-code", "token", "reasonCode")),
    "Condition": (*_CLINICAL, _p("code", "token", "code"), _p("category", "token", "category"),
                  _p("clinical-status", "token", "clinicalStatus"),
                  _p("verification-status", "token", "verificationStatus"),
                  _p("onset-date", "date", "onset[x]"),
                  _p("abatement-date", "date", "abatement[x]"),
                  _p("recorded-date", "date", "recordedDate")),
    "Procedure": (*_CLINICAL, _p("code", "token", "code"), _p("category", "token", "category"),
                  _p("date", "date", "performed[x]"),
                  _p("performer", "reference", "performer.actor")),
    "Immunization": (_p("patient", "reference", "patient", target="Patient"),
                     _p("encounter", "reference", "encounter"),
                     _p("identifier", "token", "identifier"), _p("status", "token", "status"),
                     _p("vaccine-code", "token", "vaccineCode"),
                     _p("date", "date", "occurrence[x]"),
                     _p("location", "reference", "location")),
    "AllergyIntolerance": (_p("patient", "reference", "patient", target="Patient"),
                           _p("encounter", "reference", "encounter"),
                           _p("identifier", "token", "identifier"),
                           _p("code", "token", "code"),
                           _p("clinical-status", "token", "clinicalStatus"),
                           _p("category", "token", "category"),
                           _p("date", "date", "recordedDate")),
    "MedicationRequest": (*_CLINICAL, _p("code", "token", "medicationCodeableConcept"),
                          _p("medication", "reference", "medicationReference"),
                          _p("intent", "token", "intent"),
                          _p("authoredon", "date", "authoredOn"),
                          _p("requester", "reference", "requester")),
    "MedicationAdministration": (*_CLINICAL,
                                 _p("code", "token", "medicationCodeableConcept"),
                                 _p("medication", "reference", "medicationReference"),
                                 _p("effective-time", "date", "effective[x]"),
                                 _p("context", "reference", "context")),
    "DiagnosticReport": (*_CLINICAL, _p("code", "token", "code"),
                         _p("category", "token", "category"),
                         _p("date", "date", "effective[x]"),
                         _p("result", "reference", "result"),
                         _p("performer", "reference", "performer")),
    "CarePlan": (*_CLINICAL, _p("category", "token", "category"),
                 _p("date", "date", "period"), _p("intent", "token", "intent"),
                 _p("care-team", "reference", "careTeam"),
                 _p("activity-code", "token", "activity.detail.code")),
    "CareTeam": (*_CLINICAL, _p("category", "token", "category"), _p("date", "date", "period"),
                 _p("participant", "reference", "participant.member")),
    "Goal": (_p("patient", "reference", "subject", target="Patient"),
             _p("subject", "reference", "subject"), _p("identifier", "token", "identifier"),
             _p("lifecycle-status", "token", "lifecycleStatus"),
             _p("category", "token", "category")),
    "Claim": (_p("patient", "reference", "patient", target="Patient"),
              _p("identifier", "token", "identifier"), _p("status", "token", "status"),
              _p("created", "date", "created"), _p("use", "token", "use"),
              _p("provider", "reference", "provider"),
              _p("encounter", "reference", "item.encounter")),
    "ExplanationOfBenefit": (_p("patient", "reference", "patient", target="Patient"),
                             _p("identifier", "token", "identifier"),
                             _p("status", "token", "status"), _p("created", "date", "created"),
                             _p("provider", "reference", "provider"),
                             _p("claim", "reference", "claim"),
                             _p("encounter", "reference", "item.encounter")),
    "ImagingStudy": (_p("patient", "reference", "subject", target="Patient"),
                     _p("subject", "reference", "subject"),
                     _p("encounter", "reference", "encounter"),
                     _p("identifier", "token", "identifier"), _p("status", "token", "status"),
                     _p("started", "date", "started"),
                     _p("modality", "token", "series.modality")),
    "Device": (_p("patient", "reference", "patient", target="Patient"),
               _p("identifier", "token", "identifier"), _p("status", "token", "status"),
               _p("type", "token", "type"), _p("device-name", "string", "deviceName.name")),
    "DeviceMetric": (_p("identifier", "token", "identifier"), _p("type", "token", "type"),
                     _p("source", "reference", "source"), _p("parent", "reference", "parent"),
                     _p("category", "token", "category")),
    "Consent": (_p("patient", "reference", "patient", target="Patient"),
                _p("identifier", "token", "identifier"), _p("status", "token", "status"),
                _p("category", "token", "category"), _p("scope", "token", "scope"),
                _p("date", "date", "dateTime")),
    "Organization": (_p("name", "string", "name", "alias"),
                     _p("identifier", "token", "identifier"), _p("active", "token", "active"),
                     _p("type", "token", "type"), _p("address", "string", "address"),
                     _p("partof", "reference", "partOf")),
    "Practitioner": (_p("name", "string", "name"), _p("family", "string", "name.family"),
                     _p("given", "string", "name.given"),
                     _p("identifier", "token", "identifier"),
                     _p("gender", "token", "gender"), _p("active", "token", "active"),
                     _p("address", "string", "address")),
    "PractitionerRole": (_p("practitioner", "reference", "practitioner"),
                         _p("organization", "reference", "organization"),
                         _p("identifier", "token", "identifier"),
                         _p("role", "token", "code"), _p("specialty", "token", "specialty")),
    "Location": (_p("name", "string", "name", "alias"), _p("identifier", "token", "identifier"),
                 _p("status", "token", "status"), _p("address", "string", "address"),
                 _p("organization", "reference", "managingOrganization")),
    "Medication": (_p("code", "token", "code"), _p("identifier", "token", "identifier"),
                   _p("status", "token", "status")),
    "Group": (_p("identifier", "token", "identifier"), _p("type", "token", "type"),
              _p("member", "reference", "member.entity"), _p("code", "token", "code")),
}
# identifying search parameters (HIPAA Safe Harbor: names, addresses, telecom, dates of the
# individual, record and account numbers): indexed blind; ``identifier`` on every type
IDENTIFYING: dict[str, frozenset[str]] = {
    "Patient": frozenset({"name", "family", "given", "birthdate", "identifier", "telecom",
                          "address", "address-city", "address-postalcode", "death-date"})}


def _blinded(rtype: str, p: SearchParam) -> SearchParam:
    blind = p.name == "identifier" or p.name in IDENTIFYING.get(rtype, ())
    return replace(p, blind=True) if blind else p


PARAMS = {rtype: tuple(_blinded(rtype, p) for p in ps) for rtype, ps in PARAMS.items()}
COMMON = ("_id", "_lastUpdated")
RESULT_PARAMS = {"_count", "_offset", "_sort", "_include", "_revinclude", "_summary",
                 "_elements", "_total", "_format", "_pretty", "_contained", "_containedType",
                 "_cursor"}
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_STRING_PARTS = ("text", "family", "given", "prefix", "suffix", "line", "city", "district",
                 "state", "postalCode", "country")


def params_of(resource_type: str) -> dict[str, SearchParam]:
    """The search parameters medtwin indexes for ``resource_type`` (by name)."""
    return {p.name: p for p in PARAMS.get(resource_type, ())}


def compartment_param(resource_type: str) -> SearchParam | None:
    """The reference parameter that puts a resource in a Patient's compartment."""
    p = params_of(resource_type).get("patient")
    return p if p is not None and p.target == "Patient" else None


# --- what a resource is indexed by -----------------------------------------------------
def _walk(node: Any, parts: list[str]) -> Iterator[tuple[str, Any]]:
    """(element name, value) at ``parts`` under ``node``; lists are flattened."""
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head.endswith("[x]"):
        stem = head[:-3]
        keys = [k for k in node if k.startswith(stem) and k[len(stem):len(stem) + 1].isupper()]
    else:
        keys = [head] if head in node else []
    for k in keys:
        value = node[k]
        if not rest:
            if isinstance(value, list):
                for item in value:
                    yield k, item
            else:
                yield k, value
        else:
            yield from _walk(value, rest)


def reference_target(text: Any) -> tuple[str, str] | None:
    """(type, id) of a literal reference ``Type/id``, ``Type/id/_history/n`` or an absolute
    URL ending so; None for ``#contained``, ``urn:`` and conditional references."""
    if not isinstance(text, str) or not text or text.startswith(("#", "urn:")) or "?" in text:
        return None
    parts = text.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-2].isalpha():
        return parts[-2], parts[-1]
    return None


def normalise(text: str) -> str:
    """Case- and accent-insensitive form of a string (R4 string search)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def index_rows(resource: dict[str, Any]) -> list[IndexRow]:
    """The search-index rows of ``resource`` (every parameter of :data:`PARAMS` for its
    type, but ``patient``, which is the compartment column); values that do not parse are
    left out (the resource is still stored)."""
    out: list[IndexRow] = []
    for p, parts in _index_plan(resource.get("resourceType", "")):
        if parts[0] in resource or parts[0].endswith("[x]"):  # most paths are absent
            for key, value in _walk(resource, parts):
                out.extend(_rows(p, key, value))
    return list(dict.fromkeys(out))


@lru_cache(maxsize=128)
def _index_plan(resource_type: str) -> tuple[tuple[SearchParam, list[str]], ...]:
    """(parameter, path split) of each path :func:`index_rows` reads for a type, in order."""
    return tuple((p, path.split(".")) for p in PARAMS.get(resource_type, ())
                 if not (p.name == "patient" and p.target == "Patient") for path in p.paths)


def compartment_of(resource: dict[str, Any]) -> str | None:
    """The id of the Patient whose compartment holds ``resource`` (a Patient: itself)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    p = compartment_param(rtype or "")
    if p is None:
        return None
    for path in p.paths:
        for _key, value in _walk(resource, path.split(".")):
            target = reference_target(value.get("reference")) if isinstance(value, dict) \
                else None
            if target and target[0] == "Patient":
                return target[1]
    return None


def _rows(p: SearchParam, key: str, value: Any) -> Iterator[IndexRow]:
    if p.blind:
        yield from _blind_rows(p, value)
    elif p.kind == "token":
        yield from _token_rows(p.name, value)
    elif p.kind == "reference":
        target = reference_target(value.get("reference")) if isinstance(value, dict) else None
        if target and (p.target is None or target[0] == p.target):
            yield IndexRow(p.name, sys=target[0], value=target[1])
    elif p.kind == "date":
        rng = _target_range(value)
        if rng is not None:
            yield IndexRow(p.name, lo=rng[0], hi=rng[1])
    elif p.kind == "string":
        for text in _strings(value):
            yield IndexRow(p.name, value=normalise(text), raw=text)


def _blind_rows(p: SearchParam, value: Any) -> Iterator[IndexRow]:
    """Rows of an identifying value, each ``blind``: a token's code; a string's normalised
    prefixes (starts-with) and the text as written (``:exact``); a date's year, month and
    day as written, the year's range kept in the clear (range prefixes at year edges)."""
    if p.kind == "token":
        for r in _token_rows(p.name, value):
            yield r._replace(blind=True)
    elif p.kind == "string":
        for text in _strings(value):
            norm = normalise(text)
            for k in range(1, min(len(norm), MAX_PREFIX) + 1):
                yield IndexRow(p.name, value=norm[:k], blind=True)
            if text:
                yield IndexRow(p.name, raw=text, blind=True)
    elif p.kind == "date" and isinstance(value, str) and _BLIND_DATE.match(value[:10]):
        try:
            year = date_range(value[:4])
        except ValidationError:
            return
        yield IndexRow(p.name, value=value[:4], lo=year[0], hi=year[1], blind=True)
        for n in (7, 10):
            if len(value) >= n:
                yield IndexRow(p.name, value=value[:n], blind=True)


_BLIND_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


def _token_rows(name: str, value: Any) -> Iterator[IndexRow]:
    if isinstance(value, bool):
        yield IndexRow(name, value="true" if value else "false")
    elif isinstance(value, str):
        yield IndexRow(name, value=value)
    elif isinstance(value, dict):
        if "coding" in value or "text" in value and "code" not in value and "value" not in \
                value:
            for c in value.get("coding") or []:
                if isinstance(c, dict) and (c.get("code") or c.get("system")):
                    yield IndexRow(name, sys=c.get("system"), value=c.get("code"))
        elif "code" in value:  # Coding
            yield IndexRow(name, sys=value.get("system"), value=value.get("code"))
        elif "value" in value:  # Identifier
            yield IndexRow(name, sys=value.get("system"), value=str(value.get("value")))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for part in _STRING_PARTS:
            got = value.get(part)
            if isinstance(got, str):
                yield got
            elif isinstance(got, list):
                yield from (g for g in got if isinstance(g, str))


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(text: str, *, where: str = "date") -> tuple[datetime, datetime]:
    """The half-open UTC range ``[lo, hi)`` a FHIR date, dateTime or instant stands for at
    its precision: ``2026`` is the year, ``2026-01-05`` the day, ``...T10:00`` the minute,
    ``...T10:00:00`` the second. A time without a zone is taken as UTC."""
    m = _DATE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValidationError(f"not a FHIR date or dateTime: {text!r} (e.g. 2026-01-05 or "
                              "2026-01-05T10:00:00Z)", where=where)
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        if month is None:
            lo = datetime(int(year), 1, 1, tzinfo=UTC)
            return lo, _add_years(lo, 1)
        if day is None:
            lo = datetime(int(year), int(month), 1, tzinfo=UTC)
            days = calendar.monthrange(lo.year, lo.month)[1]
            return lo, _safe_add(lo, timedelta(days=days))
        if hour is None:
            lo = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return lo, _safe_add(lo, timedelta(days=1))
        tz = UTC if zone in (None, "Z") else datetime.strptime(zone, "%z").tzinfo
        micro = int((frac or ".0")[1:7].ljust(6, "0"))
        local = datetime(int(year), int(month), int(day), int(hour), int(minute),
                         int(second or 0), micro, tzinfo=tz)
        lo = local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValidationError(f"not a valid date: {text!r} ({exc})", where=where) from None
    if second is None:
        step = timedelta(minutes=1)
    elif frac:
        step = timedelta(microseconds=max(1, 10 ** (6 - min(len(frac) - 1, 6))))
    else:
        step = timedelta(seconds=1)
    return lo, _safe_add(lo, step)


def _add_years(t: datetime, n: int) -> datetime:
    return t.replace(year=t.year + n) if t.year + n <= 9999 else HIGH


def _safe_add(t: datetime, d: timedelta) -> datetime:
    try:
        return t + d
    except OverflowError:
        return HIGH


def _target_range(value: Any) -> tuple[datetime, datetime] | None:
    try:
        if isinstance(value, str):
            return date_range(value)
        if isinstance(value, dict) and ("start" in value or "end" in value):
            lo = date_range(value["start"])[0] if value.get("start") else LOW
            hi = date_range(value["end"])[1] if value.get("end") else HIGH
            return lo, hi
    except ValidationError:
        return None
    return None


# --- search URLs -------------------------------------------------------------------------
@dataclass
class Search:
    """A search URL parsed: the query for the store and the result parameters.
    ``unknown`` lists the parameters medtwin does not support (the caller decides:
    ignore with a warning, or 400 under ``Prefer: handling=strict``)."""

    query: Query
    count: int | None = None
    offset: int = 0
    include: list[tuple[str, str, str | None]] = field(default_factory=list)
    revinclude: list[tuple[str, str, str | None]] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    unknown: list[str] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)  # the parameters applied


def split_commas(value: str) -> list[str]:
    """Values separated by ``,`` (``\\,`` is a literal comma)."""
    out, cur, i = [], "", 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ",$|\\":
            cur += value[i + 1]
            i += 2
            continue
        if ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return out


def _split_bar(value: str) -> tuple[str | None, str]:
    """``system|code`` split at the first unescaped ``|`` (None: no bar)."""
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == "|":
            return value[:i].replace("\\|", "|"), value[i + 1:].replace("\\|", "|")
        i += 1
    return None, value.replace("\\|", "|")


def parse_search(resource_type: str | None, params: Iterable[tuple[str, str]], *,
                 max_count: int = 1000) -> Search:
    """Parse ``params`` (name, value) pairs of a search URL for ``resource_type`` (None:
    a search across all types, with the common parameters only). Bad values raise
    :class:`ValidationError` naming the parameter; unsupported parameters are listed in
    :attr:`Search.unknown`."""
    known = params_of(resource_type) if resource_type else {}
    clauses: list[Clause] = []
    sort: list[SortKey] = []
    out = Search(Query(resource_type))
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in RESULT_PARAMS:
            _result_param(out, name, value, resource_type, known, sort, max_count)
            out.used.append((raw_name, value))
            continue
        if name in COMMON:
            clauses.append(_common_clause(name, modifier, value))
            out.used.append((raw_name, value))
            continue
        p = known.get(name)
        if p is None:
            out.unknown.append(raw_name)
            continue
        clauses.append(_clause(p, modifier, value))
        out.used.append((raw_name, value))
    out.query = Query(resource_type, tuple(clauses), tuple(sort))
    return out


def _result_param(out: Search, name: str, value: str, rtype: str | None,
                  known: dict[str, SearchParam], sort: list[SortKey], max_count: int) -> None:
    if name == "_count":
        n = _int(value, name)
        out.count = min(n, max_count)
    elif name == "_offset":
        out.offset = _int(value, name)
    elif name == "_sort":
        for key in split_commas(value):
            desc = key.startswith("-")
            pname = key.lstrip("-")
            if pname in known and known[pname].blind:
                raise ValidationError(f"cannot sort by {pname!r}: it is identifying and "
                                      "indexed blind (encrypted at rest)", where="_sort")
            if pname not in COMMON and pname not in known:
                raise ValidationError(f"cannot sort by {pname!r}: not a search parameter of "
                                      f"{rtype or 'every type'} (use _id, _lastUpdated or one "
                                      f"of: {', '.join(sorted(known)) or 'none'})",
                                      where="_sort")
            sort.append(SortKey(pname, desc))
    elif name in ("_include", "_revinclude"):
        parts = value.split(":")
        if parts[0] == "*" or len(parts) not in (2, 3):
            raise ValidationError(f"{name}={value!r}: give Type:parameter[:targetType] "
                                  "(wildcards are not supported)", where=name)
        src, pname = parts[0], parts[1]
        p = params_of(src).get(pname)
        if p is None or p.kind != "reference":
            raise ValidationError(f"{name}={value!r}: {pname!r} is not a reference search "
                                  f"parameter of {src}", where=name)
        target = parts[2] if len(parts) == 3 else None
        (out.include if name == "_include" else out.revinclude).append((src, pname, target))
    elif name == "_summary":
        if value not in ("true", "false", "count", "text", "data"):
            raise ValidationError(f"_summary={value!r}: use true, false, count, text or data",
                                  where="_summary")
        out.summary = value
    elif name == "_elements":
        out.elements = [e.strip() for e in value.split(",") if e.strip()]
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise ValidationError(f"_total={value!r}: use none, estimate or accurate",
                                  where="_total")
        out.total = value


def _int(value: str, name: str) -> int:
    if not value.isdigit():
        raise ValidationError(f"{name}={value!r}: a whole number >= 0 is needed", where=name)
    return int(value)


def _missing(modifier: str, value: str, name: str) -> Clause:
    if value not in ("true", "false"):
        raise ValidationError(f"{name}:missing={value!r}: use true or false", where=name)
    return Clause(name, missing=value == "true")


def _common_clause(name: str, modifier: str, value: str) -> Clause:
    if modifier == "missing":
        raise ValidationError(f"{name} is never missing", where=name)
    if modifier:
        raise ValidationError(f"modifier :{modifier} is not supported on {name}", where=name)
    if name == "_id":
        return Clause("_id", tuple(TokenTest(ANY, v) for v in split_commas(value)))
    return Clause("_lastUpdated", tuple(_date_test(v, name) for v in split_commas(value)))


def _clause(p: SearchParam, modifier: str, value: str) -> Clause:
    pname = p.name
    if p.name == "patient" and p.target == "Patient":
        pname = "patient"  # the compartment column
    if modifier == "missing":
        return _missing(modifier, value, pname)
    values = split_commas(value)
    if any(v == "" for v in values):
        raise ValidationError(f"{p.name}={value!r}: an empty value", where=p.name)
    if p.blind and p.kind in ("string", "date"):
        return _blind_clause(p, modifier, values)
    tests: list[Test] = []
    negate = False
    if p.kind == "token":
        if modifier not in ("", "not"):
            raise ValidationError(f"modifier :{modifier} is not supported on token "
                                  f"parameter {p.name} (use :not or :missing)", where=p.name)
        negate = modifier == "not"
        for v in values:
            system, code = _split_bar(v)
            if system is None:
                tests.append(TokenTest(ANY, code))
            else:
                tests.append(TokenTest(system or None, code or None))
                if not system and not code:
                    raise ValidationError(f"{p.name}=|: give a system, a code or both",
                                          where=p.name)
    elif p.kind == "reference":
        mtype = modifier or None
        if mtype is not None and not (mtype[:1].isupper() and mtype.isalpha()):
            raise ValidationError(f"modifier :{modifier} is not supported on reference "
                                  f"parameter {p.name} (use :[type] or :missing)",
                                  where=p.name)
        for v in values:
            target = reference_target(v)
            if target is None:
                rtype, rid = mtype or p.target, v
            else:
                rtype, rid = target
                if mtype and rtype != mtype:
                    raise ValidationError(f"{p.name}:{mtype}={v!r} names a {rtype}",
                                          where=p.name)
            if not re.match(r"^[A-Za-z0-9\-.]{1,64}$", rid):
                raise ValidationError(f"{p.name}={v!r}: not a resource id or Type/id",
                                      where=p.name)
            tests.append(ReferenceTest(rtype if rtype or pname != "patient" else "Patient",
                                       rid))
    elif p.kind == "date":
        if modifier:
            raise ValidationError(f"modifier :{modifier} is not supported on date "
                                  f"parameter {p.name}", where=p.name)
        tests = [_date_test(v, p.name) for v in values]
    elif p.kind == "string":
        if modifier not in ("", "exact", "contains"):
            raise ValidationError(f"modifier :{modifier} is not supported on string "
                                  f"parameter {p.name} (use :exact or :contains)",
                                  where=p.name)
        mode = modifier or "start"
        tests = [StringTest(v if mode == "exact" else normalise(v), mode) for v in values]
    return Clause(pname, tuple(tests), negate=negate, blind=p.blind)


def _blind_clause(p: SearchParam, modifier: str, values: list[str]) -> Clause:
    """A string or date clause on an identifying parameter, as what its blind rows can
    answer (see the module docstring); anything else a :class:`ValidationError`."""
    why = f"{p.name} is identifying and indexed blind (encrypted at rest): "
    tests: list[Test] = []
    if p.kind == "string":
        if modifier not in ("", "exact"):
            raise ValidationError(why + f":{modifier} is not supported (search by the start "
                                  "of a word part, or :exact)", where=p.name)
        for v in values:
            tests.append(StringTest(v, "exact") if modifier == "exact"
                         else TokenTest(ANY, normalise(v)[:MAX_PREFIX]))
        return Clause(p.name, tuple(tests), blind=True)
    if modifier:
        raise ValidationError(f"modifier :{modifier} is not supported on date parameter "
                              f"{p.name}", where=p.name)
    negate = False
    for v in values:
        prefix = v[:2] if v[:2] in _PREFIXES else "eq"
        text = v[2:] if v[:2] in _PREFIXES else v
        if prefix in ("eq", "ne"):
            if not _BLIND_DATE.match(text):
                raise ValidationError(why + f"{v!r}: give a year, month or day (e.g. "
                                      "1974-12-25), not a time", where=p.name)
            date_range(text, where=p.name)  # a real date
            if prefix == "ne":
                if len(values) > 1:
                    raise ValidationError(why + "ne cannot be combined with other values",
                                          where=p.name)
                negate = True
            tests.append(TokenTest(ANY, text))
            continue
        x = _date_test(v, p.name)
        edge = x.hi if prefix in ("gt", "sa", "le") else x.lo
        if (edge.month, edge.day, edge.hour, edge.minute, edge.second,
                edge.microsecond) != (1, 1, 0, 0, 0, 0):
            raise ValidationError(why + f"{v!r}: a {prefix} search needs its edge at a year "
                                  "boundary (e.g. ge1970, lt1980-01-01, gt1979), or search "
                                  "an exact year, month or day", where=p.name)
        tests.append(x)
    return Clause(p.name, tuple(tests), negate=negate, blind=True)


def _date_test(value: str, name: str) -> DateTest:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    lo, hi = date_range(text, where=name)
    return DateTest(prefix, lo, hi)


def resource_write(resource: dict[str, Any], *, if_match: int | None = None) -> ResourceWrite:
    """The store row of a valid resource (with its id): canonical text, content hash,
    patient compartment and search-index rows."""
    text, digest = canonical(resource)
    return ResourceWrite(resource["resourceType"], resource["id"], text, digest,
                         compartment_of(resource), tuple(index_rows(resource)),
                         if_match=if_match)
