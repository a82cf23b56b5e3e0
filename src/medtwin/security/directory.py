"""Users, care teams and device API keys, kept in the store's database."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, RowMapping, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from medtwin.core.errors import MedtwinError, NotFoundError, ValidationError
from medtwin.security.passwords import PasswordHasher
from medtwin.security.roles import Principal, Role
from medtwin.store import schema as t

KEY_PREFIX = "mtk"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
PENDING, APPROVED = "pending", "approved"
_MAX_CREATOR_CHAIN = 100


class ApprovalError(MedtwinError):
    """A patient binding may only be approved by a second admin, independent of the first."""


@dataclass(frozen=True, slots=True)
class Binding:
    """A request to bind a user to the patient they are (approved by a second admin)."""

    id: str
    user_id: str
    patient_id: str
    requested_by: str
    requested_at: datetime
    status: str
    decided_by: str | None


@dataclass(frozen=True, slots=True)
class User:
    """A user row (never carries the password hash out)."""

    id: str
    username: str
    role: Role
    patient_id: str | None
    disabled: bool
    token_version: int

    def principal(self) -> Principal:
        """This user as a caller."""
        return Principal(self.id, self.username, self.role, self.patient_id)


def _user(row: object) -> User:
    r = row._mapping  # type: ignore[attr-defined]
    return User(r["id"], r["username"], Role(r["role"]), r["patient_id"], bool(r["disabled"]),
                int(r["token_version"]))


def _check_name(value: str, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValidationError("use 1-100 letters, digits or . _ @ -", where=where)
    return value


class Directory:
    """Reads and changes users, care teams and device keys."""

    def __init__(self, engine: Engine, hasher: PasswordHasher) -> None:
        self.engine = engine
        self.hasher = hasher

    # --- users ------------------------------------------------------------------------------
    def add_user(self, username: str, role: Role | str, password: str | None = None, *,
                 patient_id: str | None = None, created_by: str | None = None,
                 bind_pending: bool = False) -> User:
        """Create a user; a patient-user names the patient they are. ``created_by`` is the
        admin creating it through the API; with ``bind_pending`` the patient binding is only
        requested (the user reaches no patient until a second admin approves it)."""
        _check_name(username, "username")
        try:
            role = Role(role)
        except ValueError:
            raise ValidationError(f"unknown role {role!r}; use one of "
                                  f"{', '.join(r.value for r in Role)}", where="role") from None
        if role is Role.PATIENT and not patient_id:
            raise ValidationError("a patient user needs the patient id they are",
                                  where="patient_id")
        if role is Role.DEVICE:
            raise ValidationError("devices authenticate with API keys: `medtwin key add`",
                                  where="role")
        if password is None:
            raise ValidationError("a password is required", where="password")
        now = datetime.now(UTC)
        bound = patient_id if role is Role.PATIENT else None
        row = {"id": uuid.uuid4().hex, "username": username, "role": role.value,
               "password_hash": self.hasher.hash(password, user_inputs=[username]),
               "patient_id": None if bind_pending else bound,
               "disabled": False, "token_version": 0, "created_at": now,
               "created_by": created_by}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.users), row)
                if bind_pending and bound is not None:
                    conn.execute(insert(t.patient_bindings), {
                        "id": uuid.uuid4().hex, "user_id": row["id"], "patient_id": bound,
                        "requested_by": created_by or "", "requested_at": now,
                        "status": PENDING, "decided_by": None, "decided_at": None})
        except IntegrityError:
            raise ValidationError(f"user {username!r} already exists", where="username") from None
        return self.user(row["id"])

    def user(self, user_id: str) -> User:
        """A user by id; :class:`NotFoundError` if none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.users).where(t.users.c.id == user_id)).first()
        if row is None:
            raise NotFoundError(f"no user with id {user_id!r}")
        return _user(row)

    def find(self, username: str) -> User | None:
        """A user by name, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.users).where(t.users.c.username == username)).first()
        return _user(row) if row else None

    def users(self) -> list[User]:
        """All users, by name."""
        with self.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(t.users).order_by(t.users.c.username))]

    def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user with this name and password, else None (same cost either way)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.users).where(t.users.c.username == username)).first()
        hashed = row._mapping["password_hash"] if row is not None else None
        ok = self.hasher.verify(hashed, password)
        if not ok or row is None:
            return None
        user = _user(row)
        return None if user.disabled else user

    def disable(self, username: str) -> User:
        """Disable a user and invalidate every token they hold (the version moves on)."""
        with self.engine.begin() as conn:
            done = conn.execute(update(t.users).where(t.users.c.username == username).values(
                disabled=True, token_version=t.users.c.token_version + 1)).rowcount
        if not done:
            raise NotFoundError(f"no user {username!r}; `medtwin user list` shows them")
        found = self.find(username)
        assert found is not None
        return found

    # --- patient bindings (two-person rule) -------------------------------------------------
    def bindings(self, *, status: str | None = PENDING) -> list[Binding]:
        """Binding requests (pending ones by default), oldest first."""
        q = select(t.patient_bindings).order_by(t.patient_bindings.c.requested_at)
        if status is not None:
            q = q.where(t.patient_bindings.c.status == status)
        with self.engine.connect() as conn:
            return [_binding(r) for r in conn.execute(q).mappings()]

    def binding(self, binding_id: str) -> Binding:
        """One binding request; :class:`NotFoundError` if none."""
        with self.engine.connect() as conn:
            r = conn.execute(select(t.patient_bindings).where(
                t.patient_bindings.c.id == binding_id)).mappings().first()
        if r is None:
            raise NotFoundError(f"no patient binding {binding_id!r}; GET /users/bindings "
                                "lists the pending ones")
        return _binding(r)

    def creators_of(self, user_id: str) -> list[str]:
        """Who created this user, who created that one, ... (API-created users only)."""
        chain: list[str] = []
        current: str | None = user_id
        with self.engine.connect() as conn:
            while current and len(chain) < _MAX_CREATOR_CHAIN:
                current = conn.scalar(select(t.users.c.created_by).where(
                    t.users.c.id == current))
                if not current or current in chain:
                    break
                chain.append(current)
        return chain

    def approve_binding(self, binding_id: str, approver_id: str) -> User:
        """Bind the user to the patient once a second, independent admin approves: the
        approver's creation chain (the approver and whoever created it, and so on) shares no
        account with the requester's nor with the bound user's. Otherwise one admin could
        create two accounts (or one, or be created by the requester) and approve through
        them. Admins made at the command line (``medtwin user add``) have no creator."""
        b = self.binding(binding_id)
        if b.status != PENDING:
            raise ApprovalError(f"this binding was already {b.status}")
        mine = {approver_id, *self.creators_of(approver_id)}
        theirs = {b.requested_by, *self.creators_of(b.requested_by), b.user_id,
                  *self.creators_of(b.user_id)}
        if mine & theirs:
            raise ApprovalError("a patient binding needs a second admin, independent of the "
                                "requester: not the one who requested it, nor an account "
                                "created by, or creating, the requester or the bound user")
        with self.engine.begin() as conn:
            done = conn.execute(update(t.patient_bindings).where(
                t.patient_bindings.c.id == binding_id,
                t.patient_bindings.c.status == PENDING).values(
                status=APPROVED, decided_by=approver_id, decided_at=datetime.now(UTC))).rowcount
            if not done:
                raise ApprovalError("this binding was decided by someone else meanwhile")
            conn.execute(update(t.users).where(t.users.c.id == b.user_id).values(
                patient_id=b.patient_id, token_version=t.users.c.token_version + 1))
        return self.user(b.user_id)

    # --- care teams -------------------------------------------------------------------------
    def add_to_team(self, team: str, *, user_id: str | None = None,
                    patient_id: str | None = None) -> None:
        """Put a clinician and/or a patient in a care team (idempotent)."""
        _check_name(team, "team")
        with self.engine.begin() as conn:
            if user_id is not None:
                exists = conn.scalar(select(t.care_team_members.c.user_id).where(
                    t.care_team_members.c.team == team,
                    t.care_team_members.c.user_id == user_id))
                if not exists:
                    conn.execute(insert(t.care_team_members), {"team": team, "user_id": user_id})
            if patient_id is not None:
                exists = conn.scalar(select(t.care_team_patients.c.patient_id).where(
                    t.care_team_patients.c.team == team,
                    t.care_team_patients.c.patient_id == patient_id))
                if not exists:
                    conn.execute(insert(t.care_team_patients),
                                 {"team": team, "patient_id": patient_id})

    def remove_from_team(self, team: str, patient_id: str) -> None:
        """Take a patient out of a care team."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.care_team_patients).where(
                t.care_team_patients.c.team == team,
                t.care_team_patients.c.patient_id == patient_id))

    def team_members(self, team: str) -> list[str]:
        """Ids of the clinicians in a care team."""
        with self.engine.connect() as conn:
            return sorted(conn.scalars(select(t.care_team_members.c.user_id).where(
                t.care_team_members.c.team == team)))

    def teams_of(self, user_id: str) -> list[str]:
        """The care teams a user belongs to."""
        with self.engine.connect() as conn:
            return sorted(conn.scalars(select(t.care_team_members.c.team).where(
                t.care_team_members.c.user_id == user_id)))

    def in_care_team(self, user_id: str, patient_id: str) -> bool:
        """Whether the user and the patient share a care team (one indexed query)."""
        m, p = t.care_team_members, t.care_team_patients
        q = (select(m.c.team).join(p, p.c.team == m.c.team)
             .where(m.c.user_id == user_id, p.c.patient_id == patient_id).limit(1))
        with self.engine.connect() as conn:
            return conn.scalar(q) is not None

    def care_patients(self, user_id: str) -> set[str]:
        """Ids of every patient in the user's care teams."""
        m, p = t.care_team_members, t.care_team_patients
        q = select(p.c.patient_id).join(m, p.c.team == m.c.team).where(m.c.user_id == user_id)
        with self.engine.connect() as conn:
            return set(conn.scalars(q))

    # --- device keys ------------------------------------------------------------------------
    def add_device_key(self, device_id: str, patient_id: str) -> str:
        """Create an API key binding ``device_id`` to ``patient_id``; the key is returned once
        and only its hash is stored."""
        _check_name(device_id, "device")
        if not isinstance(patient_id, str) or not patient_id.strip():
            raise ValidationError("give the patient id the device reports for", where="patient")
        kid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(insert(t.api_keys), {
                "key_id": kid, "secret_hash": _digest(secret), "device_id": device_id,
                "patient_id": patient_id, "revoked": False, "created_at": datetime.now(UTC)})
        return f"{KEY_PREFIX}_{kid}_{secret}"

    def revoke_device_key(self, key_id: str) -> None:
        """Revoke a device key at once."""
        with self.engine.begin() as conn:
            if not conn.execute(update(t.api_keys).where(t.api_keys.c.key_id == key_id)
                                .values(revoked=True)).rowcount:
                raise NotFoundError(f"no device key {key_id!r}")

    def device_principal(self, api_key: str) -> Principal | None:
        """The device an API key belongs to, or None for an unknown/revoked/forged key."""
        parts = api_key.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.key_id == parts[1])
                               ).mappings().first()
        if row is None or row["revoked"] or not hmac.compare_digest(
                row["secret_hash"], _digest(parts[2])):
            return None
        return Principal(f"device:{row['key_id']}", row["device_id"], Role.DEVICE,
                         row["patient_id"])


def _binding(m: RowMapping) -> Binding:
    return Binding(m["id"], m["user_id"], m["patient_id"], m["requested_by"],
                   m["requested_at"], m["status"], m["decided_by"])


def _digest(secret: str) -> str:
    """SHA-256 of a high-entropy key secret (a slow hash adds nothing for 256-bit secrets)."""
    return hashlib.sha256(secret.encode()).hexdigest()
