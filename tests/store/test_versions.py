"""Issue 12, findings 1 and 3 in the store: records are append-only (only an amending writer
adds a version, never across patients or codes), reads show the history, and a flagged
reading is kept but never the latest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.errors import ConflictError
from medtwin.core.records import Observation, Patient
from medtwin.interop.importer import import_paths
from medtwin.monitor.vitals import latest_items, latest_items_many
from medtwin.store.alerts import AlertStore

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def _hr(value: float, sid: str = "Observation/hr", pid: str = "p1", code: str = "8867-4",
        t: datetime = T0) -> Observation:
    return Observation(subject=pid, code=code, time=t, value=value, unit="/min", source_id=sid)


@pytest.fixture
def ward(store):
    store.append([Patient(id=p, source_id=f"Patient/{p}") for p in ("p1", "p2")],
                 [_hr(75.0)])
    return store


def test_a_writer_that_may_not_amend_is_refused_and_the_original_stays(ward):
    with pytest.raises(ConflictError, match="'Observation/hr' already holds"):
        ward.append(records=[_hr(250.0), _hr(80.0, "Observation/other")])
    assert [o.value for o in ward.timeline("p1")] == [75.0]  # nothing of that write
    assert ward.append(records=[_hr(75.0)]).duplicates == 1  # a retry is no conflict


def test_other_patient_or_code_is_refused_even_for_an_amending_writer(ward):
    with pytest.raises(ConflictError, match="another patient"):
        ward.append(records=[_hr(75.0, pid="p2")], may_amend=True)
    with pytest.raises(ConflictError, match="code '8867-4'"):
        ward.append(records=[_hr(120.0, code="99504-3", t=datetime(2020, 1, 1, tzinfo=UTC))],
                    may_amend=True)
    assert ward.timeline("p2") == [] and [o.code for o in ward.timeline("p1")] == ["8867-4"]


def test_dead_letter_mode_keeps_the_rest_and_says_which_was_refused(ward):
    res = ward.append(records=[_hr(70.0, "Observation/new"), _hr(250.0)],
                      on_conflict="dead-letter")
    assert (res.stored, res.refused) == (1, 1) and res.refusals[0][0] == 1
    letters = ward.dead_letters()
    assert list(letters["source"]) == ["append-only"] and "250" in letters["payload"][0]


def test_amending_keeps_both_versions_and_history_shows_them(ward):
    ward.append(records=[_hr(78.0)], may_amend=True)
    assert [o.value for o in ward.timeline("p1")] == [78.0]
    hist = ward.history("p1", "observation", "Observation/hr")
    assert [(h["version"], h["record"].value) for h in hist] == [(1, 75.0), (2, 78.0)]
    assert ward.history("p2", "observation", "Observation/hr") == []  # not p2's record


def test_a_flagged_reading_is_kept_listed_and_never_the_latest(ward):
    bad = _hr(60.0, "Observation/x", t=datetime(9999, 1, 1, tzinfo=UTC))
    ward.append(records=[bad], quality=["future-dated"])
    assert latest_items(ward, "p1")["pulse"][1] == 75.0
    assert latest_items_many(ward, ["p1"])["p1"]["pulse"][1] == 75.0
    assert [e["quality"] for e in ward.timeline_entries("p1")] == [None, "future-dated"]
    assert len(ward.timeline("p1", include_flagged=True)) == 2
    assert len(ward.timeline("p1")) == 1
    ward.append(records=[_hr(90.0, "Observation/y", t=T0 + timedelta(minutes=5))])
    assert latest_items_many(ward, ["p1"])["p1"]["pulse"][1] == 90.0  # a fresh one counts


def test_timeline_pages_cover_every_row_once_including_rows_without_time(ward):
    from medtwin.core.records import Condition

    ward.append(records=[_hr(60.0 + i, f"Observation/h{i}", t=T0 + timedelta(minutes=i // 3))
                         for i in range(20)]
                + [Condition(subject="p1", code="44054006", system="http://snomed.info/sct",
                             source_id=f"Condition/c{i}") for i in range(3)])
    ward.append(records=[_hr(99.0, "Observation/h4", t=T0 + timedelta(minutes=1))],
                may_amend=True)  # an amended version replaces h4 in the listing
    whole = ward.timeline_entries("p1")
    got, after = [], None
    while True:
        rows, after = ward.timeline_page("p1", limit=4, after=after)
        got += rows
        if after is None:
            break
    assert sorted(r["source_id"] for r in got) == sorted(r["source_id"] for r in whole)
    assert len(got) == len({r["source_id"] for r in got}) == 24
    assert [r["value"] for r in got if r["source_id"] == "Observation/h4"] == [99.0]


def _bundle(path, value, when, pid="pz", oid="o1"):
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "id": pid}},
        {"fullUrl": f"urn:uuid:{oid}", "resource": {
            "resourceType": "Observation", "id": oid, "status": "final",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "/min",
                              "system": "http://unitsofmeasure.org", "code": "/min"}}}]}))
    return path


def test_an_ehr_import_amends_and_applies_the_clinical_data_policy(store, tmp_path):
    first = import_paths(store, [_bundle(tmp_path / "a.json", 75, "2026-01-05T08:00:00Z")])
    assert (first.stored, first.patients_added) == (1, 1)
    fixed = import_paths(store, [_bundle(tmp_path / "b.json", 77, "2026-01-05T08:00:00Z")])
    assert (fixed.stored, fixed.rejected) == (1, 0)  # a corrected export: a new version
    assert [h["record"].value for h in store.history("pz", "observation",
                                                     "Observation/o1")] == [75.0, 77.0]
    wrong = import_paths(store, [_bundle(tmp_path / "c.json", -5, "2026-01-05T09:00:00Z",
                                         oid="o2")])
    assert (wrong.stored, wrong.rejected) == (0, 1)
    assert "plausible range" in str(wrong.issues[-1])
    future = import_paths(store, [_bundle(tmp_path / "d.json", 50, "9999-01-01T00:00:00Z",
                                          pid="pf", oid="o3")])
    moved = import_paths(store, [_bundle(tmp_path / "e.json", 75, "2026-01-05T08:00:00Z",
                                         pid="pf")])  # pz's o1 under pf: refused, reported
    assert (moved.stored, moved.rejected) == (0, 1) and "another patient" in str(moved.issues)
    assert future.quarantined == 1 and store.timeline("pf") == []
    assert store.timeline_entries("pf")[0]["quality"] == "future-dated"
    (dq,) = AlertStore(store).active("pf")
    assert dq.rule.startswith("data-quality") and "future" in dq.message


@pytest.mark.postgres
def test_two_writers_racing_on_one_source_id_store_one_version(pg_url, pg_schema):
    """Review of issue 12: under READ COMMITTED two non-amending writers of different content
    under one new source id both passed the check, so one had amended the other's record."""
    import threading

    from medtwin.store.event_store import EventStore

    t0 = datetime(2026, 1, 5, 8, tzinfo=UTC)
    with EventStore.open(pg_url, schema=pg_schema) as store:
        store.append([Patient(id="p1", source_id="Patient/p1")])
        for round_ in range(10):
            sid = f"Observation/race-{round_}"
            outcomes: list[str] = []
            barrier = threading.Barrier(2)

            def write(value: float, sid: str = sid, outcomes: list[str] = outcomes,
                      barrier: threading.Barrier = barrier) -> None:
                obs = Observation("p1", "8867-4", t0, value, "/min", sid)
                barrier.wait()
                try:
                    store.append(records=[obs])
                    outcomes.append("stored")
                except ConflictError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=write, args=(v,)) for v in (70.0, 250.0)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert sorted(outcomes) == ["refused", "stored"], outcomes
            assert len(store.history("p1", "observation", sid)) == 1


@pytest.mark.postgres
def test_a_large_write_takes_a_bounded_number_of_locks(pg_url, pg_schema):
    """One advisory lock per (kind, source id) ran PostgreSQL's shared lock table out of
    memory on a 20,000-record write; keys now share LOCK_BUCKETS locks, taken in order."""
    from sqlalchemy import text

    from medtwin.store.event_store import EventStore
    from medtwin.store.versions import LOCK_BUCKETS, _lock_keys

    keys = {("observation", f"Observation/{i}") for i in range(50_000)}
    with EventStore.open(pg_url, schema=pg_schema) as store, store.engine.begin() as conn:
        _lock_keys(conn, keys)
        held = conn.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND pid = pg_backend_pid()"))
    assert 0.9 * LOCK_BUCKETS <= held <= LOCK_BUCKETS  # every bucket, no more
