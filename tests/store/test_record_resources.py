"""Typed records and FHIR resources stay one record (issue 13): a reading written as a typed
record (live, REST, HL7 v2) is stored with its FHIR resource in the same transaction, and a
FHIR delete reaches the typed record, so no twin, timeline or live feed uses a deleted value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medtwin.core.records import Observation, Patient
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.interop.fhir.write import QUALITY_SYSTEM, record_writes
from medtwin.store.latest import latest_per_code

UCUM = "http://unitsofmeasure.org"
T = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _reading(sid: str, value: float, when: datetime = T) -> Observation:
    return Observation(subject="p1", code="8867-4", system="http://loinc.org", time=when,
                       value=value, unit="/min", source_id=sid, device="mon-1")


def _hr(rid: str, value: float) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-01-05T08:00:00Z",
            "valueQuantity": {"value": value, "unit": "/min", "system": UCUM, "code": "/min"}}


def test_typed_record_writes_are_fhir_readable_and_keep_the_quarantine_flag(store):
    repo = FhirRepository(store)
    store.append([Patient(id="p1", source_id="Patient/p1")])
    later = datetime.now(UTC) + timedelta(days=2)
    readings = [_reading("mon-1/42", 71), _reading("mon-1/43", 72, later)]
    flags = [None, "future-dated"]
    res = store.append(records=readings, quality=flags, may_amend=False,
                       resources=record_writes(readings, flags))
    assert res.stored == 2
    found = repo.search("Observation", [("patient", "p1"), ("code", "8867-4")]).matches
    assert len(found) == 2
    by_value = {r.resource()["valueQuantity"]["value"]: r.resource() for r in found}
    assert "meta" not in by_value[71.0] or "tag" not in by_value[71.0]["meta"]
    assert by_value[72.0]["meta"]["tag"] == [{"system": QUALITY_SYSTEM,
                                              "code": "future-dated"}]
    again = store.append(records=readings, quality=flags, may_amend=False,
                         resources=record_writes(readings, flags))  # a retried batch
    assert again.duplicates == 2
    assert repo.store.type_counts() == {"Observation": 2}
    assert [h.version for h in repo.history("Observation", found[0].id).resources] == [1]


def test_a_fhir_delete_hides_the_derived_record_from_every_read(store):
    repo = FhirRepository(store)
    repo.update("Patient", "p1", {"resourceType": "Patient", "id": "p1"})
    repo.update("Observation", "o1", _hr("o1", 70))
    repo.update("Observation", "o2", _hr("o2", 90))
    assert sorted(r.value for r in store.timeline("p1")) == [70.0, 90.0]
    cursor = store.last_seq()
    repo.delete("Observation", "o2")
    assert [r.value for r in store.timeline("p1")] == [70.0]
    assert [r["value"] for r in store.timeline_entries("p1")] == [70.0]
    assert [r["value"] for r in store.timeline_page("p1")[0]] == [70.0]
    assert [r.value for r in latest_per_code(store, ["p1"], ["8867-4"])["p1"]] == [70.0]
    assert store.records_after("p1", cursor) == []  # the tombstone is no new reading
    versions = store.history("p1", "observation", "Observation/o2")
    assert [v["quality"] for v in versions] == [None, "deleted"]  # history kept
    repo.update("Observation", "o2", _hr("o2", 90))  # created again: visible again
    assert sorted(r.value for r in store.timeline("p1")) == [70.0, 90.0]


def test_deleting_the_resource_of_a_live_reading_reaches_its_record(store):
    repo = FhirRepository(store)
    store.append([Patient(id="p1", source_id="Patient/p1")])
    reading = _reading("mon-1/99", 64)
    store.append(records=[reading], may_amend=False, resources=record_writes([reading]))
    (res,) = repo.search("Observation", [("patient", "p1")]).matches
    assert res.id != "mon-1/99" and [r.value for r in store.timeline("p1")] == [64.0]
    repo.delete("Observation", res.id)
    assert store.timeline("p1") == []
