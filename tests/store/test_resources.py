"""The versioned FHIR resource store through FhirRepository, on SQLite and PostgreSQL:
versions, vread, logical delete, If-Match, conditional create, transactions (all-or-nothing,
urn:uuid references) and the typed records derived in the same transaction."""

from __future__ import annotations

import pytest

from medtwin.core.errors import (
    ConflictError,
    GoneError,
    NotFoundError,
    PreconditionFailedError,
    ValidationError,
)
from medtwin.interop.fhir.issues import FhirImportError
from medtwin.interop.fhir.repository import FhirRepository, TxEntry

UCUM = "http://unitsofmeasure.org"


def _patient(pid: str = "p1") -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Chalmers"}],
            "identifier": [{"system": "http://acme.org/mrn", "value": pid.upper()}]}


def _hr(rid: str, value: float, pid: str = "p1") -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2026-01-05T08:00:00Z",
            "valueQuantity": {"value": value, "unit": "/min", "system": UCUM, "code": "/min"}}


def test_versions_vread_history_and_idempotent_update(store):
    repo = FhirRepository(store)
    first = repo.update("Patient", "p1", _patient())
    assert (first.version, first.created, first.changed) == (1, True, True)
    same = repo.update("Patient", "p1", _patient())
    assert (same.version, same.changed) == (1, False)  # same content: no new version
    v1 = repo.update("Observation", "o1", _hr("o1", 70))
    v2 = repo.update("Observation", "o1", _hr("o1", 72), if_match=v1.etag)
    assert v2.version == 2 and repo.read("Observation", "o1").resource()["meta"]["versionId"] \
        == "2"
    assert repo.vread("Observation", "o1", 1).resource()["valueQuantity"]["value"] == 70
    assert [h.version for h in repo.history("Observation", "o1").resources] == [2, 1]
    # the typed record follows the current version (an amendment, previous kept)
    assert [r.value for r in store.timeline("p1")] == [72.0]
    with pytest.raises(PreconditionFailedError, match="version 1"):
        repo.update("Observation", "o1", _hr("o1", 75), if_match='W/"1"')
    with pytest.raises(NotFoundError):
        repo.vread("Observation", "o1", 9)


def test_logical_delete_then_gone_and_history_kept(store):
    repo = FhirRepository(store)
    repo.update("Patient", "p1", _patient())
    repo.update("Observation", "o1", _hr("o1", 70))
    gone = repo.delete("Observation", "o1")
    assert gone is not None and gone.deleted and gone.version == 2
    with pytest.raises(GoneError):
        repo.read("Observation", "o1")
    with pytest.raises(GoneError):
        repo.vread("Observation", "o1", 2)
    assert repo.vread("Observation", "o1", 1).content is not None
    assert repo.delete("Observation", "o1") is None  # nothing left to delete
    assert repo.search("Observation", []).total == 0
    again = repo.update("Observation", "o1", _hr("o1", 70))
    assert again.version == 3 and again.created


def test_bad_ids_types_and_mismatches_are_refused(store):
    repo = FhirRepository(store)
    with pytest.raises(ValidationError, match="FHIR id"):
        repo.update("Patient", "bad id!", _patient("x"))
    with pytest.raises(ValidationError, match="differs"):
        repo.update("Patient", "p2", _patient("p1"))
    with pytest.raises(ValidationError, match="not a FHIR R4 resource type"):
        repo.read("Nope", "x")
    with pytest.raises(FhirImportError):
        repo.create({"resourceType": "Patient", "birthDate": "not-a-date"})
    with pytest.raises(NotFoundError):
        repo.read("Patient", "p1")


def test_conditional_create(store):
    repo = FhirRepository(store)
    made = repo.create(_patient("p1"), if_none_exist="identifier=http://acme.org/mrn|P1")
    assert made.created and made.id != "p1"  # create assigns the id
    again = repo.create(_patient("p1"), if_none_exist="identifier=http://acme.org/mrn|P1")
    assert (again.id, again.created, again.changed) == (made.id, False, False)
    repo.create(_patient("p1"))
    with pytest.raises(PreconditionFailedError, match="more than one"):
        repo.create(_patient("p1"), if_none_exist="identifier=http://acme.org/mrn|P1")


def test_transaction_resolves_urn_uuid_and_is_all_or_nothing(store):
    repo = FhirRepository(store)
    pat = "urn:uuid:9f6ab7f2-6a5b-4b8e-8a8f-0f0a3d4c2b11"
    obs = _hr("ignored", 70, "x")
    obs["subject"] = {"reference": pat}
    results = repo.transaction([TxEntry("POST", "Observation", obs),
                                TxEntry("POST", "Patient", _patient("x"), full_url=pat)])
    assert [r.status for r in results] == [201, 201]
    pid = results[1].stored.id
    assert results[0].stored.resource()["subject"] == {"reference": f"Patient/{pid}"}
    assert results[0].stored.patient_id == pid and len(store.timeline(pid)) == 1
    before = repo.store.type_counts()
    bad = _hr("o2", 70, pid)
    bad["valueQuantity"]["value"] = 5000  # implausible heart rate: the policy refuses it
    with pytest.raises(FhirImportError):
        repo.transaction([TxEntry("PUT", "Patient/p9", _patient("p9")),
                          TxEntry("PUT", "Observation/o2", bad)])
    dangling = _hr("o3", 70, pid)
    dangling["subject"] = {"reference": "urn:uuid:00000000-0000-0000-0000-000000000001"}
    with pytest.raises(FhirImportError, match="does not match any fullUrl"):
        repo.transaction([TxEntry("PUT", "Patient/p9", _patient("p9")),
                          TxEntry("PUT", "Observation/o3", dangling)])
    assert repo.store.type_counts() == before  # nothing of either was written


def test_valid_fhir_without_optional_elements_is_stored(store):
    """Issue 13: a MedicationAdministration without dosage.dose is valid FHIR: stored."""
    repo = FhirRepository(store)
    repo.update("Patient", "p1", _patient())
    ma = {"resourceType": "MedicationAdministration", "id": "ma1", "status": "completed",
          "medicationCodeableConcept": {"text": "vancomycin"},
          "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-01-05T08:00:00Z"}
    got = repo.update("MedicationAdministration", "ma1", ma)
    assert got.created and repo.read("MedicationAdministration", "ma1").patient_id == "p1"
    assert repo.search("MedicationAdministration", [("patient", "p1")]).total == 1


def test_device_writer_may_not_amend_a_record(store):
    repo = FhirRepository(store)
    repo.update("Patient", "p1", _patient())
    repo.update("Observation", "o1", _hr("o1", 70), may_amend=False)
    with pytest.raises(ConflictError, match="append-only"):
        repo.update("Observation", "o1", _hr("o1", 90), may_amend=False)
    assert repo.read("Observation", "o1").version == 1


def test_unknown_subject_patient_is_refused(store):
    repo = FhirRepository(store)
    with pytest.raises(ValidationError, match="stored Patient"):
        repo.update("Observation", "o1", _hr("o1", 70, "nobody"))
    with pytest.raises(NotFoundError):
        repo.read("Observation", "o1")


def test_text_is_the_resource_as_json(store):
    import json

    repo = FhirRepository(store)
    plain = repo.update("Patient", "p1", _patient())
    tagged = repo.update("Patient", "p2", {**_patient("p2"), "meta": {"tag": [{"code": "x"}]}})
    for s in (plain, tagged, repo.read("Patient", "p1")):
        assert json.loads(s.text()) == s.resource()
