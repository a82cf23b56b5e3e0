"""HL7 v2 content to medtwin records: PID to a Patient, PV1 to a visit, OBX to Observations.

Identifying fields (PID-3 identifiers, PID-5 name, PID-7 birth date, PID-11 address,
PID-13/14 telecom) go into ``Patient.identity`` in FHIR's shapes, which the store seals at
rest. The patient's id and a visit's id are UUIDs derived from the identifier and its
assigning authority (the same MRN always names the same patient), so no identifier appears
in an id, a source id or a log line.

An OBX becomes an Observation when its value can be kept: numbers (NM, and SN without a
comparator or range) as a value with its unit, coded values (CE, CWE, CNE) as a code,
text and dates (ST, TX, FT, DT, DTM, TS, TM) as text. Its code is LOINC when OBX-3 (or its
alternate coding) names the LN coding system; only LOINC values pass the unit and
plausibility policy (:func:`medtwin.interop.quality.admit`), but every value passes the
clinical-time flag. What cannot be kept is a :class:`~medtwin.interop.hl7v2.Problem`, for
the ACK and the dead letters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

import hl7

from medtwin.core.errors import UnitError, ValidationError
from medtwin.core.records import LOINC, SNOMED, UCUM, Observation, Patient
from medtwin.interop.hl7v2 import (
    DATA_TYPE,
    REQUIRED_MISSING,
    TABLE_VALUE,
    Header,
    Location,
    MessageError,
    Problem,
    get,
    parse_time,
    repetitions,
    stable_id,
)
from medtwin.interop.quality import FUTURE_TOLERANCE, admit, clinical_time_flag

GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown",
          "N": "unknown"}  # HL7 table 0001 -> FHIR AdministrativeGender
# PV1-2 patient class (HL7 table 0004) -> FHIR v3 ActCode, the class medtwin's census reads
PATIENT_CLASS = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC", "R": "AMB", "B": "IMP",
                 "C": "AMB", "N": None, "U": None}
# OBX-11 result status (HL7 table 0085) -> FHIR Observation.status
RESULT_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary",
                 "S": "preliminary", "I": "registered", "U": "final", "X": "cancelled",
                 "D": "entered-in-error", "W": "entered-in-error", "": "final"}
CODING_SYSTEMS = {"LN": LOINC, "SCT": SNOMED, "SNM": SNOMED, "I10": "http://hl7.org/fhir/sid/icd-10",
                  "UCUM": UCUM}
_CODING_SYSTEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,19}")
NUMERIC, TEXT, CODED = {"NM", "SN"}, {"ST", "TX", "FT", "DT", "DTM", "TS", "TM"}, \
    {"CE", "CWE", "CNE"}


@dataclass(frozen=True, slots=True)
class Visit:
    """What one ADT message says of a visit (None: the message does not say)."""

    key: str | None
    klass: str | None
    location: str | None
    admitted: datetime | None
    discharged: datetime | None


@dataclass
class Results:
    """The observations of an ORU message, and the OBX segments that could not be kept."""

    observations: list[Observation] = field(default_factory=list)
    quality: list[str | None] = field(default_factory=list)
    problems: list[tuple[Problem, str]] = field(default_factory=list)  # (problem, raw OBX)


def _system(code: str) -> str:
    """The FHIR system URI of an HL7 v2 coding system (table 0396); a local or unnamed one
    (or a component that is not a coding-system name) is medtwin's local system."""
    if code.upper() in CODING_SYSTEMS:
        return CODING_SYSTEMS[code.upper()]
    if _CODING_SYSTEM_NAME.fullmatch(code):
        return f"urn:medtwin:hl7v2:coding-system:{code}"
    return "urn:medtwin:hl7v2:local"


