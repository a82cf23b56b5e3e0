"""HIPAA Safe Harbor de-identification of a patient's record (FHIR bundle or table).

The 18 identifiers go: names, addresses below the state (ZIP codes cut to their first 3
digits, or ``000`` where those 3 digits cover fewer than 20,000 people), telecom,
identifiers and MRN, record and device ids (replaced by keyed pseudonyms), free text. All
dates of a patient are shifted by one per-patient offset (a whole number of days, derived
from a secret), so intervals between events are kept; the birth date keeps only its year,
and ages over 89 are grouped as "90+" with no birth year.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from medtwin.core.records import (
    KIND_OF,
    ClinicalRecord,
    Consent,
    Device,
    Intervention,
    MedicationRequest,
    Observation,
    Patient,
)
from medtwin.interop.fhir.write import to_bundle

MAX_SHIFT_DAYS = 365
AGE_GROUP_URL = "https://medtwin.dev/fhir/StructureDefinition/age-group"
# 3-digit ZIP prefixes covering 20,000 people or fewer (HHS, 2000 census): replaced by 000
RESTRICTED_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821",
                             "823", "830", "831", "878", "879", "884", "890", "893"})
DEID_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "PSEUDED", "display": "pseudonymized"}
_TIME_FIELDS = ("time", "start", "end", "onset", "abatement")


class Deidentifier:
    """Applies Safe Harbor with pseudonyms and date shifts keyed by ``secret``."""

    def __init__(self, secret: bytes, *, now: datetime | None = None) -> None:
        self._secret = secret
        self.now = now or datetime.now(UTC)

    def pseudonym(self, value: str) -> str:
        """A stable, keyed pseudonym of an id (not reversible without the secret)."""
        return hmac.new(self._secret, b"id\x00" + value.encode(), hashlib.sha256
                        ).hexdigest()[:24]

    def shift(self, patient_id: str) -> timedelta:
        """This patient's date shift: whole days in [-365, -1] or [1, 365], never 0."""
        raw = int.from_bytes(hmac.new(self._secret, b"shift\x00" + patient_id.encode(),
                                      hashlib.sha256).digest()[:8], "big")
        days = raw % (2 * MAX_SHIFT_DAYS) - MAX_SHIFT_DAYS
        return timedelta(days=days if days < 0 else days + 1)

    # --- patient ----------------------------------------------------------------------------
    def patient(self, p: Patient) -> Patient:
        """The patient with identity fields reduced to what Safe Harbor allows."""
        identity: dict[str, Any] = {}
        age = _age(p, self.now)
        if age is not None and age > 89:
            identity["age_group"] = "90+"
            birth_year = None
        else:
            birth_year = p.birth_year
            if birth_year is not None:
                identity["birth_date"] = f"{birth_year:04d}"
        addresses = [a for a in (_safe_address(a) for a in p.identity.get("address") or [])
                     if a]
        if addresses:
            identity["address"] = addresses
        pid = self.pseudonym(p.id)
        return Patient(id=pid, source_id=f"Patient/{pid}", gender=p.gender,
                       birth_year=birth_year, deceased=p.deceased, identity=identity)

    # --- records ----------------------------------------------------------------------------
    def record(self, rec: ClinicalRecord, subject: str, shift: timedelta
               ) -> ClinicalRecord | None:
        """One record with ids pseudonymised, dates shifted and free text dropped; None when
        nothing but free text would be left."""
        changes: dict[str, Any] = {"source_id": self._ref(rec.source_id)}
        if getattr(rec, "subject", None):
            changes["subject"] = subject
        for name in _TIME_FIELDS:
            value = getattr(rec, name, None)
            if isinstance(value, datetime):
                changes[name] = value + shift
        for name in ("encounter", "device", "parent"):
            value = getattr(rec, name, None)
            if value:
                changes[name] = self.pseudonym(value)
        if isinstance(rec, Observation) and rec.value_text is not None and not rec.value_code:
            if not rec.value_text.startswith("data-absent:"):
                if rec.value is None and not rec.components:
                    return None
                changes["value_text"] = None
        if isinstance(rec, MedicationRequest):
            changes["dosage_text"] = None
        if isinstance(rec, MedicationRequest | Intervention) and rec.system == "reference":
            changes.update(code=None, system=None, display=rec.display or "medication")
        if isinstance(rec, Device) and not rec.code:
            changes["display"] = None
        return dataclasses.replace(rec, **changes)  # type: ignore[type-var]

    def _ref(self, source_id: str) -> str:
        rtype, _, rid = source_id.partition("/")
        return f"{rtype}/{self.pseudonym(source_id)}" if rid else self.pseudonym(source_id)

    def apply(self, patient: Patient, records: Iterable[ClinicalRecord]
              ) -> tuple[Patient, list[ClinicalRecord]]:
        """The de-identified patient and records (consents are left out: they are about
        access, not care)."""
        shift = self.shift(patient.id)
        out = self.patient(patient)
        recs = [self.record(r, out.id, shift) for r in records if not isinstance(r, Consent)]
        return out, [r for r in recs if r is not None]

    # --- outputs ----------------------------------------------------------------------------
    def bundle(self, patient: Patient, records: Iterable[ClinicalRecord]) -> dict[str, Any]:
        """A de-identified FHIR R4 collection Bundle."""
        p, recs = self.apply(patient, records)
        bundle = to_bundle(p, recs)
        bundle["meta"] = {"security": [DEID_TAG]}
        if p.identity.get("age_group"):
            res = bundle["entry"][0]["resource"]
            res["extension"] = [{"url": AGE_GROUP_URL, "valueString": p.identity["age_group"]}]
        return bundle

    def frame(self, patient: Patient, records: Iterable[ClinicalRecord]) -> pd.DataFrame:
        """A de-identified tidy table: subject, time, kind, code, display, value, unit."""
        p, recs = self.apply(patient, records)
        return pd.DataFrame({
            "subject": [p.id] * len(recs),
            "time": pd.to_datetime([_when(r) for r in recs], utc=True),
            "kind": [KIND_OF[type(r)] for r in recs],
            "code": [getattr(r, "code", None) for r in recs],
            "display": [getattr(r, "display", None) for r in recs],
            "value": pd.array([_value(r) for r in recs], dtype="Float64"),
            "unit": [getattr(r, "unit", None) for r in recs],
        })


def _when(rec: ClinicalRecord) -> datetime | None:
    return next((getattr(rec, n) for n in ("time", "start", "onset")
                 if getattr(rec, n, None) is not None), None)


def _value(rec: ClinicalRecord) -> float | None:
    if isinstance(rec, Observation):
        return rec.value
    if isinstance(rec, Intervention):
        return rec.amount
    return None


def _age(p: Patient, now: datetime) -> int | None:
    birth = p.identity.get("birth_date")
    if isinstance(birth, str) and len(birth) >= 10:
        try:
            b = datetime.fromisoformat(birth[:10])
            return now.year - b.year - ((now.month, now.day) < (b.month, b.day))
        except ValueError:
            pass
    return now.year - p.birth_year if p.birth_year is not None else None


def _safe_address(address: Any) -> dict[str, str] | None:
    if not isinstance(address, dict):
        return None
    out: dict[str, str] = {}
    if isinstance(address.get("state"), str):
        out["state"] = address["state"]
    zip_code = address.get("postalCode")
    if isinstance(zip_code, str) and zip_code[:3].isdigit():
        out["postalCode"] = "000" if zip_code[:3] in RESTRICTED_ZIP3 else zip_code[:3]
    if isinstance(address.get("country"), str):
        out["country"] = address["country"]
    return out or None
