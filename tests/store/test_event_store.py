"""The event store: append-only, idempotent, versioned, separate identity, typed errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import select

from medtwin.core.errors import NotFoundError, StoreError
from medtwin.core.records import Intervention, Observation, Patient
from medtwin.store import schema
from medtwin.store.engine import MIGRATIONS
from medtwin.store.event_store import EventStore

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


def _patient(pid: str = "p1") -> Patient:
    return Patient(id=pid, source_id=f"Patient/{pid}", gender="female", birth_year=1970,
                   identity={"name": [{"family": "Example", "given": ["Ada"]}],
                             "birth_date": "1970-02-03", "mrn": "MRN-1"})


def _hr(i: int, value: float = 70.0, pid: str = "p1") -> Observation:
    return Observation(subject=pid, code="8867-4", time=T0 + timedelta(hours=i), value=value,
                       unit="/min", source_id=f"Observation/hr-{i}")


def test_append_is_idempotent_and_counts_duplicates(store):
    first = store.append([_patient()], [_hr(i) for i in range(5)])
    assert (first.stored, first.duplicates, first.patients_added) == (5, 0, 1)
    again = store.append([_patient()], [_hr(i) for i in range(6)])
    assert (again.stored, again.duplicates, again.patients_added) == (1, 5, 0)
    assert store.counts() == {"observation": 6}
    # the same record twice in one batch is stored once
    twice = store.append([], [_hr(9), _hr(9)])
    assert (twice.stored, twice.duplicates) == (1, 1)


def test_a_changed_record_is_a_new_version_and_reads_show_the_latest(store):
    store.append([_patient()], [_hr(0, 70.0)])
    store.append([], [_hr(0, 72.0)], may_amend=True)  # only an allowed writer amends
    assert store.counts() == {"observation": 2}  # both versions kept, nothing updated
    (latest,) = store.timeline("p1")
    assert latest.value == 72.0


def test_timeline_filters_by_code_and_time(store):
    temp = Observation(subject="p1", code="8310-5", time=T0, value=37.2, unit="Cel",
                       source_id="Observation/t")
    store.append([_patient()], [_hr(i) for i in range(4)] + [temp])
    assert [r.code for r in store.timeline("p1", codes=["8310-5"])] == ["8310-5"]
    window = store.timeline("p1", codes=["8867-4"], since=T0 + timedelta(hours=1),
                            until=T0 + timedelta(hours=3))
    assert [r.source_id for r in window] == ["Observation/hr-1", "Observation/hr-2"]
    frame = store.timeline_frame("p1", kinds=["observation"])
    assert list(frame.columns) == ["time", "kind", "code", "display", "value", "unit",
                                   "source_id", "quality"]  # + the data-quality flag
    assert len(frame) == 5 and str(frame["time"].dt.tz) == "UTC"


def test_identity_is_kept_apart_from_clinical_events(store):
    store.append([_patient()], [_hr(0)])
    with store.engine.connect() as conn:
        payloads = [str(p) for p in conn.scalars(select(schema.events.c.payload))]
        ident = conn.scalar(select(schema.patient_identity.c.data))
        cols = set(conn.execute(select(schema.patients)).mappings().first())
    assert not any("Example" in p or "MRN-1" in p for p in payloads)
    assert ident["mrn"] == "MRN-1" and ident["name"][0]["family"] == "Example"
    assert "name" not in cols and "birth_date" not in cols
    assert store.patient("p1").identity["birth_date"] == "1970-02-03"
    assert "Example" not in store.patients().to_string()


def test_unknown_patient_refuses_the_whole_write(store):
    store.append([_patient()], [_hr(0)])
    with pytest.raises(NotFoundError, match="unknown patient"):
        store.append([], [_hr(1), _hr(2, pid="ghost")])
    assert store.counts() == {"observation": 1}
    with pytest.raises(NotFoundError, match="medtwin patients"):
        store.timeline("ghost")


def test_interventions_round_trip(store):
    dose = Intervention(subject="p1", kind="infusion", time=T0, amount=1000, unit="mg",
                        source_id="MedicationAdministration/v1", route="47625008",
                        duration=timedelta(minutes=60), code="11124", display="vancomycin")
    store.append([_patient()], [dose])
    (back,) = store.timeline("p1", kinds=["intervention"])
    assert back == dose


def test_a_store_that_cannot_be_reached_gives_a_typed_error():
    with pytest.raises(StoreError, match="cannot open the store"):
        EventStore.open("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="unsupported store URL"):
        EventStore.open("mysql://x/y")


def test_sqlite_runs_in_wal_mode(tmp_path):
    with EventStore.open(tmp_path / "s.sqlite") as s, s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


@pytest.mark.postgres
def test_postgres_schema_is_isolated_and_migrated(pg_url, pg_schema):
    with EventStore.open(pg_url, schema=pg_schema) as s, s.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT current_schema()").scalar() == pg_schema
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert head is not None and int(head) >= 3  # security (0002) and alerts (0003) exist
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head
