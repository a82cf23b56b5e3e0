"""Issue 12 review: readings stored with a future time before the clinical-time policy
existed are quarantined by the migration that adds the flag (else one HR dated 9999 stays
"latest" forever in an upgraded store)."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from medtwin.store.engine import MIGRATIONS, make_engine, migrate
from medtwin.store.event_store import EventStore


def _upgrade(engine, target: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["schema"] = None
        command.upgrade(cfg, target)


def test_upgrading_quarantines_readings_already_dated_in_the_future(tmp_path):
    db = tmp_path / "old.sqlite"
    engine = make_engine(db)
    _upgrade(engine, "0004")
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patients (id, source_id, deceased, recorded_at) "
                          "VALUES ('p1', 'Patient/p1', 0, :t)"), {"t": now})
        for sid, when, value in (("ok", "2026-01-05 08:00:00.000000", 70.0),
                                 ("bad", "9999-01-01 00:00:00.000000", 60.0)):
            conn.execute(text(
                "INSERT INTO events (idem_key, kind, patient_id, source_id, code, time, value, "
                "unit, payload, recorded_at) VALUES (:k, 'observation', 'p1', :s, '8867-4', "
                ":w, :v, '/min', :p, :t)"),
                {"k": sid, "s": sid, "w": when, "v": value, "t": now,
                 "p": '{"subject":"p1","code":"8867-4","time":"' + when.replace(" ", "T")
                      + '+00:00","value":' + str(value) + ',"unit":"/min","source_id":"'
                      + sid + '"}'})
    migrate(engine)
    engine.dispose()
    with EventStore.open(db) as store:
        assert [o.source_id for o in store.timeline("p1")] == ["ok"]
        flagged = store.timeline_entries("p1", include_flagged=True)
        assert {(e["source_id"], e["quality"]) for e in flagged} == {
            ("ok", None), ("bad", "future-dated")}
