"""Issue 16: migrations run once under a lock when several processes open a fresh store at
once; an older store is upgraded on open; a store newer than this medtwin is refused with a
typed error naming both versions, and left as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from medtwin.store.engine import make_engine
from medtwin.store.event_store import EventStore
from medtwin.store.migrate import SchemaTooNewError, StoreNotFoundError, current, head, upgrade

OPENER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from medtwin.store.event_store import EventStore
    ready, go = Path(sys.argv[3]), Path(sys.argv[4])
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    with EventStore.open(sys.argv[1], schema=sys.argv[2] or None) as s:
        print(s.schema_upgrade.before, s.schema_upgrade.after)
""")


def _open_at_once(db: str, schema: str, tmp: Path, n: int = 4) -> list[str]:
    """``n`` processes open ``db`` at the same instant; their outputs ("before after")."""
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, db, schema, str(tmp / f"r{i}"),
                               str(tmp / "go")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 240
    while not all((tmp / f"r{i}").exists() for i in range(n)):
        assert time.monotonic() < deadline, "the opener processes did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (tmp / "go").touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


def _check_one_run(outs: list[str]) -> None:
    h = head()
    assert sorted(outs) == sorted([f"None {h}"] + [f"{h} {h}"] * (len(outs) - 1)), outs


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_opening_a_fresh_postgres_schema_at_once_migrate_it_once(
        pg_url, pg_schema, tmp_path):
    _check_one_run(_open_at_once(pg_url, pg_schema, tmp_path))
    with EventStore.open(pg_url, schema=pg_schema) as s:
        assert current(s.engine) == head()
        assert s.patients().empty


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_file_at_once_migrate_it_once(tmp_path):
    db = tmp_path / "new" / "s.sqlite"
    _check_one_run(_open_at_once(str(db), "", tmp_path))


def _stamp(engine, version: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": version})


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_a_store_newer_than_this_medtwin_is_refused_and_left_intact(backend, tmp_path,
                                                                    request):
    if backend == "sqlite":
        db, schema = str(tmp_path / "s.sqlite"), None
    else:
        db, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
    from medtwin.core.records import Patient

    with EventStore.open(db, schema=schema) as s:
        s.append([Patient(id="p1", source_id="Patient/p1")])
        _stamp(s.engine, "9001")
    for create in (True, False):
        with pytest.raises(SchemaTooNewError) as err:
            EventStore.open(db, schema=schema, create=create)
        assert err.value.found == "9001" and err.value.known == head()
        msg = str(err.value)
        assert "9001" in msg and head() in msg and "pip install -U medtwin" in msg
    engine = make_engine(db, schema=schema)
    with pytest.raises(SchemaTooNewError):
        upgrade(engine, schema=schema)
    assert current(engine) == "9001"  # nothing was touched
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patients")).scalar() == 1
    engine.dispose()


def test_an_older_store_is_upgraded_on_open_and_keeps_its_data(tmp_path):
    db = tmp_path / "old.sqlite"
    engine = make_engine(db)
    assert upgrade(engine, target="0004").after == "0004"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patients (id, source_id, deceased, recorded_at) "
                          "VALUES ('p1', 'Patient/p1', 0, '2026-01-01 00:00:00')"))
    engine.dispose()
    with EventStore.open(db, create=False) as s:
        assert (s.schema_upgrade.before, s.schema_upgrade.after) == ("0004", head())
        assert list(s.patients()["id"]) == ["p1"]
    with EventStore.open(db) as s:  # at head: nothing runs
        assert not s.schema_upgrade.ran


def test_a_missing_store_is_refused_without_create_and_nothing_is_made(tmp_path):
    db = tmp_path / "no" / "such" / "s.sqlite"
    with pytest.raises(StoreNotFoundError, match="no medtwin store"):
        EventStore.open(db, create=False)
    assert not (tmp_path / "no").exists()
    other = tmp_path / "other.sqlite"  # a SQLite file that is not a medtwin store
    import sqlite3

    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreNotFoundError):
        EventStore.open(other, create=False)


@pytest.mark.postgres
def test_a_missing_postgres_schema_is_refused_without_create_and_not_made(pg_url, pg_schema):
    import psycopg

    with pytest.raises(StoreNotFoundError, match="no medtwin store"):
        EventStore.open(pg_url, schema=pg_schema, create=False)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                            (pg_schema,)).fetchone() == (0,)
