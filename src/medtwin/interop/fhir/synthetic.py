"""Synthetic patients as FHIR R4 transaction Bundles, for ``medtwin demo``, tests and benchmarks.

Every value is drawn from ``numpy.random.default_rng`` seeded per patient, and every uuid is a
uuid5 of the seed, so one seed always gives byte-identical JSON. Four kinds of patient exercise
the rest of medtwin: ``stable``; ``deteriorating`` (vital signs drift so NEWS2 rises); ``t1d``
(type 1 diabetes on an insulin pump with a CGM); ``vancomycin`` (IV infusions and trough levels).
Some patients report temperature in [degF], weight in [lb_av] or glucose in mmol/L on purpose,
so the importer's unit conversion is exercised. All people, names and MRNs are invented.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from medtwin.core import codes
from medtwin.core.errors import ValidationError
from medtwin.core.records import LOINC, RXNORM, SNOMED, UCUM
from medtwin.interop.codes import GLUCOSE_MOLAR_MASS  # mmol/L = mg/dL * 10 / molar mass

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("stable", "deteriorating", "t1d", "vancomycin")
DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
MRN_SYSTEM = "urn:medtwin:mrn"

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

POUND_KG = 0.45359237  # kg in one avoirdupois pound (exact, by definition)

_UUID_NAMESPACE = uuid.UUID("6f1c3a52-3d0e-5b7e-9a61-6d6564747769")

CONDITIONS: dict[str, list[tuple[str, str]]] = {
    "stable": [("38341003", "Hypertensive disorder, systemic arterial (disorder)")],
    "deteriorating": [("233604007", "Pneumonia (disorder)"), ("91302008", "Sepsis (disorder)")],
    "t1d": [("46635009", "Diabetes mellitus type 1 (disorder)")],
    "vancomycin": [("128045006", "Cellulitis (disorder)")],
}
ACVPU = {
    "alert": ("248234008", "Mentally alert"),
    "confused": ("286933003", "Confusional state"),
}
INSULIN = ("1652639", "insulin lispro 100 UNT/ML Injectable Solution")
VANCOMYCIN = ("375983", "vancomycin Injectable Solution")
CGM_GLUCOSE = (codes.GLUCOSE_INTERSTITIAL, "Glucose [Mass/volume] in Interstitial fluid")
ROUTE_IV = ("47625008", "Intravenous route")
ROUTE_SC = ("34206005", "Subcutaneous route")

# (baseline at admission, change by the end of the stay, noise sd) per vital sign and kind.
_VITALS: dict[str, dict[str, tuple[float, float, float]]] = {
    "stable": {"hr": (74, 0, 5), "rr": (15, 0, 1), "spo2": (97, 0, 0.8), "temp": (36.8, 0, 0.2),
               "sbp": (138, -4, 7), "dbp": (84, -2, 5)},
    "deteriorating": {"hr": (84, 40, 4), "rr": (16, 12, 1), "spo2": (97, -8, 0.7),
                      "temp": (37.2, 1.7, 0.15), "sbp": (128, -38, 5), "dbp": (78, -22, 4)},
    "t1d": {"hr": (76, 0, 5), "rr": (15, 0, 1), "spo2": (98, 0, 0.7), "temp": (36.8, 0, 0.2),
            "sbp": (122, 0, 7), "dbp": (76, 0, 5)},
    "vancomycin": {"hr": (96, -16, 5), "rr": (18, -3, 1), "spo2": (96, 1, 0.8),
                   "temp": (38.3, -1.3, 0.2), "sbp": (118, 6, 7), "dbp": (72, 3, 5)},
}
_FIRST = {"female": ["Ada", "Maren", "Ines", "Yuki", "Leah", "Noor", "Clara", "Tove"],
          "male": ["Tomas", "Ravi", "Jonah", "Emil", "Kofi", "Luca", "Arjun", "Felix"]}
_FAMILY = ["Testa", "Modell", "Demo", "Sample", "Fiktiv", "Placebo", "Mock", "Exemplar"]
_CITIES = ["Springfield", "Riverton", "Lakeside", "Hillview"]

Resource = dict[str, Any]


def generate_patients(
    n: int = 6,
    *,
    seed: int = 0,
    start: datetime | None = None,
    days: int = 2,
    kinds: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n`` synthetic inpatients, one FHIR R4 transaction Bundle (JSON dict) each.

    ``kinds`` is cycled over the patients (default: stable, deteriorating, t1d, vancomycin);
    ``start`` (default 2026-01-05T00:00Z, naive means UTC) begins a stay of ``days`` days.
    The same arguments always give the same bundles.
    """
    kinds = _check_args(n, seed, start, days, kinds)
    t0 = DEFAULT_START if start is None else _as_utc(start)
    bundles = []
    for index in range(n):
        kind = kinds[index % len(kinds)]
        rng = np.random.default_rng([seed, index])
        tag = f"{seed}:{t0.isoformat()}:{days}:{index}:{kind}"
        bundles.append(_patient_bundle(_Builder(tag, t0, days), rng, index, kind))
    logger.debug("generated %d synthetic patients (seed=%d, days=%d)", n, seed, days)
    return bundles