def _identifiers(pid: hl7.Segment) -> list[dict[str, Any]]:
    out = []
    for rep in range(1, repetitions(pid, 3) + 1):
        value = get(pid, 3, rep, 1)
        if not value:
            continue
        ident: dict[str, Any] = {"value": value}
        authority = get(pid, 3, rep, 4) or get(pid, 3, rep, 4, 2)
        if authority:
            ident["system"] = f"urn:medtwin:hl7v2:authority:{authority}"
            ident["assigner"] = {"display": authority}
        kind = get(pid, 3, rep, 5)
        if kind:
            ident["type"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": kind}]}
        out.append(ident)
    return out


def _kind(ident: dict[str, Any]) -> str | None:
    """An identifier's type code (MR, SS, AN ...)."""
    return ((ident.get("type") or {}).get("coding") or [{}])[0].get("code")


def _names(pid: hl7.Segment) -> list[dict[str, Any]]:
    out = []
    for rep in range(1, repetitions(pid, 5) + 1):
        family, given, middle = get(pid, 5, rep, 1), get(pid, 5, rep, 2), get(pid, 5, rep, 3)
        name: dict[str, Any] = {}
        if family:
            name["family"] = family
        if given or middle:
            name["given"] = [g for g in (given, middle) if g]
        for comp, key in ((4, "suffix"), (5, "prefix")):
            if get(pid, 5, rep, comp):
                name[key] = [get(pid, 5, rep, comp)]
        if name:
            name["use"] = "official" if get(pid, 5, rep, 7) in ("L", "") else "usual"
            out.append(name)
    return out


def _addresses(pid: hl7.Segment) -> list[dict[str, Any]]:
    out = []
    for rep in range(1, repetitions(pid, 11) + 1):
        lines = [x for x in (get(pid, 11, rep, 1), get(pid, 11, rep, 2)) if x]
        addr = {k: v for k, v in (("line", lines), ("city", get(pid, 11, rep, 3)),
                                  ("state", get(pid, 11, rep, 4)),
                                  ("postalCode", get(pid, 11, rep, 5)),
                                  ("country", get(pid, 11, rep, 6))) if v}
        if addr:
            out.append(addr)
    return out


def _telecom(pid: hl7.Segment) -> list[dict[str, Any]]:
    out = []
    for fld, use in ((13, "home"), (14, "work")):
        for rep in range(1, repetitions(pid, fld) + 1):
            number = get(pid, fld, rep, 1) or get(pid, fld, rep, 12) or "".join(
                get(pid, fld, rep, c) for c in (5, 6, 7))
            email = get(pid, fld, rep, 4)
            if number:
                out.append({"system": "phone", "value": number, "use": use})
            if email:
                out.append({"system": "email", "value": email, "use": use})
    return out


def patient_from_pid(message: hl7.Message, header: Header, *, secret: bytes) -> Patient:
    """The Patient of a message's PID, its id keyed by ``secret`` (see :func:`stable_id`);
    :class:`MessageError` without PID or identifier."""
    pid = _segment(message, "PID")
    if pid is None:
        raise MessageError("the message has no PID segment; medtwin cannot tell whose data "
                           "it is", code=REQUIRED_MISSING, where=Location("PID", 1))
    idents = _identifiers(pid)
    if not idents:
        raise MessageError("PID-3 patient identifier list is empty", code=REQUIRED_MISSING,
                           where=Location("PID", 1, 3))
    mrn = next((i for i in idents if _kind(i) == "MR"), None)
    key = mrn or idents[0]
    pid_id = stable_id(secret, "patient", key.get("system", header.sending_facility),
                       key["value"])
    birth = get(pid, 7)
    birth_date = None
    if birth:
        try:
            born = datetime.strptime(birth[:8], "%Y%m%d") if len(birth) >= 8 else \
                datetime.strptime(birth[:4], "%Y")
        except ValueError:
            raise MessageError(f"PID-7 birth date {birth!r} is not a date (YYYYMMDD)",
                               code=DATA_TYPE, where=Location("PID", 1, 7)) from None
        birth_date = born.date().isoformat() if len(birth) >= 8 else birth[:4]
    sex = get(pid, 8).upper()
    if sex and sex not in GENDER:
        raise MessageError(f"PID-8 administrative sex {sex!r} is not a code of HL7 table "
                           f"0001 ({', '.join(GENDER)})", code=TABLE_VALUE,
                           where=Location("PID", 1, 8))
    identity = {"name": _names(pid), "birth_date": birth_date, "address": _addresses(pid),
                "telecom": _telecom(pid), "mrn": mrn["value"] if mrn else None,
                "identifier": idents}
    return Patient(id=pid_id, source_id=f"Patient/{pid_id}", gender=GENDER.get(sex),
                   birth_year=int(birth_date[:4]) if birth_date else None,
                   deceased=get(pid, 30).upper() == "Y",
                   identity={k: v for k, v in identity.items() if v})


def _segment(message: hl7.Message, sid: str) -> hl7.Segment | None:
    try:
        return message.segment(sid)
    except KeyError:
        return None


def event_time(message: hl7.Message, header: Header, tz: tzinfo) -> datetime:
    """When the event happened: EVN-6 (occurred), else EVN-2 (recorded), else MSH-7."""
    evn = _segment(message, "EVN")
    for fld in (6, 2):
        if get(evn, fld):
            return parse_time(get(evn, fld), tz, where=Location("EVN", 1, fld))
    if not header.time:
        raise MessageError("neither EVN-2, EVN-6 nor MSH-7 gives the event's time",
                           code=REQUIRED_MISSING, where=Location("MSH", 1, 7))
    return parse_time(header.time, tz, where=Location("MSH", 1, 7))


def visit_from_pv1(message: hl7.Message, header: Header, tz: tzinfo, *,
                   secret: bytes) -> Visit:
    """The visit a message's PV1 describes; the key is the visit number (PV1-19), else the
    account number (PID-18), each with its assigning authority (keyed by ``secret``)."""
    pv1, pid = _segment(message, "PV1"), _segment(message, "PID")
    if pv1 is None:
        raise MessageError("the ADT message has no PV1 segment; medtwin cannot tell which "
                           "visit it is about", code=REQUIRED_MISSING, where=Location("PV1", 1))
    key = None
    for seg, fld in ((pv1, 19), (pid, 18)):
        if get(seg, fld):
            key = stable_id(secret, "visit", header.sending_facility, get(seg, fld, 1, 4),
                            get(seg, fld))
            break
    klass_code = get(pv1, 2).upper()
    if klass_code and klass_code not in PATIENT_CLASS:
        raise MessageError(f"PV1-2 patient class {klass_code!r} is not a code of HL7 table "
                           f"0004 ({', '.join(PATIENT_CLASS)})", code=TABLE_VALUE,
                           where=Location("PV1", 1, 2))
    parts = [("ward", get(pv1, 3, 1, 1)), ("room", get(pv1, 3, 1, 2)),
             ("bed", get(pv1, 3, 1, 3))]
    location = ", ".join(f"{k} {v}" for k, v in parts if v) or None
    times = [parse_time(get(pv1, f), tz, where=Location("PV1", 1, f)) if get(pv1, f) else None
             for f in (44, 45)]
    return Visit(key, PATIENT_CLASS.get(klass_code), location, times[0], times[1])


def _number(text: str, where: Location) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MessageError(f"{text!r} is not a number (value type NM)", code=DATA_TYPE,
                           where=where) from None
    if not math.isfinite(value):
        raise MessageError(f"{text!r} is not a finite number", code=DATA_TYPE, where=where)
    return value


def _obx_value(obx: hl7.Segment, kind: str, n: int) -> dict[str, Any]:
    """The value fields of one OBX (one repetition of OBX-5)."""
    where = Location("OBX", n, 5)
    if repetitions(obx, 5) > 1 and kind in NUMERIC | CODED:
        raise MessageError(f"OBX-5 repeats ({repetitions(obx, 5)} values) for value type "
                           f"{kind}; send one value per OBX", code=DATA_TYPE, where=where)
    if kind == "NM":
        return {"value": _number(get(obx, 5), where)}
    if kind == "SN":  # comparator ^ num1 ^ separator/suffix ^ num2
        comparator, sep, num2 = get(obx, 5, 1, 1), get(obx, 5, 1, 3), get(obx, 5, 1, 4)
        if comparator in ("", "=") and not sep and not num2:
            return {"value": _number(get(obx, 5, 1, 2), where)}
        text = f"{comparator}{get(obx, 5, 1, 2)}{sep}{num2}"
        return {"value_text": text}
    if kind in CODED:
        code = get(obx, 5, 1, 1)
        if not code:
            raise MessageError(f"OBX-5 coded value ({kind}) has no code", code=DATA_TYPE,
                               where=where)
        return {"value_code": code, "value_system": _system(get(obx, 5, 1, 3)),
                "value_text": get(obx, 5, 1, 2) or None}
    if kind in TEXT:
        reps = [_full(obx, r) for r in range(1, repetitions(obx, 5) + 1)]
        text = "\n".join(r for r in reps if r)
        if not text:
            raise MessageError("OBX-5 is empty", code=REQUIRED_MISSING, where=where)
        return {"value_text": text}
    raise MessageError(f"OBX-2 value type {kind or '(empty)'} is not kept by medtwin (numbers, "
                       "coded values, text and dates are)", code=DATA_TYPE,
                       where=Location("OBX", n, 2))


def _full(obx: hl7.Segment, rep: int) -> str:
    """One repetition of OBX-5 as text with its components joined (TX may hold ^)."""
    value = obx(5)
    if isinstance(value, str):
        return obx.extract_field(1, 5, 1, 1, 1) if rep == 1 else ""
    comps = value(rep)
    if isinstance(comps, str):
        return str(comps)
    return "^".join(str(obx.extract_field(1, 5, rep, c, 1)) for c in range(1, len(comps) + 1))


def _obx_code(obx: hl7.Segment, n: int) -> tuple[str, str, str | None]:
    """(code, system, display) of OBX-3, LOINC preferred from the alternate coding."""
    for first in (1, 4):
        if get(obx, 3, 1, first + 2).upper() == "LN" and get(obx, 3, 1, first):
            return get(obx, 3, 1, first), LOINC, get(obx, 3, 1, first + 1) or None
    code = get(obx, 3, 1, 1)
    if not code:
        raise MessageError("OBX-3 observation identifier is empty", code=REQUIRED_MISSING,
                           where=Location("OBX", n, 3))
    return code, _system(get(obx, 3, 1, 3)), get(obx, 3, 1, 2) or None


def results_from_oru(message: hl7.Message, header: Header, subject: str, tz: tzinfo, *,
                     encounter: str | None = None, now: datetime | None = None,
                     tolerance: timedelta = FUTURE_TOLERANCE) -> Results:
    """The Observations of an ORU^R01 (one per OBX, source id from the message key and the
    segment's position), each through the clinical-data policy."""
    out = Results()
    obr: hl7.Segment | None = None
    for n, seg in enumerate(message, 1):
        sid = str(seg[0])
        if sid == "OBR":
            obr = seg
        if sid != "OBX":
            continue
        try:
            obs, flag = _observation(seg, obr, n, header, subject, tz, encounter, now, tolerance)
        except MessageError as exc:
            out.problems.append((exc.problem, str(seg)))
            continue
        out.observations.append(obs)
        out.quality.append(flag)
    return out


def _observation(obx: hl7.Segment, obr: hl7.Segment | None, n: int, header: Header,
                 subject: str, tz: tzinfo, encounter: str | None, now: datetime | None,
                 tolerance: timedelta) -> tuple[Observation, str | None]:
    code, system, display = _obx_code(obx, n)
    status_code = get(obx, 11).upper()
    if status_code not in RESULT_STATUS:
        raise MessageError(f"OBX-11 result status {status_code!r} is not a code of HL7 table "
                           "0085", code=TABLE_VALUE, where=Location("OBX", n, 11))
    status = RESULT_STATUS[status_code]
    kind = get(obx, 2).upper()
    value = {} if status in ("cancelled", "entered-in-error") and not get(obx, 5) else \
        _obx_value(obx, kind, n)
    unit = (get(obx, 6, 1, 1) or get(obx, 6, 1, 2) or None) if "value" in value else None
    for fld, seg, name in ((14, obx, "OBX"), (7, obr, "OBR")):
        if get(seg, fld):
            time = parse_time(get(seg, fld), tz, where=Location(name, n if name == "OBX"
                                                                  else 1, fld))
            break
    else:
        if not header.time:
            raise MessageError("no OBX-14, OBR-7 or MSH-7 gives the observation's time",
                               code=REQUIRED_MISSING, where=Location("OBX", n, 14))
        time = parse_time(header.time, tz, where=Location("MSH", 1, 7))
    where = Location("OBX", n, 5)
    try:
        obs = Observation(subject=subject, code=code, system=system, display=display,
                          time=time, unit=unit, status=status, category="laboratory",
                          source_id=f"Observation/{header.key}-{n}", encounter=encounter,
                          **{"value": None, **value})
        if system == LOINC:
            admitted = admit(obs, now=now, tolerance=tolerance, where=f"OBX[{n}]")
            return admitted.observation, admitted.quality
    except ValidationError as exc:  # a wrong unit (OBX-6), an implausible value (OBX-5)
        raise MessageError(exc.message, code=DATA_TYPE, where=Location(
            "OBX", n, 6) if isinstance(exc, UnitError) else where) from exc
    return obs, clinical_time_flag(obs.time, now=now, tolerance=tolerance)
