"""The audit trail: an append-only chain of entries keyed with HMAC-SHA256, anchored outside
the database.

Entry ``n`` stores ``body_hash`` = SHA-256 of its content and ``hash`` = HMAC-SHA256 of
(previous hash, n, body_hash, key id) under the audit key, which is derived from the key ring
(HKDF) and never stored in the database; the key id is stored with the entry, so keys can
rotate. A one-row head table holds the last number and hash (its row lock serialises
writers; within a process, appends that arrive together share one transaction: group
commit, see :meth:`AuditLog.append_many`). A database writer without the key can change
rows but cannot compute the hashes that go with them.

The head is also anchored outside the database (see :mod:`medtwin.security.audit_anchor`):
at the first keyed entry of a chain, every ``anchor_every`` entries, after ``anchor_seconds``
and on :meth:`AuditLog.anchor`. :meth:`AuditLog.verify` streams the chain page by page
(constant memory) and says which entry was changed, removed, re-ordered or forged, and which
anchor the chain no longer agrees with (a dropped tail, a rewrite, a wiped and restarted
chain). Entries written before keying (key id NULL) are accepted only before the point the
anchors record as the start of keying.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import threading
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, func, insert, select, update

from medtwin.core.errors import MedtwinError
from medtwin.security.audit_anchor import Anchor, AnchorSink
from medtwin.store import schema as t

log = logging.getLogger(__name__)

GENESIS = "0" * 64
PAGE = 5000  # entries per read of :meth:`AuditLog.verify`
MAX_PROBLEMS = 1000  # problems kept in detail; the rest are counted
_REORDER_WINDOW = 64  # how far a re-ordered entry is looked for
_PG_ROWS = 2000  # entries per INSERT statement on PostgreSQL (13 parameters each)
_FIELDS = ("time", "actor", "role", "action", "resource", "patient_id", "source", "outcome",
           "detail")


class AuditKeys(Protocol):
    """The audit keys (medtwin's ``KeyRing``): the current key id and a key by id."""

    current: str
    source: str

    def audit_key(self, kid: str) -> bytes | None: ...


class AuditError(MedtwinError):
    """The audit trail cannot be written or anchored as asked."""


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


class _Ticket:
    """One caller's entries waiting in the group-commit queue, and how their write ended."""

    __slots__ = ("done", "entries", "error", "numbers")

    def __init__(self, entries: list[AuditEntry]) -> None:
        self.entries = entries
        self.numbers: list[int] = []
        self.error: BaseException | None = None
        self.done = False

    def settle(self, *, numbers: list[int] | None = None,
               error: BaseException | None = None) -> None:
        self.numbers, self.error, self.done = numbers or [], error, True


def _keepable(entry: AuditEntry) -> AuditEntry:
    """The entry with every NUL replaced by U+FFFD: caller-chosen text (a user name, a path)
    may hold one, and PostgreSQL refuses it in text; an audit entry is never lost for it."""
    bad = {f: v.replace("\x00", "\ufffd") for f in _FIELDS if f != "time"
           and isinstance(v := getattr(entry, f), str) and "\x00" in v}
    return dataclasses.replace(entry, **bad) if bad else entry


def sensitive(entry: AuditEntry) -> bool:
    """Entries anchored at once, so that erasing them and moving the head back is caught
    even right after they were written: break-glass accesses, anything an admin does, and
    refusals of an identified caller."""
    return (entry.role == "admin" or (entry.detail or "").startswith("break-glass")
            or (entry.outcome == "denied" and entry.actor != "anonymous"))


def body_hash(entry: AuditEntry) -> str:
    """SHA-256 of an entry's content."""
    text = json.dumps(entry.body(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def link_hash(prev: str, seq: int, body: str) -> str:
    """The unkeyed chain hash of entry ``seq`` (entries written before keying)."""
    return hashlib.sha256(f"{prev}|{seq}|{body}".encode()).hexdigest()


def keyed_hash(key: bytes, kid: str, prev: str, seq: int, body: str) -> str:
    """The keyed chain hash of entry ``seq``: HMAC-SHA256 under the audit key ``kid``."""
    return hmac.new(key, f"{prev}|{seq}|{body}|{kid}".encode(), hashlib.sha256).hexdigest()


@dataclass
class Problem:
    """One finding of :meth:`AuditLog.verify`."""

    kind: str  # changed | removed | reordered | forged | unkeyed | key | head | anchor
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
    more: int = 0  # problems beyond MAX_PROBLEMS, counted only
    anchors: int = 0  # anchors checked against the chain
    anchor_source: str | None = None
    legacy: int = 0  # unkeyed entries from before keying, accepted

    @property
    def ok(self) -> bool:
        """True when nothing was tampered with."""
        return not self.problems and not self.more

    def text(self) -> str:
        """A human report."""
        if self.ok:
            where = (f"; {self.anchors} anchor(s) in {self.anchor_source} agree"
                     if self.anchor_source else "; no anchor sink")
            legacy = f"; {self.legacy} unkeyed entries from before keying" if self.legacy else ""
            return (f"audit chain intact: {self.entries} entries, head #{self.head_seq} "
                    f"{self.head_hash[:16]}{where}{legacy}")
        more = [f"  ... and {self.more} more"] if self.more else []
        return "\n".join([f"audit chain BROKEN ({len(self.problems) + self.more} problem(s)):"]
                         + [f"  - {p}" for p in self.problems] + more)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"ok": self.ok, "entries": self.entries, "head_seq": self.head_seq,
                "head_hash": self.head_hash, "anchors": self.anchors,
                "anchor_source": self.anchor_source, "legacy": self.legacy,
                "problems": [p.__dict__ for p in self.problems], "more_problems": self.more}


def _row_entry(r: Any) -> AuditEntry:
    return AuditEntry(actor=r["actor"], action=r["action"], resource=r["resource"],
                      outcome=r["outcome"], role=r["role"], patient_id=r["patient_id"],
                      source=r["source"], detail=r["detail"], time=r["time"], seq=r["seq"])


class AuditLog:
    """Appends to, anchors and verifies the audit chain of one store."""

    def __init__(self, engine: Engine, keys: AuditKeys, anchors: AnchorSink | None = None, *,
                 anchor_every: int = 1000, anchor_seconds: float = 300.0,
                 anchor_sensitive: bool = True, page: int = PAGE) -> None:
        self.engine = engine
        self.anchor_sensitive = anchor_sensitive  # anchor sensitive entries at once
        self.keys = keys
        self.anchors = anchors
        self.anchor_every = anchor_every
        self.anchor_seconds = anchor_seconds
        self.page = page
        self._derived: dict[str, bytes | None] = {}
        self._lock = threading.Lock()
        self._anchored_seq: int | None = None  # the last seq this process anchored
        self._anchored_at = _time.monotonic()
        self._pending: tuple[int, str] | None = None  # the last appended, not yet anchored
        self._timer: threading.Timer | None = None  # anchors the pending tail when idle
        self._queue_lock = threading.Lock()  # group commit: the queue and who writes it
        self._queue_ready = threading.Condition(self._queue_lock)
        self._queue: list[_Ticket] = []
        self._writing = False

    def _key(self, kid: str) -> bytes | None:
        if kid not in self._derived:
            self._derived[kid] = self.keys.audit_key(kid)
        return self._derived[kid]

    # --- writing -------------------------------------------------------------------------------
    def append(self, entry: AuditEntry) -> int:
        """Append ``entry`` durably; return its number."""
        return self.append_many([entry])[-1]

    def append_many(self, entries: list[AuditEntry]) -> list[int]:
        """Append entries durably, in order and contiguously; return their numbers.

        Group commit: the entries of requests that arrive while another batch is being
        written wait in a queue, and the next writer (a leader, one of the waiting callers)
        appends every queued batch, in arrival order, in one transaction. Each caller
        returns only once its own entries are committed (and anchored when due); a caller
        whose entries could not be written gets the error, and a failure of one batch
        never fails the others (they are retried alone)."""
        if not entries:
            return []
        kid = self.keys.current
        if self._key(kid) is None:
            raise AuditError(f"the current key {kid!r} of {self.keys.source} gives no audit key")
        ticket = _Ticket([_keepable(e) for e in entries])
        batch: list[_Ticket] = []
        with self._queue_lock:
            self._queue.append(ticket)
            while not ticket.done and self._writing:
                self._queue_ready.wait()
            if not ticket.done:  # lead: write what is queued, this ticket included
                self._writing = True
                batch, self._queue = self._queue, []
        if batch:
            try:
                self._write_group(batch)
            finally:
                for other in batch:  # never left waiting, nor returned as written
                    if not other.done:
                        other.settle(error=AuditError("the audit entries were not written: "
                                                      "their writer was interrupted"))
                with self._queue_lock:
                    self._writing = False
                    self._queue_ready.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.numbers

    def _write_group(self, batch: list[_Ticket]) -> None:
        """Append the tickets' entries in one transaction, anchor when due, and settle every
        ticket; when the transaction fails, each ticket on its own (so one bad entry fails
        only its own caller)."""
        try:
            done = self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - settled per ticket below
            if len(batch) == 1:
                batch[0].settle(error=exc)
                return
            for ticket in batch:
                try:
                    self._settle([ticket], self._commit([ticket]))
                except Exception as exc1:  # noqa: BLE001 - handed to its caller
                    ticket.settle(error=exc1)
            return
        self._settle(batch, done)

    def _settle(self, batch: list[_Ticket], done: tuple[int, str, int, str, bool]) -> None:
        """After the commit: anchor when due (before anyone answers), then settle."""
        first, first_hash, last, last_hash, starts_keying = done
        error: BaseException | None = None
        try:
            self._after_append(first, first_hash, last, last_hash, starts_keying,
                               urgent=self.anchor_sensitive and any(
                                   sensitive(e) for ticket in batch for e in ticket.entries))
        except Exception as exc:  # noqa: BLE001 - stored, but the callers learn of it
            error = exc
        for ticket in batch:
            n = len(ticket.entries)
            ticket.settle(numbers=list(range(first, first + n)), error=error)
            first += n

    def _commit(self, batch: list[_Ticket]) -> tuple[int, str, int, str, bool]:
        """One transaction for the tickets' entries, in order; returns the first number and
        hash, the last number and hash, and whether these entries start the keyed chain."""
        entries = [e for ticket in batch for e in ticket.entries]
        kid = self.keys.current
        key = self._key(kid)
        if key is None:
            raise AuditError(f"the current key {kid!r} of {self.keys.source} gives no audit key")
        bases = [{**e.body(), "time": e.time, "body_hash": body_hash(e), "key_id": kid}
                 for e in entries]  # made before the head's lock is taken
        n = len(entries)
        h = t.audit_head.c
        with self.engine.begin() as conn:
            # the write to the head comes first: it takes the lock that orders appends
            bump = update(t.audit_head).where(h.id == 1).values(seq=h.seq + n)
            if conn.dialect.update_returning:
                head = conn.execute(bump.returning(h.seq, h.hash, h.key_id)).one()
            else:
                conn.execute(bump)
                head = conn.execute(select(h.seq, h.hash, h.key_id).where(h.id == 1)).one()
            seq, prev = int(head.seq) - n, head.hash
            starts_keying = seq == 0 or head.key_id is None
            rows, first_hash = [], ""
            for base in bases:
                seq += 1
                link = keyed_hash(key, kid, prev, seq, base["body_hash"])
                rows.append({**base, "seq": seq, "prev_hash": prev, "hash": link})
                first_hash = first_hash or link
                prev = link
            set_head = update(t.audit_head).where(h.id == 1).values(hash=prev, key_id=kid)
            if conn.dialect.name == "postgresql":  # one multi-row INSERT with the head's write
                for i in range(0, n - _PG_ROWS, _PG_ROWS):
                    conn.execute(insert(t.audit_log).values(rows[i:i + _PG_ROWS]))
                last = rows[(n - 1) // _PG_ROWS * _PG_ROWS:]
                conn.execute(set_head.add_cte(insert(t.audit_log).values(last).cte("added")))
            else:
                conn.execute(insert(t.audit_log), rows)
                conn.execute(set_head)
        return seq - n + 1, first_hash, seq, prev, starts_keying

    def _after_append(self, first: int, first_hash: str, last: int, last_hash: str,
                      starts_keying: bool, *, urgent: bool = False) -> None:
        """Anchor the start of keying and every sensitive entry (:func:`sensitive`) at once;
        the rest every ``anchor_every`` entries or ``anchor_seconds``, the latter also when
        nothing more is appended (a timer), so a dropped tail is never older than that. A
        failed anchor write is logged: the entries are stored."""
        if self.anchors is None:
            return
        with self._lock:
            if self._anchored_seq is None:
                self._anchored_seq = first - 1
            due = (urgent or last - self._anchored_seq >= self.anchor_every
                   or _time.monotonic() - self._anchored_at >= self.anchor_seconds)
            self._pending = None if due else (last, last_hash)
            if due:
                self._anchored_seq, self._anchored_at = last, _time.monotonic()
            elif self._timer is None:
                self._timer = threading.Timer(self.anchor_seconds, self._anchor_idle)
                self._timer.daemon = True
                self._timer.start()
        try:
            if starts_keying:
                self._write_anchor(first, first_hash, keyed_from=first)
            if due:
                self._write_anchor(last, last_hash)
        except OSError as exc:
            log.error("could not write an audit anchor to %s: %s", self.anchors.describe(), exc)

    def _write_anchor(self, seq: int, hash_: str, keyed_from: int | None = None) -> Anchor:
        assert self.anchors is not None
        kid = self.keys.current
        key = self._key(kid)
        assert key is not None
        a = Anchor(seq, hash_, datetime.now(UTC).isoformat(timespec="microseconds"), kid,
                   keyed_from).signed(key)
        self.anchors.write(a)
        return a

    def anchor(self) -> Anchor:
        """Anchor the current head outside the database now (``medtwin audit anchor``). A
        chain not yet keyed is anchored as a whole: its entries so far are adopted as legacy."""
        if self.anchors is None:
            raise AuditError("no anchor sink is configured (MEDTWIN_AUDIT_ANCHOR_FILE)")
        with self.engine.connect() as conn:
            head = conn.execute(select(t.audit_head.c.seq, t.audit_head.c.hash,
                                       t.audit_head.c.key_id)
                                .where(t.audit_head.c.id == 1)).one()
            first_keyed = conn.scalar(select(func.min(t.audit_log.c.seq))
                                      .where(t.audit_log.c.key_id.is_not(None)))
        if int(head.seq) == 0:
            raise AuditError("the audit chain is empty: there is nothing to anchor yet")
        keyed_from = int(head.seq) + 1 if head.key_id is None else int(first_keyed or 1)
        with self._lock:
            self._anchored_seq, self._anchored_at = int(head.seq), _time.monotonic()
            self._pending = None
        try:
            return self._write_anchor(int(head.seq), head.hash, keyed_from=keyed_from)
        except OSError as exc:
            raise AuditError(f"cannot write the anchor to {self.anchors.describe()}: "
                             f"{exc.strerror}") from None

    def _anchor_idle(self) -> None:
        """The timer: anchor the tail appended since the last anchor."""
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None:
                self._anchored_seq, self._anchored_at = pending[0], _time.monotonic()
        if pending is not None and self.anchors is not None:
            try:
                self._write_anchor(*pending)
            except OSError as exc:
                log.error("could not write an audit anchor to %s: %s",
                          self.anchors.describe(), exc)

    def close(self) -> None:
        """Anchor what this process appended since its last anchor (at shutdown)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pending, self._pending = self._pending, None
        if pending is not None and self.anchors is not None:
            try:
                self._write_anchor(*pending)
            except OSError as exc:
                log.error("could not write an audit anchor to %s: %s",
                          self.anchors.describe(), exc)

    # --- reading -------------------------------------------------------------------------------
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

    def recent(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries, newest first (reads only those)."""
        q = select(t.audit_log).order_by(t.audit_log.c.seq.desc()).limit(n)
        with self.engine.connect() as conn:
            return [_row_entry(r) for r in conn.execute(q).mappings()]

    def pages(self) -> Iterator[list[Any]]:
        """The chain in order, ``page`` rows per read (keyset pagination on ``seq``)."""
        last = None
        while True:
            q = select(t.audit_log).order_by(t.audit_log.c.seq).limit(self.page)
            if last is not None:
                q = q.where(t.audit_log.c.seq > last)
            with self.engine.connect() as conn:
                rows = conn.execute(q).mappings().all()
            if not rows:
                return
            yield rows
            last = rows[-1]["seq"]

    def _read_anchors(self, report: Callable[[Problem], None]) -> dict[int, list[Anchor]]:
        """Valid anchors by seq; a line that is malformed or whose HMAC is wrong is a problem
        (only the key holder writes anchors), one under a key not in the ring is skipped."""
        out: dict[int, list[Anchor]] = {}
        if self.anchors is None:
            return out
        for a in self.anchors.read():
            if isinstance(a, str):
                report(Problem("anchor", None, f"unreadable anchor: {a}"))
                continue
            key = self._key(a.kid)
            if key is None:
                log.info("skipped an audit anchor under key %s, not in %s", a.kid,
                         self.keys.source)
                continue
            if not a.valid(key):
                report(Problem("anchor", a.seq, f"the anchor of #{a.seq} written {a.time} "
                               f"in {self.anchors.describe()} has a wrong HMAC (edited)"))
                continue
            out.setdefault(a.seq, []).append(a)
        return out

    # --- verifying -----------------------------------------------------------------------------
    def verify(self, progress: Callable[[int], None] | None = None) -> Verification:
        """Walk the chain a page at a time; report every changed, removed, re-ordered, forged
        or unkeyed entry, a head that does not match the last entry, and every anchor the chain
        no longer agrees with. ``progress`` is called with the rows of each page."""
        v = _Walk(self)
        anchors = v.anchors = self._read_anchors(v.report)
        starts = [a.keyed_from for lst in anchors.values() for a in lst if a.keyed_from]
        keyed_from = min(starts) if starts else 1
        with self.engine.connect() as conn:
            head = conn.execute(select(t.audit_head.c.seq, t.audit_head.c.hash)
                                .where(t.audit_head.c.id == 1)).one()
        for rows in self.pages():
            for r in rows:
                v.check(r, keyed_from)
            if progress is not None:
                progress(len(rows))
        return v.finish(int(head.seq), head.hash)


class _Walk:
    """The state of one :meth:`AuditLog.verify` pass (constant in the chain's length)."""

    def __init__(self, log_: AuditLog) -> None:
        self.log = log_
        self.problems: list[Problem] = []
        self.more = 0
        self.anchors: dict[int, list[Anchor]] = {}
        self.seen_anchored: set[int] = set()
        self.unknown_keys: set[str] = set()
        self.entries = self.legacy = 0
        self.prev_hash, self.expected, self.prev_bad = GENESIS, 1, False
        self.last_seq, self.last_hash = 0, GENESIS

    def report(self, p: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(p)
        else:
            self.more += 1

    def _reordered_from(self, r: Any, seq: int, key: bytes | None, kid: str | None) -> int | None:
        """The number an entry was written under, when it is near its place now."""
        if len(self.problems) >= MAX_PROBLEMS:
            return None
        for s in range(max(1, seq - _REORDER_WINDOW), seq + _REORDER_WINDOW + 1):
            if s == seq:
                continue
            h = (keyed_hash(key, kid, r["prev_hash"], s, r["body_hash"]) if key and kid
                 else link_hash(r["prev_hash"], s, r["body_hash"]))
            if hmac.compare_digest(h, r["hash"]):
                return s
        return None

    def check(self, r: Any, keyed_from: int) -> None:
        """Check one row against its content, its key, the row before it and the anchors."""
        seq, kid = int(r["seq"]), r["key_id"]
        self.entries += 1
        bad = True
        if seq > self.expected:
            gap = f"#{self.expected}" if seq == self.expected + 1 else \
                f"#{self.expected}..#{seq - 1}"
            self.report(Problem("removed", self.expected, f"entr(y/ies) {gap} removed"))
        key = self.log._key(kid) if kid else None
        if body_hash(_row_entry(r)) != r["body_hash"]:
            self.report(Problem("changed", seq, f"entry #{seq} was changed after it was "
                                "written (its content no longer matches its hash)"))
        elif kid is None and seq >= keyed_from:
            self.report(Problem("unkeyed", seq, f"entry #{seq} carries no key although the "
                                f"chain is keyed from #{keyed_from}: it was rewritten by "
                                "someone without the audit key"))
        elif kid is not None and key is None:
            if kid not in self.unknown_keys:
                self.unknown_keys.add(kid)
                self.report(Problem("key", seq, f"entry #{seq} is keyed with {kid!r}, which "
                                    f"is not in {self.log.keys.source}: restore the key file "
                                    "that holds it to verify these entries"))
        elif not hmac.compare_digest(
                r["hash"], keyed_hash(key, kid, r["prev_hash"], seq, r["body_hash"]) if key
                else link_hash(r["prev_hash"], seq, r["body_hash"])):
            written = self._reordered_from(r, seq, key, kid)
            if written is not None:
                self.report(Problem("reordered", seq, f"entry now at #{seq} was written as "
                                    f"#{written} (entries re-ordered)"))
            elif key is not None:
                self.report(Problem("forged", seq, f"entry #{seq} does not verify under audit "
                                    f"key {kid}: it, or the chain up to it, was rewritten by "
                                    "someone without the key"))
            else:
                self.report(Problem("changed", seq, f"entry #{seq}: its chain hash was "
                                    "changed"))
        elif r["prev_hash"] != self.prev_hash and seq == self.expected and not self.prev_bad:
            self.report(Problem("reordered", seq, f"entry #{seq} does not follow entry "
                                f"#{seq - 1} (chain link broken)"))
        else:
            bad = False
            self.legacy += kid is None
        for a in self.anchors.get(seq, ()):
            self.seen_anchored.add(seq)
            if not hmac.compare_digest(a.hash, r["hash"]):
                self.report(Problem("anchor", seq, f"entry #{seq} is not the one anchored "
                                    f"{a.time} (hash {a.hash[:16]}, now {r['hash'][:16]}): the "
                                    "chain was rewritten, or wiped and restarted, after it was "
                                    "anchored"))
        self.prev_hash, self.expected, self.prev_bad = r["hash"], seq + 1, bad
        self.last_seq, self.last_hash = seq, r["hash"]

    def finish(self, head_seq: int, head_hash: str) -> Verification:
        """The head and the anchors beyond or between the rows seen."""
        last = self.last_seq
        if head_seq > last:
            self.report(Problem("removed", last + 1, (
                f"the head records {head_seq} entries but the chain ends at #{last}: "
                f"entr(y/ies) #{last + 1}..#{head_seq} removed from the end")))
        elif self.entries and (head_seq != last or head_hash != self.last_hash):
            self.report(Problem("head", last, "the head anchor does not match the last entry "
                                "(the head or the last entry was changed)"))
        beyond = sorted(s for s in self.anchors if s > last)
        if beyond:
            a = self.anchors[beyond[-1]][-1]
            self.report(Problem("anchor", beyond[-1], (
                f"an anchor written {a.time} records entry #{beyond[-1]}, but the chain ends "
                f"at #{last}: entries were dropped from the end (or the chain was wiped and "
                f"restarted); {len(beyond)} anchor(s) lie beyond the end")))
        for s in sorted(s for s in self.anchors if s <= last and s not in self.seen_anchored):
            self.report(Problem("anchor", s, f"anchored entry #{s} is missing from the chain"))
        sink = self.log.anchors
        if sink is not None and self.entries and not self.anchors:
            self.report(Problem("anchor", None, (
                f"no anchor in {sink.describe()} for a chain of {self.entries} entries: the "
                "anchor file is missing or belongs elsewhere (restore it; for a chain never "
                "anchored, `medtwin audit anchor` anchors it now)")))
        return Verification(self.entries, head_seq, head_hash, self.problems, self.more,
                            sum(len(v) for v in self.anchors.values()),
                            sink.describe() if sink else None, self.legacy)
