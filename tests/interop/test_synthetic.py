"""The synthetic patient generator: valid FHIR R4, reproducible, and physiologically sensible."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from medtwin.core.errors import ValidationError
from medtwin.interop.fhir.synthetic import (
    KINDS,
    MRN_SYSTEM,
    POUND_KG,
    generate_patients,
    write_bundles,
)

UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def bundles() -> list[dict]:
    return generate_patients(6, seed=0)


def resources(bundle: dict, resource_type: str | None = None) -> list[dict]:
    return [e["resource"] for e in bundle["entry"]
            if resource_type is None or e["resource"]["resourceType"] == resource_type]


def observations(bundle: dict, loinc: str) -> list[dict]:
    return [r for r in resources(bundle, "Observation") if r["code"]["coding"][0]["code"] == loinc]


def when(resource: dict) -> datetime:
    return datetime.fromisoformat(resource["effectiveDateTime"])


def series(bundle: dict, loinc: str) -> tuple[np.ndarray, np.ndarray]:
    """Hours since admission and values of a quantity observation, in stored units."""
    obs = observations(bundle, loinc)
    start = datetime.fromisoformat(resources(bundle, "Encounter")[0]["period"]["start"])
    hours = np.array([(when(o) - start).total_seconds() / 3600 for o in obs])
    return hours, np.array([o["valueQuantity"]["value"] for o in obs], dtype=float)


def references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in references(v)]
    if isinstance(node, list):
        return [r for v in node for r in references(v)]
    return []


def test_every_bundle_and_resource_validates_with_r4b(bundles):
    for bundle in bundles:
        Bundle.model_validate(bundle)
        for resource in resources(bundle):
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_bundles_are_transactions_of_posts_with_uuid_fullurls(bundles):
    seen = set()
    for bundle in bundles:
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
            assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
            seen.add(entry["fullUrl"])
    assert len(seen) == sum(len(b["entry"]) for b in bundles), "fullUrls must be unique"


def test_every_reference_resolves_inside_its_bundle(bundles):
    for bundle in bundles:
        full_urls = {e["fullUrl"] for e in bundle["entry"]}
        refs = references([e["resource"] for e in bundle["entry"]])
        assert refs and all(ref.startswith("urn:uuid:") for ref in refs)
        assert set(refs) <= full_urls
        patient = next(e["fullUrl"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Patient")
        encounter = next(e["fullUrl"] for e in bundle["entry"]
                         if e["resource"]["resourceType"] == "Encounter")
        for obs in resources(bundle, "Observation"):
            assert obs["subject"]["reference"] == patient
            assert obs["encounter"]["reference"] == encounter


def test_same_seed_same_bytes_and_other_seed_differs(bundles):
    dump = json.dumps(bundles, sort_keys=True)
    assert json.dumps(generate_patients(6, seed=0), sort_keys=True) == dump
    assert json.dumps(generate_patients(6, seed=1), sort_keys=True) != dump
    # A patient does not depend on how many others are generated alongside it.
    assert generate_patients(2, seed=0) == bundles[:2]


def test_kinds_cycle_by_default_and_conditions_fit_them(bundles):
    expected = {"stable": "38341003", "deteriorating": "91302008", "t1d": "46635009",
                "vancomycin": "128045006"}
    kinds = [KINDS[i % 4] for i in range(6)]
    assert kinds[4:] == ["stable", "deteriorating"]
    for bundle, kind in zip(bundles, kinds, strict=True):
        codes = {c["code"]["coding"][0]["code"] for c in resources(bundle, "Condition")}
        assert expected[kind] in codes
    assert "233604007" in {c["code"]["coding"][0]["code"]
                           for c in resources(bundles[1], "Condition")}


def test_patient_demographics_are_complete_and_clearly_synthetic(bundles):
    for bundle in bundles:
        (patient,) = resources(bundle, "Patient")
        assert patient["gender"] in {"female", "male"}
        assert patient["name"][0]["family"] and patient["address"] and patient["telecom"]
        (mrn,) = [i for i in patient["identifier"] if i["system"] == MRN_SYSTEM]
        assert mrn["value"].startswith("SYN-")
        assert patient["telecom"][0]["value"].startswith("555-01")
        (encounter,) = resources(bundle, "Encounter")
        assert encounter["class"]["code"] == "IMP"


def test_times_have_offsets_and_fall_inside_the_stay(bundles):
    for bundle in bundles:
        period = resources(bundle, "Encounter")[0]["period"]
        start, end = (datetime.fromisoformat(period[k]) for k in ("start", "end"))
        assert start == datetime(2026, 1, 5, tzinfo=UTC) and end - start == timedelta(days=2)
        for obs in resources(bundle, "Observation"):
            assert obs["effectiveDateTime"].endswith("+00:00")
            assert start <= when(obs) < end


def test_vital_signs_are_plausible(bundles):
    limits = {"8867-4": (35, 180), "9279-1": (6, 40), "59408-5": (80, 100),
              "85354-9": None, "3151-8": (0, 15), "8302-2": (140, 210)}
    for bundle in bundles:
        for loinc, bounds in limits.items():
            obs = observations(bundle, loinc)
            assert obs, loinc
            assert all(o["category"][0]["coding"][0]["code"] == "vital-signs" for o in obs)
            if bounds:
                values = series(bundle, loinc)[1]
                assert bounds[0] <= values.min() and values.max() <= bounds[1], loinc
        for bp in observations(bundle, "85354-9"):
            sys_, dia = (c["valueQuantity"] for c in bp["component"])
            assert sys_["code"] == dia["code"] == "mm[Hg]"
            assert 35 <= dia["value"] < sys_["value"] <= 220
        for temp in observations(bundle, "8310-5"):
            q = temp["valueQuantity"]
            celsius = (q["value"] - 32) * 5 / 9 if q["code"] == "[degF]" else q["value"]
            assert 35.0 <= celsius <= 41.0
        for quantity in value_quantities(bundle):
            assert quantity["system"] == UCUM


def value_quantities(bundle: dict) -> list[dict]:
    return [o["valueQuantity"] for o in resources(bundle, "Observation") if "valueQuantity" in o]


def test_deteriorating_patient_gets_worse(bundles):
    bundle = bundles[1]

    def early_late(loinc: str) -> tuple[float, float]:
        hours, values = series(bundle, loinc)
        return values[hours < 6].mean(), values[hours > 42].mean()

    rr0, rr1 = early_late("9279-1")
    hr0, hr1 = early_late("8867-4")
    sat0, sat1 = early_late("59408-5")
    temp0, temp1 = early_late("8310-5")
    o2_0, o2_1 = early_late("3151-8")
    assert rr1 > rr0 + 5 and hr1 > hr0 + 20 and sat1 < sat0 - 4 and temp1 > temp0
    assert o2_0 == 0 and o2_1 > 0
    sbp = [o["component"][0]["valueQuantity"]["value"] for o in observations(bundle, "85354-9")]
    assert np.mean(sbp[-3:]) < np.mean(sbp[:3]) - 15
    acvpu = [o["valueCodeableConcept"]["coding"][0]["code"]
             for o in observations(bundle, "67775-7")]
    assert acvpu[0] == "248234008" and acvpu[-1] != "248234008"
    assert all(code == "248234008" for b in (bundles[0], bundles[4])
               for code in (o["valueCodeableConcept"]["coding"][0]["code"]
                            for o in observations(b, "67775-7")))


def test_units_vary_to_exercise_conversion(bundles):
    def units(loinc: str) -> set[str]:
        return {o["valueQuantity"]["code"] for b in bundles for o in observations(b, loinc)}

    assert units("8310-5") == {"Cel", "[degF]"}
    assert units("29463-7") == {"kg", "[lb_av]"}
    assert units("15074-8") == {"mmol/L"} and units("2339-0") == {"mg/dL"}
    weights = [o["valueQuantity"] for b in bundles for o in observations(b, "29463-7")]
    kg = [q["value"] * (POUND_KG if q["code"] == "[lb_av]" else 1) for q in weights]
    assert 40 <= min(kg) and max(kg) <= 130


def test_t1d_patient_has_cgm_pump_and_insulin(bundles):
    bundle = bundles[2]
    hours, glucose = series(bundle, "99504-3")
    gaps_min = np.diff(hours) * 60
    assert gaps_min.min() >= 5 - 1e-9 and gaps_min.max() <= 15 + 1e-9
    assert hours[0] < 0.25 and hours[-1] > 47.7
    assert 40 <= glucose.min() and glucose.max() <= 400 and glucose.max() - glucose.min() > 100
    (metric,) = resources(bundle, "DeviceMetric")
    metric_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is metric)
    assert all(o["device"]["reference"] == metric_url for o in observations(bundle, "99504-3"))
    assert any(d["type"]["coding"][0]["code"] == "69805005" for d in resources(bundle, "Device"))
    (request,) = resources(bundle, "MedicationRequest")
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "1652639"
    doses = [a["dosage"]["dose"] for a in resources(bundle, "MedicationAdministration")]
    assert len(doses) >= 4
    assert all(d["code"] == "U" and d["system"] == UCUM and 0 < d["value"] < 25 for d in doses)
    # Only the diabetic patient wears a CGM.
    assert not any(observations(b, "99504-3") for i, b in enumerate(bundles) if i != 2)


def test_vancomycin_patient_has_infusions_and_troughs(bundles):
    bundle = bundles[3]
    (request,) = resources(bundle, "MedicationRequest")
    assert "vancomycin" in request["medicationCodeableConcept"]["coding"][0]["display"]
    infusions = resources(bundle, "MedicationAdministration")
    starts = [datetime.fromisoformat(a["effectivePeriod"]["start"]) for a in infusions]
    assert len(infusions) == 4 and set(np.diff(starts)) == {timedelta(hours=12)}
    for a in infusions:
        period = a["effectivePeriod"]
        minutes = (datetime.fromisoformat(period["end"])
                   - datetime.fromisoformat(period["start"])).total_seconds() / 60
        assert minutes == 60
        assert a["dosage"]["dose"]["value"] == 1000 and a["dosage"]["dose"]["code"] == "mg"
        assert a["dosage"]["rateQuantity"]["code"] == "mg/h"
    troughs = observations(bundle, "4092-3")
    assert len(troughs) == 3
    values = [t["valueQuantity"]["value"] for t in troughs]
    assert all(2 < v < 40 for v in values) and values[-1] > values[0]  # the drug accumulates
    assert {t["valueQuantity"]["code"] for t in troughs} <= {"ug/mL", "mg/L"}


def test_volume_is_moderate(bundles):
    total = sum(len(b["entry"]) for b in bundles)
    assert 500 < total < 3000


def test_start_days_and_kinds_are_honoured():
    (bundle,) = generate_patients(1, seed=3, start=datetime(2026, 3, 1, 12), days=1,
                                  kinds=["vancomycin"])
    period = resources(bundle, "Encounter")[0]["period"]
    assert period == {"start": "2026-03-01T12:00:00+00:00", "end": "2026-03-02T12:00:00+00:00"}
    assert resources(bundle, "MedicationAdministration")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n must be a whole number >= 1"),
    ({"n": -2}, "n must be a whole number >= 1"),
    ({"n": 2.5}, "n must be a whole number >= 1"),
    ({"days": 0}, "days must be a whole number >= 1"),
    ({"days": -1}, "days must be a whole number >= 1"),
    ({"kinds": ["stable", "zombie"]}, r"unknown patient kind\(s\) \['zombie'\]; choose from"),
    ({"kinds": []}, "kinds must be a non-empty list"),
    ({"seed": -1}, "seed must be a whole number >= 0"),
    ({"start": "2026-01-05"}, "start must be a datetime"),
])
def test_bad_input_says_what_to_fix(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        generate_patients(**kwargs)


def test_write_bundles_is_reproducible(tmp_path, bundles):
    paths = write_bundles(bundles[:2], tmp_path / "out")
    ids = [resources(b, "Patient")[0]["id"] for b in bundles[:2]]
    assert [p.name for p in paths] == [f"{i}.json" for i in ids]
    first = [p.read_bytes() for p in paths]
    assert json.loads(first[0]) == bundles[0]
    write_bundles(bundles[:2], tmp_path / "out")
    assert [p.read_bytes() for p in paths] == first
    with pytest.raises(ValidationError, match="no Patient entry"):
        write_bundles([{"resourceType": "Bundle", "entry": []}], tmp_path)
