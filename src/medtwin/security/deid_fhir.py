"""The allow-list applied to every de-identified FHIR export: what may leave, element by element.

Each exported resource type has a table of the elements that may survive and a check for
each: a code must be a well-formed code of a known system (:mod:`.deid_terms`), a status one
of its value set, a date a FHIR date (cut to the year for Safe Harbor), an id a pseudonym, a
reference one that resolves inside the bundle. Every element not in a table is dropped, so a
field nobody thought of (``code.text``, ``note``, ``valueString``, ``display`` of a
reference, an extension, narrative ...) cannot leak. Required elements that did not survive
get an explicit "masked" or "unknown" code, or the resource is left out; references to
left-out resources are dropped in turn until every reference resolves.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medtwin.security import deid_terms as terms

log = logging.getLogger(__name__)

AGE_GROUP_URL = "https://medtwin.dev/fhir/StructureDefinition/age-group"
AGE_90_OR_OLDER = "90 or older"
KIND_EXTENSION = "https://medtwin.dev/fhir/StructureDefinition/intervention-kind"
_PSEUDONYM = re.compile(r"[0-9a-f]{24}")
_FULL_URL = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
                   r"(Z|[+-]\d{2}:\d{2}))?)?)?")
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class _Ctx:
    urls: frozenset[str]
    year_only: bool


Handler = Callable[[Any, _Ctx], Any]


# --- element checks -----------------------------------------------------------------------
def _pseudonym(value: Any, ctx: _Ctx) -> str | None:
    return value if isinstance(value, str) and _PSEUDONYM.fullmatch(value) else None


def _date(value: Any, ctx: _Ctx) -> str | None:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return None
    return value[:4] if ctx.year_only else value


def _boolean(value: Any, ctx: _Ctx) -> bool | None:
    return value if isinstance(value, bool) else None


def _one_of(allowed: frozenset[str]) -> Handler:
    return lambda value, ctx: value if isinstance(value, str) and value in allowed else None


def _reference(value: Any, ctx: _Ctx) -> dict[str, str] | None:
    """Only ``reference``, and only when it names an entry of this bundle (no display)."""
    if isinstance(value, dict) and value.get("reference") in ctx.urls:
        return {"reference": value["reference"]}
    return None


def _coding(value: Any, ctx: _Ctx) -> dict[str, str] | None:
    """system + code when the code is a code of that system, with the terminology's display
    when medtwin ships one for it (any other display is dropped)."""
    if not isinstance(value, dict):
        return None
    system, code = value.get("system"), value.get("code")
    if not terms.is_code(system, code):
        return None
    out = {"system": system, "code": code}
    shipped = terms.display(system, code)
    if shipped is not None:  # medtwin's own text for the code, never the sender's
        out["display"] = shipped
    return out


def _concept(value: Any, ctx: _Ctx) -> dict[str, Any] | None:
    """A CodeableConcept reduced to its recognised codings (``text`` never survives)."""
    if not isinstance(value, dict):
        return None
    coding = _list(_coding)(value.get("coding"), ctx)
    return {"coding": coding} if coding else None


def _quantity(value: Any, ctx: _Ctx) -> dict[str, Any] | None:
    """A number with, when it is UCUM, its unit (``unit`` is free text otherwise)."""
    if not isinstance(value, dict):
        return None
    number = terms.finite_number(value.get("value"))
    if number is None:
        return None
    out: dict[str, Any] = {"value": number}
    unit = terms.ucum_unit(value.get("code") or value.get("unit"))
    if unit is not None and value.get("system") in (None, terms.UCUM):
        out.update(unit=unit, system=terms.UCUM, code=unit)
    return out


def _list(item: Handler) -> Handler:
    def check(value: Any, ctx: _Ctx) -> list[Any] | None:
        if not isinstance(value, list):
            return None
        kept = [x for x in (item(v, ctx) for v in value) if x is not None]
        return kept or None
    return check


def _object(fields: dict[str, Handler], required: tuple[str, ...] = ()) -> Handler:
    def check(value: Any, ctx: _Ctx) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            return None
        out = {k: v for k, h in fields.items() if k in value
               and (v := h(value[k], ctx)) is not None}
        return out if out and all(k in out for k in required) else None
    return check


def _extension(allowed: dict[str, tuple[str, Handler]]) -> Handler:
    """Extensions whose url is listed, with the one value[x] key and check given for it."""
    def check(value: Any, ctx: _Ctx) -> dict[str, Any] | None:
        if not isinstance(value, dict) or value.get("url") not in allowed:
            return None
        key, handler = allowed[value["url"]]
        kept = handler(value.get(key), ctx)
        return {"url": value["url"], key: kept} if kept is not None else None
    return _list(check)


def _address(value: Any, ctx: _Ctx) -> dict[str, str] | None:
    """State (first-level subdivision), 3-digit ZIP and country; nothing smaller."""
    if not isinstance(value, dict):
        return None
    out: dict[str, str] = {}
    country = terms.country(value.get("country"))
    if (st := terms.state(value.get("state"), country)) is not None:
        out["state"] = st
    zip3 = value.get("postalCode")
    if isinstance(zip3, str) and re.fullmatch(r"\d{3}", zip3):
        out["postalCode"] = zip3
    if country is not None:
        out["country"] = country
    return out or None


# --- what each exported resource type may keep --------------------------------------------
_PERIOD = _object({"start": _date, "end": _date})
_VALUE = {"valueQuantity": _quantity, "valueCodeableConcept": _concept,
          "dataAbsentReason": _concept}
_MASKED_CONCEPT = {"coding": [terms.MASKED]}


@dataclass(frozen=True)
class _Shape:
    fields: dict[str, Handler]
    required: tuple[tuple[tuple[str, ...], Any], ...] = ()  # (any of keys, default or None)


SHAPES: dict[str, _Shape] = {
    "Patient": _Shape({
        "id": _pseudonym, "gender": _one_of(terms.GENDER), "birthDate": _date,
        "deceasedBoolean": _boolean, "address": _list(_address),
        "extension": _extension({AGE_GROUP_URL: (
            "valueString", _one_of(frozenset({AGE_90_OR_OLDER})))}),
    }),
    "Observation": _Shape({
        "id": _pseudonym, "status": _one_of(terms.OBSERVATION_STATUS),
        "category": _list(_concept), "code": _concept, "subject": _reference,
        "encounter": _reference, "effectiveDateTime": _date, "device": _reference,
        **_VALUE,
        "component": _list(_object({"code": _concept, **_VALUE}, required=("code",))),
    }, required=((("status",), "unknown"), (("code",), None))),
    "Condition": _Shape({
        "id": _pseudonym, "clinicalStatus": _concept, "verificationStatus": _concept,
        "code": _concept, "subject": _reference, "encounter": _reference,
        "onsetDateTime": _date, "abatementDateTime": _date,
    }, required=((("code",), None), (("subject",), None))),
    "Encounter": _Shape({
        "id": _pseudonym, "status": _one_of(terms.ENCOUNTER_STATUS), "class": _coding,
        "type": _list(_concept), "subject": _reference, "period": _PERIOD,
    }, required=((("status",), "unknown"),
                 (("class",), {"system": terms.NULL_FLAVOR, "code": "UNK"}))),
    "MedicationRequest": _Shape({
        "id": _pseudonym, "status": _one_of(terms.MEDICATION_REQUEST_STATUS),
        "intent": _one_of(terms.MEDICATION_REQUEST_INTENT),
        "medicationCodeableConcept": _concept, "subject": _reference,
        "encounter": _reference, "authoredOn": _date,
        "dosageInstruction": _list(_object({"doseAndRate": _list(_object(
            {"doseQuantity": _quantity}))})),
    }, required=((("status",), "unknown"), (("intent",), None),
                 (("medicationCodeableConcept",), _MASKED_CONCEPT), (("subject",), None))),
    "MedicationAdministration": _Shape({
        "id": _pseudonym,
        "extension": _extension({KIND_EXTENSION: (
            "valueCode", _one_of(terms.INTERVENTION_KINDS))}),
        "status": _one_of(terms.ADMINISTRATION_STATUS), "medicationCodeableConcept": _concept,
        "subject": _reference, "effectiveDateTime": _date, "effectivePeriod": _PERIOD,
        "dosage": _object({"dose": _quantity, "route": _concept}),
    }, required=((("status",), "unknown"), (("medicationCodeableConcept",), _MASKED_CONCEPT),
                 (("subject",), None), (("effectiveDateTime", "effectivePeriod"), None))),
    "Device": _Shape({
        "id": _pseudonym, "status": _one_of(terms.DEVICE_STATUS), "type": _concept,
        "patient": _reference,
    }),
    "DeviceMetric": _Shape({
        "id": _pseudonym, "type": _concept, "unit": _concept, "source": _reference,
        "operationalStatus": _one_of(terms.METRIC_STATUS),
        "category": _one_of(terms.METRIC_CATEGORY),
    }, required=((("type",), _MASKED_CONCEPT), (("category",), "unspecified"))),
}


def _resource(res: dict[str, Any], ctx: _Ctx) -> dict[str, Any] | None:
    """The allowed part of one resource, or None when a required element did not survive."""
    shape = SHAPES.get(res.get("resourceType", ""))
    if shape is None:
        return None
    out: dict[str, Any] = {"resourceType": res["resourceType"]}
    for key, handler in shape.fields.items():
        if key in res and (kept := handler(res[key], ctx)) is not None:
            out[key] = kept
    for keys, default in shape.required:
        if not any(k in out for k in keys):
            if default is None:
                return None
            out[keys[0]] = default
    if res["resourceType"] == "Observation" and not any(k in out for k in _VALUE) and any(
            k.startswith("value") or k == "dataAbsentReason" for k in res):
        out["dataAbsentReason"] = _MASKED_CONCEPT  # there was a value or reason: free text
    return out


def allow_listed(bundle: dict[str, Any], *, year_only: bool) -> dict[str, Any]:
    """The bundle reduced to what the allow-list keeps, with every reference resolving
    inside it. ``year_only`` cuts every date to its year (Safe Harbor) and drops the
    bundle's timestamp."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e, dict)
               and isinstance(e.get("fullUrl"), str) and _FULL_URL.fullmatch(e["fullUrl"])
               and isinstance(e.get("resource"), dict)]
    kept: dict[str, dict[str, Any]] = {}
    while True:  # a left-out resource can orphan references to it: repeat until stable
        ctx = _Ctx(frozenset(e["fullUrl"] for e in entries), year_only)
        kept = {}
        for e in entries:
            if (res := _resource(e["resource"], ctx)) is not None:
                kept[e["fullUrl"]] = res
        if len(kept) == len(entries):
            break
        entries = [e for e in entries if e["fullUrl"] in kept]
    dropped = Counter(e["resource"].get("resourceType") for e in bundle.get("entry", [])
                      if isinstance(e, dict) and isinstance(e.get("resource"), dict)) - Counter(
        r["resourceType"] for r in kept.values())
    if dropped:
        log.info("de-identification left out %s (nothing kept but free text or references "
                 "outside the export)", dict(dropped))
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "collection"}
    stamp = bundle.get("timestamp")
    if not year_only and isinstance(stamp, str) and _INSTANT.fullmatch(stamp):
        out["timestamp"] = stamp
    out["entry"] = [{"fullUrl": url, "resource": res} for url, res in kept.items()]
    return out
