"""The newest stored record of each code for many patients at once.

A ward screen needs, for every patient, only the latest value of a dozen codes; reading and
decoding whole timelines for that is what made it slow. Here one statement finds each
(patient, code)'s newest time from the covering index and joins back only the rows at those
instants, with the same version rule as :meth:`EventStore.timeline` (a newer version of a
source record wins). Rows with a data-quality flag (a reading dated in the future, ...) are
never "the latest": they are skipped here exactly as the timeline skips them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select

from medtwin.core.records import RECORD_OF_KIND, ClinicalRecord
from medtwin.store import schema as t
from medtwin.store.event_store import EventStore

CHUNK = 200  # patients per statement (bound parameters stay well under SQLite's limit)


def latest_per_code(store: EventStore, patient_ids: Sequence[str], codes: Iterable[str], *,
                    kind: str = "observation") -> dict[str, list[ClinicalRecord]]:
    """Per patient, the records at the newest time of each code, in (time, append) order.

    Several records of one code at the same newest instant are all returned (the caller's
    time-ordered fold decides, as it would over the full timeline). Patients with none of
    the codes map to an empty list.
    """
    codes = list(codes)
    out: dict[str, list[ClinicalRecord]] = {pid: [] for pid in patient_ids}
    e = t.events.c
    for i in range(0, len(patient_ids), CHUNK):
        chunk = list(patient_ids[i:i + CHUNK])
        newest = (select(e.patient_id.label("pid"), e.code.label("code"),
                         func.max(e.time).label("at"))
                  .where(e.kind == kind, e.patient_id.in_(chunk), e.code.in_(codes),
                         e.quality.is_(None))
                  .group_by(e.patient_id, e.code).subquery())
        at_top = (select(e.seq, e.patient_id, e.source_id, e.payload)
                  .join(newest, and_(e.patient_id == newest.c.pid, e.code == newest.c.code,
                                     e.time == newest.c.at))
                  .where(e.kind == kind, e.quality.is_(None))
                  .order_by(e.patient_id, e.time, e.seq))
        with store.engine.connect() as conn:
            rows = conn.execute(at_top).all()
        newest_version: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (r.patient_id, r.source_id)
            newest_version[key] = max(newest_version.get(key, -1), r.seq)
        stale = _amended_elsewhere(store, kind, codes, newest_version)
        for r in rows:
            if r.patient_id not in stale and newest_version[(r.patient_id, r.source_id)] == r.seq:
                out[r.patient_id].append(RECORD_OF_KIND[kind].from_dict(r.payload))
        for pid in stale:  # rare: read the whole timeline, as the fold would
            out[pid] = _newest_of_each_code(store.timeline(pid, kinds=[kind], codes=codes))
    return out


def _amended_elsewhere(store: EventStore, kind: str, codes: list[str],
                       candidates: dict[tuple[str, str], int]) -> set[str]:
    """Patients one of whose candidate records has a newer version at another time (or a
    flagged one: the timeline fold then decides)."""
    if not candidates:
        return set()
    e = t.events.c
    pids = sorted({p for p, _ in candidates})
    q = (select(e.patient_id, e.source_id, func.max(e.seq))
         .where(e.kind == kind, e.patient_id.in_(pids), e.code.in_(codes),
                e.source_id.in_(sorted({s for _, s in candidates})))
         .group_by(e.patient_id, e.source_id))
    with store.engine.connect() as conn:
        return {p for p, s, seq in conn.execute(q)
                if (p, s) in candidates and seq > candidates[(p, s)]}


def _newest_of_each_code(records: list[ClinicalRecord]) -> list[ClinicalRecord]:
    newest: dict[str, datetime] = {}
    for r in records:
        newest[r.code] = r.time  # type: ignore[attr-defined]  # time-ordered: last is newest
    return [r for r in records if r.time == newest[r.code]]  # type: ignore[attr-defined]


class ChangeFeed:
    """The patients with events appended since the last :meth:`poll`: what a live screen
    re-reads next.

    On PostgreSQL a sequence number is taken when a row is inserted and becomes visible when
    its transaction commits, so a lower number can appear after a higher one has been seen.
    Numbers missing below the newest seen are therefore asked for again on each poll for
    ``grace`` seconds (a gap that never fills, e.g. a row skipped as a duplicate, expires).
    """

    def __init__(self, store: EventStore, *, grace: float = 5.0, max_gaps: int = 2000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.grace, self.max_gaps, self.clock = store, grace, max_gaps, clock
        self.seq = store.last_seq()
        self.gaps: dict[int, float] = {}

    def poll(self) -> set[str]:
        """Patients with newly visible events (possibly empty)."""
        now = self.clock()
        self.gaps = {n: t0 for n, t0 in self.gaps.items() if now - t0 < self.grace}
        e = t.events.c
        new = e.seq > self.seq
        q = select(e.seq, e.patient_id).where(
            or_(new, e.seq.in_(list(self.gaps))) if self.gaps else new)
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        seen = {n for n, _ in rows}
        for n in seen:
            self.gaps.pop(n, None)
        newest = max(seen | {self.seq})
        missing = [n for n in range(self.seq + 1, newest + 1) if n not in seen]
        for n in missing[-self.max_gaps:]:
            self.gaps[n] = now
        if len(self.gaps) > self.max_gaps:  # keep the newest (a long skipped run on PG)
            self.gaps = dict(sorted(self.gaps.items())[-self.max_gaps:])
        self.seq = newest
        return {p for _, p in rows if p is not None}
