"""Per-patient access decisions, default deny.

A clinician reaches the patients of their care teams; a patient only themselves (read); a
device only writes for the patient it is bound to; a researcher only reads de-identified
data of patients who consented to research use; an admin reaches clinical data only with a
recorded break-glass reason. Role-level refusals are 403; a patient outside the caller's
reach is "not found" (404), exactly as a patient that does not exist, so existence is not
revealed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from medtwin.core.errors import MedtwinError
from medtwin.security.directory import Directory
from medtwin.security.roles import Principal, Role

MAX_REASON = 500


class Action(StrEnum):
    """What the caller wants to do with a patient's data."""

    READ = "read"
    WRITE = "write"
    RESEARCH = "research"  # read de-identified


class AccessDeniedError(MedtwinError):
    """The caller may not do this; ``status`` is 403 (role) or 404 (hidden patient)."""

    def __init__(self, message: str, *, status: int = 403) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Grant:
    """An allowed access, and whether it was a break-glass access."""

    patient_id: str
    action: Action
    break_glass: str | None = None


def not_found(patient_id: str) -> AccessDeniedError:
    """The one refusal shape for unknown and out-of-reach patients alike."""
    return AccessDeniedError(f"no patient {patient_id!r}", status=404)


class AccessPolicy:
    """Decides every patient-scoped access; ``has_research_consent`` is asked for research."""

    def __init__(self, directory: Directory,
                 has_research_consent: Callable[[str], bool]) -> None:
        self.directory = directory
        self.has_research_consent = has_research_consent

    def require_role(self, who: Principal, *roles: Role) -> None:
        """Refuse (403) unless the caller has one of ``roles``."""
        if who.role not in roles:
            raise AccessDeniedError(f"the {who.role.value} role may not do this "
                               f"(needs {' or '.join(r.value for r in roles)})")

    def check(self, who: Principal, patient_id: str, action: Action, *,
              break_glass: str | None = None) -> Grant:
        """Allow or raise :class:`AccessDeniedError`; existence is checked by the caller after."""
        role = who.role
        if action is Action.RESEARCH:
            if role is not Role.RESEARCHER:
                raise AccessDeniedError("de-identified research data is for researchers")
            if not self.has_research_consent(patient_id):
                raise not_found(patient_id)
            return Grant(patient_id, action)
        if role is Role.ADMIN:
            reason = (break_glass or "").strip()
            if not reason:
                raise AccessDeniedError("an admin reads or writes clinical data only in an "
                                   "emergency: give the reason in the X-Break-Glass-Reason "
                                   "header (it is audited)")
            return Grant(patient_id, action, break_glass=reason[:MAX_REASON])
        if role is Role.RESEARCHER:
            raise AccessDeniedError("researchers see only de-identified data: use /research")
        if role is Role.DEVICE:
            if action is not Action.WRITE:
                raise AccessDeniedError("a device may only write readings")
            if who.patient_id != patient_id:
                raise AccessDeniedError("this device key is bound to another patient")
            return Grant(patient_id, action)
        if role is Role.PATIENT:
            if who.patient_id != patient_id:
                raise not_found(patient_id)
            if action is not Action.READ:
                raise AccessDeniedError("patients may read, not write, their record here")
            return Grant(patient_id, action)
        if role is Role.CLINICIAN:
            if not self.directory.in_care_team(who.id, patient_id):
                raise not_found(patient_id)
            return Grant(patient_id, action)
        raise AccessDeniedError("unknown role")  # default deny

    def visible_patients(self, who: Principal, all_ids: list[str], *,
                         break_glass: str | None = None) -> list[str]:
        """The ids of ``all_ids`` the caller may list (identified access)."""
        if who.role is Role.CLINICIAN:
            mine = self.directory.care_patients(who.id)
            return [p for p in all_ids if p in mine]
        if who.role is Role.PATIENT:
            return [p for p in all_ids if p == who.patient_id]
        if who.role is Role.ADMIN and (break_glass or "").strip():
            return list(all_ids)
        self.check(who, "*", Action.READ, break_glass=break_glass)
        return []
