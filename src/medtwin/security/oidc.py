"""Access tokens from an external OpenID Connect provider, verified against its JWKS.

Only RS256 and ES256 are accepted (never ``none``, never an HMAC algorithm: a public key must
not become an HMAC secret); the issuer and audience must match the configuration; ``exp`` is
required. Keys are cached by ``kid``: an unknown ``kid`` refetches the JWKS (the provider
rotated its keys), at most once per ``min_refresh_seconds``, so forged ``kid`` values cannot
make medtwin hammer the provider; the whole set is reloaded after ``cache_seconds``, so a
key the provider removed stops working. The JWKS comes from an ``https://`` (or ``http://``) URL
or a file path.

The token says who the caller is at the provider (``user_claim``, e.g. ``sub`` or
``preferred_username``), which SMART scopes it carries (``scope``, or ``scp`` as some
providers write it) and its patient context (``patient``). The role is never taken from the
token: the caller maps the identity to a medtwin user.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from medtwin.security.tokens import TokenError

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
_MAX_JWKS_BYTES = 1024 * 1024
LEEWAY_SECONDS = 30


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """What a verified external token says about its caller."""

    issuer: str
    subject: str
    user: str
    scope: str
    patient: str | None


def read_jwks(source: str, timeout: float = 5.0) -> dict[str, Any]:
    """The JWKS document at a URL or in a file; :class:`TokenError` if it cannot be read."""
    try:
        if source.startswith(("https://", "http://")):
            req = urllib.request.Request(source, headers={"Accept": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
                raw = resp.read(_MAX_JWKS_BYTES + 1)
        else:
            raw = Path(source).read_bytes()[: _MAX_JWKS_BYTES + 1]
        if len(raw) > _MAX_JWKS_BYTES:
            raise TokenError("the JWKS is larger than 1 MiB")
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise TokenError(f"cannot read the identity provider's JWKS: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise TokenError("the identity provider's JWKS has no 'keys' list")
    return doc


class OidcVerifier:
    """Verifies access tokens of one external issuer for one audience."""

    def __init__(self, issuer: str, audience: str, jwks: str, *, user_claim: str = "sub",
                 min_refresh_seconds: float = 60.0, cache_seconds: float = 3600.0,
                 fetch: Callable[[str], dict[str, Any]] = read_jwks,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.user_claim = user_claim
        self.min_refresh_seconds = min_refresh_seconds
        self.cache_seconds = max(cache_seconds, min_refresh_seconds)
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def issued(self, token: str) -> bool:
        """Whether ``token`` claims to come from this issuer (unverified: routes it only)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == self.issuer

    def _refresh(self) -> None:
        """Reload the keys by ``kid`` (keys without a usable ``kid`` are skipped); when the
        JWKS cannot be read the keys held are kept, and the next try waits the interval."""
        self._fetched_at = self._clock()
        try:
            doc = self._fetch(self.jwks)
        except TokenError as exc:
            log.warning("keeping the cached JWKS of %s: %s", self.issuer, exc)
            return
        keys: dict[str, jwt.PyJWK] = {}
        for item in doc["keys"]:
            kid = item.get("kid") if isinstance(item, dict) else None
            if not isinstance(kid, str) or item.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = jwt.PyJWK(item)
            except jwt.PyJWTError as exc:
                log.warning("skipping JWKS key %s: %s", kid, exc)
        self._keys = keys

    def key(self, kid: str) -> jwt.PyJWK:
        """The signing key ``kid``: the JWKS is refetched when the cache is older than
        ``cache_seconds`` (a removed key stops working) and, at most once per
        ``min_refresh_seconds``, when ``kid`` is unknown (a new key was added)."""
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age >= self.cache_seconds:
                self._refresh()
                age = 0.0
            found = self._keys.get(kid)
            if found is None and age >= self.min_refresh_seconds:
                self._refresh()
                found = self._keys.get(kid)
        if found is None:
            raise TokenError(f"unknown signing key id {kid!r} for issuer {self.issuer}")
        return found

    def verify(self, token: str) -> ExternalIdentity:
        """The identity of a valid token; :class:`TokenError` naming what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is refused; the identity provider must "
                             f"sign with {' or '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("the token names no signing key (kid)")
        jwk = self.key(kid)
        if jwk.key_type != _KEY_TYPES[alg] or jwk.algorithm_name != alg:
            raise TokenError(f"signing key {kid!r} is not a {alg} key")
        try:
            claims = jwt.decode(token, jwk.key, algorithms=[alg], audience=self.audience,
                                issuer=self.issuer, leeway=LEEWAY_SECONDS,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"the token is for another audience; medtwin accepts aud "
                             f"{self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"the token's issuer is not {self.issuer!r}") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            raise TokenError(f"the token has no {self.user_claim!r} claim to name its user")
        scope = claims.get("scope", claims.get("scp", ""))
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        patient = claims.get("patient")
        return ExternalIdentity(self.issuer, str(claims["sub"]), user,
                                scope if isinstance(scope, str) else "",
                                patient if isinstance(patient, str) and patient else None)
