"""The store's bulk write path: canonical payloads, unchanged keys, one transaction per call."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select

from medtwin.core.errors import NotFoundError
from medtwin.core.records import (
    KIND_OF,
    Component,
    Condition,
    Consent,
    Device,
    Encounter,
    Intervention,
    MedicationRequest,
    Observation,
    Patient,
)
from medtwin.store import event_store, schema
from medtwin.store import rows as es

T0 = datetime(2026, 1, 5, 8, 0, 0, 123456, tzinfo=UTC)


def _patient(pid: str = "p1") -> Patient:
    return Patient(id=pid, source_id=f"Patient/{pid}", gender="male", birth_year=1960,
                   identity={"name": [{"family": "Quote\"Brace{}", "given": ["Ünï"]}]})


def _every_kind(pid: str = "p1") -> list:
    # source ids are per patient: a record never moves between patients (issue 12)
    return [
        Observation(subject=pid, code="85354-9", time=T0, value=None, unit=None,
                    source_id=f"Observation/bp-{pid}", display='BP "panel", {x}\\y ü',
                    components=(Component(code="8480-6", value=120.0, unit="mm[Hg]"),
                                Component(code="8462-4", value=80.5, unit="mm[Hg]"))),
        Observation(subject=pid, code="8867-4", time=T0.astimezone(timezone(timedelta(hours=2))),
                    value=72, unit="/min", source_id=f"Observation/hr-{pid}"),
        Intervention(subject=pid, kind="infusion", time=T0, amount=1000, unit="mg",
                     source_id=f"MedicationAdministration/v-{pid}",
                     duration=timedelta(minutes=61.5)),
        Condition(subject=pid, code="44054006", system="http://snomed.info/sct",
                  source_id=f"Condition/d-{pid}", onset=T0 - timedelta(days=400)),
        Encounter(subject=pid, source_id=f"Encounter/e-{pid}", start=T0,
                  end=T0 + timedelta(hours=1)),
        MedicationRequest(subject=pid, source_id=f"MedicationRequest/m-{pid}", time=None,
                          code="860975"),
        Device(source_id=f"Device/cgm-{pid}", subject=pid, code="cgm"),
        Consent(subject=pid, source_id=f"Consent/c-{pid}", status="active", purposes=("TREAT",),
                categories=("a", "b"), time=T0),
    ]


def test_canonical_json_is_the_serialisation_the_content_hash_always_covered():
    for rec in _every_kind():
        old = json.dumps(rec.to_dict(), sort_keys=True, separators=(",", ":"))
        assert es.canonical_json(rec) == old, type(rec).__name__
        (row,) = es.prepare_rows([rec])
        content = hashlib.sha256(old.encode()).hexdigest()
        assert row["idem_key"] == es.idempotency_key(KIND_OF[type(rec)], rec.source_id, content)
        assert row["payload"] == old


def test_every_kind_round_trips_through_the_bulk_insert(store):
    recs = _every_kind()
    result = store.append([_patient()], recs)
    assert (result.stored, result.duplicates, result.patients_added) == (len(recs), 0, 1)
    back = store.timeline("p1")
    assert sorted(back, key=lambda r: r.source_id) == sorted(recs, key=lambda r: r.source_id)
    again = store.append([_patient()], recs)
    assert (again.stored, again.duplicates) == (0, len(recs))


def test_rows_stored_by_the_earlier_write_path_are_recognised(store):
    """A store written before the bulk path (payload through the JSON type, keys alike): a
    re-import stores nothing new and reads give the same records."""
    recs = _every_kind()
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(insert(schema.patients), [{"id": "p1", "source_id": "Patient/p1",
                                                "gender": None, "birth_year": None,
                                                "deceased": False, "recorded_at": now}])
        conn.execute(insert(schema.events), [
            {**row, "payload": json.loads(row["payload"]), "recorded_at": now}
            for row in es.prepare_rows(recs)])
    result = store.append([], recs)
    assert (result.stored, result.duplicates) == (0, len(recs))
    assert sorted(store.timeline("p1"), key=lambda r: r.source_id) == sorted(
        recs, key=lambda r: r.source_id)


def test_times_compare_alike_on_both_paths(store):
    """The bulk path stores times as SQLAlchemy would: filters at microsecond edges hold."""
    obs = [Observation(subject="p1", code="8867-4", time=T0 + timedelta(microseconds=i),
                       value=60.0 + i, unit="/min", source_id=f"Observation/{i}")
           for i in range(5)]
    store.append([_patient()], obs)
    window = store.timeline("p1", since=T0 + timedelta(microseconds=1),
                            until=T0 + timedelta(microseconds=3))
    assert [r.source_id for r in window] == ["Observation/1", "Observation/2"]
    with store.engine.connect() as conn:
        times = sorted(conn.scalars(select(schema.events.c.time)))
    assert times[0] == T0


def test_a_large_write_goes_in_several_statements(store, monkeypatch):
    monkeypatch.setattr(event_store, "_BULK", 7)
    monkeypatch.setattr(event_store, "_SQLITE_ROWS", 7)
    obs = [Observation(subject="p1", code="8867-4", time=T0 + timedelta(minutes=i),
                       value=float(i), unit="/min", source_id=f"Observation/{i}")
           for i in range(30)]
    result = store.append([_patient()], obs + obs[:3])
    assert (result.stored, result.duplicates) == (30, 3)
    assert store.counts() == {"observation": 30}


def test_rows_with_a_dict_payload_are_still_accepted(store):
    (rec,) = _every_kind()[:1]
    rows = es.prepare_rows([rec])
    rows[0]["payload"] = json.loads(rows[0]["payload"])
    assert store.append([_patient()], [rec], rows=rows).stored == 1
    assert store.timeline("p1") == [rec]


def test_append_batches_is_one_transaction_with_a_result_per_batch(store):
    first = es.Batch([_patient("p1")], _every_kind("p1")[:2])
    second = es.Batch([], _every_kind("p1")[2:4])  # p1 comes from the batch before
    letters = es.Batch(dead_letters=[("f.json", "why", "{}")])
    results = store.append_batches([first, second, letters])
    assert [(r.stored, r.patients_added) for r in results] == [(2, 1), (2, 0), (0, 0)]
    assert len(store.dead_letters()) == 1
    before = store.counts()
    ghost = es.Batch([], [Observation(subject="ghost", code="8867-4", time=T0, value=1.0,
                                      unit="/min", source_id="Observation/ghost")])
    with pytest.raises(NotFoundError, match="unknown patient"):
        store.append_batches([es.Batch([_patient("p2")], _every_kind("p2")), ghost])
    assert store.counts() == before  # nothing of the failed call, not even its good batch
    assert not store.has_patient("p2")


def test_batches_count_as_if_appended_one_after_the_other(store):
    recs = _every_kind("p1")
    results = store.append_batches([es.Batch([_patient("p1")], recs[:3]),
                                    es.Batch([_patient("p1")], recs[1:5])])
    assert [(r.stored, r.duplicates, r.patients_added) for r in results] == [(3, 0, 1),
                                                                            (2, 2, 0)]
    late = es.Batch([], [Observation(subject="p3", code="8867-4", time=T0, value=1.0,
                                     unit="/min", source_id="Observation/early")])
    with pytest.raises(NotFoundError, match="p3"):  # p3 comes only in the batch after it
        store.append_batches([late, es.Batch([_patient("p3")], [])])
    assert not store.has_patient("p3")
