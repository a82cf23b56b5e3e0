"""Signed, short-lived JWT access tokens and longer-lived refresh tokens (HS256, PyJWT).

A token names its user, the user's token version and the sign-in session it belongs to
(``sid``); the caller checks all three on every request, so disabling a user (which bumps the
version) or ending a session (logout, refresh-token reuse) stops those tokens at once. Each
token has its own id (``jti``): a session accepts only the latest refresh token's id.

Signing keys rotate by key id (``kid`` in the JWT header): given a key ring, tokens are signed
with the key derived from the ring's current key and the service secret, and verified with
the key of whichever ``kid`` they name (a rotated-out key still verifies its tokens until
they expire). Without a ring the secret itself signs (no ``kid``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import jwt

from medtwin.core.errors import MedtwinError

ISSUER = "medtwin"
ALGORITHM = "HS256"


class TokenError(MedtwinError):
    """A token is missing, forged, expired or of the wrong kind."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    user_id: str
    role: str
    version: int
    kind: str
    expires: datetime
    session: str | None = None
    token_id: str | None = None
    scope: str | None = None  # SMART scopes granted at sign-in (None: role rules alone)


class SigningKeys(Protocol):
    """Where token keys come from (medtwin's ``KeyRing`` or ``WatchedKeyRing``)."""

    @property
    def current(self) -> str: ...

    def token_key(self, kid: str, secret: bytes) -> bytes | None: ...


class TokenIssuer:
    """Issues and verifies tokens under the secret, or under keys derived from a key ring
    and the secret (rotating by ``kid``)."""

    def __init__(self, secret: str, *, access_ttl: timedelta = timedelta(minutes=15),
                 refresh_ttl: timedelta = timedelta(hours=8),
                 keys: SigningKeys | None = None) -> None:
        if len(secret) < 32:
            raise TokenError("the token secret must have at least 32 characters")
        self._secret = secret
        self._keys = keys
        self._derived: dict[str, bytes | None] = {}
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def _key(self, kid: str | None) -> bytes | str | None:
        """The key of ``kid`` (the secret for a token without one when no ring is used)."""
        if kid is None:
            return self._secret if self._keys is None else None
        if self._keys is None:
            return None
        key = self._derived.get(kid)
        if key is None:
            key = self._keys.token_key(kid, self._secret.encode())
            if key is not None:
                self._derived[kid] = key
        return key

    def issue(self, user_id: str, role: str, version: int, *, kind: str = "access",
              now: datetime | None = None, session: str | None = None,
              token_id: str | None = None, scope: str | None = None) -> str:
        """A signed token of ``kind`` ("access" or "refresh") of sign-in ``session``;
        ``token_id`` (random by default) is the id a session remembers for rotation;
        ``scope`` the SMART scopes granted (kept through refreshes)."""
        now = now or datetime.now(UTC)
        ttl = self.access_ttl if kind == "access" else self.refresh_ttl
        claims: dict[str, Any] = {"iss": ISSUER, "sub": user_id, "role": role, "ver": version,
                                  "typ": kind, "iat": int(now.timestamp()),
                                  "exp": int((now + ttl).timestamp()),
                                  "jti": token_id or new_token_id()}
        if session is not None:
            claims["sid"] = session
        if scope is not None:
            claims["scope"] = scope
        if self._keys is None:
            return jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        kid = self._keys.current
        key = self._key(kid)
        assert key is not None  # the current key is in the ring
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})

    def verify(self, token: str, *, kind: str = "access") -> TokenClaims:
        """The claims of a valid token of ``kind``; :class:`TokenError` otherwise."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._key(kid if isinstance(kid, str) else None)
            if key is None:
                raise TokenError("invalid token: it was signed with a key this service does "
                                 "not hold; log in again")
            c = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER,
                           options={"require": ["exp", "iat", "sub", "typ", "ver"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired; log in or refresh") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        if c.get("typ") != kind:
            raise TokenError(f"a {c.get('typ')} token cannot be used as a {kind} token")
        if not isinstance(c.get("ver"), int) or not isinstance(c.get("sub"), str):
            raise TokenError("invalid token claims")
        sid, jti, scope = c.get("sid"), c.get("jti"), c.get("scope")
        if any(v is not None and not isinstance(v, str) for v in (sid, jti, scope)):
            raise TokenError("invalid token claims")
        return TokenClaims(c["sub"], str(c.get("role")), c["ver"], c["typ"],
                           datetime.fromtimestamp(c["exp"], UTC), sid, jti, scope)


def new_token_id() -> str:
    """A fresh random token id (128 bits)."""
    return secrets.token_hex(16)
