"""The store's tables (SQLAlchemy Core). Migrations in ``migrations/`` create them.

Clinical events live in one append-only table, ``events``; identifying fields (name, birth
date, address, telecom, MRN) live apart in ``patient_identity`` so that encryption and
de-identification have one place to work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite keeps naive text, so we tag it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; times must be aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

patients = Table(
    "patients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("source_id", String(200), nullable=False),
    Column("gender", String(16)),
    Column("birth_year", Integer),
    Column("deceased", Boolean, nullable=False, default=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

patient_identity = Table(
    "patient_identity",
    metadata,
    Column("patient_id", String(64), ForeignKey("patients.id"), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("idem_key", String(64), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("patient_id", String(64), index=False),
    Column("source_id", String(200), nullable=False),
    Column("code", String(100)),
    Column("time", UTCDateTime),
    Column("value", Float),
    Column("unit", String(64)),
    Column("payload", JSON, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    # issue 12 (migration 0005): a data-quality flag (NULL = trusted), versions by source id
    Column("quality", String(32)),
    Index("ix_events_patient_kind_code_time", "patient_id", "kind", "code", "time"),
    Index("ix_events_patient_time", "patient_id", "time"),
    Index("ix_events_kind_source", "kind", "source_id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("source", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

# --- security (issue 6): identities, care teams, device keys, the audit chain ---------------

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text),
    Column("patient_id", String(64)),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("token_version", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(36)),  # the admin who created it via the API (issue 12)
)

care_team_members = Table(
    "care_team_members",
    metadata,
    Column("team", String(100), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id"), primary_key=True),
    Index("ix_care_team_members_user", "user_id"),
)

care_team_patients = Table(
    "care_team_patients",
    metadata,
    Column("team", String(100), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
    Index("ix_care_team_patients_patient", "patient_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("device_id", String(200), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("time", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("role", String(16)),
    Column("action", String(32), nullable=False),
    Column("resource", String(200), nullable=False),
    Column("patient_id", String(64)),
    Column("source", String(64)),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Column("body_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # issue 12 (migration 0006): the key the entry's HMAC is under (NULL: legacy, unkeyed)
    Column("key_id", String(32)),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("key_id", String(32)),  # issue 12 (0006): key of the last entry (NULL: unkeyed)
)

# --- access (issue 12): refresh-token sessions and patient-binding approvals ---------------
auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id"), nullable=False),
    Column("refresh_hash", String(64), nullable=False),  # SHA-256 of the one live refresh jti
    Column("generation", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("refreshed_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("revoked_reason", String(32)),
    Index("ix_auth_sessions_user", "user_id"),
)

patient_bindings = Table(
    "patient_bindings",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("requested_by", String(36), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),  # pending, approved, rejected
    Column("decided_by", String(36)),
    Column("decided_at", UTCDateTime),
    Index("ix_patient_bindings_user", "user_id"),
)

# --- FHIR resources (issue 13, migration 0008): every resource as received, versioned -----
# ``fhir_versions`` is append-only: one row per version (a delete is a version without
# content). ``fhir_current`` points at each resource's current version and carries its
# patient compartment (indexed: $everything, ``patient=``, access checks). ``fhir_search``
# holds the search-parameter values of current versions (derived; replaced on each write).
fhir_versions = Table(
    "fhir_versions",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content_hash", String(64), nullable=False),
    Column("patient_id", String(64)),
    Column("content", Text),  # canonical JSON without meta.versionId/lastUpdated
    Index("ux_fhir_versions_key", "res_type", "res_id", "version", unique=True),
    Index("ix_fhir_versions_updated", "last_updated"),
)

fhir_current = Table(
    "fhir_current",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content_hash", String(64), nullable=False),
    Column("patient_id", String(64)),
    Index("ix_fhir_current_patient", "patient_id", "res_type"),
    Index("ix_fhir_current_type_updated", "res_type", "last_updated"),
    Index("ix_fhir_current_seq", "seq"),
    Index("ix_fhir_current_type_seq", "res_type", "seq"),  # migration 0010: export order
)

fhir_search = Table(
    "fhir_search",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("sys", String(255)),     # token system, or a reference's target type
    Column("value", String(255)),   # token code, reference id, or normalised string
    Column("raw", String(255)),     # a string as written (for :exact)
    Column("lo", UTCDateTime),      # a date's range [lo, hi)
    Column("hi", UTCDateTime),
    Index("ix_fhir_search_res", "res_type", "res_id", "param"),
    Index("ix_fhir_search_value", "param", "value", "res_type"),
)

# --- FHIR Bulk Data export jobs (issue 13, migration 0009) ---------------------------------
fhir_export_jobs = Table(
    "fhir_export_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=False),  # the principal id: only they may poll
    Column("request", Text, nullable=False),  # the kick-off URL (for the manifest)
    Column("spec", JSON, nullable=False),  # level, types, since, patients, deidentify
    Column("status", String(16), nullable=False),  # queued, running, done, failed, cancelled
    Column("progress", String(100)),
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("transaction_time", UTCDateTime, nullable=False),
    Index("ix_fhir_export_jobs_owner", "owner"),
)

fhir_export_files = Table(
    "fhir_export_files",
    metadata,
    Column("job_id", String(32), ForeignKey("fhir_export_jobs.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("type", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("content", Text, nullable=False),  # NDJSON, one resource a line
)


#: durable jobs (trials, ops, population PK fits) run on Dask; see migration 0011
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),  # trial, ops, ops-optimise, pk-population
    Column("owner", String(64), nullable=False),  # the principal label of who submitted it
    Column("spec", JSON, nullable=False),  # the validated request
    Column("status", String(16), nullable=False),  # queued, running, done, failed, cancelled
    Column("progress", Float, nullable=False, default=0.0),  # 0..1
    Column("message", String(200)),
    Column("result", JSON),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("worker", String(100)),  # host:pid of the service worker holding the lease
    Column("heartbeat_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Index("ix_jobs_status", "status", "created_at"),
    Index("ix_jobs_owner", "owner", "created_at"),
)


# --- shared request limits (issue 16, migration 0012): one count for every service worker --
login_pairs = Table(
    "login_pairs",
    metadata,
    Column("account", String(320), primary_key=True),
    Column("address", String(64), primary_key=True),
    Column("fails", Integer, nullable=False),  # failures since the pair's last success
    Column("last_at", Float, nullable=False),  # epoch seconds of its last attempt
    Column("trusted_at", Float),  # when the account last signed in from this address
)

login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(320), nullable=False),
    Column("address", String(64), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds
    Column("for_account", Boolean, nullable=False),  # counts in the per-account window
    Index("ix_login_attempts_address", "address", "at"),
    Index("ix_login_attempts_account", "account", "at"),
)

auth_failure_windows = Table(
    "auth_failure_windows",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("path_class", String(64), primary_key=True),
    Column("reason", String(200), primary_key=True),
    Column("started", Float, nullable=False),  # epoch seconds
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
    Column("count", Integer, nullable=False),  # failures after the first
)
