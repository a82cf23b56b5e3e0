"""Process-wide services, built once by :func:`build_services` and handed to the app; and the
dependencies routes use: the caller (authentication), access checks, audit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from medtwin.api.limits import LoginThrottle, MemoryLoginThrottle
from medtwin.api.problems import ApiError
from medtwin.api.settings import Settings
from medtwin.api.shared_limits import DbLoginThrottle
from medtwin.core.errors import NotFoundError
from medtwin.core.records import Patient
from medtwin.security.audit import AuditEntry, AuditLog
from medtwin.security.audit_anchor import anchor_sink
from medtwin.security.audit_failures import FailureAggregator, path_class
from medtwin.security.audit_failures_db import DbFailureAggregator
from medtwin.security.consent import has_research_consent
from medtwin.security.crypto import KeyRing, WatchedKeyRing
from medtwin.security.deid import Deidentifier
from medtwin.security.directory import KEY_PREFIX, Directory
from medtwin.security.oidc import OidcVerifier
from medtwin.security.passwords import PasswordHasher
from medtwin.security.policy import AccessDeniedError, AccessPolicy, Action, Grant, not_found
from medtwin.security.roles import Principal, Role
from medtwin.security.sessions import SessionStore
from medtwin.security.smart import ScopeSet, interactions_for, types_for
from medtwin.security.smart_policy import OutsideLaunchContextError, ScopedAccessPolicy
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
    keyring: KeyRing | WatchedKeyRing
    directory: Directory
    audit: AuditLog
    policy: AccessPolicy
    tokens: TokenIssuer
    limiter: LoginThrottle
    sessions: SessionStore
    extras: dict[str, object] = field(default_factory=dict)
    failures: FailureAggregator | DbFailureAggregator | None = None  # audited per window
    oidc: OidcVerifier | None = None  # an external OpenID Connect provider's tokens

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


def build_services(settings: Settings, store: EventStore,
                   keyring: KeyRing | WatchedKeyRing) -> Services:
    """Wire the services over one open store. On PostgreSQL the login limits and the
    anonymous-failure windows live in the database, so that every worker shares them; on
    SQLite (one process) they live in memory."""
    hasher = PasswordHasher(time_cost=settings.argon2_time_cost,
                            memory_kib=settings.argon2_memory_kib)
    directory = Directory(store.engine, hasher)
    check_store_keys(store.engine, keyring)  # never seal new identities under another key
    audit = AuditLog(store.engine, keyring,
                     anchor_sink(store.engine, configured=settings.audit_anchor_file,
                                 key_file=keyring.file),
                     anchor_every=settings.audit_anchor_every,
                     anchor_seconds=settings.audit_anchor_seconds)
    shared = store.engine.dialect.name == "postgresql"
    limiter: LoginThrottle = (
        DbLoginThrottle(store.engine, settings.login_attempts, settings.login_window_seconds,
                        max_delay=settings.login_max_delay_seconds) if shared else
        MemoryLoginThrottle(settings.login_attempts, settings.login_window_seconds,
                            max_delay=settings.login_max_delay_seconds))
    window = settings.audit_failure_window_seconds
    return Services(
        settings=settings, store=store, keyring=keyring, directory=directory,
        audit=audit,
        failures=(DbFailureAggregator(store.engine, audit.append_many, window=window)
                  if shared else FailureAggregator(audit.append_many, window=window)),
        policy=ScopedAccessPolicy(directory, lambda pid: has_research_consent(store, pid)),
        oidc=OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks,
                          user_claim=settings.oidc_user_claim,
                          min_refresh_seconds=settings.oidc_jwks_min_refresh_seconds)
        if settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks else None,
        tokens=TokenIssuer(settings.token_secret,
                           access_ttl=timedelta(minutes=settings.access_ttl_minutes),
                           refresh_ttl=timedelta(hours=settings.refresh_ttl_hours),
                           keys=keyring),
        limiter=limiter,
        sessions=SessionStore(store.engine, timedelta(hours=settings.refresh_ttl_hours)),
    )


def services(request: Request) -> Services:
    """The app's services."""
    return request.app.state.services


_bearer = HTTPBearer(auto_error=False, description="A JWT from /auth/token, or a device API "
                     "key (mtk_...).")

