"""Process-wide services, built once by :func:`build_services` and handed to the app; and the
dependencies routes use: the caller (authentication), access checks, audit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from medtwin.api.limits import LoginThrottle, MemoryLoginThrottle
from medtwin.api.problems import ApiError
from medtwin.api.settings import Settings
from medtwin.core.errors import NotFoundError
from medtwin.core.records import Patient
from medtwin.security.audit import AuditEntry, AuditLog
from medtwin.security.audit_anchor import anchor_sink
from medtwin.security.audit_failures import FailureAggregator, path_class
from medtwin.security.consent import has_research_consent
from medtwin.security.crypto import KeyRing
from medtwin.security.deid import Deidentifier
from medtwin.security.directory import KEY_PREFIX, Directory
from medtwin.security.passwords import PasswordHasher
from medtwin.security.policy import AccessDeniedError, AccessPolicy, Action, Grant, not_found
from medtwin.security.roles import Principal, Role
from medtwin.security.sessions import SessionStore
from medtwin.security.store_keys import check_store_keys
from medtwin.security.tokens import TokenError, TokenIssuer
from medtwin.store.event_store import EventStore

log = logging.getLogger(__name__)

BREAK_GLASS_HEADER = "X-Break-Glass-Reason"
NO_SECURITY = Principal("security-off", "security-off", Role.ADMIN)


@dataclass
class Services:
    """Everything the routes share; one per app."""

    settings: Settings
    store: EventStore
    keyring: KeyRing
    directory: Directory
    audit: AuditLog
    policy: AccessPolicy
    tokens: TokenIssuer
    limiter: LoginThrottle
    sessions: SessionStore
    extras: dict[str, object] = field(default_factory=dict)
    failures: FailureAggregator | None = None  # anonymous failures, audited per window

    def deidentifier(self) -> Deidentifier:
        """A de-identifier keyed by the key ring's pseudonym secret."""
        return Deidentifier(self.keyring.pseudonym_secret)

    def record(self, request: Request | None, who: Principal | None, action: str,
               resource: str, outcome: str, *, patient_id: str | None = None,
               detail: str | None = None) -> None:
        """Append an audit entry (a no-op when security is switched off for a benchmark)."""
        self.record_many(request, who, action, resource, outcome, [patient_id], detail=detail)

    def record_many(self, request: Request | None, who: Principal | None, action: str,
                    resource: str, outcome: str, patient_ids: list[str | None], *,
                    detail: str | None = None) -> None:
        """One audit entry per patient, appended in one transaction (e.g. a ward of 100)."""
        if not self.settings.security_enabled or not patient_ids:
            return
        client = self.source(request)
        self.audit.append_many([AuditEntry(
            actor=who.label if who else "anonymous", role=who.role.value if who else None,
            action=action, resource=resource, outcome=outcome, patient_id=pid,
            source=client, detail=detail) for pid in patient_ids])
        if self.failures is not None:
            self.failures.sweep()  # audit the anonymous-failure windows that have ended

    def source(self, request: HTTPConnection | None) -> str | None:
        """The caller's address as audited (of a request or a WebSocket)."""
        return request.client.host if request is not None and request.client else None

    def anonymous_failure(self, request: HTTPConnection, reason: str) -> None:
        """Audit a request refused for want of a valid credential, aggregated per address,
        path class and reason (a flood of them writes a handful of entries)."""
        if not self.settings.security_enabled:
            return
        if self.failures is None:
            self.audit.append(AuditEntry(actor="anonymous", action="authenticate",
                                         resource=path_class(request.url.path),
                                         outcome="denied", source=self.source(request),
                                         detail=reason))
            return
        self.failures.failed(self.source(request), request.url.path, reason)

    def close(self) -> None:
        """At shutdown: audit the open failure windows, anchor the audit head."""
        if self.failures is not None:
            self.failures.close()
        self.audit.close()