def write_bundles(bundles: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """Write each bundle to ``folder/<patient-id>.json``; sorted keys keep files reproducible."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for bundle in bundles:
        patient = next((e["resource"] for e in bundle.get("entry", [])
                        if e["resource"]["resourceType"] == "Patient"), None)
        if patient is None:
            raise ValidationError("bundle has no Patient entry; pass bundles from "
                                  "generate_patients()", where=f"Bundle/{bundle.get('id')}")
        path = folder / f"{patient['id']}.json"
        path.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def _check_args(n: int, seed: int, start: datetime | None, days: int,
                kinds: Sequence[str] | None) -> tuple[str, ...]:
    """Reject bad arguments with a message that says what to pass instead."""
    def is_int(x: object) -> bool:
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    if not is_int(n) or n < 1:
        raise ValidationError(f"n must be a whole number >= 1 (got {n!r})", where="n")
    if not is_int(days) or days < 1:
        raise ValidationError(f"days must be a whole number >= 1 (got {days!r})", where="days")
    if not is_int(seed) or seed < 0:
        raise ValidationError(f"seed must be a whole number >= 0 (got {seed!r})", where="seed")
    if start is not None and not isinstance(start, datetime):
        raise ValidationError(f"start must be a datetime (got {start!r})", where="start")
    chosen = KINDS if kinds is None else tuple(kinds)
    if isinstance(kinds, str) or not chosen:
        raise ValidationError(f"kinds must be a non-empty list drawn from {list(KINDS)} "
                              f"(got {kinds!r})", where="kinds")
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ValidationError(f"unknown patient kind(s) {unknown}; choose from {list(KINDS)}",
                              where="kinds")
    return chosen


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _ts(t: datetime) -> str:
    """FHIR dateTime with an explicit offset, whole seconds: 2026-01-05T08:00:00+00:00."""
    return t.replace(microsecond=0).isoformat()


def _coding(system: str, code: str, display: str) -> Resource:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str) -> Resource:
    return {"coding": [_coding(system, code, display)], "text": display}


def _qty(value: float, unit: str) -> Resource:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


class _Builder:
    """Collects the entries of one bundle; ids are uuid5 of the patient's tag and a counter."""

    def __init__(self, tag: str, start: datetime, days: int) -> None:
        self.tag, self.start, self.days = tag, start, days
        self.end = start + timedelta(days=days)
        self.entries: list[Resource] = []
        self.timed: list[tuple[datetime, int, Resource]] = []
        self.patient = self.encounter = ""

    def add(self, resource: Resource) -> str:
        """Append a resource as a POST entry and return its ``urn:uuid:`` reference."""
        rid = str(uuid.uuid5(_UUID_NAMESPACE, f"{self.tag}:{len(self.entries)}"))
        resource = {"resourceType": resource.pop("resourceType"), "id": rid, **resource}
        url = f"urn:uuid:{rid}"
        self.entries.append({"fullUrl": url, "resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"]}})
        return url

    def later(self, t: datetime, resource: Resource) -> None:
        """Queue a timed resource; they are added in time order by :meth:`bundle`."""
        self.timed.append((t, len(self.timed), resource))

    def obs(self, t: datetime, code: tuple[str, str], category: str = "vital-signs",
            **value: Any) -> None:
        """Queue an Observation of LOINC ``code`` at ``t`` for this patient and encounter."""
        cat = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}[category]
        self.later(t, {"resourceType": "Observation", "status": "final",
                       "category": [{"coding": [_coding(OBS_CATEGORY, category, cat)]}],
                       "code": _concept(LOINC, *code), "subject": {"reference": self.patient},
                       "encounter": {"reference": self.encounter},
                       "effectiveDateTime": _ts(t), **value})

    def bundle(self) -> dict[str, Any]:
        for _, _, resource in sorted(self.timed, key=lambda item: item[:2]):
            self.add(resource)
        bid = str(uuid.uuid5(_UUID_NAMESPACE, f"{self.tag}:bundle"))
        return {"resourceType": "Bundle", "id": bid, "type": "transaction",
                "timestamp": _ts(self.end), "entry": self.entries}


