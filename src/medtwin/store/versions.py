"""Append-only records: who may add a version of a stored record, checked in the store.

A record is named by its kind and source id. Writing different content under a name already
stored adds a *version* (the previous one is kept, as FHIR versioning does), and only a writer
allowed to amend may do that (an EHR import: a corrected export). A device or a REST POST
never amends. Whoever writes, a version must stay the same patient's record of the same code:
a reading re-sent under another patient's id or another code's id is always refused, since
it would silently replace what clinicians see.

The check is one indexed look-up (``ix_events_kind_source``) of the batch's source ids per
few thousand rows, inside the write's transaction, so it sees what the write would change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from medtwin.store import schema as t
from medtwin.store.rows import idempotency_key

_LOOKUP = {"sqlite": 500, "postgresql": 5000}  # source ids per look-up statement


class _Known:
    """What is stored (or earlier in this write) under one (kind, source id)."""

    __slots__ = ("code", "deleted", "keys", "patient", "seq")

    def __init__(self, patient: str | None, code: str | None, key: str) -> None:
        self.patient, self.code, self.keys = patient, code, {key}
        self.deleted, self.seq = False, 0  # the newest stored row is a tombstone


#: advisory-lock buckets the (kind, source id) keys hash into: a write takes at most this many
#: locks, whatever its size (one lock per key ran PostgreSQL's shared lock table out of
#: memory on large imports); keys sharing a bucket only wait for each other
LOCK_BUCKETS = 1024
_LOCK_BASE = 0x6D74_7665_0000  # "mtve": apart from the other advisory locks' hashed keys


def _lock_keys(conn: Any, keys: set[tuple[str, str]]) -> None:
    """On PostgreSQL, take a transaction-scoped advisory lock per bucket of (kind, source id),
    in a fixed order, before looking: two writers sending different content under one source
    id at the same moment (two ingesters of a shared subscription, REST and MQTT) would both
    find it new under READ COMMITTED and both store it, so that a device had amended a
    record. The second now waits, then sees the first's row. SQLite writers are serialised
    by its database lock already."""
    if conn.dialect.name != "postgresql" or not keys:
        return
    ids = sorted({_LOCK_BASE + int.from_bytes(hashlib.sha256(f"{k}\x1f{s}".encode()).digest()[:8],
                                              "big") % LOCK_BUCKETS for k, s in keys})
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(k) FROM unnest(%(ids)s::int8[]) AS k "
                         "ORDER BY k", {"ids": ids})


def version_conflicts(conn: Any, prepared: Sequence[list[dict[str, Any]]], *,
                      may_amend: bool) -> list[dict[int, str]]:
    """Per batch, {row index: reason} for each row its writer may not write.

    Rows are taken in order, so a later row of the same write that changes an earlier one
    is a version of it. An identical row (same idempotency key) is a duplicate, never a
    conflict.
    """
    keys = {(r["kind"], r["source_id"]) for rows in prepared for r in rows}
    _lock_keys(conn, keys)
    known = _stored(conn, keys)
    out: list[dict[int, str]] = []
    for rows in prepared:
        bad: dict[int, str] = {}
        for i, r in enumerate(rows):
            key = (r["kind"], r["source_id"])
            have = known.get(key)
            if have is None:
                known[key] = _Known(r["patient_id"], r["code"], r["idem_key"])
                continue
            if r["idem_key"] in have.keys:
                if have.deleted:  # written again after its tombstone:
                    r["idem_key"] = idempotency_key(  # a new version over it
                        r["kind"], r["source_id"], f"revived\x1f{r['idem_key']}\x1f{have.seq}")
                    have.keys.add(r["idem_key"])
                    have.deleted = False
                continue  # the same record again: a duplicate
            why = _refusal(have, r, may_amend=may_amend)
            if why:
                bad[i] = why
            else:
                have.keys.add(r["idem_key"])
        out.append(bad)
    return out


def _refusal(have: _Known, r: dict[str, Any], *, may_amend: bool) -> str | None:
    sid, kind = r["source_id"], r["kind"]
    if have.patient != r["patient_id"]:  # never name the other patient
        return (f"source id {sid!r} already names another patient's {kind}; a record never "
                "moves between patients: send it under a new source id")
    if have.code != r["code"]:
        return (f"source id {sid!r} already names a {kind} of code {have.code!r}, not "
                f"{r['code']!r}; a record never changes its code: send it under a new "
                "source id")
    if not may_amend:
        return (f"source id {sid!r} already holds a different {kind}; records are "
                "append-only and this writer may not amend them: send a new reading under "
                "a new source id, or correct the record through an EHR import (which keeps "
                "both versions)")
    return None


def _stored(conn: Any, keys: set[tuple[str, str]]) -> dict[tuple[str, str], _Known]:
    """The stored versions of ``keys``: their patient and code (the first version's) and
    every idempotency key."""
    by_kind: dict[str, list[str]] = {}
    for kind, sid in keys:
        by_kind.setdefault(kind, []).append(sid)
    step = _LOOKUP.get(conn.dialect.name, 500)
    e = t.events.c
    found: dict[tuple[str, str], _Known] = {}
    for kind, sids in by_kind.items():
        sids.sort()
        for i in range(0, len(sids), step):
            q = (select(e.source_id, e.patient_id, e.code, e.idem_key, e.quality, e.seq)
                 .where(e.kind == kind, e.source_id.in_(sids[i:i + step])).order_by(e.seq))
            for sid, pid, code, idem, quality, seq in conn.execute(q):
                have = found.get((kind, sid))
                if have is None:
                    have = found[(kind, sid)] = _Known(pid, code, idem)
                else:
                    have.keys.add(idem)
                have.deleted, have.seq = quality == "deleted", seq  # the newest row's
    return found
