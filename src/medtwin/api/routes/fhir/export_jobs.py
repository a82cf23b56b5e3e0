"""Bulk Data export jobs kept in the store's database (``fhir_export_jobs``/``_files``, 0009),
so that a job, its status and its files survive a restart of the service.

The work runs off the request thread in a small thread pool. Not on Dask: an export is
I/O-bound (read current resources from the database, write NDJSON parts back to it) and runs
in one pass; a LocalCluster would add worker processes, a second database connection pool
per worker and pickling of every part for no gain on 2 cores.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from medtwin.core.errors import MedtwinError
from medtwin.store import schema as t

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


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


@dataclass(frozen=True)
class ExportPart:
    """One NDJSON file of a finished export."""

    seq: int
    type: str
    count: int


# (job, write(type, ndjson lines, count), progress(text)) -> None
Worker = Callable[[ExportJob, Callable[[str, str, int], None], Callable[[str], None]], None]


class ExportJobs:
    """Create, run, poll and clean up export jobs over ``engine``."""

    def __init__(self, engine: Engine, worker: Worker, *, threads: int = 1) -> None:
        self.engine = engine
        self.worker = worker
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhir-export")
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def create(self, owner: str, request: str, spec: dict[str, Any]) -> ExportJob:
        """Store a new job and start it."""
        now = datetime.now(UTC)
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
        if row is None:
            return None
        return ExportJob(row.id, row.owner, row.request, dict(row.spec), row.status,
                         row.progress, row.error, row.transaction_time)

    def resume(self, job: ExportJob) -> None:
        """Take up a queued or running job that no thread of this process runs (the service
        restarted while it ran): its partial files are dropped and it starts again."""
        if job.status in (QUEUED, RUNNING):
            self._start(job)

    def parts(self, job_id: str) -> list[ExportPart]:
        """The files of a job, in order."""
        f = t.fhir_export_files
        with self.engine.connect() as conn:
            rows = conn.execute(select(f.c.seq, f.c.type, f.c.count).where(
                f.c.job_id == job_id).order_by(f.c.seq)).all()
        return [ExportPart(r.seq, r.type, r.count) for r in rows]

    def content(self, job_id: str, seq: int) -> str | None:
        """The NDJSON text of one file."""
        f = t.fhir_export_files
        with self.engine.connect() as conn:
            return conn.scalar(select(f.c.content).where(f.c.job_id == job_id, f.c.seq == seq))

    def cancel(self, job_id: str) -> None:
        """Delete a job and its files (a running one stops at its next part)."""
        with self.engine.begin() as conn:
            conn.execute(update(t.fhir_export_jobs).where(t.fhir_export_jobs.c.id == job_id)
                         .values(status=CANCELLED, updated_at=datetime.now(UTC)))
            conn.execute(delete(t.fhir_export_files).where(
                t.fhir_export_files.c.job_id == job_id))

    def delete(self, job_id: str) -> None:
        """Forget a job entirely (after a cancel)."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.fhir_export_files).where(
                t.fhir_export_files.c.job_id == job_id))
            conn.execute(delete(t.fhir_export_jobs).where(t.fhir_export_jobs.c.id == job_id))

    def close(self) -> None:
        """Stop taking jobs; running ones are taken up again after a restart."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- running -----------------------------------------------------------------------------
    def _start(self, job: ExportJob) -> None:
        with self._lock:
            if job.id in self._running:
                return
            self._running.add(job.id)
        self._pool.submit(self._run, job)

    def _set(self, job_id: str, **values: Any) -> bool:
        """Update a job unless it was cancelled; whether it still runs."""
        j = t.fhir_export_jobs
        with self.engine.begin() as conn:
            n = conn.execute(update(j).where(j.c.id == job_id, j.c.status != CANCELLED)
                             .values(updated_at=datetime.now(UTC), **values)).rowcount
        return bool(n)

    def _run(self, job: ExportJob) -> None:
        f = t.fhir_export_files
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(f).where(f.c.job_id == job.id))
            if not self._set(job.id, status=RUNNING, progress="started"):
                return
            seq = 0

            def write(rtype: str, ndjson: str, count: int) -> None:
                nonlocal seq
                if self._cancelled(job.id):
                    raise _Cancelled
                seq += 1
                with self.engine.begin() as conn:
                    conn.execute(insert(f).values(job_id=job.id, seq=seq, type=rtype,
                                                  count=count, content=ndjson))

            def progress(text: str) -> None:
                if not self._set(job.id, progress=text[:100]):
                    raise _Cancelled

            self.worker(job, write, progress)
            self._set(job.id, status=DONE, progress="done")
        except _Cancelled:
            log.info("export %s cancelled", job.id)
        except (MedtwinError, ValueError, OSError) as exc:
            log.warning("export %s failed: %s", job.id, exc)
            self._set(job.id, status=FAILED, error=str(exc)[:2000], progress="failed")
        except Exception:  # a bug: the job is marked failed, never left running
            log.exception("export %s failed", job.id)
            self._set(job.id, status=FAILED, error="internal error", progress="failed")
        finally:
            with self._lock:
                self._running.discard(job.id)

    def _cancelled(self, job_id: str) -> bool:
        j = t.fhir_export_jobs
        with self.engine.connect() as conn:
            return conn.scalar(select(j.c.status).where(j.c.id == job_id)) in (None, CANCELLED)

    def count_running(self, owner: str) -> int:
        """How many unfinished jobs ``owner`` has (a caller may not pile them up)."""
        j = t.fhir_export_jobs
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(j).where(
                j.c.owner == owner, j.c.status.in_((QUEUED, RUNNING)))) or 0)


class _Cancelled(Exception):  # noqa: N818 - internal signal
    pass


def ndjson_chunks(resources: Iterator[dict[str, Any]], size: int,
                  dumps: Callable[[dict[str, Any]], str]) -> Iterator[tuple[str, int]]:
    """Resources as NDJSON texts of at most ``size`` lines each."""
    lines: list[str] = []
    for r in resources:
        lines.append(dumps(r))
        if len(lines) >= size:
            yield "\n".join(lines) + "\n", len(lines)
            lines = []
    if lines:
        yield "\n".join(lines) + "\n", len(lines)
