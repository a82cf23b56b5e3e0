"""De-identification of a patient's record, in two modes named for what they are.

**Safe Harbor** (HIPAA, 45 CFR 164.514(b)(2)); the default. The 18 kinds of identifier go:
names, geography below the state (ZIP codes cut to their first 3 digits, ``000`` where those
cover 20,000 people or fewer), every element of a date except the year (birth, admission,
discharge, observation, onset, prescription ... times: all become ``YYYY``), ages over 89
(grouped as "90 or older", with no birth year), telecom, identifiers (MRN, plan, account,
licence, device and vehicle numbers), URLs and addresses, biometric ids, photos, and every
other unique id: record ids are replaced by keyed pseudonyms (HMAC-SHA256 under a secret that
never leaves the key ring: the re-identification code 164.514(c) allows, not derivable from
the data without that secret).

**Limited data set** (45 CFR 164.514(e)). The direct identifiers go as above, but dates stay,
shifted by one per-patient offset (whole days, from the secret) so intervals and ages are
exact. It is still PHI: it is labelled as such in the bundle (security labels) and by the CLI
and API, and may be disclosed only under a data use agreement.

In both modes free text never leaves. The export is built by medtwin's FHIR writer and then
passed through an allow-list (:mod:`.deid_fhir`): only elements it names survive, and a string
survives only when it is recognisably a code (a LOINC, SNOMED CT, RxNorm ... code of the
right shape, a status from its value set, a UCUM unit) or a display from the table medtwin
ships. ``code.text``, ``valueString``, notes, dosage text, device names and medication
displays are dropped, not scrubbed.

Why no free-text scrubber (Presidio, philter): what the allow-list keeps holds no free text,
so there is nothing left to scrub; a scrubber only finds what its recogniser knows (names it
misses stay), while dropping leaves nothing; and Presidio needs a spaCy language model that is
not published on PyPI, so it could not be installed and tested here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.core.records import (
    ClinicalRecord,
    Consent,
    Intervention,
    InterventionKind,
    MedicationRequest,
    Patient,
)
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.validate import validate_bundle_shell, validate_resource
from medtwin.interop.fhir.write import to_bundle
from medtwin.security import deid_terms as terms
from medtwin.security.deid_fhir import AGE_90_OR_OLDER, AGE_GROUP_URL, allow_listed

log = logging.getLogger(__name__)

MAX_SHIFT_DAYS = 365
# 3-digit ZIP prefixes covering 20,000 people or fewer (HHS, 2000 census): replaced by 000
RESTRICTED_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821",
                             "823", "830", "831", "878", "879", "884", "890", "893"})
_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
DEID_SYSTEM = "https://medtwin.dev/fhir/CodeSystem/deidentification"
PSEUDED = {"system": _OBSERVATION_VALUE, "code": "PSEUDED", "display": "pseudonymized"}
REDACTED = {"system": _OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"}
RESTRICTED = {"system": _CONFIDENTIALITY, "code": "R", "display": "restricted"}
LIMITED_NOTICE = ("limited data set (HIPAA 45 CFR 164.514(e)): still PHI; dates are shifted, "
                  "not removed; disclose and use only under a data use agreement")
SAFE_HARBOR_NOTICE = "de-identified by HIPAA Safe Harbor (45 CFR 164.514(b)(2))"
_KIND_OF_RESOURCE = {"Observation": "observation", "Condition": "condition",
                     "Encounter": "encounter", "MedicationRequest": "medication_request",
                     "MedicationAdministration": "intervention", "Device": "device",
                     "DeviceMetric": "device"}


class DeidMode(StrEnum):
    """Which de-identification: Safe Harbor (no PHI) or a limited data set (PHI under a DUA)."""

    SAFE_HARBOR = "safe-harbor"
    LIMITED = "limited"

    @classmethod
    def parse(cls, value: str) -> DeidMode:
        """The mode named by ``value`` (``limited-data-set`` and ``lds`` name the limited)."""
        name = value.strip().lower().replace("_", "-")
        if name in {"safe-harbor", "safeharbor"}:
            return cls.SAFE_HARBOR
        if name in {"limited", "limited-data-set", "lds"}:
            return cls.LIMITED
        raise ValidationError(f"unknown de-identification mode {value!r}; use 'safe-harbor' "
                              "(no PHI) or 'limited' (a limited data set, needs a data use "
                              "agreement)", where="deidentify")

    @property
    def notice(self) -> str:
        """What the output is, in one line for people."""
        return SAFE_HARBOR_NOTICE if self is DeidMode.SAFE_HARBOR else LIMITED_NOTICE

    @property
    def labels(self) -> dict[str, Any]:
        """The bundle's ``meta``: security labels and a tag naming the mode."""
        tag = {"system": DEID_SYSTEM, "code": self.value, "display": self.notice}
        security = [PSEUDED, REDACTED] if self is DeidMode.SAFE_HARBOR else [
            PSEUDED, REDACTED, RESTRICTED]
        return {"security": [dict(s) for s in security], "tag": [tag]}


