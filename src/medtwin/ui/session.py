"""Sign-in, the current caller and sign-out, on the service's own tokens.

Signing in goes through the API's login function (rate limit, password check, audit) and
keeps the access and refresh tokens in NiceGUI's server-side user storage (the browser holds
only a signed session id). Each page and each live update re-checks the access token exactly
as the API does (signature, expiry, revoked or disabled user); an expired access token is
renewed with the refresh token, so a session ends when the refresh token expires or the user
is disabled.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi.security import OAuth2PasswordRequestForm
from starlette.requests import Request

from medtwin.api.deps import Services, authenticate
from medtwin.api.problems import ApiError
from medtwin.api.routes import auth
from medtwin.api.schemas import RefreshIn
from medtwin.security.roles import Principal

ACCESS, REFRESH = "medtwin_access", "medtwin_refresh"


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
    """Forget the tokens (audited)."""
    storage.pop(ACCESS, None)
    storage.pop(REFRESH, None)
    if who is not None:
        svc.record(request, who, "logout", f"user:{who.name}", "success")
