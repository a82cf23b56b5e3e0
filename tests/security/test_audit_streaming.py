"""Issue 12, finding 12 (audit part): `audit verify` loaded the whole chain into memory
(40,049 entries: 318 MB). It now reads the chain a page at a time: its memory does not grow
with the chain, and problems on page boundaries are still found."""

from __future__ import annotations

import tracemalloc

from sqlalchemy import delete, select, update

from medtwin.security.audit import AuditEntry, AuditLog
from medtwin.security.crypto import KeyRing
from medtwin.store import schema as t
from medtwin.store.event_store import EventStore

N = 25_000


def _long_chain(tmp_path, page: int) -> tuple[EventStore, AuditLog]:
    store = EventStore.open(tmp_path / "long.sqlite")
    log = AuditLog(store.engine, KeyRing.generate(), page=page)
    for _ in range(N // 5000):
        log.append_many([AuditEntry(actor=f"clinician:dr{i % 40}", role="clinician",
                                    action="read", resource="timeline", outcome="success",
                                    patient_id=f"p{i % 300}", source="10.1.2.3",
                                    detail="ward round " * 4) for i in range(5000)])
    return store, log


def test_verify_reads_page_by_page_in_constant_memory(tmp_path):
    store, log = _long_chain(tmp_path, page=1000)
    pages: list[int] = []
    tracemalloc.start()
    try:
        v = log.verify(progress=pages.append)
        verify_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with store.engine.connect() as conn:  # what the old verify did: every row at once
            everything = conn.execute(select(t.audit_log)).mappings().all()
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert v.ok and v.entries == N == len(everything), v.text()
    assert max(pages) == 1000 and sum(pages) == N and len(pages) == N // 1000
    assert verify_peak < whole_peak / 5, (verify_peak, whole_peak)
    store.close()


def test_problems_on_page_boundaries_are_found(tmp_path):
    store, log = _long_chain(tmp_path, page=1000)
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_log).where(t.audit_log.c.seq == 3000))
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 3001)
                     .values(outcome="denied"))
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 7000)
                     .values(detail="nothing to see"))
    v = log.verify()
    found = {(p.kind, p.seq) for p in v.problems}
    assert {("removed", 3000), ("changed", 3001), ("changed", 7000)} <= found, v.text()
    store.close()