class Deidentifier:
    """Applies Safe Harbor or a limited data set, with pseudonyms and date shifts keyed by
    ``secret``."""

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
    def patient(self, p: Patient, mode: DeidMode = DeidMode.SAFE_HARBOR) -> Patient:
        """The patient with identity reduced to what the mode allows: gender, state, ZIP3 and
        the birth year (Safe Harbor; none over 89) or the shifted birth date (limited)."""
        identity: dict[str, Any] = {}
        birth_year: int | None = p.birth_year
        birth = p.identity.get("birth_date")
        if mode is DeidMode.LIMITED:
            shifted = _shift_date(birth, self.shift(p.id))
            if shifted is not None:
                identity["birth_date"] = shifted
                birth_year = int(shifted[:4])
        else:
            age = _age(p, self.now)
            if age is not None and age > 89:
                identity["age_group"] = AGE_90_OR_OLDER
                birth_year = None
            elif birth_year is not None:
                identity["birth_date"] = f"{birth_year:04d}"
        addresses = [a for a in (_safe_address(a) for a in p.identity.get("address") or [])
                     if a]
        if addresses:
            identity["address"] = addresses
        pid = self.pseudonym(p.id)
        return Patient(id=pid, source_id=f"Patient/{pid}", gender=p.gender,
                       birth_year=birth_year, deceased=p.deceased, identity=identity)

    # --- records ----------------------------------------------------------------------------
    def record(self, rec: ClinicalRecord, subject: str, shift: timedelta | None
               ) -> ClinicalRecord:
        """One record with ids pseudonymised and (limited data set) dates shifted; free
        text is removed from the FHIR written of it by the allow-list."""
        changes: dict[str, Any] = {"source_id": self._ref(rec.source_id)}
        if getattr(rec, "subject", None):
            changes["subject"] = subject
        if shift is not None:
            for f in dataclasses.fields(rec):  # type: ignore[arg-type]
                value = getattr(rec, f.name)
                if isinstance(value, datetime):
                    changes[f.name] = value + shift
        for name, rtype in (("encounter", "Encounter"), ("device", "Device"),
                            ("parent", "Device")):
            value = getattr(rec, name, None)
            if value:  # the same pseudonym as the id of the resource referred to
                changes[name] = self.pseudonym(f"{rtype}/{value}")
        if isinstance(rec, MedicationRequest | Intervention) and rec.system == "reference":
            changes.update(code=None, system=None, display=None)  # a Medication not exported
        return dataclasses.replace(rec, **changes)  # type: ignore[type-var]

    def _ref(self, source_id: str) -> str:
        rtype, _, rid = source_id.partition("/")
        return f"{rtype}/{self.pseudonym(source_id)}" if rid else self.pseudonym(source_id)

    def apply(self, patient: Patient, records: Iterable[ClinicalRecord],
              mode: DeidMode = DeidMode.SAFE_HARBOR) -> tuple[Patient, list[ClinicalRecord]]:
        """The de-identified patient and records (consents are left out: they are about
        access, not care)."""
        shift = self.shift(patient.id) if mode is DeidMode.LIMITED else None
        out = self.patient(patient, mode)
        return out, [self.record(r, out.id, shift) for r in records
                     if not isinstance(r, Consent)]

    # --- outputs ----------------------------------------------------------------------------
    def bundle(self, patient: Patient, records: Iterable[ClinicalRecord],
               mode: DeidMode = DeidMode.SAFE_HARBOR) -> dict[str, Any]:
        """A de-identified FHIR R4 collection Bundle, labelled with its mode."""
        p, recs = self.apply(patient, records, mode)
        return self._bundle(p, recs, mode)

    def _bundle(self, p: Patient, recs: list[ClinicalRecord], mode: DeidMode
                ) -> dict[str, Any]:
        raw = to_bundle(p, recs, validate=False)
        if p.identity.get("age_group"):
            raw["entry"][0]["resource"]["extension"] = [
                {"url": AGE_GROUP_URL, "valueString": p.identity["age_group"]}]
        bundle = allow_listed(raw, year_only=mode is DeidMode.SAFE_HARBOR)
        bundle["meta"] = mode.labels
        issues = validate_bundle_shell(bundle, source="de-identified export")
        for i, entry in enumerate(bundle["entry"]):
            issues += validate_resource(entry["resource"], entry=i,
                                        source="de-identified export")[1]
        if issues:
            raise FhirImportError(issues, summary="de-identification produced invalid FHIR "
                                  "(a bug)")
        return bundle

    def frame(self, patient: Patient, records: Iterable[ClinicalRecord],
              mode: DeidMode = DeidMode.SAFE_HARBOR) -> pd.DataFrame:
        """A de-identified tidy table (subject, time, kind, code, display, value, unit) read
        back from the allow-listed bundle, so it holds nothing the bundle does not. ``time``
        is the year (Safe Harbor) or the shifted UTC time (limited)."""
        p, recs = self.apply(patient, records, mode)
        bundle = self._bundle(p, recs, mode)
        rows = [_row(e["resource"]) for e in bundle["entry"][1:]]
        year_only = mode is DeidMode.SAFE_HARBOR
        for r in recs:  # meals have no FHIR resource in the export: numbers only
            if isinstance(r, Intervention) and r.kind == InterventionKind.MEAL:
                t = r.time.astimezone(UTC)
                rows.append({"time": f"{t.year:04d}" if year_only else t.isoformat(),
                             "kind": "intervention", "code": None, "display": None,
                             "value": terms.finite_number(r.amount),
                             "unit": terms.ucum_unit(r.unit)})
        rows.sort(key=lambda row: (row["time"] is None, row["time"] or ""))
        times = [row["time"] for row in rows]
        return pd.DataFrame({
            "subject": [p.id] * len(rows),
            "time": times if year_only else pd.to_datetime(times, utc=True, format="ISO8601"),
            "kind": [row["kind"] for row in rows],
            "code": [row["code"] for row in rows],
            "display": [row["display"] for row in rows],
            "value": pd.array([row["value"] for row in rows], dtype="Float64"),
            "unit": [row["unit"] for row in rows],
        })


