"""Login (OAuth2 password flow), token refresh (single-use, rotating) and logout.

A login is counted by the login throttle before its password is checked, so a parallel
burst gets no more password checks than the limits allow. Each login starts a session in
the database; refreshing rotates its refresh token, and presenting an old refresh token again
(a stolen copy, or the original after the thief used it) ends the session for both.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from medtwin.api.deps import Bearer, Svc
from medtwin.api.limits import Throttled
from medtwin.api.problems import ApiError
from medtwin.api.routes import _P
from medtwin.api.schemas import RefreshIn, TokenOut
from medtwin.core.errors import NotFoundError
from medtwin.security.directory import KEY_PREFIX, User
from medtwin.security.sessions import LOGOUT, Rotation
from medtwin.security.smart import granted_at_sign_in
from medtwin.security.tokens import TokenError, new_token_id

router = APIRouter(prefix="/auth", tags=["auth"])
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _tokens(svc: Svc, user: User, session: str, refresh_id: str,
            scope: str | None = None) -> TokenOut:
    issue = svc.tokens.issue
    return TokenOut(
        access_token=issue(user.id, user.role.value, user.token_version, session=session,
                           scope=scope),
        refresh_token=issue(user.id, user.role.value, user.token_version, kind="refresh",
                            session=session, token_id=refresh_id, scope=scope),
        expires_in=int(svc.tokens.access_ttl.total_seconds()), scope=scope)


@router.post("/token", response_model=TokenOut, responses={401: _P, 422: _P, 429: _P})
def login(request: Request, svc: Svc,
          form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    """Exchange a user name and password for an access and a refresh token. With
    ``scope`` (SMART scopes, e.g. ``patient/Observation.rs``), the tokens carry the scopes
    granted (never more than the role allows; see ``scope`` in the answer) and are limited
    to them."""
    address = request.client.host if request.client else "?"
    account = form.username[:100]
    try:
        reservation = svc.limiter.reserve(account, address)
    except Throttled as exc:  # aggregated: a flood of refused logins is a few audit rows
        svc.anonymous_failure(request, "login refused: too many failed attempts")
        raise ApiError(429, f"too many failed logins; try again in {exc.retry_after} s",
                       headers={"Retry-After": str(exc.retry_after)}) from None
    user = svc.directory.authenticate(form.username, form.password)
    if user is None:
        svc.record(request, None, "login", f"user:{account}", "failure")
        raise ApiError(401, "wrong user name or password, or the user is disabled",
                       headers=_UNAUTHORIZED)
    svc.limiter.succeeded(reservation)
    scope = granted_at_sign_in(form.scopes, user.role, user.patient_id)  # 422 if malformed
    refresh_id = new_token_id()
    session = svc.sessions.start(user.id, refresh_id)
    svc.record(request, user.principal(), "login", f"user:{user.username}", "success",
               detail=None if scope is None else f"scope: {scope}"[:500])
    return _tokens(svc, user, session, refresh_id, scope)


@router.post("/refresh", response_model=TokenOut, responses={401: _P, 422: _P})
def refresh(request: Request, svc: Svc, body: RefreshIn) -> TokenOut:
    """Exchange a refresh token, once, for new tokens; reusing one ends its session."""
    try:
        claims = svc.tokens.verify(body.refresh_token, kind="refresh")
        user = svc.directory.user(claims.user_id)
    except (TokenError, NotFoundError):  # no valid credential: aggregated like a 401
        svc.anonymous_failure(request, "invalid refresh token")
        raise ApiError(401, "invalid refresh token", headers=_UNAUTHORIZED) from None
    who = user.principal()
    if user.disabled or user.token_version != claims.version or not (
            claims.session and claims.token_id):
        svc.record(request, who, "refresh", "token", "denied", detail="revoked")
        raise ApiError(401, "this token was revoked", headers=_UNAUTHORIZED)
    fresh = new_token_id()
    outcome = svc.sessions.rotate(claims.session, user.id, claims.token_id, fresh)
    if outcome is Rotation.REUSED:
        svc.record(request, who, "refresh", f"session:{claims.session}", "denied",
                   detail="refresh token reused: the session is revoked (sign in again)")
        raise ApiError(401, "this refresh token was already used; the session is ended, "
                       "sign in again", headers=_UNAUTHORIZED)
    if outcome is not Rotation.ROTATED:
        svc.record(request, who, "refresh", f"session:{claims.session}", "denied",
                   detail=f"session {outcome.value}")
        raise ApiError(401, f"the session is {outcome.value}; sign in again",
                       headers=_UNAUTHORIZED)
    svc.record(request, who, "refresh", f"session:{claims.session}", "success")
    return _tokens(svc, user, claims.session, fresh, claims.scope)


def end_session(svc: Svc, token: str, kind: str) -> tuple[User, bool]:
    """Revoke the session of an access or refresh ``token``: its user, and whether this call
    ended it (False when it had ended already); :class:`ApiError` 401 for a bad token."""
    try:
        claims = svc.tokens.verify(token, kind=kind)
        user = svc.directory.user(claims.user_id)
    except (TokenError, NotFoundError):
        raise ApiError(401, f"invalid {kind} token", headers=_UNAUTHORIZED) from None
    if claims.session is None:
        raise ApiError(401, "this token belongs to no session; sign in again",
                       headers=_UNAUTHORIZED)
    return user, svc.sessions.revoke(claims.session, LOGOUT)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT,
             responses={401: _P, 422: _P})
def logout(request: Request, svc: Svc, creds: Bearer, body: RefreshIn | None = None) -> None:
    """End the session: its access and refresh tokens stop working at once. Authenticate
    with the access token, or send the refresh token in the body (when the access token
    has expired)."""
    if creds is not None and creds.credentials.startswith(f"{KEY_PREFIX}_"):
        raise ApiError(422, "device keys have no session; an admin revokes a device key")
    if creds is not None:
        token, kind = creds.credentials, "access"
    elif body is not None:
        token, kind = body.refresh_token, "refresh"
    else:
        raise ApiError(401, "send the access token (Authorization: Bearer) or the refresh "
                       "token in the body", headers=_UNAUTHORIZED)
    try:
        user, ended = end_session(svc, token, kind)
    except ApiError:
        svc.anonymous_failure(request, "logout with an invalid token")  # aggregated
        raise
    svc.record(request, user.principal(), "logout", f"user:{user.username}", "success",
               detail=None if ended else "the session had ended already")
