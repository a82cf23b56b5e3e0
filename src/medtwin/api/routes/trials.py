"""In-silico glucose trials run as durable jobs on Dask (clinicians, researchers, admins)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from medtwin.api.deps import Caller, Svc, require_role
from medtwin.api.problems import ApiError
from medtwin.api.routes import _P, AUTH_ERRORS
from medtwin.api.routes.jobs import own_job, submit_job
from medtwin.api.schemas import Id, TrialIn, TrialJobOut, TrialResultOut
from medtwin.jobs.records import JobRecord
from medtwin.security.roles import Role

router = APIRouter(prefix="/trials", tags=["trials"], responses={**AUTH_ERRORS, 404: _P})
ROLES = (Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN)


def _out(job: JobRecord) -> TrialJobOut:
    return TrialJobOut(id=job.id, status=job.status, error=job.error,  # type: ignore[arg-type]
                       submitted_by=job.owner, progress=job.progress, message=job.message)


@router.post("", response_model=TrialJobOut, status_code=status.HTTP_202_ACCEPTED)
def submit(request: Request, svc: Svc, who: Caller, body: TrialIn) -> TrialJobOut:
    """Queue a trial on a virtual cohort (no patient data involved); follow it here or at
    ``/jobs/{id}``."""
    require_role(request, svc, who, *ROLES, resource="trials")
    if body.days > svc.settings.trial_max_days:
        raise ApiError(422, f"days must be <= {svc.settings.trial_max_days:g} on this server")
    return _out(submit_job(request, svc, who, "trial", body.model_dump()))


@router.get("/{job_id}", response_model=TrialJobOut)
def job_status(request: Request, svc: Svc, who: Caller, job_id: Id) -> TrialJobOut:
    """A trial's status and progress (its submitter or an admin)."""
    require_role(request, svc, who, *ROLES, resource="trials")
    return _out(own_job(svc, who, job_id, kind="trial"))


@router.get("/{job_id}/result", response_model=TrialResultOut, responses={409: _P})
def job_result(request: Request, svc: Svc, who: Caller, job_id: Id) -> TrialResultOut:
    """The outcome table of a finished trial (409 while it runs)."""
    require_role(request, svc, who, *ROLES, resource="trials")
    job = own_job(svc, who, job_id, kind="trial")
    if job.status != "done" or job.result is None:
        raise ApiError(409, f"the job is {job.status}" + (f": {job.error}" if job.error else ""))
    return TrialResultOut(id=job.id, **job.result)
