"""SMART on FHIR v2 scopes: parsing, and the decision whether a scope set covers a request.

Scopes never widen what a role may do: the role rules (security/policy.py) decide first and
a scope can only narrow them further. A principal without scopes (``Principal.scopes is
None``: medtwin's own tokens issued without ``scope``, device keys, the dashboard) is
governed by the role rules alone.

A resource scope is ``<level>/<type>.<permissions>``:

* level ``patient`` (only the token's patient context: the ``patient`` claim, or the
  patient a patient-user is), ``user`` (whatever the user's role reaches) or ``system``
  (a backend service; bounded by the role of the medtwin user it is mapped to);
* type a FHIR resource type or ``*``;
* permissions v2 letters in ``cruds`` order (create, read, update, delete, search), or the
  v1 forms ``read`` (= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``).

Granular scopes with a query (``patient/Observation.rs?category=laboratory``) are accepted
in a token but grant nothing: medtwin cannot yet enforce their filter, and granting the
whole type would widen them. Other scopes (``openid``, ``launch/patient``, ``offline_access``)
carry no resource permission.

medtwin's own resources map to FHIR types (:data:`RESOURCE_TYPES`): a request for them needs
a scope covering every type listed. ``*`` in that list means "the whole record": only a
scope on ``*`` covers it (the timeline, twins, research, and every administrative resource).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from medtwin.core.errors import ValidationError
from medtwin.security.roles import Role

INTERACTIONS = "cruds"
ALL = "*"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)(\?.*)?$")
_FHIR_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")

#: medtwin's non-FHIR resource names (as routes name them for guard()/require_role()) and
#: the FHIR types a SMART scope must cover to reach them; names not listed and not a FHIR
#: type name need a scope on ``*``.
RESOURCE_TYPES: dict[str, tuple[str, ...]] = {
    "patients": ("Patient",),
    "patient": ("Patient",),
    "history": ("Observation",),          # the versions of one observation
    "live-readings": ("Observation",),    # new readings pushed over a WebSocket
    "alerts": ("Flag",),                  # medtwin's alerts are FHIR Flags of the patient
    "alert": ("Flag",),
    "timeline": (ALL,),                   # every kind of record of the patient
    "twins": (ALL,),                      # twins read the whole record
    "glucose-twin": (ALL,),
    "dose": (ALL,),
    "Bundle": (ALL,),                     # an import may hold any type
}

#: How each access kind (``policy.Action`` value) maps to SMART interactions; ``write``
#: depends on the HTTP method (see :func:`interactions_for`).
ACTION_INTERACTIONS: dict[str, str] = {
    "read": "r", "vread": "r", "history": "r", "search": "s", "create": "c",
    "update": "u", "delete": "d", "research": "r",
}
_WRITE_BY_METHOD = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}
_COLLECTION_BY_METHOD = {"GET": "s", "HEAD": "s", "POST": "c", "PUT": "u", "PATCH": "u",
                         "DELETE": "d"}


class Level(StrEnum):
    """Whose data a scope reaches."""

    PATIENT = "patient"
    USER = "user"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope, in v2 form."""

    level: Level
    resource: str
    permissions: str  # a subsequence of "cruds"

    def __str__(self) -> str:
        return f"{self.level.value}/{self.resource}.{self.permissions}"

    def covers(self, resource: str, interaction: str) -> bool:
        """Whether this scope permits ``interaction`` on ``resource`` (``*``: all types)."""
        return interaction in self.permissions and self.resource in (ALL, resource)


