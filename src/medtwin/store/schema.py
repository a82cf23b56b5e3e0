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
    Index("ix_events_patient_kind_code_time", "patient_id", "kind", "code", "time"),
    Index("ix_events_patient_time", "patient_id", "time"),
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
