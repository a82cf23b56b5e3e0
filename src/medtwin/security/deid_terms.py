"""What a de-identified export may keep of coded data: known code systems and the syntax of
their codes, the fixed value sets of FHIR status elements, displays medtwin ships, UCUM
units, and state and country names.

A string survives de-identification only when one of these checks recognises it as a code
(which cannot hold a name, a phone number or a street): a LOINC code has the shape
``NNNN-N``, a SNOMED CT code is digits, an HL7 status is one of a handful of words. Anything
else, including a "code" that is really free text (FHIR readers fall back to ``code.text``
when a concept has no coding), is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from medtwin.core.records import LOINC, RXNORM, SNOMED, UCUM, InterventionKind
from medtwin.interop import codes, units

THO = "http://terminology.hl7.org/CodeSystem/"
DATA_ABSENT = THO + "data-absent-reason"
NULL_FLAVOR = THO + "v3-NullFlavor"
MASKED = {"system": DATA_ABSENT, "code": "masked"}  # "removed for privacy or security"


def _pattern(regex: str) -> Callable[[str], bool]:
    compiled = re.compile(regex)
    return lambda code: compiled.fullmatch(code) is not None


def _luhn(digits: str) -> bool:
    """The mod-10 (Luhn) check digit LOINC codes carry (8867-4: 8867 -> 4)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


