"""Sign-in sessions in the database: single-use, rotating refresh tokens with reuse detection.

Each sign-in starts a session that remembers the hash of the one refresh token that may be
used next. Refreshing swaps it for a new one in one conditional UPDATE, so of two parallel
refreshes with the same token only one wins. Presenting a refresh token the session has
already moved past means the token was copied: the whole session (every access and refresh
token issued under it) is revoked at once (RFC 9700 section 4.14.2, "refresh token
rotation"). Logout revokes the session the same way.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine, insert, select, update

from medtwin.store import schema as t

REUSE = "refresh-reuse"
LOGOUT = "logout"


class Rotation(StrEnum):
    """What became of a refresh attempt."""

    ROTATED = "rotated"
    REUSED = "reused"  # an old refresh token: the session is now revoked
    REVOKED = "revoked"  # the session had ended already (logout, reuse)
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Session:
    """A session row as the service reads it."""

    id: str
    user_id: str
    generation: int
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None


def _hash(token_id: str) -> str:
    return hashlib.sha256(token_id.encode()).hexdigest()


class SessionStore:
    """Starts, rotates, checks and revokes sign-in sessions."""

    def __init__(self, engine: Engine, refresh_ttl: timedelta) -> None:
        self.engine = engine
        self.refresh_ttl = refresh_ttl

    def start(self, user_id: str, token_id: str, *, now: datetime | None = None) -> str:
        """A new session whose first refresh token has id ``token_id``; returns its id."""
        now = now or datetime.now(UTC)
        sid = secrets.token_hex(16)
        with self.engine.begin() as conn:
            conn.execute(insert(t.auth_sessions), {
                "id": sid, "user_id": user_id, "refresh_hash": _hash(token_id),
                "generation": 0, "created_at": now, "refreshed_at": now,
                "expires_at": now + self.refresh_ttl, "revoked_at": None,
                "revoked_reason": None})
        return sid

    def get(self, session_id: str) -> Session | None:
        """The session, or None."""
        with self.engine.connect() as conn:
            r = conn.execute(select(t.auth_sessions).where(
                t.auth_sessions.c.id == session_id)).mappings().first()
        if r is None:
            return None
        return Session(r["id"], r["user_id"], int(r["generation"]), r["expires_at"],
                       r["revoked_at"], r["revoked_reason"])

    def is_live(self, session_id: str, user_id: str, *, now: datetime | None = None) -> bool:
        """Whether the session exists, is the user's, and was neither revoked nor expired."""
        s = self.get(session_id)
        now = now or datetime.now(UTC)
        return (s is not None and s.user_id == user_id and s.revoked_at is None
                and s.expires_at > now)

    def rotate(self, session_id: str, user_id: str, used: str, fresh: str, *,
               now: datetime | None = None) -> Rotation:
        """Accept refresh token ``used`` once and make ``fresh`` the next one, atomically;
        a token the session already moved past revokes the session (reuse)."""
        now = now or datetime.now(UTC)
        s = t.auth_sessions
        with self.engine.begin() as conn:
            done = conn.execute(update(s).where(
                s.c.id == session_id, s.c.user_id == user_id,
                s.c.refresh_hash == _hash(used), s.c.revoked_at.is_(None),
                s.c.expires_at > now).values(
                refresh_hash=_hash(fresh), generation=s.c.generation + 1,
                refreshed_at=now, expires_at=now + self.refresh_ttl)).rowcount
        if done == 1:
            return Rotation.ROTATED
        row = self.get(session_id)
        if row is None or row.user_id != user_id:
            return Rotation.UNKNOWN
        if row.revoked_at is not None:
            return Rotation.REVOKED
        if row.expires_at <= now:
            return Rotation.EXPIRED
        self.revoke(session_id, REUSE, now=now)
        return Rotation.REUSED

    def revoke(self, session_id: str, reason: str, *, now: datetime | None = None) -> bool:
        """End a session (idempotent); True when this call ended it."""
        s = t.auth_sessions
        with self.engine.begin() as conn:
            return conn.execute(update(s).where(s.c.id == session_id, s.c.revoked_at.is_(None))
                                .values(revoked_at=now or datetime.now(UTC),
                                        revoked_reason=reason[:32])).rowcount == 1
