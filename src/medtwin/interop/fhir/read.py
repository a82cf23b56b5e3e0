"""Read FHIR R4 JSON (Bundles and single resources) into medtwin's domain records.

Each resource is validated for structure (:mod:`.validate`), then mapped; units are
normalised here, once, by name (:mod:`medtwin.interop.units`). A transaction bundle is
all-or-nothing: one bad entry rejects it. In a collection (or any other) bundle the valid
entries are kept and every invalid one is reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from medtwin.core.errors import UnitError, ValidationError
from medtwin.core.records import (
    LOINC,
    UCUM,
    ClinicalRecord,
    Component,
    Condition,
    Consent,
    Device,
    Encounter,
    Intervention,
    InterventionKind,
    MedicationRequest,
    Observation,
    Patient,
)
from medtwin.interop import codes, units
from medtwin.interop.fhir.issues import FhirImportError, FhirIssue
from medtwin.interop.fhir.validate import validate_bundle_shell, validate_resource

KIND_EXTENSION = "https://medtwin.dev/fhir/StructureDefinition/intervention-kind"
MAPPED_TYPES = {"Patient", "Encounter", "Observation", "Condition", "MedicationRequest",
                "MedicationAdministration", "Device", "DeviceMetric", "Consent"}


@dataclass
class ParsedInput:
    """What one file or payload gave: patients, records, rejected entries and counts."""

    source: str
    bundle_type: str | None = None
    patients: list[Patient] = field(default_factory=list)
    records: list[ClinicalRecord] = field(default_factory=list)
    issues: list[FhirIssue] = field(default_factory=list)
    resources_read: int = 0
    not_modelled: Counter[str] = field(default_factory=Counter)
    # every valid resource, as it is stored (urn:uuid references resolved, id assigned);
    # records[i] was derived from resources[record_resource[i]]
    resources: list[dict[str, Any]] = field(default_factory=list)
    record_resource: list[int] = field(default_factory=list)
    notes: list[FhirIssue] = field(default_factory=list)  # stored, but not mapped: why

    @property
    def rejected(self) -> int:
        """Number of distinct entries rejected."""
        return len({(i.entry, i.resource_type, i.resource_id) for i in self.issues
                    if i.severity in {"error", "fatal"}})


def parse_fhir_datetime(value: str, *, where: str = "dateTime") -> datetime:
    """Parse a FHIR date/dateTime/instant; partial dates take their first instant in UTC."""
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        if len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError(f"not a FHIR dateTime: {value!r}", where=where) from exc
    if t.tzinfo is None:
        raise ValidationError(f"dateTime {value!r} has no time zone", where=where)
    return t.astimezone(UTC)


class _Refs:
    """Resolves references inside one bundle: ``urn:uuid:...`` and ``Type/id``."""

    def __init__(self, entries: list[Any],
                 known: dict[str, tuple[str, str]] | None = None) -> None:
        self.by_url: dict[str, tuple[str, str]] = dict(known or {})
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
                continue
            r = e["resource"]
            rtype, rid = r.get("resourceType"), r.get("id")
            full = e.get("fullUrl")
            if isinstance(full, str) and isinstance(rtype, str):
                if not isinstance(rid, str):
                    rid = full.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
                self.by_url[full] = (rtype, rid)

    def rewrite(self, resource: dict[str, Any]) -> dict[str, Any]:
        """``resource`` with every reference to an entry of the bundle (``urn:uuid:...`` or
        its fullUrl) written as ``Type/id``, as a FHIR server stores a transaction's
        entries; a ``urn:`` reference to no entry raises :class:`ValidationError`."""
        return _rewrite(resource, self.by_url, resource.get("resourceType", ""))

    def resolve(self, ref: dict[str, Any] | None, where: str) -> tuple[str, str] | None:
        if not ref or not isinstance(ref, dict):
            return None
        text = ref.get("reference")
        if not isinstance(text, str):
            return None
        if text in self.by_url:
            return self.by_url[text]
        if text.startswith("urn:uuid:") or text.startswith("urn:oid:"):
            raise ValidationError(f"reference {text!r} does not match any fullUrl in the bundle",
                                  where=where)
        parts = text.rstrip("/").split("/")
        if len(parts) >= 2:
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            return parts[-2], parts[-1]
        raise ValidationError(f"cannot resolve reference {text!r}", where=where)


def _rewrite(node: Any, by_url: dict[str, tuple[str, str]], where: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                if v in by_url:
                    v = "/".join(by_url[v])
                elif v.startswith(("urn:uuid:", "urn:oid:")):
                    raise ValidationError(f"reference {v!r} does not match any fullUrl in the "
                                          "bundle", where=f"{where}.reference")
                out[k] = v
            elif isinstance(v, dict | list):
                out[k] = _rewrite(v, by_url, f"{where}.{k}")
            else:
                out[k] = v
        return out
    if isinstance(node, list):
        return [_rewrite(v, by_url, where) if isinstance(v, dict | list) else v for v in node]
    return node


def _coding(concept: dict[str, Any] | None, prefer: str | None = None) -> dict[str, Any]:
    if not concept:
        return {}
    codings = concept.get("coding") or []
    if prefer:
        for c in codings:
            if c.get("system") == prefer and c.get("code"):
                return {**c, "display": c.get("display") or concept.get("text")}
    for c in codings:
        if c.get("code"):
            return {**c, "display": c.get("display") or concept.get("text")}
    return {"code": concept.get("text"), "display": concept.get("text")} if concept.get(
        "text") else {}


def _quantity(q: dict[str, Any], code: str, where: str) -> tuple[float | None, str | None]:
    """Value and UCUM unit of a Quantity, converted to the unit medtwin keeps for ``code``."""
    value = q.get("value")
    unit = q.get("code") or q.get("unit")
    if value is None:
        return None, unit
    value = float(value)
    spec = codes.spec(code)
    if spec is not None and unit not in (None, spec.unit):
        system = q.get("system")
        if system not in (None, UCUM):
            raise ValidationError(f"unit {unit!r} is not UCUM (system {system}); medtwin needs "
                                  f"{spec.unit!r} for LOINC {code}", where=where)
    return codes.to_canonical(code, value, unit, where=f"{where}.code")


def _value(r: dict[str, Any], code: str, where: str) -> dict[str, Any]:
    """The value[x] of an Observation or component as Observation field values."""
    if "valueQuantity" in r:
        v, u = _quantity(r["valueQuantity"], code, f"{where}.valueQuantity")
        return {"value": v, "unit": u}
    if "valueCodeableConcept" in r:
        c = _coding(r["valueCodeableConcept"])
        return {"value_code": c.get("code"), "value_system": c.get("system"),
                "value_text": c.get("display")}
    for key in ("valueInteger", "valueDecimal"):
        if key in r:
            return {"value": float(r[key]), "unit": None}
    if "valueBoolean" in r:
        return {"value": 1.0 if r["valueBoolean"] else 0.0, "unit": None}
    for key in ("valueString", "valueDateTime", "valueTime"):
        if key in r:
            return {"value_text": str(r[key])}
    if "dataAbsentReason" in r:
        c = _coding(r["dataAbsentReason"])
        return {"value_text": f"data-absent:{c.get('code', 'unknown')}"}
    return {}


class _Mapper:
    """Maps the resources of one bundle (or one resource) to records."""

    def __init__(self, entries: list[Any],
                 known: dict[str, tuple[str, str]] | None = None) -> None:
        self.refs = _Refs(entries, known)
        self.device_patient: dict[str, str] = {}
        for e in entries:
            r = e.get("resource") if isinstance(e, dict) else None
            if isinstance(r, dict) and r.get("resourceType") == "Device" and r.get("patient"):
                try:
                    target = self.refs.resolve(r["patient"], "Device.patient")
                except ValidationError:
                    continue
                if target and r.get("id"):
                    self.device_patient[r["id"]] = target[1]

    def subject(self, r: dict[str, Any], key: str = "subject", required: bool = True) -> str:
        rtype = r["resourceType"]
        target = self.refs.resolve(r.get(key), f"{rtype}.{key}")
        if target is None:
            if required:
                raise ValidationError("has no subject; medtwin files every record under a "
                                      "patient", where=f"{rtype}.{key}")
            return ""
        if target[0] != "Patient":
            raise ValidationError(f"subject must be a Patient, not {target[0]}",
                                  where=f"{rtype}.{key}")
        return target[1]

    def ref_id(self, r: dict[str, Any], key: str) -> str | None:
        target = self.refs.resolve(r.get(key), f"{r['resourceType']}.{key}")
        return target[1] if target else None

    def map(self, r: dict[str, Any], source_id: str) -> Patient | ClinicalRecord:
        return getattr(self, f"_{r['resourceType']}")(r, source_id)

    def _Patient(self, r: dict[str, Any], source_id: str) -> Patient:
        birth = r.get("birthDate")
        mrn = None
        for ident in r.get("identifier", []):
            codings = (ident.get("type") or {}).get("coding") or []
            if any(c.get("code") == "MR" for c in codings) or "mrn" in str(ident.get("system")):
                mrn = ident.get("value")
                break
        identity = {
            "name": r.get("name", []),
            "birth_date": birth,
            "address": r.get("address", []),
            "telecom": r.get("telecom", []),
            "mrn": mrn,
            "identifier": r.get("identifier", []),
        }
        return Patient(
            id=r.get("id") or source_id.split("/", 1)[1],
            source_id=source_id,
            gender=r.get("gender"),
            birth_year=int(birth[:4]) if isinstance(birth, str) and birth[:4].isdigit() else None,
            deceased=bool(r.get("deceasedBoolean") or r.get("deceasedDateTime")),
            identity={k: v for k, v in identity.items() if v},
        )

    def _Observation(self, r: dict[str, Any], source_id: str) -> Observation:
        c = _coding(r.get("code"), prefer=LOINC)
        code = c.get("code")
        if not code:
            raise ValidationError("has no code", where="Observation.code")
        t = (r.get("effectiveDateTime") or r.get("effectiveInstant")
             or (r.get("effectivePeriod") or {}).get("start") or r.get("issued"))
        if not t:
            raise ValidationError("has no effective time or issued time; medtwin needs one to "
                                  "place it on the timeline", where="Observation.effective[x]")
        comps = []
        for i, comp in enumerate(r.get("component", [])):
            cc = _coding(comp.get("code"), prefer=LOINC)
            v = _value(comp, cc.get("code", ""), f"Observation.component[{i}]")
            comps.append(Component(code=cc.get("code") or f"component-{i}",
                                   value=v.get("value"), unit=v.get("unit"),
                                   system=cc.get("system") or LOINC, display=cc.get("display")))
        category = _coding((r.get("category") or [None])[0]).get("code")
        return Observation(
            subject=self.subject(r), code=code, system=c.get("system") or LOINC,
            display=c.get("display"), time=parse_fhir_datetime(t, where="Observation.effective"),
            source_id=source_id, components=tuple(comps),
            status=r.get("status", "final"), category=category,
            encounter=self.ref_id(r, "encounter"), device=self.ref_id(r, "device"),
            **{"value": None, "unit": None, **_value(r, code, "Observation")},
        )

    def _Condition(self, r: dict[str, Any], source_id: str) -> Condition:
        c = _coding(r.get("code"))
        if not c.get("code"):
            raise ValidationError("has no code", where="Condition.code")
        onset, abate = r.get("onsetDateTime"), r.get("abatementDateTime")
        return Condition(
            subject=self.subject(r), code=c["code"], system=c.get("system") or "",
            display=c.get("display"), source_id=source_id,
            onset=parse_fhir_datetime(onset) if onset else None,
            abatement=parse_fhir_datetime(abate) if abate else None,
            clinical_status=_coding(r.get("clinicalStatus")).get("code"),
            verification_status=_coding(r.get("verificationStatus")).get("code"),
            encounter=self.ref_id(r, "encounter"),
        )

    def _Encounter(self, r: dict[str, Any], source_id: str) -> Encounter:
        period = r.get("period") or {}
        t = _coding((r.get("type") or [None])[0])
        start, end = period.get("start"), period.get("end")
        return Encounter(
            subject=self.subject(r), source_id=source_id,
            start=parse_fhir_datetime(start) if start else None,
            end=parse_fhir_datetime(end) if end else None,
            status=r.get("status", "unknown"), klass=(r.get("class") or {}).get("code"),
            code=t.get("code"), system=t.get("system"), display=t.get("display"),
        )

    def _medication(self, r: dict[str, Any]) -> dict[str, Any]:
        c = _coding(r.get("medicationCodeableConcept"))
        if not c and r.get("medicationReference"):
            ref = r["medicationReference"]
            return {"code": ref.get("reference"), "system": "reference",
                    "display": ref.get("display")}
        return {"code": c.get("code"), "system": c.get("system"), "display": c.get("display")}

    def _MedicationRequest(self, r: dict[str, Any], source_id: str) -> MedicationRequest:
        dosage = (r.get("dosageInstruction") or [{}])[0]
        dose_q = ((dosage.get("doseAndRate") or [{}])[0]).get("doseQuantity") or {}
        authored = r.get("authoredOn")
        return MedicationRequest(
            subject=self.subject(r), source_id=source_id,
            time=parse_fhir_datetime(authored) if authored else None,
            status=r.get("status", "unknown"), intent=r.get("intent", "order"),
            dosage_text=dosage.get("text"),
            dose=float(dose_q["value"]) if dose_q.get("value") is not None else None,
            dose_unit=dose_q.get("code") or dose_q.get("unit"),
            encounter=self.ref_id(r, "encounter"), **self._medication(r),
        )

    def _MedicationAdministration(self, r: dict[str, Any], source_id: str) -> Intervention:
        med = self._medication(r)
        dosage = r.get("dosage") or {}
        dose = dosage.get("dose") or {}
        period = r.get("effectivePeriod") or {}
        t0 = r.get("effectiveDateTime") or period.get("start")
        if not t0:
            raise ValidationError("has no effective time", where="MedicationAdministration")
        start = parse_fhir_datetime(t0, where="MedicationAdministration.effective")
        duration = None
        if period.get("end"):
            duration = parse_fhir_datetime(period["end"]) - start
        rate = dosage.get("rateQuantity")
        amount, unit = dose.get("value"), dose.get("code") or dose.get("unit")
        if amount is None and rate and duration is not None:
            rate_unit = rate.get("code") or rate.get("unit") or ""
            unit = rate_unit.split("/")[0]
            per_min = units.convert(float(rate["value"]), rate_unit, f"{unit}/min")
            amount = per_min * duration / timedelta(minutes=1)
        if amount is None:
            raise ValidationError("has neither dosage.dose nor a rate over a period",
                                  where="MedicationAdministration.dosage")
        name = f"{med.get('display') or ''}".lower()
        tagged = [x.get("valueCode") for x in r.get("extension", []) if x.get("url") ==
                  KIND_EXTENSION]
        if tagged:
            kind = InterventionKind(tagged[0])
        elif "insulin" in name:
            kind = InterventionKind.INSULIN
        elif duration is not None and duration > timedelta(0):
            kind = InterventionKind.INFUSION
        else:
            kind = InterventionKind.DRUG_DOSE
        route = _coding(dosage.get("route")).get("code")
        return Intervention(
            subject=self.subject(r), kind=kind, time=start, amount=float(amount),
            unit=unit or "1", source_id=source_id, route=route, duration=duration, **med,
        )

    def _Device(self, r: dict[str, Any], source_id: str) -> Device:
        t = _coding(r.get("type"))
        name = (r.get("deviceName") or [{}])[0].get("name")
        return Device(source_id=source_id, subject=self.subject(r, "patient", required=False)
                      or None, kind="device", code=t.get("code"), system=t.get("system"),
                      display=t.get("display") or name, status=r.get("status"))

    def _Consent(self, r: dict[str, Any], source_id: str) -> Consent:
        prov = r.get("provision") or {}
        period = prov.get("period") or {}
        purposes = [p.get("code") for p in prov.get("purpose") or [] if p.get("code")]
        cats = [_coding(c).get("code") for c in r.get("category") or []]
        when = r.get("dateTime")
        return Consent(
            subject=self.subject(r, "patient"), source_id=source_id,
            status=r.get("status", "unknown"), scope=_coding(r.get("scope")).get("code"),
            provision=prov.get("type"), purposes=tuple(purposes),
            categories=tuple(c for c in cats if c),
            time=parse_fhir_datetime(when, where="Consent.dateTime") if when else None,
            start=parse_fhir_datetime(period["start"]) if period.get("start") else None,
            end=parse_fhir_datetime(period["end"]) if period.get("end") else None,
        )

    def _DeviceMetric(self, r: dict[str, Any], source_id: str) -> Device:
        t = _coding(r.get("type"))
        parent = self.ref_id(r, "source") or self.ref_id(r, "parent")
        return Device(source_id=source_id, subject=self.device_patient.get(parent or ""),
                      kind="device_metric", code=t.get("code"), system=t.get("system"),
                      display=t.get("display"), unit=_coding(r.get("unit")).get("code"),
                      parent=parent, status=r.get("operationalStatus"))


def _issue(exc: ValidationError, rtype: str, resource: dict[str, Any], entry: int | None,
           source: str, *, severity: str = "error", prefix: str = "") -> FhirIssue:
    element = (exc.where or "").removeprefix(f"{rtype}.").removeprefix(rtype)
    return FhirIssue(prefix + exc.message, element=element, entry=entry, resource_type=rtype,
                     resource_id=resource.get("id"), code="value", severity=severity,
                     source=source)


def _source_id(resource: dict[str, Any], full_url: Any) -> str:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not rid and isinstance(full_url, str):
        rid = full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    if not rid:
        text = json.dumps(resource, sort_keys=True, separators=(",", ":"))
        rid = "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{rtype}/{rid}"


def parse_fhir(data: Any, *, source: str = "input",
               known_urls: dict[str, tuple[str, str]] | None = None) -> ParsedInput:
    """Parse a Bundle or a single resource (decoded JSON) into records and the resources
    to store. ``known_urls`` maps further fullUrls to (type, id) (entries of a
    transaction resolved elsewhere).

    Raises :class:`FhirImportError` when the whole input must be refused (not FHIR, a bad
    Bundle, or any bad entry of a transaction bundle). Otherwise bad entries are listed in
    ``issues`` and the good ones returned.
    """
    if not isinstance(data, dict):
        raise FhirImportError([FhirIssue("the input must be a JSON object (a FHIR resource)",
                                         source=source)])
    out = ParsedInput(source=source)
    if data.get("resourceType") == "Bundle":
        shell = validate_bundle_shell(data, source=source)
        if shell:
            raise FhirImportError(shell, summary=f"{source}: the Bundle itself is invalid")
        out.bundle_type = data.get("type")
        entries = data.get("entry", [])
    else:
        entries = [{"resource": data}]
    mapper = _Mapper(entries, known_urls)
    for i, e in enumerate(entries):
        entry_no = i if out.bundle_type else None
        resource = e.get("resource")
        if resource is None:
            continue  # e.g. a DELETE request entry in a transaction: nothing to read
        out.resources_read += 1
        model, issues = validate_resource(resource, entry=entry_no, source=source)
        if issues:
            out.issues.extend(issues)
            continue
        rtype = resource["resourceType"]
        source_id = _source_id(resource, e.get("fullUrl"))
        try:
            stored = mapper.refs.rewrite(resource)
        except ValidationError as exc:
            out.issues.append(_issue(exc, rtype, resource, entry_no, source))
            continue
        if not isinstance(stored.get("id"), str):
            stored = {**stored, "id": source_id.split("/", 1)[1]}
        rec: Patient | ClinicalRecord | None = None
        if rtype not in MAPPED_TYPES:
            out.not_modelled[rtype] += 1
        else:
            try:
                rec = mapper.map(stored, source_id)
            except UnitError as exc:  # the units policy: a value in a wrong unit is refused
                out.issues.append(_issue(exc, rtype, resource, entry_no, source))
                continue
            except ValidationError as exc:  # valid FHIR medtwin cannot map: stored as is
                out.notes.append(_issue(exc, rtype, resource, entry_no, source,
                                        severity="information", prefix="stored, not mapped "
                                        "to a typed record: "))
                out.not_modelled[rtype] += 1
        out.resources.append(stored)
        if isinstance(rec, Patient):
            out.patients.append(rec)
        elif rec is not None:
            out.records.append(rec)
            out.record_resource.append(len(out.resources) - 1)
    if out.issues and out.bundle_type is None:
        raise FhirImportError(out.issues, summary=f"{source}: resource refused")
    if out.issues and out.bundle_type == "transaction":
        raise FhirImportError(out.issues, summary=(
            f"{source}: transaction bundle refused (all-or-nothing): {out.rejected} bad "
            "entr(y/ies); nothing from it was stored"))
    return out


def read_fhir_file(path: str | Path) -> ParsedInput:
    """Read one FHIR JSON file (a Bundle or a single resource), or a Bulk Data NDJSON file
    (``*.ndjson``: one resource per line)."""
    p = Path(path)
    if p.suffix.lower() == ".ndjson":
        return read_ndjson(p)
    try:
        data = json.loads(p.read_bytes())
    except json.JSONDecodeError as exc:
        raise FhirImportError([FhirIssue(
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg} (FHIR JSON "
            "allows no comments or trailing commas)", source=p.name, code="invalid")]) from exc
    except OSError as exc:
        raise FhirImportError([FhirIssue(f"cannot read file: {exc.strerror}", source=p.name,
                                         code="exception")]) from exc
    return parse_fhir(data, source=p.name)


def read_ndjson(path: str | Path) -> ParsedInput:
    """Read a Bulk Data NDJSON file: one resource per line (blank lines skipped). Bad lines
    are reported by file and line (``Observation.ndjson line 7``) and the others kept, as
    in a collection bundle."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise FhirImportError([FhirIssue(f"cannot read file: {exc.strerror}", source=p.name,
                                         code="exception")]) from exc
    entries: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[FhirIssue] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append({"resource": json.loads(line)})
            lines.append(n)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            bad.append(FhirIssue(f"not valid JSON: {exc}", source=f"{p.name} line {n}",
                                 code="invalid"))
    if not entries and bad:
        raise FhirImportError(bad, summary=f"{p.name}: no line is a FHIR resource")
    out = parse_fhir({"resourceType": "Bundle", "type": "collection", "entry": entries},
                     source=p.name)

    def at_line(issue: FhirIssue) -> FhirIssue:
        if issue.entry is None or issue.entry >= len(lines):
            return issue
        return dataclasses.replace(issue, entry=None,
                                   source=f"{p.name} line {lines[issue.entry]}")

    out.issues = bad + [at_line(i) for i in out.issues]
    out.notes = [at_line(i) for i in out.notes]
    out.bundle_type = None if not entries else "ndjson"
    return out
