"""Background in-silico trial jobs: submit, poll the status, fetch the result.

Jobs run one at a time in a worker thread of the service (serial chunks, no Dask cluster
per request) and are kept in memory: they do not survive a restart.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from medtwin.core.errors import MedtwinError, NotFoundError, ValidationError

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One submitted trial."""

    id: str
    owner: str
    spec: dict[str, Any]
    status: str = "queued"
    error: str | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)


class TrialJobs:
    """Runs glucose trials in the background, at most ``keep`` jobs remembered."""

    def __init__(self, *, max_subjects: int = 30, workers: int = 1, keep: int = 200) -> None:
        self.max_subjects = max_subjects
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.keep = keep

    def submit(self, owner: str, spec: dict[str, Any]) -> Job:
        """Validate ``spec`` now (bad input is a 4xx, not a failed job) and queue it."""
        try:
            trial = _build_trial(spec)
        except NotFoundError as exc:  # an unknown controller or subject is bad input
            raise ValidationError(str(exc), where="trial") from None
        if len(trial.cohort) > self.max_subjects:
            raise ValidationError(f"{len(trial.cohort)} subjects selected; this server runs "
                                  f"at most {self.max_subjects} per job", where="subjects")
        job = Job(uuid.uuid4().hex, owner, spec)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                self._jobs.pop(next(iter(self._jobs)))
        self._pool.submit(self._run, job, trial)
        return job

    def get(self, job_id: str) -> Job | None:
        """A job by id."""
        with self._lock:
            return self._jobs.get(job_id)

    def _run(self, job: Job, trial: Any) -> None:
        from medtwin.trials.runner import run_trial

        job.status = "running"
        try:
            res = run_trial(trial, scheduler="serial", progress=False)
            table = res.table.reset_index().rename(columns={"index": "subject"})
            job.result = {"meta": {k: v if isinstance(v, int | float | str) else str(v)
                                   for k, v in res.meta.items()},
                          "rows": table.astype(object).where(table.notna(), None)
                          .to_dict("records")}
            job.status = "done"
        except (MedtwinError, ValueError, ArithmeticError) as exc:
            job.status, job.error = "failed", str(exc)
            log.warning("trial job %s failed: %s", job.id, exc)

    def close(self) -> None:
        """Stop taking jobs; wait for the running one."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _build_trial(spec: dict[str, Any]) -> Any:
    from medtwin.trials.runner import Trial, load_cohort

    cohort = load_cohort(spec["cohort"], spec.get("subjects"))
    return Trial(cohort, spec["controller"], days=spec["days"], seed=spec["seed"])
