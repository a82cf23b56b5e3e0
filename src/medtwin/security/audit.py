"""The audit trail: an append-only hash chain in the store, with a head anchor.

Entry ``n`` stores ``body_hash`` = SHA-256 of its content and ``hash`` = SHA-256 of
(previous hash, n, body_hash). A one-row head table holds the last number and hash,
updated in the same transaction as each append (its row lock also serialises writers), so
removing the last entries is detected too. :meth:`AuditLog.verify` walks the chain and says
which entry was changed, removed or re-ordered.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from medtwin.store import schema as t

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_FIELDS = ("time", "actor", "role", "action", "resource", "patient_id", "source", "outcome",
           "detail")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what to which patient, when, from where, and how it ended."""

    actor: str
    action: str
    resource: str
    outcome: str
    role: str | None = None
    patient_id: str | None = None
    source: str | None = None
    detail: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    seq: int | None = None

    def body(self) -> dict[str, Any]:
        """The hashed content (time to the microsecond, in UTC)."""
        d = {k: getattr(self, k) for k in _FIELDS}
        d["time"] = self.time.astimezone(UTC).isoformat(timespec="microseconds")
        return d


def body_hash(entry: AuditEntry) -> str:
    """SHA-256 of an entry's content."""
    text = json.dumps(entry.body(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def link_hash(prev: str, seq: int, body: str) -> str:
    """The chain hash of entry ``seq``."""
    return hashlib.sha256(f"{prev}|{seq}|{body}".encode()).hexdigest()


@dataclass
class Problem:
    """One finding of :meth:`AuditLog.verify`."""

    kind: str  # changed | removed | reordered | head
    seq: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class Verification:
    """The result of verifying the chain."""

    entries: int
    head_seq: int
    head_hash: str
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when nothing was tampered with."""
        return not self.problems

    def text(self) -> str:
        """A human report."""
        if self.ok:
            return (f"audit chain intact: {self.entries} entries, head #{self.head_seq} "
                    f"{self.head_hash[:16]}")
        return "\n".join([f"audit chain BROKEN ({len(self.problems)} problem(s)):"]
                         + [f"  - {p}" for p in self.problems])


def _row_entry(r: Any) -> AuditEntry:
    return AuditEntry(actor=r["actor"], action=r["action"], resource=r["resource"],
                      outcome=r["outcome"], role=r["role"], patient_id=r["patient_id"],
                      source=r["source"], detail=r["detail"], time=r["time"], seq=r["seq"])


class AuditLog:
    """Appends to and verifies the audit chain of one store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, entry: AuditEntry) -> int:
        """Append ``entry`` durably; return its number."""
        return self.append_many([entry])[-1]

    def append_many(self, entries: list[AuditEntry]) -> list[int]:
        """Append entries in one transaction, in order; return their numbers."""
        with self.engine.begin() as conn:
            # the write to the head comes first: it takes the lock that orders appends
            conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1)
                         .values(seq=t.audit_head.c.seq + len(entries)))
            head = conn.execute(select(t.audit_head.c.seq, t.audit_head.c.hash)
                                .where(t.audit_head.c.id == 1)).one()
            seq, prev = int(head.seq) - len(entries), head.hash
            rows, numbers = [], []
            for e in entries:
                seq += 1
                b = body_hash(e)
                h = link_hash(prev, seq, b)
                rows.append({**e.body(), "time": e.time, "seq": seq, "body_hash": b,
                             "prev_hash": prev, "hash": h})
                numbers.append(seq)
                prev = h
            conn.execute(insert(t.audit_log), rows)
            conn.execute(update(t.audit_head).where(t.audit_head.c.id == 1).values(hash=prev))
        return numbers

    def entries(self, *, patient_id: str | None = None, since_seq: int = 0,
                limit: int | None = None) -> list[AuditEntry]:
        """Stored entries in chain order (optionally for one patient)."""
        q = select(t.audit_log).where(t.audit_log.c.seq > since_seq).order_by(t.audit_log.c.seq)
        if patient_id is not None:
            q = q.where(t.audit_log.c.patient_id == patient_id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_row_entry(r) for r in conn.execute(q).mappings()]

    def _rows(self) -> Iterator[Any]:
        with self.engine.connect() as conn:
            yield from conn.execute(select(t.audit_log).order_by(t.audit_log.c.seq)).mappings()

    def verify(self) -> Verification:
        """Walk the chain; report every changed, removed or re-ordered entry, and a head that
        does not match the last entry (entries removed from the end)."""
        rows = list(self._rows())
        with self.engine.connect() as conn:
            head = conn.execute(select(t.audit_head.c.seq, t.audit_head.c.hash)
                                .where(t.audit_head.c.id == 1)).one()
        top = max([int(head.seq)] + [int(r["seq"]) for r in rows])
        problems: list[Problem] = []
        prev_hash, expected, prev_bad = GENESIS, 1, False
        for r in rows:
            seq = int(r["seq"])
            bad = True
            if seq > expected:
                gap = f"#{expected}" if seq == expected + 1 else f"#{expected}..#{seq - 1}"
                problems.append(Problem("removed", expected, f"entr(y/ies) {gap} removed"))
            if body_hash(_row_entry(r)) != r["body_hash"]:
                problems.append(Problem("changed", seq, f"entry #{seq} was changed after it "
                                        "was written (its content no longer matches its hash)"))
            elif r["hash"] != link_hash(r["prev_hash"], seq, r["body_hash"]):
                written = next((s for s in range(1, top + 2) if r["hash"] == link_hash(
                    r["prev_hash"], s, r["body_hash"])), None)
                if written is not None:
                    problems.append(Problem("reordered", seq, f"entry now at #{seq} was "
                                            f"written as #{written} (entries re-ordered)"))
                else:
                    problems.append(Problem("changed", seq, f"entry #{seq}: its chain hash "
                                            "was changed"))
            elif r["prev_hash"] != prev_hash and seq == expected and not prev_bad:
                problems.append(Problem("reordered", seq, f"entry #{seq} does not follow "
                                        f"entry #{seq - 1} (chain link broken)"))
            else:
                bad = False
            prev_hash, expected, prev_bad = r["hash"], seq + 1, bad
        last_seq = int(rows[-1]["seq"]) if rows else 0
        if int(head.seq) > last_seq:
            problems.append(Problem("removed", last_seq + 1, (
                f"the head records {int(head.seq)} entries but the chain ends at #{last_seq}: "
                f"entr(y/ies) #{last_seq + 1}..#{int(head.seq)} removed from the end")))
        elif rows and (int(head.seq) != last_seq or head.hash != rows[-1]["hash"]):
            problems.append(Problem("head", last_seq, "the head anchor does not match the "
                                    "last entry (the head or the last entry was changed)"))
        return Verification(len(rows), int(head.seq), head.hash, problems)
