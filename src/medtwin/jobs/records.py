"""The ``jobs`` table: submit, claim with a lease, heartbeat, finish, cancel, take up again.

A service worker *claims* a queued job (a conditional update, so two workers never both win),
then keeps its lease alive with heartbeats. A lease older than ``stale_after`` seconds means
the worker died: the job is queued again, or failed once it has used ``max_attempts`` tries.
Every state change is one short transaction; nothing is held in memory.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Engine, RowMapping

from medtwin.store.schema import jobs

#: the statuses a job goes through; the last three are final
STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class JobRecord:
    """One job as stored."""

    id: str
    kind: str
    owner: str
    spec: dict[str, Any]
    status: str
    progress: float
    message: str | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: RowMapping) -> JobRecord:
        """From a row of the ``jobs`` table."""
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


def worker_id() -> str:
    """``host:pid:random``: who holds a lease (never reused by a restarted process)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> datetime:
    return datetime.now(UTC)


class JobTable:
    """Job rows in one store (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit(self, kind: str, owner: str, spec: dict[str, Any]) -> JobRecord:
        """Queue a new job."""
        now = _now()
        row = {"id": uuid.uuid4().hex, "kind": kind, "owner": owner, "spec": spec,
               "status": "queued", "progress": 0.0, "attempts": 0, "cancel_requested": False,
               "created_at": now, "updated_at": now}
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(**row))
        got = self.get(row["id"])
        assert got is not None
        return got

    def get(self, job_id: str) -> JobRecord | None:
        """A job by id, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return JobRecord.of(row) if row is not None else None

    def list(self, owner: str | None = None, *, limit: int = 50) -> list[JobRecord]:
        """Newest jobs first (of ``owner`` when given)."""
        q = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            return [JobRecord.of(r) for r in conn.execute(q).mappings()]

    def claim(self, worker: str, kinds: tuple[str, ...]) -> JobRecord | None:
        """Take the oldest queued job of one of ``kinds`` for ``worker``; ``None`` if none."""
        for _ in range(5):  # another worker may win a candidate: try the next one
            with self.engine.connect() as conn:
                cand = conn.execute(
                    select(jobs.c.id).where(jobs.c.status == "queued", jobs.c.kind.in_(kinds))
                    .order_by(jobs.c.created_at).limit(1)).scalar()
            if cand is None:
                return None
            now = _now()
            with self.engine.begin() as conn:
                won = conn.execute(
                    update(jobs).where(jobs.c.id == cand, jobs.c.status == "queued")
                    .values(status="running", worker=worker, heartbeat_at=now, updated_at=now,
                            started_at=now, attempts=jobs.c.attempts + 1)).rowcount
            if won == 1:
                return self.get(cand)
        return None

    def heartbeat(self, job_id: str, worker: str, progress: float | None = None,
                  message: str | None = None) -> str:
        """Renew the lease; returns ``"ok"``, ``"cancel"`` (asked to stop) or ``"lost"``."""
        now = _now()
        values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, float(progress)))
        if message is not None:
            values["message"] = message[:200]
        with self.engine.begin() as conn:
            n = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                jobs.c.status == "running")
                             .values(**values)).rowcount
            if n != 1:
                return "lost"
            cancel = conn.execute(select(jobs.c.cancel_requested)
                                  .where(jobs.c.id == job_id)).scalar()
        return "cancel" if cancel else "ok"

    def finish(self, job_id: str, worker: str, status: str, *, result: dict[str, Any] | None =
               None, error: str | None = None) -> bool:
        """End a running job held by ``worker``; ``False`` if it lost the lease meanwhile.

        A job whose cancellation was asked for before it ended ends ``cancelled`` whatever
        it produced: a caller who got 202 on DELETE never finds it ``done``."""
        assert status in FINAL
        now = _now()
        with self.engine.begin() as conn:
            held = and_(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == "running")
            if conn.execute(update(jobs).where(held, jobs.c.cancel_requested.is_(True))
                            .values(status="cancelled", updated_at=now, finished_at=now,
                                    heartbeat_at=now)).rowcount:
                return True
            n = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                jobs.c.status == "running")
                             .values(status=status, result=result, error=error, updated_at=now,
                                     finished_at=now, heartbeat_at=now,
                                     progress=1.0 if status == "done" else jobs.c.progress))
        return n.rowcount == 1

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once; ask a running one to stop. Final jobs stay as they are."""
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
                         .values(status="cancelled", cancel_requested=True, updated_at=now,
                                 finished_at=now))
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                         .values(cancel_requested=True, updated_at=now))
        return self.get(job_id)

    def reclaim_stale(self, stale_after: float, max_attempts: int) -> tuple[int, int]:
        """Queue again the running jobs whose lease expired (or fail those out of attempts);
        returns ``(requeued, failed)``."""
        now = _now()
        limit = now - timedelta(seconds=stale_after)
        stale = and_(jobs.c.status == "running", jobs.c.heartbeat_at < limit)
        with self.engine.begin() as conn:
            failed = conn.execute(
                update(jobs).where(stale, jobs.c.attempts >= max_attempts)
                .values(status="failed", updated_at=now, finished_at=now,
                        error=f"the service worker running it stopped responding "
                              f"{max_attempts} time(s); submit it again")).rowcount
            cancelled = conn.execute(
                update(jobs).where(stale, jobs.c.cancel_requested.is_(True))
                .values(status="cancelled", updated_at=now, finished_at=now)).rowcount
            requeued = conn.execute(
                update(jobs).where(stale).values(status="queued", worker=None, updated_at=now,
                                                 message="taken up again after a worker was lost")
            ).rowcount
        return requeued, failed + cancelled
