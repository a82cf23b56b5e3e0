"""Twin snapshots: derived, versioned, append-only beliefs of a twin over time.

Each save appends a row with the next version number of that patient's snapshots, the model
name and version, the twin's time (the data clock), the data cut-off (last event sequence
number read), the wall-clock creation time and the twin's JSON payload. Nothing is updated in
place, so "what did the twin believe at 14:05" is :func:`snapshot_at`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from medtwin.core.errors import StoreError, ValidationError
from medtwin.core.records import utc
from medtwin.store.event_store import EventStore
from medtwin.store.schema import UTCDateTime, metadata

_pk = BigInteger().with_variant(Integer, "sqlite")

twin_snapshots = Table(
    "twin_snapshots",
    metadata,
    Column("id", _pk, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("twin_time", UTCDateTime, nullable=False),
    Column("data_cutoff", _pk),
    Column("created_at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    UniqueConstraint("patient_id", "version", name="uq_twin_snapshots_patient_version"),
    Index("ix_twin_snapshots_patient_time", "patient_id", "twin_time"),
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One stored belief of a twin."""

    patient_id: str
    version: int
    model: str
    model_version: str
    twin_time: datetime
    data_cutoff: int | None
    created_at: datetime
    payload: dict[str, Any]


def save_snapshot(store: EventStore, patient_id: str, payload: dict[str, Any], *, model: str,
                  model_version: str, twin_time: datetime, data_cutoff: int | None = None,
                  retries: int = 3) -> Snapshot:
    """Append a snapshot with the patient's next version number; returns it."""
    if not patient_id:
        raise ValidationError("must be a non-empty patient id", where="snapshot.patient_id")
    twin_time = utc(twin_time, where="snapshot.twin_time")
    for attempt in range(retries):
        now = datetime.now(UTC)
        try:
            with store.engine.begin() as conn:
                last = conn.scalar(select(func.max(twin_snapshots.c.version))
                                   .where(twin_snapshots.c.patient_id == patient_id))
                version = int(last or 0) + 1
                conn.execute(insert(twin_snapshots).values(
                    patient_id=patient_id, version=version, model=model,
                    model_version=model_version, twin_time=twin_time, data_cutoff=data_cutoff,
                    created_at=now, payload=payload))
            return Snapshot(patient_id, version, model, model_version, twin_time, data_cutoff,
                            now, payload)
        except IntegrityError:  # a concurrent writer took the number: take the next one
            if attempt == retries - 1:
                raise StoreError(f"could not number the snapshot of {patient_id!r}: "
                                 "concurrent writers") from None
        except SQLAlchemyError as exc:
            raise StoreError(f"could not store the twin snapshot: {exc}") from exc
    raise StoreError("unreachable")  # pragma: no cover


def _one(store: EventStore, q: Any) -> Snapshot | None:
    try:
        with store.engine.connect() as conn:
            r = conn.execute(q.limit(1)).mappings().first()
    except SQLAlchemyError as exc:
        raise StoreError(f"could not read twin snapshots: {exc}") from exc
    if r is None:
        return None
    return Snapshot(r["patient_id"], int(r["version"]), r["model"], r["model_version"],
                    r["twin_time"], r["data_cutoff"], r["created_at"], r["payload"])


def latest_snapshot(store: EventStore, patient_id: str, *, model: str | None = None
                    ) -> Snapshot | None:
    """The newest snapshot of the patient (of ``model`` if given), or None."""
    q = select(twin_snapshots).where(twin_snapshots.c.patient_id == patient_id)
    if model is not None:
        q = q.where(twin_snapshots.c.model == model)
    return _one(store, q.order_by(twin_snapshots.c.version.desc()))


def snapshot_at(store: EventStore, patient_id: str, at: datetime, *,
                by: Literal["twin_time", "created_at"] = "twin_time",
                model: str | None = None) -> Snapshot | None:
    """What the twin believed at ``at``: the newest snapshot whose twin time (data clock;
    or ``by="created_at"``, wall clock) is at or before ``at``; None before the first."""
    col = twin_snapshots.c.twin_time if by == "twin_time" else twin_snapshots.c.created_at
    if by not in ("twin_time", "created_at"):
        raise ValidationError(f"must be 'twin_time' or 'created_at', got {by!r}", where="by")
    at = utc(at, where="at")
    q = select(twin_snapshots).where(twin_snapshots.c.patient_id == patient_id, col <= at)
    if model is not None:
        q = q.where(twin_snapshots.c.model == model)
    return _one(store, q.order_by(col.desc(), twin_snapshots.c.version.desc()))


def snapshot_versions(store: EventStore, patient_id: str) -> list[tuple[int, datetime]]:
    """(version, twin time) of every snapshot of the patient, oldest first."""
    q = (select(twin_snapshots.c.version, twin_snapshots.c.twin_time)
         .where(twin_snapshots.c.patient_id == patient_id)
         .order_by(twin_snapshots.c.version))
    with store.engine.connect() as conn:
        return [(int(v), t) for v, t in conn.execute(q).all()]


def last_sync_times(store: EventStore, patient_ids: list[str]) -> dict[str, datetime]:
    """Each patient's newest twin time (the data clock its twin has caught up to), for the
    patients that have a twin; one indexed query for a whole ward."""
    if not patient_ids:
        return {}
    q = (select(twin_snapshots.c.patient_id, func.max(twin_snapshots.c.twin_time))
         .where(twin_snapshots.c.patient_id.in_(patient_ids))
         .group_by(twin_snapshots.c.patient_id))
    with store.engine.connect() as conn:
        return {p: when for p, when in conn.execute(q).all()}
