"""Admin: users, care teams and device API keys."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from medtwin.api.deps import Caller, Svc, require_role
from medtwin.api.problems import ApiError
from medtwin.api.routes import _P, AUTH_ERRORS
from medtwin.api.schemas import (
    DeviceKeyIn,
    DeviceKeyOut,
    Name,
    TeamMemberIn,
    TeamPatientIn,
    UserIn,
    UserOut,
)
from medtwin.security.directory import User
from medtwin.security.roles import Role

router = APIRouter(tags=["admin"], responses=AUTH_ERRORS)


def _out(u: User) -> UserOut:
    return UserOut(id=u.id, username=u.username, role=u.role.value, patient_id=u.patient_id,
                   disabled=u.disabled)


@router.get("/users", response_model=list[UserOut])
def list_users(request: Request, svc: Svc, who: Caller) -> list[UserOut]:
    """All users (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="users")
    svc.record(request, who, "read", "users", "success")
    return [_out(u) for u in svc.directory.users()]


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED,
             responses={409: _P})
def add_user(request: Request, svc: Svc, who: Caller, body: UserIn) -> UserOut:
    """Create a user (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="users")
    if svc.directory.find(body.username) is not None:
        raise ApiError(409, f"user {body.username!r} already exists")
    user = svc.directory.add_user(body.username, body.role, body.password,
                                  patient_id=body.patient_id)
    svc.record(request, who, "create", f"user:{user.username}", "success")
    return _out(user)


@router.post("/users/{username}/disable", response_model=UserOut, responses={404: _P})
def disable_user(request: Request, svc: Svc, who: Caller, username: Name) -> UserOut:
    """Disable a user; their tokens stop working at once (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="users")
    user = svc.directory.disable(username)
    svc.record(request, who, "disable", f"user:{username}", "success")
    return _out(user)


@router.post("/care-teams/{team}/members", status_code=status.HTTP_204_NO_CONTENT,
             responses={404: _P})
def add_member(request: Request, svc: Svc, who: Caller, team: Name,
               body: TeamMemberIn) -> None:
    """Add a clinician to a care team (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="care-teams")
    user = svc.directory.find(body.username)
    if user is None or user.role is not Role.CLINICIAN:
        raise ApiError(404, f"no clinician {body.username!r}")
    svc.directory.add_to_team(team, user_id=user.id)
    svc.record(request, who, "update", f"care-team:{team}", "success",
               detail=f"member {body.username}")


@router.post("/care-teams/{team}/patients", status_code=status.HTTP_204_NO_CONTENT)
def add_team_patient(request: Request, svc: Svc, who: Caller, team: Name,
                     body: TeamPatientIn) -> None:
    """Put a patient in a care team's care (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="care-teams")
    svc.directory.add_to_team(team, patient_id=body.patient_id)
    svc.record(request, who, "update", f"care-team:{team}", "success",
               patient_id=body.patient_id)


@router.post("/devices/keys", response_model=DeviceKeyOut, status_code=status.HTTP_201_CREATED)
def add_device_key(request: Request, svc: Svc, who: Caller, body: DeviceKeyIn) -> DeviceKeyOut:
    """Issue a device API key bound to one patient (admin); shown once."""
    require_role(request, svc, who, Role.ADMIN, resource="device-keys")
    key = svc.directory.add_device_key(body.device_id, body.patient_id)
    svc.record(request, who, "create", f"device-key:{body.device_id}", "success",
               patient_id=body.patient_id)
    return DeviceKeyOut(api_key=key, device_id=body.device_id, patient_id=body.patient_id)
