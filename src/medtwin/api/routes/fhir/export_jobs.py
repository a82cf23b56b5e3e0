"""Bulk Data export jobs kept in the store's database (``fhir_export_jobs``/``_files``, 0009),
so that a job, its status and its files survive a restart of the service and any worker
process over the same database can answer a status request.

Who runs a job: the process that claims it. A claim is an optimistic update of the job's
``updated_at`` (``WHERE updated_at = <the value read>``), renewed by every part and every
progress report (the heartbeat); a runner whose renewal finds another value has lost the job
and stops. A queued or running job whose heartbeat is older than :attr:`ExportJobs.lease`
belongs to nobody (its process died, or stopped at shutdown, which releases its jobs at
once): the next process to start, or to be asked its status, claims it and runs it again
from the start (its partial files dropped). A job is never left running silently.

The work runs off the request thread in a small thread pool. Not on Dask: an export is
I/O-bound (read current resources from the database, serialise them, write NDJSON parts back
to the same database) and runs in one pass; a LocalCluster would add worker processes, a
second database connection pool per worker and the pickling of every part for no gain on
2 cores, and its tasks would not survive a restart any better than the database rows do.

The NDJSON parts are sealed at rest with the store's key ring (AES-GCM, bound to the job and
part), as patient data must be.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from medtwin.core.errors import MedtwinError
from medtwin.security.crypto import KeyRing
from medtwin.store import schema as t

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
UNFINISHED = (QUEUED, RUNNING)
RELEASED = datetime(2000, 1, 1, tzinfo=UTC)  # a heartbeat nobody holds: claim at once


@dataclass(frozen=True)
class ExportJob:
    """One export as stored."""

    id: str
    owner: str
    request: str
    spec: dict[str, Any]
    status: str
    progress: str | None
    error: str | None
    transaction_time: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ExportPart:
    """One NDJSON file of a job."""

    seq: int
    type: str
    count: int


# (job, write(type, ndjson text, count), progress(text)) -> None
Worker = Callable[[ExportJob, Callable[[str, str, int], None], Callable[[str], None]], None]


class _Lost(Exception):  # noqa: N818 - internal signal: cancelled, claimed elsewhere, stopping
    pass


class ExportJobs:
    """Create, run, poll, cancel and take up export jobs over ``engine``."""

    def __init__(self, engine: Engine, worker: Worker, keyring: KeyRing, *,
                 threads: int = 1, lease: timedelta = timedelta(seconds=60)) -> None:
        self.engine = engine
        self.worker = worker
        self.keyring = keyring
        self.lease = lease
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhir-export")
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # --- jobs ---------------------------------------------------------------------------------
    def create(self, owner: str, request: str, spec: dict[str, Any]) -> ExportJob:
        """Store a new job (its transaction time: now) and start it."""
        now = _now()
        job_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            conn.execute(insert(t.fhir_export_jobs).values(
                id=job_id, owner=owner, request=request, spec=spec, status=QUEUED,
                progress="queued", created_at=now, updated_at=now, transaction_time=now))
        job = self.get(job_id)
        assert job is not None
        self._start(job)
        return job

    def get(self, job_id: str) -> ExportJob | None:
        """A job by id (None when there is none)."""
        j = t.fhir_export_jobs
        with self.engine.connect() as conn:
            row = conn.execute(select(j).where(j.c.id == job_id)).first()
        return None if row is None else _job(row)

    def take_up(self, job: ExportJob) -> bool:
        """Run ``job`` here if it is unfinished and its runner's lease has run out (the
        process that ran it died or stopped); whether it was taken up."""
        if job.status not in UNFINISHED or self._stopping.is_set():
            return False
        if job.updated_at > _now() - self.lease:
            return False
        log.info("export %s: taking up an unfinished job (runner gone)", job.id)
        self._start(job)
        return True

    def take_up_all(self) -> int:
        """At start-up: take up every unfinished job nobody runs; how many."""
        j = t.fhir_export_jobs
        with self.engine.connect() as conn:
            rows = conn.execute(select(j).where(j.c.status.in_(UNFINISHED))).all()
        return sum(self.take_up(_job(r)) for r in rows)

    def parts(self, job_id: str) -> list[ExportPart]:
        """The files of a job, in order."""
        f = t.fhir_export_files
        with self.engine.connect() as conn:
            rows = conn.execute(select(f.c.seq, f.c.type, f.c.count).where(
                f.c.job_id == job_id).order_by(f.c.seq)).all()
        return [ExportPart(r.seq, r.type, r.count) for r in rows]

    def content(self, job_id: str, seq: int) -> str | None:
        """The NDJSON text of one file (None when there is none)."""
        f = t.fhir_export_files
        with self.engine.connect() as conn:
            sealed = conn.scalar(select(f.c.content).where(f.c.job_id == job_id,
                                                           f.c.seq == seq))
        if sealed is None:
            return None
        return self.keyring.decrypt(sealed, context=_context(job_id, seq)).decode()

    def cancel(self, job_id: str) -> None:
        """Cancel a job and delete its files (a running one stops at its next part); the
        job row stays, marked cancelled, so that a later status request is 404 not 500."""
        with self.engine.begin() as conn:
            conn.execute(update(t.fhir_export_jobs).where(t.fhir_export_jobs.c.id == job_id)
                         .values(status=CANCELLED, progress="cancelled", updated_at=_now()))
            conn.execute(delete(t.fhir_export_files).where(
                t.fhir_export_files.c.job_id == job_id))

    def count_unfinished(self, owner: str) -> int:
        """How many unfinished jobs ``owner`` has (a caller may not pile them up)."""
        j = t.fhir_export_jobs
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(j).where(
                j.c.owner == owner, j.c.status.in_(UNFINISHED))) or 0)

    def close(self) -> None:
        """Stop: running jobs stop at their next part and are released (queued, heartbeat
        cleared) for the next process to take up; nothing waits for them."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            mine = list(self._running)
        j = t.fhir_export_jobs
        if mine:
            with self.engine.begin() as conn:
                conn.execute(update(j).where(j.c.id.in_(mine), j.c.status.in_(UNFINISHED))
                             .values(status=QUEUED, progress="waiting for a restart",
                                     updated_at=RELEASED))

    # --- running ------------------------------------------------------------------------------
    def _start(self, job: ExportJob) -> None:
        with self._lock:
            if job.id in self._running:
                return
            self._running.add(job.id)
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # the pool is shut down: the next process takes it up
            with self._lock:
                self._running.discard(job.id)

    def _run(self, job: ExportJob) -> None:
        f, j = t.fhir_export_files, t.fhir_export_jobs
        beat = [job.updated_at]

        def renew(**values: Any) -> None:
            """The heartbeat: fails (_Lost) when cancelled, claimed elsewhere, stopping."""
            if self._stopping.is_set():
                raise _Lost
            now = max(_now(), beat[0] + timedelta(microseconds=1))
            with self.engine.begin() as conn:
                n = conn.execute(update(j).where(
                    j.c.id == job.id, j.c.updated_at == beat[0], j.c.status.in_(UNFINISHED))
                    .values(updated_at=now, **values)).rowcount
            if n != 1:
                raise _Lost
            beat[0] = now

        try:
            renew(status=RUNNING, progress="started")  # the claim
            with self.engine.begin() as conn:
                conn.execute(delete(f).where(f.c.job_id == job.id))  # a run starts afresh
            seq = 0

            def write(rtype: str, ndjson: str, count: int) -> None:
                nonlocal seq
                renew(progress=f"{rtype}: {count} more resources written"[:100])
                seq += 1
                sealed = self.keyring.encrypt(ndjson.encode(), context=_context(job.id, seq))
                with self.engine.begin() as conn:
                    conn.execute(insert(f).values(job_id=job.id, seq=seq, type=rtype,
                                                  count=count, content=sealed))

            self.worker(job, write, lambda text: renew(progress=text[:100]))
            renew(status=DONE, progress="done")
        except _Lost:
            log.info("export %s stopped here (cancelled, taken over or shutting down)", job.id)
        except (MedtwinError, ValueError, OSError) as exc:
            log.warning("export %s failed: %s", job.id, exc)
            self._fail(job.id, str(exc)[:2000])
        except Exception:  # a bug: the job is marked failed, never left running
            log.exception("export %s failed", job.id)
            self._fail(job.id, "internal error (logged)")
        finally:
            with self._lock:
                self._running.discard(job.id)

    def _fail(self, job_id: str, error: str) -> None:
        j = t.fhir_export_jobs
        with self.engine.begin() as conn:
            conn.execute(update(j).where(j.c.id == job_id, j.c.status.in_(UNFINISHED))
                         .values(status=FAILED, error=error, progress="failed",
                                 updated_at=_now()))


def _now() -> datetime:
    return datetime.now(UTC)


def _context(job_id: str, seq: int) -> str:
    return f"fhir-export:{job_id}:{seq}"


def _job(row: Any) -> ExportJob:
    return ExportJob(row.id, row.owner, row.request, dict(row.spec), row.status,
                     row.progress, row.error, row.transaction_time, row.updated_at)


def ndjson_chunks(lines: Iterator[str], size: int) -> Iterator[tuple[str, int]]:
    """NDJSON lines as texts of at most ``size`` lines each."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield "\n".join(chunk) + "\n", len(chunk)
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n", len(chunk)