def build_services(settings: Settings, store: EventStore, keyring: KeyRing) -> Services:
    """Wire the services over one open store."""
    hasher = PasswordHasher(time_cost=settings.argon2_time_cost,
                            memory_kib=settings.argon2_memory_kib)
    directory = Directory(store.engine, hasher)
    check_store_keys(store.engine, keyring)  # never seal new identities under another key
    audit = AuditLog(store.engine, keyring,
                     anchor_sink(store.engine, configured=settings.audit_anchor_file,
                                 key_file=keyring.file),
                     anchor_every=settings.audit_anchor_every,
                     anchor_seconds=settings.audit_anchor_seconds)
    return Services(
        settings=settings, store=store, keyring=keyring, directory=directory,
        audit=audit,
        failures=FailureAggregator(audit.append_many,
                                   window=settings.audit_failure_window_seconds),
        policy=AccessPolicy(directory, lambda pid: has_research_consent(store, pid)),
        tokens=TokenIssuer(settings.token_secret,
                           access_ttl=timedelta(minutes=settings.access_ttl_minutes),
                           refresh_ttl=timedelta(hours=settings.refresh_ttl_hours)),
        limiter=MemoryLoginThrottle(settings.login_attempts, settings.login_window_seconds,
                                    max_delay=settings.login_max_delay_seconds),
        sessions=SessionStore(store.engine, timedelta(hours=settings.refresh_ttl_hours)),
    )


def services(request: Request) -> Services:
    """The app's services."""
    return request.app.state.services


_bearer = HTTPBearer(auto_error=False, description="A JWT from /auth/token, or a device API "
                     "key (mtk_...).")

Svc = Annotated[Services, Depends(services)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def authenticate(svc: Services, credential: str | None) -> Principal:
    """The caller named by a bearer credential; :class:`ApiError` 401 otherwise."""
    if not credential:
        raise ApiError(401, "authentication required: send Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": "Bearer"})
    if credential.startswith(f"{KEY_PREFIX}_"):
        device = svc.directory.device_principal(credential)
        if device is None:
            raise ApiError(401, "unknown or revoked device key",
                           headers={"WWW-Authenticate": "Bearer"})
        return device
    try:
        claims = svc.tokens.verify(credential)
        user = svc.directory.user(claims.user_id)
    except (TokenError, NotFoundError) as exc:
        raise ApiError(401, str(exc) if isinstance(exc, TokenError) else "invalid token",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    if (user.disabled or user.token_version != claims.version or claims.session is None
            or not svc.sessions.is_live(claims.session, user.id)):
        raise ApiError(401, "this token was revoked (the user was disabled or logged out)",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return user.principal()


def principal(request: Request, svc: Svc,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> Principal:
    """The authenticated caller; a refusal is audited."""
    if not svc.settings.security_enabled:
        return NO_SECURITY
    try:
        return authenticate(svc, creds.credentials if creds else None)
    except ApiError:
        svc.anonymous_failure(request, "invalid, expired or revoked credential" if creds
                              else "missing credential")
        raise


Caller = Annotated[Principal, Depends(principal)]


def require_role(request: Request, svc: Services, who: Principal, *roles: Role,
                 resource: str) -> None:
    """Refuse (403, audited) callers without one of ``roles``."""
    if not svc.settings.security_enabled:
        return
    try:
        svc.policy.require_role(who, *roles)
    except AccessDeniedError as exc:
        svc.record(request, who, "access", resource, "denied", detail=str(exc))
        raise ApiError(exc.status, str(exc)) from None


def guard(request: Request, svc: Services, who: Principal, patient_id: str, action: Action,
          resource: str) -> Grant:
    """Check access to one patient; a refusal is audited and raised as 403 or 404."""
    if not svc.settings.security_enabled:
        return Grant(patient_id, action)
    try:
        return svc.policy.check(who, patient_id, action,
                                break_glass=request.headers.get(BREAK_GLASS_HEADER))
    except AccessDeniedError as exc:
        svc.record(request, who, action.value, resource, "denied", patient_id=patient_id,
                   detail=str(exc))
        raise ApiError(exc.status, str(exc)) from None


def audited(request: Request, svc: Services, who: Principal, grant: Grant, resource: str,
            outcome: str = "success") -> None:
    """Audit an access to a patient's data (with the break-glass reason when there is one)."""
    detail = f"break-glass: {grant.break_glass}" if grant.break_glass else None
    svc.record(request, who, grant.action.value, resource, outcome,
               patient_id=grant.patient_id, detail=detail)


def patient_or_404(request: Request, svc: Services, who: Principal, patient_id: str,
                 resource: str) -> Patient:
    """A patient's record with identity, checked and audited (404 when hidden or absent)."""
    grant = guard(request, svc, who, patient_id, Action.READ, resource)
    try:
        p = svc.store.patient(patient_id)
    except NotFoundError:
        audited(request, svc, who, grant, resource, "not-found")
        raise not_found(patient_id) from None
    audited(request, svc, who, grant, resource)
    return p