def _row(res: dict[str, Any]) -> dict[str, Any]:
    """One table row of an allow-listed resource."""
    rtype = res["resourceType"]
    concept = res.get("code") or res.get("medicationCodeableConcept") or res.get("type")
    if isinstance(concept, list):  # Encounter.type
        concept = concept[0]
    coding = ((concept or {}).get("coding") or [{}])[0]
    quantity = (res.get("valueQuantity") or (res.get("dosage") or {}).get("dose")
                or ((res.get("dosageInstruction") or [{}])[0].get("doseAndRate") or [{}])[0]
                .get("doseQuantity") or {})
    time = (res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start")
            or (res.get("period") or {}).get("start") or res.get("onsetDateTime")
            or res.get("authoredOn"))
    return {"time": time, "kind": _KIND_OF_RESOURCE[rtype], "code": coding.get("code"),
            "display": coding.get("display"), "value": quantity.get("value"),
            "unit": quantity.get("code")}


def _shift_date(value: Any, shift: timedelta) -> str | None:
    """A FHIR date shifted by whole days; a year or year-month alone is kept as it is."""
    if not isinstance(value, str):
        return None
    if len(value) >= 10:
        try:
            return (datetime.fromisoformat(value[:10]) + shift).date().isoformat()
        except (ValueError, OverflowError):
            return None
    return value if value[:4].isdigit() else None


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
    """State, ZIP3 (000 for the restricted prefixes) and country; the allow-list then keeps
    only a recognised state and country."""
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
