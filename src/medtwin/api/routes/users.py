"""Admin: users, care teams and device API keys.

Binding a user to a patient (a patient-user) gives that account the patient's record, so an
admin cannot do it alone: either with a break-glass reason (audited, for emergencies) or as a
request that a second, independent admin approves. Both are audited with the patient id. The
same holds for care teams: an admin cannot put a clinician account they created (directly or
through accounts they created) in a care team, nor patients in such a clinician's team,
without break-glass; another admin can.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, status
from pydantic import BaseModel

from medtwin.api.deps import BREAK_GLASS_HEADER, Caller, Svc, require_role
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
from medtwin.core.errors import NotFoundError
from medtwin.security.directory import ApprovalError, Binding, User
from medtwin.security.policy import MAX_REASON
from medtwin.security.roles import Role

router = APIRouter(tags=["admin"], responses=AUTH_ERRORS)


class CreatedUserOut(UserOut):
    """A new user; ``pending_binding`` is the id of its patient binding awaiting approval."""

    pending_binding: str | None = None


class BindingOut(BaseModel):
    """A request to bind a user to a patient."""

    id: str
    user_id: str
    patient_id: str
    requested_by: str
    requested_at: datetime
    status: str
    decided_by: str | None


def _out(u: User) -> UserOut:
    return UserOut(id=u.id, username=u.username, role=u.role.value, patient_id=u.patient_id,
                   disabled=u.disabled)


def _own_creation(svc: Svc, who: Caller, user_ids: list[str]) -> bool:
    """Whether the caller created (directly or through accounts they created) any of these
    users: granting such an account patients would grant the caller."""
    return svc.settings.security_enabled and any(
        who.id in svc.directory.creators_of(uid) for uid in user_ids)


def _second_admin_needed(request: Request, svc: Svc, who: Caller, team: str,
                         patient_id: str | None) -> str | None:
    """Refuse (403, audited) a care-team change granting patients to an account the caller
    created, unless break-glass; the break-glass reason to audit, if any."""
    reason = (request.headers.get(BREAK_GLASS_HEADER) or "").strip()[:MAX_REASON]
    if reason:
        return reason
    detail = ("a clinician account you created gets patients only from another admin (or "
              f"with a reason in the {BREAK_GLASS_HEADER} header, audited)")
    svc.record(request, who, "update", f"care-team:{team}", "denied", patient_id=patient_id,
               detail=detail)
    raise ApiError(403, detail)


def _binding_out(b: Binding) -> BindingOut:
    return BindingOut(id=b.id, user_id=b.user_id, patient_id=b.patient_id,
                      requested_by=b.requested_by, requested_at=b.requested_at,
                      status=b.status, decided_by=b.decided_by)


@router.get("/users", response_model=list[UserOut])
def list_users(request: Request, svc: Svc, who: Caller) -> list[UserOut]:
    """All users (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="users")
    svc.record(request, who, "read", "users", "success")
    return [_out(u) for u in svc.directory.users()]


@router.post("/users", response_model=CreatedUserOut, status_code=status.HTTP_201_CREATED,
             responses={409: _P})
def add_user(request: Request, svc: Svc, who: Caller, body: UserIn) -> CreatedUserOut:
    """Create a user (admin). A patient-user is bound to its patient at once only with a
    break-glass reason (header ``X-Break-Glass-Reason``); otherwise the binding waits for a
    second admin (``POST /users/bindings/{id}/approve``) and the user reaches no patient."""
    require_role(request, svc, who, Role.ADMIN, resource="users")
    if svc.directory.find(body.username) is not None:
        raise ApiError(409, f"user {body.username!r} already exists")
    binds = body.role == Role.PATIENT.value and body.patient_id is not None
    reason = (request.headers.get(BREAK_GLASS_HEADER) or "").strip()[:MAX_REASON]
    pending = binds and not reason and svc.settings.security_enabled
    user = svc.directory.add_user(body.username, body.role, body.password,
                                  patient_id=body.patient_id, created_by=who.id,
                                  bind_pending=pending)
    binding = next((b.id for b in svc.directory.bindings() if b.user_id == user.id), None)
    detail = ("patient binding awaits a second admin" if pending
              else f"break-glass: {reason}" if binds and reason else None)
    svc.record(request, who, "create", f"user:{user.username}", "success",
               patient_id=body.patient_id if binds else None, detail=detail)
    return CreatedUserOut(**_out(user).model_dump(), pending_binding=binding)


@router.get("/users/bindings", response_model=list[BindingOut])
def list_bindings(request: Request, svc: Svc, who: Caller) -> list[BindingOut]:
    """Patient bindings awaiting a second admin's approval (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="patient-bindings")
    found = svc.directory.bindings()
    svc.record(request, who, "read", "patient-bindings", "success",
               detail=f"{len(found)} pending")
    return [_binding_out(b) for b in found]


@router.post("/users/bindings/{binding_id}/approve", response_model=UserOut,
             responses={404: _P})
def approve_binding(request: Request, svc: Svc, who: Caller, binding_id: Name) -> UserOut:
    """Approve a patient binding requested by another admin (admin); the user's existing
    tokens stop, so the next sign-in carries the binding."""
    require_role(request, svc, who, Role.ADMIN, resource="patient-bindings")
    try:
        b = svc.directory.binding(binding_id)
    except NotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    resource = f"patient-binding:{b.id}"
    try:
        user = svc.directory.approve_binding(b.id, who.id)
    except ApprovalError as exc:
        svc.record(request, who, "approve", resource, "denied", patient_id=b.patient_id,
                   detail=str(exc))
        raise ApiError(403, str(exc)) from None
    svc.record(request, who, "approve", resource, "success", patient_id=b.patient_id,
               detail=f"user {user.username} bound; requested by {b.requested_by}")
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
    reason = None
    if _own_creation(svc, who, [user.id]):
        reason = _second_admin_needed(request, svc, who, team, None)
    svc.directory.add_to_team(team, user_id=user.id)
    svc.record(request, who, "update", f"care-team:{team}", "success",
               detail=f"member {body.username}" + (f"; break-glass: {reason}" if reason else ""))


@router.post("/care-teams/{team}/patients", status_code=status.HTTP_204_NO_CONTENT)
def add_team_patient(request: Request, svc: Svc, who: Caller, team: Name,
                     body: TeamPatientIn) -> None:
    """Put a patient in a care team's care (admin)."""
    require_role(request, svc, who, Role.ADMIN, resource="care-teams")
    reason = None
    if _own_creation(svc, who, svc.directory.team_members(team)):
        reason = _second_admin_needed(request, svc, who, team, body.patient_id)
    svc.directory.add_to_team(team, patient_id=body.patient_id)
    svc.record(request, who, "update", f"care-team:{team}", "success",
               patient_id=body.patient_id,
               detail=f"break-glass: {reason}" if reason else None)


@router.post("/devices/keys", response_model=DeviceKeyOut, status_code=status.HTTP_201_CREATED)
def add_device_key(request: Request, svc: Svc, who: Caller, body: DeviceKeyIn) -> DeviceKeyOut:
    """Issue a device API key bound to one patient (admin); shown once."""
    require_role(request, svc, who, Role.ADMIN, resource="device-keys")
    key = svc.directory.add_device_key(body.device_id, body.patient_id)
    svc.record(request, who, "create", f"device-key:{body.device_id}", "success",
               patient_id=body.patient_id)
    return DeviceKeyOut(api_key=key, device_id=body.device_id, patient_id=body.patient_id)
