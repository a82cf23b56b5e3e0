"""Jobs as the service sees them: submit (validated), look up, list, cancel; and the runner.

State lives only in the store, so every service worker gives the same answers and a restart
loses nothing: a queued job waits for a runner, a running one whose worker died is taken up
again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Engine

from medtwin.core.errors import ValidationError
from medtwin.jobs.kinds import (
    JobKind,
    cardio_trial_kind,
    ops_kind,
    ops_optimise_kind,
    pk_population_kind,
    trial_kind,
)
from medtwin.jobs.records import JobRecord, JobTable
from medtwin.jobs.runner import JobRunner

log = logging.getLogger(__name__)


def default_kinds(*, trial_max_subjects: int = 30, trial_max_days: float = 7.0,
                  ops_max_reps: int = 200, cardio_max_subjects: int | None = None,
                  cardio_max_seconds: float = 600.0) -> dict[str, JobKind]:
    """Every kind of job the service runs, with this server's limits (a cardio trial's
    subjects default to the glucose trials' ``trial_max_subjects``)."""
    kinds = [trial_kind(trial_max_subjects, trial_max_days), ops_kind(ops_max_reps),
             ops_optimise_kind(ops_max_reps), pk_population_kind(),
             cardio_trial_kind(trial_max_subjects if cardio_max_subjects is None
                               else cardio_max_subjects, cardio_max_seconds)]
    return {k.name: k for k in kinds}


class JobService:
    """Durable jobs in one store, run by this worker's :class:`JobRunner`."""

    def __init__(self, engine: Engine, kinds: dict[str, JobKind] | None = None, *,
                 run: bool = True, **runner: Any) -> None:
        self.table = JobTable(engine)
        self.kinds = kinds or default_kinds()
        self.runner = JobRunner(self.table, self.kinds, **runner) if run else None

    def start(self) -> JobService:
        """Start taking up jobs in the background."""
        if self.runner is not None:
            self.runner.start()
        return self

    def close(self) -> None:
        """Stop the runner (queued and running jobs stay in the store for another worker)."""
        if self.runner is not None:
            self.runner.stop()

    def submit(self, kind: str, owner: str, spec: dict[str, Any]) -> JobRecord:
        """Check ``spec`` now (bad input is a ``ValidationError``) and queue the job."""
        if kind not in self.kinds:
            raise ValidationError(f"unknown kind of job {kind!r}; one of {sorted(self.kinds)}",
                                  where="kind")
        checked = self.kinds[kind].validate(dict(spec))
        job = self.table.submit(kind, owner, checked)
        log.info("job %s (%s) queued", job.id, kind)
        return job

    def get(self, job_id: str) -> JobRecord | None:
        """A job by id."""
        return self.table.get(job_id)

    def list(self, owner: str | None = None, limit: int = 50) -> list[JobRecord]:
        """Newest first; ``owner=None`` lists everyone's (for admins)."""
        return self.table.list(owner, limit=limit)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job, or ask a running one to stop."""
        return self.table.cancel(job_id)
