"""Login (OAuth2 password flow) and token refresh."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm

from medtwin.api.deps import Svc
from medtwin.api.problems import ApiError
from medtwin.api.routes import _P
from medtwin.api.schemas import RefreshIn, TokenOut
from medtwin.core.errors import NotFoundError
from medtwin.security.directory import User
from medtwin.security.tokens import TokenError

router = APIRouter(prefix="/auth", tags=["auth"])


def _tokens(svc: Svc, user: User) -> TokenOut:
    issue = svc.tokens.issue
    return TokenOut(access_token=issue(user.id, user.role.value, user.token_version),
                    refresh_token=issue(user.id, user.role.value, user.token_version,
                                        kind="refresh"),
                    expires_in=int(svc.tokens.access_ttl.total_seconds()))


@router.post("/token", response_model=TokenOut, responses={401: _P, 422: _P, 429: _P})
def login(request: Request, svc: Svc,
          form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    """Exchange a user name and password for an access and a refresh token."""
    address = request.client.host if request.client else "?"
    wait = svc.limiter.retry_after(form.username, address)
    if wait:
        svc.record(request, None, "login", f"user:{form.username[:100]}", "denied",
                   detail="rate limited")
        raise ApiError(429, f"too many failed logins; try again in {wait} s",
                       headers={"Retry-After": str(wait)})
    user = svc.directory.authenticate(form.username, form.password)
    if user is None:
        svc.limiter.failed(form.username, address)
        svc.record(request, None, "login", f"user:{form.username[:100]}", "failure")
        raise ApiError(401, "wrong user name or password, or the user is disabled",
                       headers={"WWW-Authenticate": "Bearer"})
    svc.record(request, user.principal(), "login", f"user:{user.username}", "success")
    return _tokens(svc, user)


@router.post("/refresh", response_model=TokenOut, responses={401: _P, 422: _P})
def refresh(request: Request, svc: Svc, body: RefreshIn) -> TokenOut:
    """Exchange a valid refresh token for new tokens (refused once the user is disabled)."""
    try:
        claims = svc.tokens.verify(body.refresh_token, kind="refresh")
        user = svc.directory.user(claims.user_id)
    except (TokenError, NotFoundError) as exc:
        svc.record(request, None, "refresh", "token", "denied", detail=str(exc)[:200])
        raise ApiError(401, "invalid refresh token",
                       headers={"WWW-Authenticate": "Bearer"}) from None
    if user.disabled or user.token_version != claims.version:
        svc.record(request, user.principal(), "refresh", "token", "denied",
                   detail="revoked")
        raise ApiError(401, "this token was revoked", headers={"WWW-Authenticate": "Bearer"})
    svc.record(request, user.principal(), "refresh", "token", "success")
    return _tokens(svc, user)