def parse_scope(text: str) -> Scope | None:
    """The resource scope ``text`` names, None for a non-resource or granular scope;
    :class:`ValidationError` for a malformed resource scope."""
    if "/" not in text or text.startswith("launch/"):
        return None
    m = _SCOPE.match(text)
    if m is None:
        raise ValidationError(f"malformed SMART scope {text!r}: use <patient|user|system>/"
                              "<Type|*>.<cruds>, e.g. patient/Observation.rs", where="scope")
    level, resource, perms, query = m.groups()
    if query:
        return None  # granular: not enforceable yet, so it grants nothing (never widens)
    perms = _V1.get(perms, perms)
    if not perms or any(c not in INTERACTIONS for c in perms) or "".join(
            c for c in INTERACTIONS if c in perms) != perms:
        raise ValidationError(f"SMART scope {text!r}: permissions are letters of 'cruds' in "
                              "that order (v2), or read, write, * (v1)", where="scope")
    return Scope(Level(level), resource, perms)


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The resource scopes a token was granted (in v2 form), and its launch patient."""

    scopes: tuple[Scope, ...]
    launch_patient: str | None = None

    @classmethod
    def parse(cls, text: str | list[str] | tuple[str, ...], *,
              launch_patient: str | None = None, strict: bool = False) -> ScopeSet:
        """The scopes of a space-separated ``scope`` string (or a list of them); malformed
        resource scopes are skipped, or raise :class:`ValidationError` with ``strict``."""
        items = text.split() if isinstance(text, str) else [str(s) for s in text]
        found: list[Scope] = []
        for item in items:
            try:
                scope = parse_scope(item)
            except ValidationError:
                if strict:
                    raise
                continue
            if scope is not None and scope not in found:
                found.append(scope)
        return cls(tuple(found), launch_patient)

    @property
    def has_patient_level(self) -> bool:
        """Whether some scope is limited to the patient context."""
        return any(s.level is Level.PATIENT for s in self.scopes)

    @property
    def patient_only(self) -> bool:
        """Whether every scope is limited to the patient context (or there is none)."""
        return all(s.level is Level.PATIENT for s in self.scopes)

    def text(self) -> str:
        """The scopes as a space-separated ``scope`` string."""
        return " ".join(str(s) for s in self.scopes)

    def decide(self, types: tuple[str, ...], interactions: str,
               patient_id: str | None = None) -> Decision:
        """Whether these scopes cover every interaction on every type, for ``patient_id``
        (None: a request not bound to one patient, whose listing is narrowed by the
        caller). ``patient/`` scopes count only for the launch patient."""
        for rtype in types:
            for i in interactions:
                usable = [s for s in self.scopes if s.covers(rtype, i)]
                ok = [s for s in usable if s.level is not Level.PATIENT or (
                    self.launch_patient is not None
                    and patient_id in (None, self.launch_patient))]
                if ok:
                    continue
                needed = f"{rtype}.{i}"
                if usable:
                    why = ("outside the token's patient context" if self.launch_patient
                           else "patient/ scopes need a launch patient context")
                    return Decision(False, needed, why, hidden=True)
                return Decision(False, needed, f"no granted scope covers {needed} "
                                f"(needs patient/, user/ or system/{needed})")
        return Decision(True)


@dataclass(frozen=True, slots=True)
class Decision:
    """A scope decision: on refusal, the missing ``Type.interaction`` and why; ``hidden``
    when the patient lies outside the token's context (answered as "not found")."""

    allowed: bool
    missing: str | None = None
    reason: str | None = None
    hidden: bool = False


def types_for(resource: str) -> tuple[str, ...]:
    """The FHIR types a request for medtwin ``resource`` needs a scope on."""
    if resource in RESOURCE_TYPES:
        return RESOURCE_TYPES[resource]
    if _FHIR_TYPE.match(resource):
        return (resource,)
    return (ALL,)  # research, users, audit, trials ...: the whole-record scope


def interactions_for(action: str | None, method: str | None) -> str:
    """The SMART interactions an access needs: from the access kind (``policy.Action``
    value) and, for ``write`` or a collection-level check (``action`` None), the HTTP
    method; an unknown kind needs every interaction (default deny for narrow scopes)."""
    method = (method or "").upper()
    if action is None:
        return _COLLECTION_BY_METHOD.get(method, INTERACTIONS)
    if action == "write":
        return _WRITE_BY_METHOD.get(method, "cu")
    return ACTION_INTERACTIONS.get(action, INTERACTIONS)


#: The most each role's scopes may ever grant (levels, interactions): issuing a token never
#: puts more in it than the role could use.
ROLE_CEILING: dict[Role, tuple[frozenset[Level], str]] = {
    Role.PATIENT: (frozenset({Level.PATIENT, Level.USER}), "rs"),
    Role.CLINICIAN: (frozenset({Level.PATIENT, Level.USER}), INTERACTIONS),
    Role.RESEARCHER: (frozenset({Level.USER}), "rs"),
    Role.ADMIN: (frozenset({Level.USER, Level.SYSTEM}), INTERACTIONS),
    Role.DEVICE: (frozenset(), ""),
}


def bounded(scopes: ScopeSet, role: Role) -> ScopeSet:
    """``scopes`` cut down to what ``role`` could use: other levels dropped, permissions
    trimmed; ``patient/`` scopes need a launch patient."""
    levels, allowed = ROLE_CEILING[role]
    kept: list[Scope] = []
    for s in scopes.scopes:
        perms = "".join(c for c in s.permissions if c in allowed)
        if s.level not in levels or not perms or (
                s.level is Level.PATIENT and scopes.launch_patient is None):
            continue
        scope = Scope(s.level, s.resource, perms)
        if scope not in kept:
            kept.append(scope)
    return ScopeSet(tuple(kept), scopes.launch_patient)


def granted_at_sign_in(requested: list[str], role: Role, patient_id: str | None) -> str | None:
    """The ``scope`` a medtwin token gets when its sign-in asked for ``requested`` (None:
    none asked, role rules alone); a patient-user's launch patient is the patient they are.
    :class:`ValidationError` for a malformed resource scope."""
    if not requested:
        return None
    launch = patient_id if role is Role.PATIENT else None
    return bounded(ScopeSet.parse(requested, launch_patient=launch, strict=True), role).text()
