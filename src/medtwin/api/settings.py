"""Service settings, validated once at start; production refuses unsafe configurations."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from medtwin.core.errors import ValidationError
from medtwin.interop.quality import FUTURE_TOLERANCE
from medtwin.security.crypto import key_configured

KNOWN_BAD_SECRETS = frozenset({"", "secret", "changeme", "change-me", "changethis",
                               "medtwin", "development", "dev", "test", "password"})
ENV_PREFIX = "MEDTWIN_"


class Settings(BaseModel):
    """What the service needs to start; build with :meth:`from_env` at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["development", "production"] = "development"
    secret: SecretStr | None = Field(None, description="JWT signing secret (>= 32 chars).")
    db: str | None = None
    access_ttl_minutes: int = Field(15, ge=1, le=24 * 60)
    refresh_ttl_hours: int = Field(8, ge=1, le=24 * 30)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    login_attempts: int = Field(5, ge=1, le=1000)
    login_window_seconds: int = Field(60, ge=1)
    login_max_delay_seconds: int = Field(900, ge=1, description="Longest backoff between "
                                         "failed logins of one account from one address.")
    trusted_proxies: tuple[str, ...] = Field((), description="Proxies (IPs or networks, "
                                             "comma-separated) whose X-Forwarded-For is believed.")
    argon2_memory_kib: int = Field(65536, ge=8)
    argon2_time_cost: int = Field(3, ge=1)
    ws_poll_seconds: float = Field(1.0, gt=0, le=60)
    trial_max_subjects: int = Field(30, ge=1)
    trial_max_days: float = Field(7.0, gt=0)
    ops_max_reps: int = Field(200, ge=2, description="Most replications of one ops job.")
    cardio_max_subjects: int = Field(30, ge=1, description="Most subjects of one cardio trial.")
    cardio_max_seconds: float = Field(600.0, gt=0, description="Longest simulated duration "
                                      "(and warm-up) of one cardio trial [s].")
    cardio_twin_interval_seconds: float = Field(
        60.0, gt=0, le=24 * 3600, description="Least wall-clock time between two live-loop "
        "updates of one cardiac patient's cardio twin; the readings in between are batched "
        "(default: medtwin.twin.cardio_sync.LIVE_MIN_INTERVAL_S).")
    jobs_run: bool = Field(True, description="This worker runs queued jobs (False: it only "
                           "queues them, for API-only replicas).")
    jobs_local_workers: int = Field(2, ge=1, description="Workers of the local Dask cluster "
                                    "started for jobs when no scheduler is set.")
    jobs_local_processes: bool = Field(True, description="Local cluster workers as processes "
                                       "(False: threads, for tests).")
    jobs_stale_seconds: float = Field(30.0, gt=0, description="A running job whose worker "
                                      "has not renewed its lease for this long is taken up "
                                      "again (or failed after 3 tries).")
    audit_anchor_file: str | None = Field(None, description="Append-only file of audit "
                                          "anchors (default: next to the key file).")
    audit_anchor_every: int = Field(1000, ge=1, description="Anchor every N audit entries.")
    audit_anchor_seconds: float = Field(300.0, gt=0, description="... and after T seconds.")
    audit_failure_window_seconds: float = Field(60.0, gt=0, description="Window in which "
                                                "anonymous failures are counted as one entry.")
    clock_skew_seconds: float = Field(
        FUTURE_TOLERANCE.total_seconds(), ge=0, le=24 * 3600,
        description="Readings dated further than this in the future are quarantined.")
    oidc_issuer: str | None = Field(None, description="External OpenID Connect issuer whose "
                                    "access tokens are accepted (with audience and JWKS).")
    oidc_audience: str | None = Field(None, description="The `aud` its tokens must carry.")
    oidc_jwks: str | None = Field(None, description="Its JWKS: an https:// URL or a file path.")
    oidc_user_claim: str = Field("sub", description="Token claim naming the medtwin user.")
    oidc_jwks_min_refresh_seconds: float = Field(60.0, ge=0, description="Least time between "
                                                 "JWKS refetches on an unknown key id.")
    oidc_authorization_endpoint: str | None = Field(None, description="Its authorization "
                                                    "endpoint, published for SMART apps.")
    oidc_token_endpoint: str | None = Field(None, description="Its token endpoint (with the "
                                            "authorization endpoint).")
    mqtt_username: str | None = Field(None, description="MQTT broker username (a device's "
                                      "is printed by `medtwin key add`).")
    mqtt_password: SecretStr | None = Field(None, description="MQTT broker password (a "
                                            "device's is its API key); never put it in a URL.")
    mqtt_ca_file: str | None = Field(None, description="CA certificate(s) that sign the "
                                     "broker's TLS certificate (mqtts://).")
    mqtt_cert_file: str | None = Field(None, description="Client certificate for mqtts://.")
    mqtt_key_file: str | None = Field(None, description="Its private key.")
    mqtt_broker_dir: str | None = Field(None, description="Folder of the Mosquitto password "
                                        "and ACL files that `medtwin key add` keeps current.")
    mqtt_url: str | None = Field(None, description="The MQTT broker the service depends on "
                                 "(mqtt[s]://host:port); /health/ready checks it answers.")
    scheduler: str | None = Field(None, description="Dask scheduler address of the service's "
                                  "jobs (tcp://host:8786; none: a local cluster); "
                                  "/health/ready checks it answers.")
    key_explicit: bool = Field(False, description="An encryption key was configured.")
    security_enabled: bool = Field(True, description="Benchmarks only: False turns auth and "
                                   "audit off; refused in production.")
    secret_generated: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fill_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("secret") and data.get(
                "mode", "development") == "development":
            data = {**data, "secret": secrets.token_urlsafe(48), "secret_generated": True}
        return data

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> tuple[str, ...]:
        from medtwin.api.limits import check_proxies

        return check_proxies(value.split(",") if isinstance(value, str) else value)

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        given = [self.oidc_issuer, self.oidc_audience, self.oidc_jwks]
        if any(given) and not all(given):
            raise ValueError("an external OpenID Connect provider needs MEDTWIN_OIDC_ISSUER, "
                             "MEDTWIN_OIDC_AUDIENCE and MEDTWIN_OIDC_JWKS together")
        if self.oidc_issuer == "medtwin":
            raise ValueError("MEDTWIN_OIDC_ISSUER cannot be 'medtwin' (medtwin's own issuer)")
        return self

    @model_validator(mode="after")
    def _safe_for_production(self) -> Settings:
        if self.mode != "production":
            return self
        value = self.secret.get_secret_value() if self.secret else ""
        if value.lower() in KNOWN_BAD_SECRETS or self.secret_generated:
            raise ValueError("production mode needs MEDTWIN_SECRET set to a random value")
        if len(value) < 32:
            raise ValueError("MEDTWIN_SECRET must have at least 32 characters")
        if not self.key_explicit:
            raise ValueError("production mode needs an encryption key: set MEDTWIN_KEY or "
                             "MEDTWIN_KEY_FILE")
        if not self.security_enabled:
            raise ValueError("security cannot be switched off in production mode")
        return self

    @property
    def token_secret(self) -> str:
        """The JWT secret."""
        assert self.secret is not None
        return self.secret.get_secret_value()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``MEDTWIN_*`` variables (``security_enabled`` is never read from the
        environment); :class:`ValidationError` says what is wrong."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        for name in cls.model_fields:
            if name in {"security_enabled", "secret_generated", "key_explicit"}:
                continue
            value = env.get(ENV_PREFIX + name.upper())
            if value is not None and value != "":
                data[name] = value
        data["key_explicit"] = key_configured(env)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValidationError(f"invalid service settings: {exc}", where="settings") from None
