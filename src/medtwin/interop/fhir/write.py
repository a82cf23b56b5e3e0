"""Write a patient's stored record back out as a FHIR R4 Bundle.

Resources keep their original ids (from each record's source id), so importing the export
again gives the same records. Entries are linked by ``urn:uuid`` full URLs derived from the
source ids. The bundle is checked with ``fhir.resources`` before it is returned.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from medtwin.core.records import (
    SNOMED,
    UCUM,
    ClinicalRecord,
    Component,
    Condition,
    Device,
    Encounter,
    Intervention,
    InterventionKind,
    MedicationRequest,
    Observation,
    Patient,
)
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.read import KIND_EXTENSION
from medtwin.interop.fhir.validate import validate_bundle_shell, validate_resource

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_NS = uuid.UUID("6f0c5d0e-9a43-4c5e-9a3e-6d6d1f1b7a10")


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat() if t else None


def _rid(source_id: str) -> tuple[str, str]:
    rtype, _, rid = source_id.partition("/")
    return rtype, rid


def _url(source_id: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, source_id)}"


def _concept(code: str | None, system: str | None, display: str | None) -> dict[str, Any]:
    coding = {k: v for k, v in (("system", system), ("code", code), ("display", display)) if v}
    out: dict[str, Any] = {"coding": [coding]} if code else {}
    if display:
        out["text"] = display
    return out


def _quantity(value: float | None, unit: str | None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if unit:
        q.update(unit=unit, system=UCUM, code=unit)
    return q


class _Writer:
    def __init__(self, patient: Patient, inside: set[str]) -> None:
        self.patient = patient
        self.patient_ref = {"reference": _url(patient.source_id)}
        self.inside = inside

    def ref(self, kind: str, rid: str | None) -> dict[str, Any] | None:
        """A urn:uuid reference to a resource in the bundle, else a relative one."""
        if not rid:
            return None
        source_id = f"{kind}/{rid}"
        return {"reference": _url(source_id) if source_id in self.inside else source_id}

    def patient_resource(self) -> dict[str, Any]:
        p, ident = self.patient, self.patient.identity
        out: dict[str, Any] = {"resourceType": "Patient", "id": _rid(p.source_id)[1]}
        if ident.get("identifier"):
            out["identifier"] = ident["identifier"]
        for key in ("name", "telecom"):
            if ident.get(key):
                out[key] = ident[key]
        if p.gender:
            out["gender"] = p.gender
        if ident.get("birth_date"):
            out["birthDate"] = ident["birth_date"]
        if p.deceased:
            out["deceasedBoolean"] = True
        if ident.get("address"):
            out["address"] = ident["address"]
        return out

    def _value(self, out: dict[str, Any], rec: Observation | Component) -> None:
        if isinstance(rec, Observation) and rec.value_code:
            out["valueCodeableConcept"] = _concept(rec.value_code, rec.value_system,
                                                   rec.value_text)
        elif isinstance(rec, Observation) and rec.value_text is not None:
            if rec.value_text.startswith("data-absent:"):
                out["dataAbsentReason"] = _concept(
                    rec.value_text.split(":", 1)[1],
                    "http://terminology.hl7.org/CodeSystem/data-absent-reason", None)
            else:
                out["valueString"] = rec.value_text
        elif rec.value is not None:
            out["valueQuantity"] = _quantity(rec.value, rec.unit)

    def observation(self, r: Observation) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "Observation",
                               "id": fhir_id(_rid(r.source_id)[1]), "status": r.status}
        if r.category:
            out["category"] = [_concept(
                r.category, "http://terminology.hl7.org/CodeSystem/observation-category", None)]
        out["code"] = _concept(r.code, r.system, r.display)
        out["subject"] = self.patient_ref
        if r.encounter:
            out["encounter"] = self.ref("Encounter", r.encounter)
        out["effectiveDateTime"] = _iso(r.time)
        self._value(out, r)
        if r.device:
            out["device"] = self.ref("Device", r.device)
        if r.components:
            comps = []
            for c in r.components:
                comp: dict[str, Any] = {"code": _concept(c.code, c.system, c.display)}
                self._value(comp, c)
                comps.append(comp)
            out["component"] = comps
        return out

    def condition(self, r: Condition) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "Condition", "id": _rid(r.source_id)[1]}
        if r.clinical_status:
            out["clinicalStatus"] = _concept(
                r.clinical_status, "http://terminology.hl7.org/CodeSystem/condition-clinical",
                None)
        if r.verification_status:
            out["verificationStatus"] = _concept(
                r.verification_status,
                "http://terminology.hl7.org/CodeSystem/condition-ver-status", None)
        out["code"] = _concept(r.code, r.system or None, r.display)
        out["subject"] = self.patient_ref
        if r.encounter:
            out["encounter"] = self.ref("Encounter", r.encounter)
        if r.onset:
            out["onsetDateTime"] = _iso(r.onset)
        if r.abatement:
            out["abatementDateTime"] = _iso(r.abatement)
        return out

    def encounter(self, r: Encounter) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": "Encounter", "id": _rid(r.source_id)[1], "status": r.status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": r.klass or "AMB"},
        }
        if r.code:
            out["type"] = [_concept(r.code, r.system, r.display)]
        out["subject"] = self.patient_ref
        period = {k: _iso(v) for k, v in (("start", r.start), ("end", r.end)) if v}
        if period:
            out["period"] = period
        return out

    def medication_request(self, r: MedicationRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "MedicationRequest", "id": _rid(r.source_id)[1],
                               "status": r.status, "intent": r.intent}
        out.update(self._medication(r.code, r.system, r.display))
        out["subject"] = self.patient_ref
        if r.encounter:
            out["encounter"] = self.ref("Encounter", r.encounter)
        if r.time:
            out["authoredOn"] = _iso(r.time)
        dosage: dict[str, Any] = {}
        if r.dosage_text:
            dosage["text"] = r.dosage_text
        if r.dose is not None:
            dosage["doseAndRate"] = [{"doseQuantity": _quantity(r.dose, r.dose_unit)}]
        if dosage:
            out["dosageInstruction"] = [dosage]
        return out

    @staticmethod
    def _medication(code: str | None, system: str | None, display: str | None
                    ) -> dict[str, Any]:
        if system == "reference":
            ref = {k: v for k, v in (("reference", code), ("display", display)) if v}
            return {"medicationReference": ref}
        return {"medicationCodeableConcept": _concept(code, system, display)}

    def administration(self, r: Intervention) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "MedicationAdministration",
                               "id": _rid(r.source_id)[1],
                               "extension": [{"url": KIND_EXTENSION, "valueCode": r.kind.value}],
                               "status": "completed"}
        out.update(self._medication(r.code, r.system, r.display))
        out["subject"] = self.patient_ref
        if r.duration is not None:
            out["effectivePeriod"] = {"start": _iso(r.time), "end": _iso(r.time + r.duration)}
        else:
            out["effectiveDateTime"] = _iso(r.time)
        dosage: dict[str, Any] = {"dose": _quantity(r.amount, r.unit)}
        if r.route:
            dosage["route"] = _concept(r.route, SNOMED, None)
        out["dosage"] = dosage
        return out

    def device(self, r: Device) -> dict[str, Any]:
        rtype, rid = _rid(r.source_id)
        if r.kind == "device_metric":
            out: dict[str, Any] = {"resourceType": "DeviceMetric", "id": rid,
                                   "type": _concept(r.code, r.system, r.display)
                                   or {"text": "metric"},
                                   "category": "measurement"}
            if r.unit:
                out["unit"] = _concept(r.unit, UCUM, None)
            if r.parent:
                out["source"] = self.ref("Device", r.parent)
            if r.status:
                out["operationalStatus"] = r.status
            return out
        out = {"resourceType": "Device", "id": rid}
        if r.status:
            out["status"] = r.status
        if r.code:
            out["type"] = _concept(r.code, r.system, r.display)
        if r.subject:
            out["patient"] = self.patient_ref
        return out

    def resource(self, rec: ClinicalRecord) -> dict[str, Any]:
        if isinstance(rec, Observation):
            return self.observation(rec)
        if isinstance(rec, Condition):
            return self.condition(rec)
        if isinstance(rec, Encounter):
            return self.encounter(rec)
        if isinstance(rec, MedicationRequest):
            return self.medication_request(rec)
        if isinstance(rec, Intervention):
            if rec.kind == InterventionKind.MEAL:
                raise ValueError("meals have no FHIR R4 resource in medtwin's export yet")
            return self.administration(rec)
        return self.device(rec)


def to_bundle(patient: Patient, records: Iterable[ClinicalRecord], *,
              bundle_type: str = "collection", validate: bool = True) -> dict[str, Any]:
    """A FHIR R4 Bundle (JSON) holding ``patient`` and ``records``.

    Meals (medtwin interventions with no FHIR resource here) are left out. With ``validate``,
    every resource is checked with fhir.resources and :class:`FhirImportError` raised if not.
    """
    kept = [r for r in records
            if not (isinstance(r, Intervention) and r.kind == InterventionKind.MEAL)]
    w = _Writer(patient, {patient.source_id} | {r.source_id for r in kept})
    entries = [(patient.source_id, w.patient_resource())]
    entries += [(rec.source_id, w.resource(rec)) for rec in kept]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle", "type": bundle_type,
        "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "entry": [],
    }
    for source_id, res in entries:
        entry: dict[str, Any] = {"fullUrl": _url(source_id), "resource": res}
        if bundle_type == "transaction":
            entry["request"] = {"method": "PUT", "url": source_id}
        bundle["entry"].append(entry)
    if validate:
        issues = validate_bundle_shell(bundle, source="export")
        for i, (_, res) in enumerate(entries):
            issues += validate_resource(res, entry=i, source="export")[1]
        if issues:
            raise FhirImportError(issues, summary="export produced invalid FHIR (a bug)")
    return bundle


def fhir_id(rid: str) -> str:
    """``rid`` if it is a valid FHIR id, else a stable one made from it (``h-`` and 40
    hex digits of its SHA-256): records from devices may carry any text as their id."""
    if _FHIR_ID.match(rid):
        return rid
    return "h-" + hashlib.sha256(rid.encode()).hexdigest()[:40]


def _relink(node: Any, urls: dict[str, str]) -> Any:
    """``node`` with each ``Type/id`` reference to an entry of the bundle as its fullUrl."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in urls:
                out[k] = urls[v]
            elif isinstance(v, dict | list):
                out[k] = _relink(v, urls)
            else:
                out[k] = v
        return out
    if isinstance(node, list):
        return [_relink(v, urls) if isinstance(v, dict | list) else v for v in node]
    return node