_VERHOEFF_D = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
               (2, 3, 4, 0, 1, 7, 8, 9, 5, 6), (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
               (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
               (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
               (8, 7, 6, 5, 9, 3, 2, 1, 0, 4), (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
_VERHOEFF_P = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
               (5, 8, 0, 3, 7, 9, 6, 1, 4, 2), (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
               (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
               (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8))


def _sctid(code: str) -> bool:
    """A SNOMED CT concept id: 6-18 digits, a concept partition (``00``/``10`` before the
    check digit) and a valid Verhoeff check digit. A phone number or an SSN typed where a
    code belongs is caught this way in about 99 cases of 100; only a shipped code table
    would catch every one."""
    if not (6 <= len(code) <= 18 and code.isdigit() and code[-3:-1] in ("00", "10")):
        return False
    c = 0
    for i, ch in enumerate(reversed(code)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][int(ch)]]
    return c == 0


def _loinc(code: str) -> bool:
    """A LOINC code (``8867-4``, ``LP1234-5``) whose mod-10 check digit holds."""
    m = re.fullmatch(r"(L[APG])?(\d{1,8})-(\d)", code)
    return m is not None and _luhn(m[2] + m[3])


def _one_of(*values: str) -> Callable[[str], bool]:
    allowed = frozenset(values)
    return lambda code: code in allowed


OBSERVATION_STATUS = frozenset({"registered", "preliminary", "final", "amended", "corrected",
                                "cancelled", "entered-in-error", "unknown"})
ENCOUNTER_STATUS = frozenset({"planned", "arrived", "triaged", "in-progress", "onleave",
                              "finished", "cancelled", "entered-in-error", "unknown"})
MEDICATION_REQUEST_STATUS = frozenset({"active", "on-hold", "cancelled", "completed",
                                       "entered-in-error", "stopped", "draft", "unknown"})
MEDICATION_REQUEST_INTENT = frozenset({"proposal", "plan", "order", "original-order",
                                       "reflex-order", "filler-order", "instance-order",
                                       "option"})
ADMINISTRATION_STATUS = frozenset({"in-progress", "not-done", "on-hold", "completed",
                                   "entered-in-error", "stopped", "unknown"})
DEVICE_STATUS = frozenset({"active", "inactive", "entered-in-error", "unknown"})
METRIC_STATUS = frozenset({"on", "off", "standby", "entered-in-error"})
METRIC_CATEGORY = frozenset({"measurement", "setting", "calculation", "unspecified"})
GENDER = frozenset({"male", "female", "other", "unknown"})
INTERVENTION_KINDS = frozenset(k.value for k in InterventionKind)

# code systems whose codes may be exported, each with the syntax (or the value set) a real
# code of it has; a coding in any other system is dropped
SYSTEMS: dict[str, Callable[[str], bool]] = {
    LOINC: _loinc,
    SNOMED: _sctid,
    RXNORM: _pattern(r"\d{1,7}"),  # RxCUIs have at most 7 digits (a phone number has 10)
    "http://hl7.org/fhir/sid/icd-10-cm": _pattern(r"[A-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?"),
    "http://hl7.org/fhir/sid/icd-10": _pattern(r"[A-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?"),
    # hyphenated forms only: an unhyphenated 10-digit NDC is indistinguishable from a phone
    "http://hl7.org/fhir/sid/ndc": _pattern(r"\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|"
                                             r"\d{5}-\d{4}-\d{1,2}"),
    "http://hl7.org/fhir/sid/cvx": _pattern(r"\d{1,3}"),
    "http://www.whocc.no/atc": _pattern(r"[A-Z]\d{2}([A-Z]([A-Z](\d{2})?)?)?"),
    "urn:iso:std:iso:11073:10101": _pattern(r"\d{1,8}"),
    UCUM: lambda code: ucum_unit(code) == code,
    THO + "observation-category": _one_of(
        "social-history", "vital-signs", "imaging", "laboratory", "procedure", "survey",
        "exam", "therapy", "activity"),
    THO + "condition-clinical": _one_of("active", "recurrence", "relapse", "inactive",
                                        "remission", "resolved"),
    THO + "condition-ver-status": _one_of("unconfirmed", "provisional", "differential",
                                          "confirmed", "refuted", "entered-in-error"),
    THO + "v3-ActCode": _one_of("AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC",
                                "PRENC", "SS", "VR"),
    DATA_ABSENT: _one_of("unknown", "asked-unknown", "temp-unknown", "not-asked",
                         "asked-declined", "masked", "not-applicable", "unsupported", "as-text",
                         "error", "not-a-number", "negative-infinity", "positive-infinity",
                         "not-performed", "not-permitted"),
    NULL_FLAVOR: _one_of("UNK", "NI", "NA", "ASKU", "NAV", "NASK", "MSK", "OTH"),
}


def is_code(system: Any, code: Any) -> bool:
    """True when ``code`` is a well-formed code of a known ``system``."""
    check = SYSTEMS.get(system) if isinstance(system, str) else None
    return check is not None and isinstance(code, str) and len(code) <= 64 and check(code)


def display(system: str, code: str) -> str | None:
    """The terminology's display for a code, from the table medtwin ships (LOINC codes it
    models), else None: any other display is free text as far as an export can tell."""
    spec = codes.spec(code) if system == LOINC else None
    return spec.display if spec is not None else None


_ANNOTATION = re.compile(r"\{[^}]*\}")
# the shape of a unit: atoms (letters, [bracketed], %) with one-digit exponents, factors such as
# 10*3 or 100, joined by . and /; numbers like a phone number are UCUM too, but not this shape
_COMPONENT = r"(10[*^]-?\d{1,2}|1|10|100|1000|(\[[A-Za-z_.%]+\]|[A-Za-z%']+)+(-?\d)?)"
_UNIT_SHAPE = re.compile(rf"/?{_COMPONENT}([./]{_COMPONENT})*")


def ucum_unit(unit: Any) -> str | None:
    """A UCUM unit without annotations (``{...}`` holds free text), or None if it is not
    UCUM; an annotation alone (``{beats}``) is the unit ``1``."""
    if not isinstance(unit, str) or len(unit) > 40:
        return None
    stripped = _ANNOTATION.sub("", unit).strip().rstrip("./")
    if "{" in stripped or "}" in stripped:
        return None
    if not stripped:
        return "1" if unit.strip() else None
    if not _UNIT_SHAPE.fullmatch(stripped):
        return None
    return stripped if units.is_ucum(stripped) else None


def finite_number(value: Any) -> float | int | None:
    """A JSON number that is finite (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


@lru_cache(maxsize=1)
def _subdivisions() -> dict[tuple[str, str], str]:
    """(country alpha-2, upper-cased name or code) -> the code of a first-level subdivision
    (a US state, a Canadian province ...); lower levels are smaller than a state."""
    import pycountry

    out: dict[tuple[str, str], str] = {}
    for sub in pycountry.subdivisions:
        if getattr(sub, "parent_code", None):
            continue
        short = sub.code.split("-", 1)[1]
        for key in (sub.name, sub.code, short):
            out[(sub.country_code, key.upper())] = short
    return out


def country(value: Any) -> str | None:
    """The ISO 3166-1 alpha-2 code of a country name or code, else None."""
    if not isinstance(value, str) or not value.strip() or len(value) > 60:
        return None
    import pycountry

    try:
        return str(pycountry.countries.lookup(value.strip()).alpha_2)
    except LookupError:
        return None


def state(value: Any, country_code: str | None) -> str | None:
    """The code of a state (first-level subdivision) of ``country_code`` (default US) named
    by ``value``, else None: a county, a town or any other text is not a state."""
    if not isinstance(value, str) or len(value) > 60:
        return None
    return _subdivisions().get((country_code or "US", value.strip().upper()))
