"""The roles of medtwin's users and the principal (who is calling) every check works on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medtwin.security.smart import ScopeSet


class Role(StrEnum):
    """What a user is; access rules are written per role."""

    CLINICIAN = "clinician"
    PATIENT = "patient"
    RESEARCHER = "researcher"
    DEVICE = "device"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user (by token) or a device (by API key).

    ``patient_id`` is the patient a patient-user is, or the patient a device is bound to.
    ``scopes`` are the SMART scopes of the token (None: role rules alone), narrowing what
    the role allows, with their launch patient context.
    """

    id: str
    name: str
    role: Role
    patient_id: str | None = None
    scopes: ScopeSet | None = None

    @property
    def label(self) -> str:
        """How the caller is named in the audit trail."""
        return f"{self.role.value}:{self.name}"