def export_bundle(resources: Iterable[dict[str, Any]], *, patient: Patient | None = None,
                  records: Iterable[ClinicalRecord] = (), bundle_type: str = "collection",
                  validate: bool = True) -> dict[str, Any]:
    """A Bundle of stored resources (as stored, every type) plus ``records`` that have no
    stored resource (e.g. live device readings), written as :func:`to_bundle` writes them.
    Every entry's fullUrl is ``urn:uuid:`` derived from ``Type/id`` and every reference to
    an entry points at it, so the bundle is self-contained; importing it again stores the
    same content (references come back as ``Type/id``)."""
    stored = list(resources)
    have = {f"{r['resourceType']}/{r['id']}" for r in stored}
    extra = [r for r in records if r.source_id not in have
             and not (isinstance(r, Intervention) and r.kind == InterventionKind.MEAL)]
    if extra:
        if patient is None:
            raise ValueError("records without a stored resource need their patient")
        inside = have | {r.source_id for r in extra}
        w = _Writer(patient, inside)
        w.patient_ref = {"reference": f"Patient/{_rid(patient.source_id)[1]}"}
        made = []
        for rec in extra:
            res = w.resource(rec)
            res["id"] = fhir_id(res["id"])
            made.append(res)
        known = have | {f"{r['resourceType']}/{r['id']}" for r in made}
        known_urls = {_url(k) for k in known} | known
        for res in made:  # optional links to what is not in the bundle are left out
            for key in ("device", "encounter", "source"):
                ref = res.get(key)
                if isinstance(ref, dict) and ref.get("reference") not in known_urls:
                    res.pop(key)
        stored += made
    urls = {f"{r['resourceType']}/{r['id']}": _url(f"{r['resourceType']}/{r['id']}")
            for r in stored}
    bundle: dict[str, Any] = {
        "resourceType": "Bundle", "type": bundle_type,
        "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(), "entry": []}
    for r in stored:
        key = f"{r['resourceType']}/{r['id']}"
        entry: dict[str, Any] = {"fullUrl": urls[key], "resource": _relink(r, urls)}
        if bundle_type == "transaction":
            entry["request"] = {"method": "PUT", "url": key}
        bundle["entry"].append(entry)
    if validate:
        issues = validate_bundle_shell(bundle, source="export")
        for i, e in enumerate(bundle["entry"]):
            issues += validate_resource(e["resource"], entry=i, source="export")[1]
        if issues:
            raise FhirImportError(issues, summary="export produced invalid FHIR (a bug)")
    return bundle


SOURCE_ID_SYSTEM = "urn:medtwin:source-id"  # Identifier.system of a record's source id
QUALITY_SYSTEM = "urn:medtwin:data-quality"  # meta.tag system of a data-quality flag


def record_resource(rec: ClinicalRecord, *, quality: str | None = None) -> dict[str, Any]:
    """The FHIR resource of a typed record written without one (a live reading, a REST
    POST, an HL7 v2 result): a valid FHIR id made from its source id (:func:`fhir_id`),
    the source id kept as an identifier (``urn:medtwin:source-id``: a FHIR delete finds the
    record by it), a quarantined reading tagged with its flag in ``meta.tag``
    (``urn:medtwin:data-quality``), and links to what may not be stored (device,
    encounter) kept as display text only, so no reference dangles."""
    subject = getattr(rec, "subject", "") or ""
    w = _Writer(Patient(id=subject, source_id=f"Patient/{subject}"), set())
    w.patient_ref = {"reference": f"Patient/{subject}"}
    res = w.resource(rec)
    own = f"{res['resourceType']}/"  # "Observation/x" -> x; any other source id whole
    res["id"] = fhir_id(rec.source_id.removeprefix(own) if rec.source_id.startswith(own)
                        else rec.source_id)
    for key in ("device", "encounter", "source"):
        ref = res.get(key)
        if isinstance(ref, dict) and "reference" in ref:
            res[key] = {"display": ref["reference"]}
    res["identifier"] = [*res.get("identifier", []),
                         {"system": SOURCE_ID_SYSTEM, "value": rec.source_id}]
    if quality:
        res["meta"] = {"tag": [{"system": QUALITY_SYSTEM, "code": quality}]}
    if not subject:
        for key in ("subject", "patient"):
            res.pop(key, None)
    return res


def record_writes(records: Iterable[ClinicalRecord],
                  quality: Iterable[str | None] | None = None) -> list[Any]:
    """The store rows (``ResourceWrite``) of :func:`record_resource` of each record, for
    ``EventStore.append(..., resources=...)``: typed records stored with their FHIR
    resource in one transaction."""
    from medtwin.interop.fhir.search import resource_write

    recs = list(records)
    flags = list(quality) if quality is not None else [None] * len(recs)
    return [resource_write(record_resource(r, quality=q))
            for r, q in zip(recs, flags, strict=True)]
