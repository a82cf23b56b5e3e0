"""The audit chain detects changed, removed (also at the end) and re-ordered entries, on
SQLite and PostgreSQL, through the library and through `medtwin audit verify`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.interop.fhir.validate import validate_resource
from medtwin.security.audit import AuditEntry, AuditLog
from medtwin.security.audit_fhir import audit_bundle


def _fill(log: AuditLog, n: int = 6) -> None:
    for i in range(n):
        log.append(AuditEntry(actor=f"clinician:dr{i}", role="clinician", action="read",
                              resource="timeline", outcome="success", patient_id=f"p{i % 2}",
                              source="127.0.0.1"))


def _tamper(store, sql: str) -> None:
    with store.engine.begin() as conn:
        for stmt in sql.split(";"):
            conn.execute(text(stmt))


TAMPER = {
    "changed": ("UPDATE audit_log SET outcome = 'denied' WHERE seq = 3", "changed", 3),
    "actor": ("UPDATE audit_log SET actor = 'clinician:nobody' WHERE seq = 2", "changed", 2),
    "removed": ("DELETE FROM audit_log WHERE seq = 4", "removed", 4),
    "removed-last": ("DELETE FROM audit_log WHERE seq >= 5", "removed", 5),
    "reordered": ("UPDATE audit_log SET seq = 100 WHERE seq = 2; "
                  "UPDATE audit_log SET seq = 2 WHERE seq = 3; "
                  "UPDATE audit_log SET seq = 3 WHERE seq = 100", "reordered", 2),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampering_is_detected_and_located(secure_store, audit_log, case):
    store, db, schema = secure_store
    log = audit_log(store)
    _fill(log)
    assert log.verify().ok
    sql, kind, seq = TAMPER[case]
    _tamper(store, sql)
    v = log.verify()
    assert not v.ok
    assert any(p.kind == kind and p.seq == seq for p in v.problems), v.text()
    if schema is None:  # the command on the same file says the same
        out = CliRunner().invoke(app, ["audit", "verify", "--db", db])
        assert out.exit_code == 1 and kind in out.output and f"#{seq}" in out.output


def test_intact_chain_verifies_and_concurrent_appends_stay_chained(secure_store, audit_log):
    store, _, _ = secure_store
    log = audit_log(store)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: log.append(AuditEntry(actor=f"u{i}", action="read",
                                                      resource="x", outcome="success")),
                      range(40)))
    v = log.verify()
    assert v.ok and v.entries == 40 and v.head_seq == 40, v.text()


def test_audit_events_are_valid_fhir(secure_store, audit_log):
    store, _, _ = secure_store
    log = audit_log(store)
    _fill(log, 3)
    log.append(AuditEntry(actor="anonymous", action="authenticate", resource="/patients",
                          outcome="denied", detail="bad token"))
    bundle = audit_bundle(log.entries())
    assert len(bundle["entry"]) == 4
    for e in bundle["entry"]:
        _, issues = validate_resource(e["resource"])
        assert not issues, issues
    assert bundle["entry"][-1]["resource"]["outcome"] == "8"


def test_recent_reads_the_last_entries_newest_first(secure_store, audit_log):
    store, _, _ = secure_store
    log = audit_log(store)
    _fill(log, 6)
    assert [e.seq for e in log.recent(3)] == [6, 5, 4]
    assert [e.seq for e in log.recent(50)] == [6, 5, 4, 3, 2, 1]


def test_anchors_are_written_at_the_start_every_n_entries_and_at_close(secure_store,
                                                                        audit_log):
    store, _, _ = secure_store
    log = audit_log(store, anchor_every=4, anchor_seconds=3600)
    _fill(log, 10)
    seqs = sorted(a.seq for a in log.anchors.read())
    assert seqs == [1, 4, 8]  # the start of keying, then every 4 entries
    log.close()  # the entries since the last anchor are anchored at shutdown
    assert sorted(a.seq for a in log.anchors.read()) == [1, 4, 8, 10]
    timed = audit_log(store, anchor_every=1000, anchor_seconds=1e-9)
    _fill(timed, 1)
    assert max(a.seq for a in log.anchors.read()) == 11  # T seconds have passed
    assert log.verify().ok
