"""Stored FHIR resources at rest (issue 13 regression): content sealed per row and bound to
Type/id/version, identifying search values only as keyed hashes, key rotation that leaves
every row readable and searchable, and a store sealed after the fact."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text, update

from medtwin.core.errors import StoreError
from medtwin.interop.fhir.repository import FhirRepository
from medtwin.security.crypto import KeyRing, KeyRingError
from medtwin.store import schema as t
from medtwin.store.event_store import EventStore

SECRETS = ("Lovelace", "lovelace", "Augusta", "augusta", "MRN-77123", "1815-12-10",
           "12 St James Square", "+44 20 7946 0000")


def _patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female",
            "name": [{"family": "Lovelace", "given": ["Augusta", "Ada"]}],
            "birthDate": "1815-12-10",
            "identifier": [{"system": "http://acme.org/mrn", "value": "MRN-77123"}],
            "telecom": [{"system": "phone", "value": "+44 20 7946 0000"}],
            "address": [{"line": ["12 St James Square"], "city": "London"}],
            "text": {"status": "generated", "div": "<div>Augusta Ada Lovelace</div>"}}


def _dump(store: EventStore) -> str:
    parts = []
    with store.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            if table.startswith("fhir_"):
                parts += [repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
    return "\n".join(parts)


def _found(repo: FhirRepository, **params: str) -> list[str]:
    return sorted(r.id for r in repo.search("Patient", list(params.items())).matches)


def test_sealed_rows_show_no_identity_and_still_answer_search(secure_store):
    store, _, _ = secure_store
    repo = FhirRepository(store)
    repo.update("Patient", "p1", _patient("p1"))
    dump = _dump(store)
    assert [s for s in SECRETS if s in dump] == []
    assert repo.read("Patient", "p1").resource()["name"][0]["family"] == "Lovelace"
    assert _found(repo, family="love") == ["p1"]
    assert _found(repo, given="ada") == ["p1"]
    assert _found(repo, **{"family:exact": "Lovelace"}) == ["p1"]
    assert _found(repo, identifier="http://acme.org/mrn|MRN-77123") == ["p1"]
    assert _found(repo, identifier="http://acme.org/mrn|") == ["p1"]
    assert _found(repo, telecom="+44 20 7946 0000") == ["p1"]
    assert _found(repo, birthdate="1815-12") == ["p1"]
    assert _found(repo, **{"address-city": "lond"}) == ["p1"]
    assert _found(repo, family="byron") == []
    # the same content again is still no new version (the keyed hash is stable)
    assert repo.update("Patient", "p1", _patient("p1")).changed is False


def test_a_sealed_row_moved_to_another_resource_does_not_open(secure_store):
    store, _, _ = secure_store
    repo = FhirRepository(store)
    repo.update("Patient", "p1", _patient("p1"))
    repo.update("Patient", "p2", {**_patient("p2"), "gender": "male"})
    v = t.fhir_versions
    with store.engine.begin() as conn:
        stolen = conn.scalar(select(v.c.content).where(v.c.res_id == "p1"))
        conn.execute(update(v).where(v.c.res_id == "p2").values(content=stolen))
    with pytest.raises(KeyRingError, match="changed or moved"):
        repo.read("Patient", "p2")
    store.keyring = None
    with pytest.raises(StoreError, match="encrypted at rest"):
        repo.read("Patient", "p1")


def test_key_rotation_reseals_resources_and_search_survives_dropping_old_keys(secure_store):
    store, _, _ = secure_store
    repo = FhirRepository(store)
    repo.update("Patient", "p1", _patient("p1"))
    repo.update("Patient", "p1", {**_patient("p1"), "gender": "other"})  # two versions
    new = store.keyring.rotated()
    store.reseal_identities(new)
    assert repo.reseal(new) == 2
    with store.engine.connect() as conn:
        tokens = conn.scalars(select(t.fhir_versions.c.content)).all()
    assert {new.key_of(x) for x in tokens} == {new.current}
    store.keyring = new.without_old_keys()  # nothing needs the old key any more
    assert repo.vread("Patient", "p1", 1).resource()["gender"] == "female"
    assert repo.read("Patient", "p1").resource()["gender"] == "other"
    assert _found(repo, family="lovel") == ["p1"]  # blind index key survives rotation


def test_a_store_sealed_after_the_fact_hides_its_index_too(tmp_path):
    db = tmp_path / "late.sqlite"
    with EventStore.open(db) as plain:
        FhirRepository(plain).update("Patient", "p1", _patient("p1"))
        assert "lovelace" in _dump(plain)  # unsealed: a throw-away store
    ring = KeyRing.generate()
    with EventStore.open(db, keyring=ring) as store:
        repo = FhirRepository(store)
        assert repo.reseal(ring) == 1
        assert [s for s in SECRETS if s in _dump(store)] == []
        assert _found(repo, family="love") == ["p1"]
        assert repo.update("Patient", "p1", _patient("p1")).changed is False
