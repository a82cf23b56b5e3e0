"""Who may see and change which FHIR resources: the same rules as the rest of the API.

Every interaction goes through :func:`~medtwin.api.deps.guard` (per patient) or
:func:`~medtwin.api.deps.require_role` (per role) of ``api/deps.py``, with ``resource`` the
FHIR resource type, and is audited.

The rule, per resource:

* A resource in a patient's compartment (a Patient itself, or one whose subject/patient is a
  Patient) is reached exactly as that patient's record is: a clinician of the patient's care
  team, the patient themselves (read only), an admin with a break-glass reason, a device
  bound to the patient (create Observations only). Anyone else is told "not found".
* A resource in no patient compartment (Organization, Practitioner, Medication, Location...)
  is shared reference data: clinicians and admins (no break-glass needed: it is not patient
  data) may read and write it; patients, researchers and devices may not.
* Researchers never use the identified REST API; they get de-identified Bulk Data exports of
  consenting patients (``$export``).

A search is restricted *before* it runs to the patients the caller reaches (so totals, pages
and links never count or show anything else), and every patient whose data is returned,
through matches, ``_include``, ``_revinclude``, ``$everything`` or ``_history``, is then
passed through ``guard`` and audited one entry per patient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Request

from medtwin.api.deps import BREAK_GLASS_HEADER, Services, audited, guard, require_role
from medtwin.api.problems import ApiError
from medtwin.security.policy import AccessDeniedError, Action
from medtwin.security.roles import Principal, Role

SHARED_ROLES = (Role.CLINICIAN, Role.ADMIN)
READ_ROLES = (Role.CLINICIAN, Role.PATIENT, Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Reach:
    """What a search may return: ``patients`` None means every patient (security off, or an
    admin's break-glass); ``shared`` whether resources outside any compartment are visible."""

    patients: frozenset[str] | None
    shared: bool

    def sees(self, patient_id: str | None) -> bool:
        """Whether a resource in ``patient_id``'s compartment (None: none) is visible."""
        if patient_id is None:
            return self.shared
        return self.patients is None or patient_id in self.patients


def read_reach(request: Request, svc: Services, who: Principal, rtype: str,
               all_patients: Iterable[str]) -> Reach:
    """The reach of a read or search of ``rtype`` (403, audited, for roles that have none)."""
    if not svc.settings.security_enabled:
        return Reach(None, True)
    if who.role not in READ_ROLES:
        # researchers, devices: refused by the policy through guard (audited, 403)
        guard(request, svc, who, "*", Action.READ, rtype, interaction="s")
        raise ApiError(403, f"the {who.role.value} role may not read {rtype}")
    require_role(request, svc, who, *READ_ROLES, resource=rtype, interaction="s")
    shared = who.role in SHARED_ROLES
    try:
        ids = svc.policy.visible_patients(who, list(all_patients),
                                          break_glass=request.headers.get(BREAK_GLASS_HEADER))
    except AccessDeniedError:
        ids = []  # an admin without break-glass: shared data only
    if who.role is Role.ADMIN and ids:
        return Reach(None, shared)
    return Reach(frozenset(ids), shared)


def check_shared(request: Request, svc: Services, who: Principal, rtype: str,
                 action: Action, *, interaction: str | None = None) -> None:
    """Reading or writing a resource outside any compartment: clinicians and admins; audited."""
    require_role(request, svc, who, *SHARED_ROLES, resource=rtype, interaction=interaction)
    svc.record(request, who, action.value, rtype, "success")


def check_patient(request: Request, svc: Services, who: Principal, patient_id: str,
                  action: Action, rtype: str, *, audit: bool = True,
                  interaction: str | None = None) -> None:
    """One patient's compartment: ``guard`` (403/404, audited) and the success audited."""
    if who.role is Role.DEVICE and (action is not Action.WRITE or rtype != "Observation"):
        svc.record(request, who, action.value, rtype, "denied", patient_id=patient_id,
                   detail="a device may only create Observations")
        raise ApiError(403, "a device may only create Observations for its own patient")
    grant = guard(request, svc, who, patient_id, action, rtype, interaction=interaction)
    if audit:
        audited(request, svc, who, grant, rtype)


def check_returned(request: Request, svc: Services, who: Principal, rtype: str,
                   patients: Iterable[str | None], action: Action = Action.READ,
                   interaction: str = "s") -> None:
    """Every patient whose data is being returned goes through ``guard`` and is audited once;
    shared resources are audited once by role."""
    seen = set(patients)
    for pid in sorted(p for p in seen if p is not None):
        check_patient(request, svc, who, pid, action, rtype, interaction=interaction)
    if None in seen:
        check_shared(request, svc, who, rtype, action, interaction=interaction)