def _patient_bundle(b: _Builder, rng: np.random.Generator, index: int, kind: str) -> Resource:
    """One patient's record: demographics, stay, diagnoses, vitals, labs and treatment."""
    units = {"temp": "[degF]" if index % 2 == 1 else "Cel",
             "weight": "[lb_av]" if index % 3 == 2 else "kg",
             "glucose": "mmol/L" if index % 4 == 0 else "mg/dL"}
    gender = "female" if rng.random() < 0.5 else "male"
    age = {"stable": (35, 80), "deteriorating": (60, 88), "t1d": (19, 45),
           "vancomycin": (40, 78)}[kind]
    born = b.start.date() - timedelta(days=int(rng.integers(age[0] * 365, age[1] * 365)))
    weight = float(rng.normal(78 if gender == "male" else 66, 9))
    height = float(rng.normal(176 if gender == "male" else 163, 6))
    b.patient = b.add(_patient(rng, index, gender, born.isoformat()))
    b.encounter = b.add({
        "resourceType": "Encounter", "status": "finished",
        "class": _coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP",
                         "inpatient encounter"),
        "type": [_concept(SNOMED, "32485007", "Hospital admission (procedure)")],
        "subject": {"reference": b.patient},
        "period": {"start": _ts(b.start), "end": _ts(b.end)}})
    for code, display in CONDITIONS[kind]:
        b.add({"resourceType": "Condition",
               "clinicalStatus": _concept(
                   "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
               "verificationStatus": _concept(
                   "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                   "Confirmed"),
               "category": [_concept("http://terminology.hl7.org/CodeSystem/condition-category",
                                     "encounter-diagnosis", "Encounter Diagnosis")],
               "code": _concept(SNOMED, code, display), "subject": {"reference": b.patient},
               "encounter": {"reference": b.encounter}, "onsetDateTime": _ts(b.start),
               "recordedDate": _ts(b.start)})
    _vital_signs(b, rng, kind, units["temp"])
    _body_size(b, rng, weight, height, units["weight"])
    if kind == "t1d":
        _t1d(b, rng, weight)
    else:
        _glucose_labs(b, rng, kind, units["glucose"])
    if kind == "vancomycin":
        _vancomycin(b, rng, weight, gender, b.start.year - born.year, index)
    return b.bundle()


def _patient(rng: np.random.Generator, index: int, gender: str, born: str) -> Resource:
    given = str(rng.choice(_FIRST[gender]))
    family = str(rng.choice(_FAMILY))
    return {
        "resourceType": "Patient",
        "meta": {"tag": [{"system": "urn:medtwin:tag", "code": "synthetic",
                          "display": "Synthetic test patient (not a real person)"}]},
        "identifier": [{
            "use": "usual",
            "type": _concept("http://terminology.hl7.org/CodeSystem/v2-0203", "MR",
                             "Medical record number"),
            "system": MRN_SYSTEM, "value": f"SYN-{index:04d}-{int(rng.integers(10**5, 10**6))}"}],
        "name": [{"use": "official", "family": family, "given": [given],
                  "text": f"{given} {family}"}],
        "telecom": [{"system": "phone", "value": f"555-01{int(rng.integers(0, 100)):02d}",
                     "use": "home"}],
        "gender": gender, "birthDate": born,
        "address": [{"use": "home", "line": [f"{int(rng.integers(1, 200))} Synthetic Lane"],
                     "city": str(rng.choice(_CITIES)), "postalCode": "00000",
                     "country": "ZZ"}]}


def _vital_times(b: _Builder, rng: np.random.Generator, kind: str) -> list[float]:
    """Hours after admission of each set of vitals: every 2-4 h, down to hourly as one worsens."""
    total = 24.0 * b.days
    times, t = [], float(rng.integers(0, 60)) / 60
    while t < total:
        times.append(t)
        gap = 4.0 - 3.0 * t / total if kind == "deteriorating" else float(rng.integers(2, 5))
        t += max(1.0, gap) + float(rng.integers(-10, 11)) / 60
    return times


def _vital_signs(b: _Builder, rng: np.random.Generator, kind: str, temp_unit: str) -> None:
    """HR, RR, SpO2, temperature, BP panel, ACVPU and O2 flow at each vitals round."""
    hours = np.array(_vital_times(b, rng, kind))
    frac = hours / (24.0 * b.days)
    offset = {name: rng.normal(0, sd) for name, (_, _, sd) in _VITALS[kind].items()}
    v = {name: base + offset[name] + drift * frac**1.5 + rng.normal(0, sd, hours.size)
         for name, (base, drift, sd) in _VITALS[kind].items()}
    spo2 = np.clip(np.round(v["spo2"]), 80, 100)
    o2 = np.where(spo2 < 91, 4.0, np.where(spo2 < 94, 2.0, 0.0))
    for i, h in enumerate(hours):
        t = b.start + timedelta(minutes=int(round(h * 60)))
        b.obs(t, (codes.HEART_RATE, "Heart rate"),
              valueQuantity=_qty(int(round(v["hr"][i])), "/min"))
        b.obs(t, (codes.RESPIRATORY_RATE, "Respiratory rate"),
              valueQuantity=_qty(int(round(v["rr"][i])), "/min"))
        b.obs(t, (codes.SPO2_PULSE_OXIMETRY,
                  "Oxygen saturation in Arterial blood by Pulse oximetry"),
              valueQuantity=_qty(int(spo2[i]), "%"))
        temp = float(v["temp"][i]) * 9 / 5 + 32 if temp_unit == "[degF]" else float(v["temp"][i])
        b.obs(t, (codes.BODY_TEMPERATURE, "Body temperature"),
              valueQuantity=_qty(round(temp, 1), temp_unit))
        b.obs(t, (codes.BP_PANEL, "Blood pressure panel with all children optional"), component=[
            {"code": _concept(LOINC, codes.SYSTOLIC_BP, "Systolic blood pressure"),
             "valueQuantity": _qty(int(round(v["sbp"][i])), "mm[Hg]")},
            {"code": _concept(LOINC, codes.DIASTOLIC_BP, "Diastolic blood pressure"),
             "valueQuantity": _qty(int(round(v["dbp"][i])), "mm[Hg]")}])
        state = "confused" if kind == "deteriorating" and frac[i] > 0.85 else "alert"
        b.obs(t, (codes.RESPONSIVENESS, "Level of responsiveness"),
              valueCodeableConcept=_concept(SNOMED, *ACVPU[state]))
        b.obs(t, (codes.O2_FLOW, "Inhaled oxygen flow rate"),
              valueQuantity=_qty(o2[i].item(), "L/min"))


def _body_size(b: _Builder, rng: np.random.Generator, weight: float, height: float,
               weight_unit: str) -> None:
    """Height on admission, weight on admission and each morning."""
    b.obs(b.start + timedelta(minutes=30), (codes.BODY_HEIGHT, "Body height"),
          valueQuantity=_qty(round(height, 1), "cm"))
    for day in range(b.days):
        kg = weight + float(rng.normal(0, 0.4))
        value = kg / POUND_KG if weight_unit == "[lb_av]" else kg
        when = b.start + timedelta(days=day, hours=0.5 if day == 0 else 6)
        b.obs(when, (codes.BODY_WEIGHT, "Body weight"),
              valueQuantity=_qty(round(value, 1), weight_unit))


def _glucose_obs(b: _Builder, t: datetime, mg_dl: float, unit: str) -> None:
    if unit == "mmol/L":
        b.obs(t, (codes.GLUCOSE_BLOOD_MOLAR, "Glucose [Moles/volume] in Blood"), "laboratory",
              valueQuantity=_qty(round(mg_dl * 10 / GLUCOSE_MOLAR_MASS, 1), "mmol/L"))
    else:
        b.obs(t, (codes.GLUCOSE_BLOOD, "Glucose [Mass/volume] in Blood"), "laboratory",
              valueQuantity=_qty(int(round(mg_dl)), "mg/dL"))


def _glucose_labs(b: _Builder, rng: np.random.Generator, kind: str, unit: str) -> None:
    """Blood glucose every 6 h; stress hyperglycaemia climbs in the deteriorating patient."""
    base = float(rng.normal(105, 8))
    for k in range(4 * b.days):
        h = 6.0 * k + 1 + float(rng.integers(0, 60)) / 60
        rise = 70 * h / (24 * b.days) if kind == "deteriorating" else 0
        _glucose_obs(b, b.start + timedelta(hours=h), base + rise + rng.normal(0, 12), unit)


def _gamma2(x: np.ndarray, theta: float) -> np.ndarray:
    """Gamma(2, theta) density per minute: the shape of gut absorption and insulin action."""
    return np.where(x > 0, x / theta**2 * np.exp(-np.clip(x, 0, None) / theta), 0.0)


def _t1d(b: _Builder, rng: np.random.Generator, weight: float) -> None:
    """Insulin pump + CGM: meals drive glucose swings, boluses (some mistimed or missed) follow."""
    pump = b.add({"resourceType": "Device", "status": "active",
                  "serialNumber": f"SYN-PUMP-{int(rng.integers(10**5, 10**6))}",
                  "deviceName": [{"name": "Synthetic insulin pump", "type": "user-friendly-name"}],
                  "type": _concept(SNOMED, "69805005", "Insulin pump"),
                  "patient": {"reference": b.patient}})
    cgm = b.add({"resourceType": "Device", "status": "active",
                 "serialNumber": f"SYN-CGM-{int(rng.integers(10**5, 10**6))}",
                 "deviceName": [{"name": "Synthetic CGM sensor", "type": "user-friendly-name"}],
                 "type": {"text": "Continuous glucose monitor"},
                 "patient": {"reference": b.patient}})
    metric = b.add({"resourceType": "DeviceMetric",
                    "type": _concept(LOINC, *CGM_GLUCOSE),
                    "unit": _concept(UCUM, "mg/dL", "mg/dL"), "source": {"reference": cgm},
                    "operationalStatus": "on", "category": "measurement",
                    "measurementPeriod": {"repeat": {"frequency": 1, "period": 5,
                                                     "periodUnit": "min"}}})
    isf, icr = float(rng.uniform(35, 60)), float(rng.uniform(8, 14))  # mg/dL per U, g per U
    request = b.add({
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": _concept(RXNORM, *INSULIN),
        "subject": {"reference": b.patient}, "encounter": {"reference": b.encounter},
        "authoredOn": _ts(b.start),
        "dosageInstruction": [{"text": f"Via insulin pump: basal {0.011 * weight:.1f} U/h; meal "
                                       f"bolus 1 U per {icr:.0f} g carbohydrate; correction 1 U "
                                       f"per {isf:.0f} mg/dL above 130 mg/dL",
                               "route": _concept(SNOMED, *ROUTE_SC)}]})
    minutes = 1440 * b.days
    grid = np.arange(minutes, dtype=float)
    meal_rate, ins_rate = np.zeros(minutes), np.zeros(minutes)
    boluses: list[tuple[int, float]] = []
    checks = []
    for day in range(b.days):
        for hour, low, high in ((7.5, 35, 70), (12.5, 45, 85), (18.5, 55, 100)):
            tm = int(day * 1440 + hour * 60 + rng.integers(-30, 31))
            carbs = float(rng.integers(low, high))
            meal_rate += carbs * isf / icr * _gamma2(grid - tm, 25.0)
            checks.append(tm - 5)
            if rng.random() < 0.85:  # sometimes the bolus is forgotten
                boluses.append((tm + int(rng.integers(-10, 25)),
                                round(carbs / icr * float(rng.uniform(0.75, 1.2)), 1)))
    for tb, units in boluses:
        ins_rate += units * isf * _gamma2(grid - tb, 55.0)
    basal, tau = float(rng.uniform(115, 150)), 300.0
    noise = rng.normal(0, 0.35, minutes)
    glucose = np.empty(minutes)
    g, last_bolus = float(rng.normal(150, 20)), -999
    meal_boluses = {tb for tb, _ in boluses}
    for k in range(minutes):
        if k % 180 == 90 and g > 220 and k - last_bolus > 150:  # pump's correction advice
            units = round((g - 130) / isf, 1)
            boluses.append((k, units))
            ins_rate[k:] += units * isf * _gamma2(grid[k:] - k, 55.0)
            last_bolus = k
        if k in meal_boluses:
            last_bolus = k
        g = float(np.clip(g + meal_rate[k] - ins_rate[k] - (g - basal) / tau + noise[k], 40, 400))
        glucose[k] = g
    k = int(rng.integers(0, 5))
    while k < minutes:
        cgm_value = int(np.clip(round(glucose[k] + rng.normal(0, 4)), 40, 400))
        b.obs(b.start + timedelta(minutes=k), CGM_GLUCOSE, "laboratory",
              valueQuantity=_qty(cgm_value, "mg/dL"), device={"reference": metric})
        k += int(rng.choice([5, 5, 5, 5, 10, 15]))
    for tc in checks:
        if 0 <= tc < minutes:
            _glucose_obs(b, b.start + timedelta(minutes=tc),
                         glucose[tc] * float(rng.normal(1, 0.05)), "mg/dL")
    for tb, units in sorted(boluses):
        if 0 <= tb < minutes and units > 0:
            t = b.start + timedelta(minutes=tb)
            b.later(t, {"resourceType": "MedicationAdministration", "status": "completed",
                        "medicationCodeableConcept": _concept(RXNORM, *INSULIN),
                        "subject": {"reference": b.patient}, "context": {"reference": b.encounter},
                        "effectiveDateTime": _ts(t), "request": {"reference": request},
                        "device": [{"reference": pump}],
                        "dosage": {"route": _concept(SNOMED, *ROUTE_SC),
                                   "dose": _qty(units, "U")}})


def _vancomycin(b: _Builder, rng: np.random.Generator, weight: float, gender: str, age: int,
                index: int) -> None:
    """1000 mg IV over 60 min every 12 h; troughs from a one-compartment model, creatinine daily."""
    scr = float(np.clip(rng.normal(1.0, 0.2), 0.6, 1.8))  # mg/dL
    crcl = (140 - age) * weight / (72 * scr) * (0.85 if gender == "female" else 1.0)  # mL/min
    crcl = min(crcl, 120.0)  # Cockcroft-Gault capped, as in practice
    cl = (0.689 * crcl + 3.66) * 0.06 * float(rng.lognormal(0, 0.15))  # L/h (Matzke 1984)
    vd = 0.7 * weight * float(rng.lognormal(0, 0.1))  # L
    dose, hours_infused = 1000.0, 1.0
    request = b.add({
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": _concept(RXNORM, *VANCOMYCIN),
        "subject": {"reference": b.patient}, "encounter": {"reference": b.encounter},
        "authoredOn": _ts(b.start),
        "dosageInstruction": [{
            "text": "1000 mg IV over 60 min every 12 hours",
            "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
            "route": _concept(SNOMED, *ROUTE_IV),
            "doseAndRate": [{"doseQuantity": _qty(dose, "mg"),
                             "rateQuantity": _qty(dose / hours_infused, "mg/h")}]}]})
    starts = [float(h) for h in np.arange(2.0, 24.0 * b.days - hours_infused, 12.0)]
    for s in starts:
        t = b.start + timedelta(hours=s)
        b.later(t, {"resourceType": "MedicationAdministration", "status": "completed",
                    "medicationCodeableConcept": _concept(RXNORM, *VANCOMYCIN),
                    "subject": {"reference": b.patient}, "context": {"reference": b.encounter},
                    "effectivePeriod": {"start": _ts(t),
                                        "end": _ts(t + timedelta(hours=hours_infused))},
                    "request": {"reference": request},
                    "dosage": {"route": _concept(SNOMED, *ROUTE_IV), "dose": _qty(dose, "mg"),
                               "rateQuantity": _qty(dose / hours_infused, "mg/h")}})
    k = cl / vd
    unit = "mg/L" if (index // 4) % 2 else "ug/mL"
    for s in starts[1:]:
        t_level = s - 0.5
        conc = 0.0
        for s0 in starts:
            dt = t_level - s0
            if dt > 0:
                frac = 1 - np.exp(-k * min(dt, hours_infused))
                conc += dose / hours_infused / cl * frac * np.exp(-k * max(0.0, dt - hours_infused))
        measured = round(float(conc * rng.lognormal(0, 0.08)), 1)
        b.obs(b.start + timedelta(hours=t_level),
              (codes.VANCOMYCIN_TROUGH, "Vancomycin [Mass/volume] in Serum or Plasma --trough"),
              "laboratory",
              valueQuantity=_qty(measured, unit))
    for day in range(b.days):
        b.obs(b.start + timedelta(days=day, hours=6, minutes=15),
              (codes.CREATININE_SERUM, "Creatinine [Mass/volume] in Serum or Plasma"), "laboratory",
              valueQuantity=_qty(round(scr * float(rng.normal(1, 0.04)), 2), "mg/dL"))
