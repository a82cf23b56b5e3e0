"""What a running job sees: its Dask client, a way to report progress, and its stop signals.

A heartbeat thread renews the job's lease every ``heartbeat`` seconds while the job runs (so a
long Dask task never looks like a dead worker) and notices a cancellation request or a lost
lease; the job's own code learns of them at its next :meth:`JobContext.progress` call.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from medtwin.jobs.records import JobRecord, JobTable

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class JobCancelledError(Exception):
    """The job was asked to stop."""


class LeaseLostError(Exception):
    """Another service worker took the job over (this one was thought dead)."""


class JobContext:
    """Progress and stop signals of one running job, with its lease kept alive."""

    def __init__(self, table: JobTable, job: JobRecord, worker: str, client: Client, *,
                 heartbeat: float = 5.0) -> None:
        self.table = table
        self.job = job
        self.worker = worker
        self.client = client
        self.heartbeat = heartbeat
        self._fraction = 0.0
        self._message: str | None = None
        self._state = "ok"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job.id[:8]}",
                                        daemon=True)

    def __enter__(self) -> JobContext:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.heartbeat + 5)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.flush()

    def flush(self) -> str:
        """Write progress and renew the lease now; returns ``ok``, ``cancel`` or ``lost``."""
        with self._lock:
            fraction, message = self._fraction, self._message
        try:
            state = self.table.heartbeat(self.job.id, self.worker, fraction, message)
        except Exception as exc:  # a store hiccup: keep the job, try at the next beat
            log.warning("job %s: heartbeat failed (%s)", self.job.id, type(exc).__name__)
            return self._state
        self._state = state
        return state

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (0..1); raises :class:`JobCancelledError` or :class:`LeaseLostError` when
        the job must stop."""
        with self._lock:
            self._fraction = fraction
            if message is not None:
                self._message = message
        if self._state == "cancel":
            raise JobCancelledError()
        if self._state == "lost":
            raise LeaseLostError()