Svc = Annotated[Services, Depends(services)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class UnknownExternalUserError(ApiError):
    """A valid external token whose identity is no (enabled) medtwin user."""

    def __init__(self, audit_detail: str) -> None:
        super().__init__(401, "this identity provider account is not a medtwin user; ask an "
                         "admin to create it", headers=_INVALID_TOKEN)
        self.audit_detail = audit_detail


def external_principal(svc: Services, oidc: OidcVerifier, credential: str) -> Principal:
    """The medtwin user an external provider's token names (the role is the user's, the
    scopes and patient context the token's); 401 for a bad token or an unknown user."""
    try:
        ident = oidc.verify(credential)
    except TokenError as exc:
        raise ApiError(401, str(exc), headers=_INVALID_TOKEN) from None
    user = svc.directory.find(ident.user)
    if user is None or user.disabled:
        raise UnknownExternalUserError(f"{'disabled' if user else 'no'} medtwin user "
                                       f"{ident.user[:100]!r} ({oidc.user_claim} of "
                                       f"{ident.issuer})")
    launch = ident.patient or (user.patient_id if user.role is Role.PATIENT else None)
    return replace(user.principal(), scopes=ScopeSet.parse(ident.scope, launch_patient=launch))


def authenticate(svc: Services, credential: str | None) -> Principal:
    """The caller named by a bearer credential (a device key, a medtwin token or, when one
    is configured, an external OpenID Connect provider's token); :class:`ApiError` 401
    otherwise."""
    if not credential:
        raise ApiError(401, "authentication required: send Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": "Bearer"})
    if credential.startswith(f"{KEY_PREFIX}_"):
        device = svc.directory.device_principal(credential)
        if device is None:
            raise ApiError(401, "unknown or revoked device key",
                           headers={"WWW-Authenticate": "Bearer"})
        return device
    if svc.oidc is not None and svc.oidc.issued(credential):
        return external_principal(svc, svc.oidc, credential)
    try:
        claims = svc.tokens.verify(credential)
        user = svc.directory.user(claims.user_id)
    except (TokenError, NotFoundError) as exc:
        raise ApiError(401, str(exc) if isinstance(exc, TokenError) else "invalid token",
                       headers=_INVALID_TOKEN) from None
    if (user.disabled or user.token_version != claims.version or claims.session is None
            or not svc.sessions.is_live(claims.session, user.id)):
        raise ApiError(401, "this token was revoked (the user was disabled or logged out)",
                       headers=_INVALID_TOKEN)
    who = user.principal()
    if claims.scope is not None:  # signed in asking for SMART scopes: they narrow the role
        launch = user.patient_id if user.role is Role.PATIENT else None
        who = replace(who, scopes=ScopeSet.parse(claims.scope, launch_patient=launch))
    return who


def principal(request: Request, svc: Svc,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> Principal:
    """The authenticated caller; a refusal is audited."""
    if not svc.settings.security_enabled:
        return NO_SECURITY
    try:
        return authenticate(svc, creds.credentials if creds else None)
    except UnknownExternalUserError as exc:  # signed by the provider: audited by name
        svc.audit.append(AuditEntry(actor="anonymous", action="authenticate",
                                    resource="oidc", outcome="denied",
                                    source=svc.source(request), detail=exc.audit_detail))
        raise
    except ApiError:
        svc.anonymous_failure(request, "invalid, expired or revoked credential" if creds
                              else "missing credential")
        raise


Caller = Annotated[Principal, Depends(principal)]


def scope_refusal(request: HTTPConnection, svc: Services, who: Principal, resource: str,
                  action: str | None, interaction: str | None, patient_id: str | None, *,
                  audit: bool = True) -> ApiError | None:
    """The refusal (audited with the missing scope unless the caller audits it) when the
    caller's SMART scopes do not cover this request; None when they do or the caller has
    no scopes (role rules alone)."""
    if who.scopes is None or not svc.settings.security_enabled:
        return None
    needs = interaction or interactions_for(action, getattr(request, "method", None))
    decision = who.scopes.decide(types_for(resource), needs, patient_id)
    if decision.allowed:
        return None
    detail = f"SMART scope missing: {decision.missing} ({decision.reason})"
    if audit:
        svc.record(request, who, action or "access", resource, "denied",  # type: ignore[arg-type]
                   patient_id=patient_id, detail=detail)
    if decision.hidden and patient_id is not None:
        return ApiError(404, str(not_found(patient_id)))
    return ApiError(403, f"the token's scopes do not allow this: {detail}",
                    headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})


def require_role(request: Request, svc: Services, who: Principal, *roles: Role,
                 resource: str, interaction: str | None = None) -> None:
    """Refuse (403, audited) callers without one of ``roles``, or whose SMART scopes do not
    cover ``resource`` (a FHIR type, or a medtwin name mapped by ``smart.RESOURCE_TYPES``)
    for ``interaction`` (letters of "cruds"; by default from the HTTP method: GET search,
    POST create, PUT/PATCH update, DELETE delete)."""
    if not svc.settings.security_enabled:
        return
    try:
        svc.policy.require_role(who, *roles)
    except AccessDeniedError as exc:
        svc.record(request, who, "access", resource, "denied", detail=str(exc))
        raise ApiError(exc.status, str(exc)) from None
    denied = scope_refusal(request, svc, who, resource, None, interaction, None)
    if denied is not None:
        raise denied


def guard(request: Request, svc: Services, who: Principal, patient_id: str, action: Action,
          resource: str, *, interaction: str | None = None) -> Grant:
    """Check access to one patient; a refusal is audited and raised as 403 or 404.

    The role rules decide first; then the caller's SMART scopes must cover ``resource``
    for ``interaction`` (by default from ``action``: read r, search s, delete d, research
    r, write c on POST / u on PUT or PATCH / d on DELETE) and, for ``patient/`` scopes,
    the patient must be the token's launch patient (else 404, as a hidden patient)."""
    if not svc.settings.security_enabled:
        return Grant(patient_id, action)
    try:
        grant = svc.policy.check(who, patient_id, action,
                                 break_glass=request.headers.get(BREAK_GLASS_HEADER))
    except AccessDeniedError as exc:
        if isinstance(exc, OutsideLaunchContextError):  # audited with the scope it lacks
            denied = scope_refusal(request, svc, who, resource, action.value, interaction,
                                   patient_id)
            if denied is not None:
                raise denied from None
        svc.record(request, who, action.value, resource, "denied", patient_id=patient_id,
                   detail=str(exc))
        raise ApiError(exc.status, str(exc)) from None
    denied = scope_refusal(request, svc, who, resource, action.value, interaction, patient_id)
    if denied is not None:
        raise denied
    return grant


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
