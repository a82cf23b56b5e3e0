"""Issue 12, finding 4: the four consistent rewrites of the audit chain the tester did against
the old unkeyed chain, done the same way here, as an attacker with full write access to the
database but not to the key file or the anchor file. The attacker knows medtwin's code, so
recomputes every hash with it (plain SHA-256, the only hash one can compute without the key).
Each rewrite must be found by `verify` (and `medtwin audit verify`), naming what it found."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.security.audit import GENESIS, AuditEntry, AuditLog, _row_entry, body_hash, link_hash
from medtwin.security.crypto import KeyRing
from medtwin.store import schema as t

BREAK_GLASS = {7, 15, 23}


def _fill(log: AuditLog, n: int = 30) -> None:
    """``n`` entries; the ones in BREAK_GLASS are break-glass reads of p9."""
    for i in range(1, n + 1):
        glass = i in BREAK_GLASS
        log.append(AuditEntry(actor=f"clinician:dr{i % 4}", role="clinician", action="read",
                              resource="timeline", outcome="success",
                              patient_id="p9" if glass else f"p{i % 3}", source="10.0.0.5",
                              detail="break-glass: emergency" if glass else None))


def _rechain(store, *, key_id: object = "keep") -> None:
    """Recompute body hash, link and head of every row with medtwin's own unkeyed hash, as an
    attacker without the key does after a change (``key_id=None`` also claims the rows are
    from before keying)."""
    with store.engine.begin() as conn:
        rows = conn.execute(select(t.audit_log).order_by(t.audit_log.c.seq)).mappings().all()
        prev = GENESIS
        for r in rows:
            b = body_hash(_row_entry(r))
            h = link_hash(prev, int(r["seq"]), b)
            values = {"body_hash": b, "prev_hash": prev, "hash": h}
            if key_id != "keep":
                values["key_id"] = key_id
            conn.execute(update(t.audit_log).where(t.audit_log.c.seq == r["seq"]).values(values))
            prev = h
        conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1)
                     .values(seq=int(rows[-1]["seq"]) if rows else 0, hash=prev,
                             key_id=None if key_id is None else rows[-1]["key_id"]
                             if rows else None))


def _renumber(store) -> None:
    """Close the gaps: entries get the numbers 1..n in their order."""
    with store.engine.begin() as conn:
        seqs = conn.scalars(select(t.audit_log.c.seq).order_by(t.audit_log.c.seq)).all()
        for new, old in enumerate(seqs, start=1):
            if new != old:
                conn.execute(update(t.audit_log).where(t.audit_log.c.seq == old)
                             .values(seq=new))


def _kinds(v) -> set[str]:
    return {p.kind for p in v.problems}


@pytest.fixture
def chain(secure_store, audit_log):
    """A chain of 30 entries anchored every 10 (anchors at #1, #10, #20, #30; the
    break-glass entries are not anchored on their own here, so that each rewrite is found
    by the periodic anchors alone)."""
    store, db, schema = secure_store
    log = audit_log(store, anchor_every=10, anchor_sensitive=False)
    _fill(log)
    v = log.verify()
    assert v.ok and v.anchors >= 4, v.text()
    return store, db, schema, log


def _cli_says(db: str, schema: str | None, *words: str) -> None:
    if schema is not None:  # the command has no schema option; the library said it already
        return
    out = CliRunner().invoke(app, ["audit", "verify", "--db", db, "--json"])
    assert out.exit_code == 1, out.output
    report = json.loads(out.output)
    found = " ".join(f"{p['kind']}: {p['message']}" for p in report["problems"])
    for w in words:
        assert w in found, (w, found)


def test_a_change_and_recompute_every_hash_after_it(chain):
    store, db, schema, log = chain
    with store.engine.begin() as conn:  # hide who read patient 1 at #12
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 12)
                     .values(actor="clinician:nobody"))
    _rechain(store)
    v = log.verify()
    assert not v.ok
    forged = [p for p in v.problems if p.kind == "forged"]
    assert forged and forged[0].seq == 1  # every hash was recomputed: none verifies any more
    assert any(p.kind == "anchor" and p.seq in {10, 20, 30} for p in v.problems), v.text()
    assert "rewritten by someone without the key" in v.text()
    _cli_says(db, schema, "forged", "not the one anchored")


@pytest.mark.parametrize("claim_legacy", [False, True], ids=["keyed-rows", "rows-unkeyed"])
def test_b_erase_break_glass_entries_and_renumber(chain, claim_legacy):
    store, db, schema, log = chain
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_log).where(t.audit_log.c.detail.like("break-glass%")))
    _renumber(store)
    _rechain(store, key_id=None if claim_legacy else "keep")
    v = log.verify()
    assert not v.ok
    assert v.entries == 27 and not any(
        e.detail for e in log.entries())  # the break-glass entries are really gone
    first = "unkeyed" if claim_legacy else "forged"
    assert any(p.kind == first for p in v.problems), v.text()
    beyond = [p for p in v.problems if p.kind == "anchor" and p.seq == 30]
    assert beyond and "dropped from the end" in beyond[0].message, v.text()
    _cli_says(db, schema, first, "records entry #30, but the chain ends at #27")


def test_c_drop_the_tail_and_move_the_head(chain):
    store, db, schema, log = chain
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_log).where(t.audit_log.c.seq > 22))
        last = conn.execute(select(t.audit_log.c.hash, t.audit_log.c.key_id)
                            .where(t.audit_log.c.seq == 22)).one()
        conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1)
                     .values(seq=22, hash=last.hash, key_id=last.key_id))
    v = log.verify()
    assert not v.ok
    # every remaining entry is genuine: only the anchor outside the database shows the loss
    assert _kinds(v) == {"anchor"}, v.text()
    assert v.problems[0].seq == 30 and "chain ends at #22" in v.problems[0].message
    _cli_says(db, schema, "chain ends at #22", "dropped from the end")


def test_d_wipe_the_table_and_reset(chain, audit_log):
    store, db, schema, log = chain
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_log))
        conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1)
                     .values(seq=0, hash=GENESIS, key_id=None))
    v = log.verify()
    assert not v.ok and v.entries == 0
    assert any(p.kind == "anchor" and "wiped and restarted" in p.message for p in v.problems)
    _cli_says(db, schema, "chain ends at #0")
    # the service goes on writing: a fresh chain, correctly keyed, yet not the anchored one
    fresh = audit_log(store, anchor_every=10)
    _fill(fresh, 5)
    v = fresh.verify()
    assert not v.ok
    assert any(p.kind == "anchor" and p.seq == 1 and "not the one anchored" in p.message
               for p in v.problems), v.text()
    assert any(p.kind == "anchor" and p.seq == 30 for p in v.problems), v.text()
    _cli_says(db, schema, "not the one anchored", "chain ends at #5")


def test_an_edited_anchor_line_is_found(chain):
    store, _, _, log = chain
    path = log.anchors.path
    lines = path.read_text().splitlines()
    a = json.loads(lines[-1])
    a["seq"] = 25  # move the last anchor back, as if the chain had ended earlier
    path.write_text("\n".join(lines[:-1] + [json.dumps(a)]) + "\n")
    v = log.verify()
    assert any(p.kind == "anchor" and "wrong HMAC" in p.message for p in v.problems), v.text()


def test_a_chain_without_its_anchor_file_does_not_pass(chain):
    store, _, _, log = chain
    log.anchors.path.unlink()
    v = log.verify()
    assert not v.ok and any("no anchor in" in p.message for p in v.problems), v.text()


def test_rotation_keeps_the_chain_verifiable_and_a_foreign_ring_says_which_key(chain):
    store, _, _, log = chain
    old = store.keyring
    rotated = old.rotated()
    AuditLog(store.engine, rotated, log.anchors).append(
        AuditEntry(actor="cli:root", action="rotate-key", resource="identity", outcome="success"))
    reduced = rotated.without_old_keys()  # the old AES key is gone, its audit key is not
    assert old.current not in reduced.keys
    v = AuditLog(store.engine, reduced, log.anchors).verify()
    assert v.ok and v.entries == 31, v.text()
    foreign = AuditLog(store.engine, KeyRing.generate(), log.anchors).verify()
    assert any(p.kind == "key" and old.current in p.message for p in foreign.problems)


def test_entries_from_before_keying_are_adopted_once_and_stay_protected(secure_store,
                                                                         audit_log):
    """A store written by the old (unkeyed) chain: its entries are accepted as legacy up to
    where keying started, and rewriting them is still found."""
    store, _, _ = secure_store
    prev, rows = GENESIS, []
    for seq in range(1, 6):
        e = AuditEntry(actor="clinician:old", action="read", resource="timeline",
                       outcome="success", patient_id="p1")
        b = body_hash(e)
        h = link_hash(prev, seq, b)
        rows.append({**e.body(), "time": e.time, "seq": seq, "body_hash": b,
                     "prev_hash": prev, "hash": h, "key_id": None})
        prev = h
    with store.engine.begin() as conn:
        conn.execute(t.audit_log.insert(), rows)
        conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1)
                     .values(seq=5, hash=prev, key_id=None))
    log = audit_log(store)
    log.append(AuditEntry(actor="clinician:new", action="read", resource="timeline",
                          outcome="success"))
    v = log.verify()
    assert v.ok and v.legacy == 5, v.text()
    with store.engine.begin() as conn:
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 2)
                     .values(actor="clinician:nobody"))
    _rechain(store, key_id=None)  # rewrite everything as if it were all from before keying
    v = log.verify()
    assert not v.ok and "unkeyed" in _kinds(v), v.text()


def _drop_last(store) -> None:
    """Delete the newest entry and move the head back onto the one before it."""
    with store.engine.begin() as conn:
        top = conn.scalar(select(t.audit_log.c.seq).order_by(t.audit_log.c.seq.desc()))
        conn.execute(delete(t.audit_log).where(t.audit_log.c.seq == top))
        last = conn.execute(select(t.audit_log.c.hash, t.audit_log.c.key_id)
                            .where(t.audit_log.c.seq == top - 1)).one()
        conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1)
                     .values(seq=top - 1, hash=last.hash, key_id=last.key_id))


def test_a_fresh_break_glass_entry_cannot_be_dropped_from_the_tail(secure_store, audit_log):
    """Review of issue 12: with the default anchoring (every 1000 entries or 300 s, checked
    on the next append) a break-glass entry just written could be dropped with the head
    moved back, and verify said "intact". Sensitive entries are anchored at once."""
    store, _db, _schema = secure_store
    log = audit_log(store)  # the service's defaults
    for i in range(50):
        log.append(AuditEntry(actor="clinician:dr1", role="clinician", action="read",
                              resource="timeline", outcome="success", patient_id=f"p{i % 3}"))
    log.append(AuditEntry(actor="admin:root", role="admin", action="read", resource="Patient",
                          outcome="success", patient_id="p9",
                          detail="break-glass: curiosity"))
    assert log.verify().ok
    _drop_last(store)
    v = log.verify()
    assert not v.ok and _kinds(v) == {"anchor"}, v.text()


def test_an_idle_tail_is_anchored_by_the_timer(secure_store, audit_log):
    """Ordinary entries wait for the next anchor, but never longer than anchor_seconds,
    even when nothing more is appended."""
    store, _db, _schema = secure_store
    log = audit_log(store, anchor_seconds=0.3)
    log.append(AuditEntry(actor="clinician:dr1", role="clinician", action="read",
                          resource="timeline", outcome="success", patient_id="p1"))
    for _ in range(3):
        log.append(AuditEntry(actor="clinician:dr1", role="clinician", action="read",
                              resource="timeline", outcome="success", patient_id="p2"))
    time.sleep(1.0)
    _drop_last(store)
    assert not log.verify().ok


def test_an_entry_with_a_nul_is_kept_not_lost(secure_store, audit_log):
    """Review of issue 12: a NUL in a user name (multipart login) reached the audit row and
    PostgreSQL refused it (a 500). It is kept, with U+FFFD in its place."""
    store, _db, _schema = secure_store
    log = audit_log(store)
    log.append(AuditEntry(actor="anonymous", action="login", resource="user:dr\x00a",
                          outcome="failure", detail="x\x00y"))
    (entry,) = log.entries()[-1:]
    assert entry.resource == "user:dr\ufffda" and log.verify().ok
