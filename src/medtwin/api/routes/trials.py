"""In-silico glucose trials run in the background (clinicians, researchers, admins)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from medtwin.api.deps import Caller, Services, Svc, require_role
from medtwin.api.jobs import Job, TrialJobs
from medtwin.api.problems import ApiError
from medtwin.api.routes import _P, AUTH_ERRORS
from medtwin.api.schemas import Id, TrialIn, TrialJobOut, TrialResultOut
from medtwin.security.roles import Principal, Role

router = APIRouter(prefix="/trials", tags=["trials"], responses={**AUTH_ERRORS, 404: _P})
ROLES = (Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN)


def _jobs(svc: Services) -> TrialJobs:
    jobs = svc.extras.get("trials")
    assert isinstance(jobs, TrialJobs)
    return jobs


def _out(job: Job) -> TrialJobOut:
    return TrialJobOut(id=job.id, status=job.status, error=job.error,  # type: ignore[arg-type]
                       submitted_by=job.owner)


def _own(svc: Services, who: Principal, job_id: str) -> Job:
    job = _jobs(svc).get(job_id)
    if job is None or (job.owner != who.label and who.role is not Role.ADMIN
                       and svc.settings.security_enabled):
        raise ApiError(404, f"no trial job {job_id!r}")
    return job


@router.post("", response_model=TrialJobOut, status_code=status.HTTP_202_ACCEPTED)
def submit(request: Request, svc: Svc, who: Caller, body: TrialIn) -> TrialJobOut:
    """Queue a trial on a virtual cohort (no patient data involved)."""
    require_role(request, svc, who, *ROLES, resource="trials")
    if body.days > svc.settings.trial_max_days:
        raise ApiError(422, f"days must be <= {svc.settings.trial_max_days:g} on this server")
    job = _jobs(svc).submit(who.label, body.model_dump())
    svc.record(request, who, "create", f"trial:{job.id}", "success")
    return _out(job)


@router.get("/{job_id}", response_model=TrialJobOut)
def job_status(request: Request, svc: Svc, who: Caller, job_id: Id) -> TrialJobOut:
    """A job's status (its submitter or an admin)."""
    require_role(request, svc, who, *ROLES, resource="trials")
    return _out(_own(svc, who, job_id))


@router.get("/{job_id}/result", response_model=TrialResultOut, responses={409: _P})
def job_result(request: Request, svc: Svc, who: Caller, job_id: Id) -> TrialResultOut:
    """The outcome table of a finished job (409 while it runs)."""
    require_role(request, svc, who, *ROLES, resource="trials")
    job = _own(svc, who, job_id)
    if job.status != "done" or job.result is None:
        raise ApiError(409, f"the job is {job.status}" + (f": {job.error}" if job.error else ""))
    return TrialResultOut(id=job.id, **job.result)
