"""The job runner of a service worker: claims queued jobs and runs them on Dask.

Every service worker runs one. It polls the store for queued jobs of the kinds it knows,
claims one (only one worker wins), runs it on its Dask client (a ``LocalCluster`` started on
the first job, or the cluster at ``scheduler``), and writes the outcome. Every
``stale_after`` seconds it also takes up jobs whose worker stopped renewing its lease, so a
killed worker's job is retried (up to ``max_attempts``) or failed, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from medtwin.core.cluster import dask_client
from medtwin.core.errors import MedtwinError
from medtwin.jobs.context import JobCancelledError, JobContext, LeaseLostError
from medtwin.jobs.kinds import JobKind
from medtwin.jobs.records import JobRecord, JobTable, worker_id

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class JobRunner:
    """Claims and runs jobs in a background thread until :meth:`stop`."""

    def __init__(self, table: JobTable, kinds: dict[str, JobKind], *,
                 scheduler: str | None = None, n_workers: int = 2, processes: bool = True,
                 poll: float = 1.0, heartbeat: float = 5.0, stale_after: float = 30.0,
                 max_attempts: int = 3) -> None:
        self.table = table
        self.kinds = kinds
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.processes = processes
        self.poll = poll
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.max_attempts = max_attempts
        self.worker = worker_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client_cm: contextlib.ExitStack | None = None
        self._client: Client | None = None
        self._last_reclaim = 0.0

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> JobRunner:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; wait for the running job's current step; close the cluster."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client_cm is not None:
            with contextlib.suppress(Exception):
                self._client_cm.close()
        self._client_cm = self._client = None

    def client(self) -> Client:
        """The Dask client (started on first use)."""
        if self._client is None:
            stack = contextlib.ExitStack()
            self._client = stack.enter_context(
                dask_client(self.scheduler, n_workers=self.n_workers, processes=self.processes))
            self._client_cm = stack
        return self._client

    # --- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the store is unreachable for a moment: retry, never die
                log.exception("job runner: store error; retrying")
                worked = False
            if not worked:
                self._stop.wait(self.poll)

    def run_once(self) -> bool:
        """Take up stale jobs when due, then claim and run one job; ``True`` if one ran."""
        now = time.monotonic()
        if now - self._last_reclaim >= self.stale_after / 2:
            self._last_reclaim = now
            requeued, ended = self.table.reclaim_stale(self.stale_after, self.max_attempts)
            if requeued or ended:
                log.warning("jobs of lost workers: %d queued again, %d ended", requeued, ended)
        job = self.table.claim(self.worker, tuple(self.kinds))
        if job is None:
            return False
        self._run(job)
        return True

    def _run(self, job: JobRecord) -> None:
        kind = self.kinds[job.kind]
        log.info("job %s (%s): started, attempt %d", job.id, job.kind, job.attempts)
        status, result, error = "failed", None, None
        ctx: JobContext | None = None
        try:
            ctx = JobContext(self.table, job, self.worker, self.client(),
                             heartbeat=self.heartbeat)
            with ctx:
                result = _jsonable(kind.run(job.spec, ctx))
                status = "done"
        except JobCancelledError:
            status = "cancelled"
            if ctx is not None:
                ctx.flush()  # keep how far it got
        except LeaseLostError:
            log.warning("job %s: another worker took it over; dropping this run", job.id)
            return
        except (MedtwinError, ValueError, ArithmeticError) as exc:
            error = str(exc)
        except Exception as exc:  # a bug or a lost cluster: fail the job, keep the runner
            log.exception("job %s failed", job.id)
            error = f"internal error ({type(exc).__name__}); see the service log"
        if not self.table.finish(job.id, self.worker, status, result=result, error=error):
            log.warning("job %s: lease lost before its outcome was written", job.id)
        else:
            log.info("job %s (%s): %s", job.id, job.kind, status)


def _jsonable(value: Any) -> Any:
    """Plain JSON values (non-finite floats become ``None``; other objects their text)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        f = float(value)
        return value if math.isfinite(f) else None
    try:  # numpy scalars
        return _jsonable(value.item())
    except AttributeError:
        return str(value)
