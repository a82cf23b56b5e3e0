"""Sign-in, the current caller and sign-out, on the service's own tokens.

Signing in goes through the API's login function (rate limit, password check, audit) and
keeps the access and refresh tokens in NiceGUI's server-side user storage (the browser holds
only a signed session id). Each page and each live update re-checks the access token exactly
as the API does (signature, expiry, revoked or disabled user); an expired access token is
renewed with the refresh token, so a session ends when the refresh token expires or the user
is disabled.

The same storage keeps the browser's time zone (read from the browser at sign-in), so every
time on every page is shown in the user's zone, with the zone named; UTC, labelled as such,
when the browser did not say.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi.security import OAuth2PasswordRequestForm
from starlette.requests import Request

from medtwin.api.deps import Services, authenticate
from medtwin.api.problems import ApiError
from medtwin.api.routes import auth
from medtwin.api.schemas import RefreshIn
from medtwin.security.roles import Principal

ACCESS, REFRESH = "medtwin_access", "medtwin_refresh"
ZONE = "medtwin_zone"  # the browser's IANA time zone; "" when it could not be read
#: what the browser is asked for its time zone (run through NiceGUI's JavaScript bridge)
ZONE_JS = "Intl.DateTimeFormat().resolvedOptions().timeZone"
UTC_ZONE = ZoneInfo("UTC")


class SignInError(Exception):
    """Wrong credentials, a disabled user or too many attempts (the message says which)."""


def sign_in(svc: Services, request: Request, storage: MutableMapping[str, Any], username: str,
            password: str) -> Principal:
    """Check the credentials with the API's login and keep the tokens in ``storage``."""
    form = OAuth2PasswordRequestForm(username=username, password=password)
    try:
        tokens = auth.login(request, svc, form)
    except ApiError as exc:
        raise SignInError(exc.detail) from None
    storage[ACCESS], storage[REFRESH] = tokens.access_token, tokens.refresh_token
    return authenticate(svc, tokens.access_token)


def current(svc: Services, request: Request | None, storage: MutableMapping[str, Any]
            ) -> Principal | None:
    """The signed-in caller, renewing an expired access token; None when signed out."""
    token = storage.get(ACCESS)
    if not token:
        return None
    try:
        return authenticate(svc, token)
    except ApiError:
        pass
    refresh = storage.get(REFRESH)
    if refresh and request is not None:
        try:
            tokens = auth.refresh(request, svc, RefreshIn(refresh_token=refresh))
            storage[ACCESS], storage[REFRESH] = tokens.access_token, tokens.refresh_token
            return authenticate(svc, tokens.access_token)
        except ApiError:
            pass
    storage.pop(ACCESS, None)
    storage.pop(REFRESH, None)
    return None


def sign_out(svc: Services, request: Request | None, storage: MutableMapping[str, Any],
             who: Principal | None) -> None:
    """End the session (its tokens stop working), forget the tokens (audited)."""
    if storage.get(REFRESH):
        with contextlib.suppress(ApiError):  # an expired or revoked session has ended already
            auth.end_session(svc, storage[REFRESH], "refresh")
    storage.pop(ACCESS, None)
    storage.pop(REFRESH, None)
    if who is not None:
        svc.record(request, who, "logout", f"user:{who.name}", "success")


def _zone(name: object) -> ZoneInfo | None:
    if not isinstance(name, str) or not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def remember_zone(storage: MutableMapping[str, Any], name: object) -> ZoneInfo | None:
    """Keep the browser's time zone (an IANA name such as ``Europe/Paris``) for this browser
    session; an unknown or invalid name is kept as "unknown" (times are then shown in UTC)."""
    zone = _zone(name)
    storage[ZONE] = zone.key if zone is not None else ""
    return zone


def zone_known(storage: MutableMapping[str, Any]) -> bool:
    """Whether this browser was asked for its zone already (answered or not)."""
    return ZONE in storage


def zone(storage: MutableMapping[str, Any]) -> ZoneInfo:
    """This browser's time zone; UTC when it is unknown."""
    return _zone(storage.get(ZONE)) or UTC_ZONE


def zone_label(storage: MutableMapping[str, Any]) -> str:
    """The zone's name as shown to the user, saying when it is a fallback."""
    z = _zone(storage.get(ZONE))
    return z.key if z is not None else "UTC (your browser's time zone is unknown)"
