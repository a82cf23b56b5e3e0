"""The access policy with SMART patient context: the role rules first, then a token bound to
a launch patient reaches no other patient.

Per-type scope decisions are made where the resource type is known (``api.deps.guard`` and
``require_role``); this policy covers what only knows patients: per-patient checks made
directly (the live WebSocket, the dashboard) and listings (``visible_patients``). A token
whose every scope is ``patient/`` reaches only its launch patient; a listing by a token with
any ``patient/`` scope shows only the launch patient (narrowing a mixed token, never
widening one).
"""

from __future__ import annotations

from medtwin.security.policy import AccessDeniedError, AccessPolicy, Action, Grant, not_found
from medtwin.security.roles import Principal


class OutsideLaunchContextError(AccessDeniedError):
    """The role reaches the patient, the token's patient context does not: answered exactly
    as a hidden patient (404, same message)."""

    def __init__(self, patient_id: str) -> None:
        super().__init__(str(not_found(patient_id)), status=404)


class ScopedAccessPolicy(AccessPolicy):
    """:class:`AccessPolicy` narrowed by the caller's SMART launch patient."""

    def check(self, who: Principal, patient_id: str, action: Action, *,
              break_glass: str | None = None) -> Grant:
        """The role decision, then: a patient-only token reaches only its launch patient."""
        grant = super().check(who, patient_id, action, break_glass=break_glass)
        scopes = who.scopes
        if scopes is not None and scopes.patient_only and patient_id != scopes.launch_patient:
            raise OutsideLaunchContextError(patient_id)
        return grant

    def visible_patients(self, who: Principal, all_ids: list[str], *,
                         break_glass: str | None = None) -> list[str]:
        """The role's list, cut to the launch patient for a token with ``patient/`` scopes."""
        ids = super().visible_patients(who, all_ids, break_glass=break_glass)
        scopes = who.scopes
        if scopes is not None and (scopes.has_patient_level or not scopes.scopes):
            return [p for p in ids if p == scopes.launch_patient]
        return ids
