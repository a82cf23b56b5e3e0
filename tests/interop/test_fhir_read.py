"""FHIR R4 import: mapping, unit normalisation, references, all-or-nothing, bad input."""

from __future__ import annotations

import copy
import json

import pytest

from medtwin.core.records import InterventionKind
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.read import parse_fhir, read_fhir_file
from medtwin.interop.fhir.synthetic import generate_patients
from medtwin.interop.fhir.write import to_bundle
from medtwin.interop.importer import import_paths

PID = "urn:uuid:11111111-1111-4111-8111-111111111111"


def _obs(code, value, unit, *, oid="o1", subject=PID):
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": subject}, "effectiveDateTime": "2026-01-05T08:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": unit}}


def _bundle(*resources, kind="collection"):
    entries = [{"fullUrl": PID, "resource": {"resourceType": "Patient",
                                             "id": "11111111-1111-4111-8111-111111111111"}}]
    for i, r in enumerate(resources):
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r})
    if kind == "transaction":
        for e in entries:
            e["request"] = {"method": "POST", "url": e["resource"]["resourceType"]}
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


@pytest.mark.parametrize(("code", "value", "unit", "want", "want_unit"), [
    ("8310-5", 98.6, "[degF]", 37.0, "Cel"),
    ("29463-7", 180.0, "[lb_av]", 81.6466266, "kg"),
    ("15074-8", 5.5, "mmol/L", 99.0858, "mg/dL"),  # glucose by its molar mass 180.156 g/mol
    ("2339-0", 0.99, "g/L", 99.0, "mg/dL"),
    ("8867-4", 72, "{beats}/min", 72.0, "/min"),
    ("4092-3", 15, "ug/mL", 15.0, "mg/L"),
])
def test_units_are_normalised_by_name(code, value, unit, want, want_unit):
    (obs,) = parse_fhir(_bundle(_obs(code, value, unit))).records
    assert obs.unit == want_unit and obs.value == pytest.approx(want, rel=1e-6)
    assert obs.subject == "11111111-1111-4111-8111-111111111111"  # urn:uuid resolved


def test_wrong_unit_for_a_known_code_is_rejected_with_where():
    parsed = parse_fhir(_bundle(_obs("8310-5", 37, "kg"), _obs("8867-4", 70, "/min", oid="o2")),
                        source="b.json")
    assert [r.source_id for r in parsed.records] == ["Observation/o2"]
    (issue,) = parsed.issues
    assert issue.entry == 1 and issue.resource_type == "Observation" and issue.resource_id == "o1"
    assert "cannot convert 'kg' to 'Cel'" in issue.message and "valueQuantity" in issue.element


def test_unknown_codes_and_units_are_kept_as_they_came():
    (obs,) = parse_fhir(_bundle(_obs("99999-9", 3, "{widgets}"))).records
    assert (obs.code, obs.value, obs.unit) == ("99999-9", 3.0, "{widgets}")


def test_transaction_is_all_or_nothing(store):
    good = _obs("8867-4", 70, "/min", oid="good")
    bad = _obs("8867-4", "seventy", "/min", oid="bad")
    with pytest.raises(FhirImportError) as err:
        parse_fhir(_bundle(good, bad, kind="transaction"), source="tx.json")
    msg = str(err.value)
    assert "all-or-nothing" in msg and "entry[2]" in msg and "Observation/bad" in msg
    assert "valueQuantity.value" in msg


def test_collection_keeps_valid_entries_and_reports_each_bad_one(store, tmp_path):
    good = _obs("8867-4", 70, "/min", oid="good")
    bad1 = _obs("8867-4", 70, "/min", oid="bad1")
    bad1["effectiveDateTime"] = "yesterday"
    bad2 = _obs("8867-4", 70, "/min", oid="bad2")
    bad2["colour"] = "blue"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_bundle(good, bad1, bad2)))
    summary = import_paths(store, [path])
    assert (summary.stored, summary.rejected) == (1, 2)
    assert {(i.entry, i.element) for i in summary.issues} == {(2, "effectiveDateTime"),
                                                              (3, "colour")}
    letters = store.dead_letters()
    assert len(letters) == 2 and "bad1" in letters.payload.iloc[0]
    as_json = summary.to_dict()
    assert as_json["rejected"] == 2 and as_json["issues"][0]["entry"] == 2


def test_a_refused_file_changes_nothing_already_stored(store, tmp_path):
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(_bundle(_obs("8867-4", 70, "/min"), kind="transaction")))
    import_paths(store, [ok])
    before = store.counts()
    bad = tmp_path / "bad.json"
    tx = _bundle(_obs("8867-4", 71, "/min", oid="x"), _obs("8867-4", 1, "/min", oid="y",
                                                           subject="urn:uuid:nowhere"),
                 kind="transaction")
    bad.write_text(json.dumps(tx))
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", // a comment\n}')
    summary = import_paths(store, [bad, broken])
    assert summary.files_refused == 2 and summary.stored == 0
    assert store.counts() == before
    assert any("does not match any fullUrl" in str(i) for i in summary.issues)
    assert any("not valid JSON at line 1" in str(i) for i in summary.issues)


def test_medication_administrations_become_interventions():
    bundles = generate_patients(4, seed=3, days=1)
    parsed = [parse_fhir(b) for b in bundles]
    doses = [r for p in parsed for r in p.records if r.__class__.__name__ == "Intervention"]
    kinds = {d.kind for d in doses}
    assert {InterventionKind.INSULIN, InterventionKind.INFUSION} <= kinds
    vanco = [d for d in doses if d.kind == InterventionKind.INFUSION]
    assert all(d.unit == "mg" and d.amount == 1000 and d.duration.total_seconds() == 3600
               for d in vanco)
    assert all(d.unit == "U" for d in doses if d.kind == InterventionKind.INSULIN)


def test_export_then_import_gives_the_same_records(store, reference):
    files = sorted((reference / "fhir" / "synthea").glob("*.json"))[:4]
    import_paths(store, files)
    for b in generate_patients(4, seed=1, days=1):
        store.append(parse_fhir(b).patients, parse_fhir(b).records)
    for pid in store.patients()["id"]:
        patient, records = store.patient(pid), store.timeline(pid)
        bundle = to_bundle(patient, records)
        back = parse_fhir(json.loads(json.dumps(bundle)), source="export")
        assert back.issues == []
        assert back.patients == [patient] and back.patients[0].identity == patient.identity
        key = lambda r: (type(r).__name__, r.source_id)  # noqa: E731
        assert sorted(back.records, key=key) == sorted(records, key=key)
        # and a transaction export re-imports to nothing new
        again = store.append(back.patients, back.records)
        assert again.stored == 0


def test_single_resources_and_non_fhir_input(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(_obs("8867-4", 70, "/min", subject="Patient/p9")))
    parsed = read_fhir_file(one)
    assert parsed.records[0].subject == "p9" and parsed.bundle_type is None
    with pytest.raises(FhirImportError, match="must be a JSON object"):
        parse_fhir([1, 2])
    with pytest.raises(FhirImportError, match="unknown resourceType 'Foo'"):
        parse_fhir({"resourceType": "Foo"})
    missing = copy.deepcopy(_obs("8867-4", 70, "/min", subject="Patient/p9"))
    del missing["subject"]
    # issue 13: valid FHIR (subject is optional) is stored, only not mapped to a record
    kept = parse_fhir(missing)
    assert kept.records == [] and [r["id"] for r in kept.resources] == [missing["id"]]
    assert "has no subject" in str(kept.notes[0]) and kept.issues == []
