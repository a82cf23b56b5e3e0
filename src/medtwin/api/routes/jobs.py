"""Durable jobs: queue long work (ops, population PK, cardio trials), follow it, cancel it,
fetch its result.

Jobs live in the store and run on Dask from whichever service worker takes them up, so any
worker answers for any job, and a restart or a dead worker loses none. A job is visible to
its submitter and to admins; anyone else gets the same 404 as for a job that does not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, status

from medtwin.api.deps import Caller, Services, Svc, require_role
from medtwin.api.job_schemas import (
    CardioTrialJobIn,
    JobOut,
    JobResultOut,
    OpsJobIn,
    OpsOptimiseJobIn,
    PkPopulationJobIn,
)
from medtwin.api.problems import ApiError
from medtwin.api.routes import _P, AUTH_ERRORS
from medtwin.api.schemas import Id
from medtwin.jobs.records import JobRecord
from medtwin.jobs.service import JobService
from medtwin.security.roles import Principal, Role

router = APIRouter(prefix="/jobs", tags=["jobs"], responses={**AUTH_ERRORS, 404: _P})
ROLES = (Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN)


def job_service(svc: Services) -> JobService:
    """The service's jobs (built by the app)."""
    jobs = svc.extras.get("jobs")
    assert isinstance(jobs, JobService)
    return jobs


def job_out(job: JobRecord) -> JobOut:
    """A job as the API shows it."""
    return JobOut(id=job.id, kind=job.kind, status=job.status,  # type: ignore[arg-type]
                  progress=job.progress, message=job.message, error=job.error,
                  attempts=job.attempts, submitted_by=job.owner, created_at=job.created_at,
                  started_at=job.started_at, finished_at=job.finished_at)


def own_job(svc: Services, who: Principal, job_id: str, kind: str | None = None) -> JobRecord:
    """The job if the caller may see it (its submitter or an admin), else 404."""
    job = job_service(svc).get(job_id)
    if job is None or (kind is not None and job.kind != kind) or (
            job.owner != who.label and who.role is not Role.ADMIN
            and svc.settings.security_enabled):
        raise ApiError(404, f"no job {job_id!r}")
    return job


def submit_job(request: Request, svc: Services, who: Principal, kind: str,
               spec: dict[str, Any]) -> JobRecord:
    """Queue a job of ``kind`` (validated now: bad input is a 422) and audit it."""
    job = job_service(svc).submit(kind, who.label, spec)
    svc.record(request, who, "create", f"job:{job.id}", "success", detail=kind)
    return job


@router.get("", response_model=list[JobOut])
def list_jobs(request: Request, svc: Svc, who: Caller,
              limit: int = Query(50, ge=1, le=500)) -> list[JobOut]:
    """Your jobs, newest first (an admin sees everyone's)."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    owner = None if who.role is Role.ADMIN or not svc.settings.security_enabled else who.label
    return [job_out(j) for j in job_service(svc).list(owner, limit)]


@router.post("/ops", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def submit_ops(request: Request, svc: Svc, who: Caller, body: OpsJobIn) -> JobOut:
    """Queue replications of a hospital operations model (no patient data involved)."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    return job_out(submit_job(request, svc, who, "ops", body.model_dump(exclude_none=True)))


@router.post("/ops-optimise", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def submit_optimise(request: Request, svc: Svc, who: Caller, body: OpsOptimiseJobIn) -> JobOut:
    """Queue a search for the cheapest resource mix meeting a service target."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    spec = body.model_dump(exclude_none=True)
    spec["vary"] = {k: list(v) for k, v in body.vary.items()}
    return job_out(submit_job(request, svc, who, "ops-optimise", spec))


@router.post("/pk-population", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def submit_pk(request: Request, svc: Svc, who: Caller, body: PkPopulationJobIn) -> JobOut:
    """Queue a population PK fit (FOCE-I) of a de-identified event table you send."""
    require_role(request, svc, who, Role.RESEARCHER, Role.ADMIN, resource="jobs")
    return job_out(submit_job(request, svc, who, "pk-population",
                              body.model_dump(exclude_none=True)))


@router.post("/cardio-trial", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def submit_cardio_trial(request: Request, svc: Svc, who: Caller, body: CardioTrialJobIn
                        ) -> JobOut:
    """Queue a trial of a cardiovascular scenario (e.g. a beta-blocker) on a seeded virtual
    population (no patient data involved): each subject's baseline and scenario runs and
    the scenario's effect with 95% intervals."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    return job_out(submit_job(request, svc, who, "cardio-trial",
                              body.model_dump(exclude_none=True)))


@router.get("/{job_id}", response_model=JobOut)
def job_status(request: Request, svc: Svc, who: Caller, job_id: Id) -> JobOut:
    """A job's status and progress."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    return job_out(own_job(svc, who, job_id))


@router.delete("/{job_id}", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def cancel_job(request: Request, svc: Svc, who: Caller, job_id: Id) -> JobOut:
    """Cancel a queued job, or ask a running one to stop (it stops at its next step)."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    job = own_job(svc, who, job_id)
    out = job_service(svc).cancel(job.id)
    svc.record(request, who, "cancel", f"job:{job.id}", "success")
    assert out is not None
    return job_out(out)


@router.get("/{job_id}/result", response_model=JobResultOut, responses={409: _P})
def job_result(request: Request, svc: Svc, who: Caller, job_id: Id) -> JobResultOut:
    """The result of a finished job (409 while it is queued or running, or if it failed)."""
    require_role(request, svc, who, *ROLES, resource="jobs")
    job = own_job(svc, who, job_id)
    if job.status != "done" or job.result is None:
        raise ApiError(409, f"the job is {job.status}" + (f": {job.error}" if job.error else ""))
    return JobResultOut(id=job.id, kind=job.kind, result=job.result)
