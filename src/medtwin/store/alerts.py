"""Alerts: raised once, then acknowledged, escalated or resolved, never edited in place.

``alerts`` holds one immutable row per raised alert; ``alert_events`` records what happened
to it later (acknowledged, resolved). An alert is active until a resolved event exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from medtwin.core.errors import NotFoundError, StoreError
from medtwin.store.event_store import EventStore
from medtwin.store.schema import UTCDateTime, metadata

_pk = BigInteger().with_variant(Integer, "sqlite")

alerts = Table(
    "alerts",
    metadata,
    Column("id", _pk, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("severity", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("data_time", UTCDateTime),
    Index("ix_alerts_patient_rule", "patient_id", "rule"),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", _pk, primary_key=True, autoincrement=True),
    Column("alert_id", _pk, ForeignKey("alerts.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # acknowledged | resolved
    Column("by", String(200)),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_alert_events_alert", "alert_id"),
)


@dataclass(frozen=True, slots=True)
class Alert:
    """A raised alert and its current state."""

    id: int
    patient_id: str
    rule: str
    severity: int
    message: str
    detail: dict[str, Any]
    raised_at: datetime
    data_time: datetime | None
    acknowledged_by: str | None = None
    resolved: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also the MQTT alert payload)."""
        return {"id": self.id, "patient": self.patient_id, "rule": self.rule,
                "severity": self.severity, "message": self.message, "detail": self.detail,
                "raised_at": self.raised_at.isoformat(),
                "data_time": self.data_time.isoformat() if self.data_time else None,
                "acknowledged_by": self.acknowledged_by, "resolved": self.resolved}


@dataclass(frozen=True, slots=True)
class Raise:
    """An alert to raise (see :meth:`AlertStore.apply`)."""

    patient_id: str
    rule: str
    severity: int
    message: str
    detail: dict[str, Any]
    data_time: datetime | None


class AlertStore:
    """Alert persistence on an :class:`EventStore`'s database."""

    def __init__(self, store: EventStore) -> None:
        self.engine = store.engine

    def active(self, patient_id: str | None = None) -> list[Alert]:
        """Alerts not yet resolved (newest first), for one patient or all; resolved ones are
        left out in the query (a ward refreshes this, and resolved alerts only accumulate)."""
        resolved = select(alert_events.c.alert_id).where(alert_events.c.kind == "resolved")
        q = select(alerts).where(alerts.c.id.not_in(resolved)).order_by(alerts.c.id.desc())
        if patient_id is not None:
            q = q.where(alerts.c.patient_id == patient_id)
        return self._read(q)

    def get(self, alert_id: int) -> Alert:
        """One alert with its state; :class:`NotFoundError` if there is none."""
        found = self._read(select(alerts).where(alerts.c.id == alert_id))
        if not found:
            raise NotFoundError(f"no alert {alert_id}; `medtwin alerts` lists them")
        return found[0]

    def raised_after(self, patient_id: str, after_id: int) -> list[Alert]:
        """The patient's alerts raised after the alert with id ``after_id`` (oldest first)."""
        return self._read(select(alerts).where(alerts.c.patient_id == patient_id,
                                               alerts.c.id > after_id).order_by(alerts.c.id))

    def last_id(self) -> int:
        """The newest alert id (0 when there is none)."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.max(alerts.c.id))) or 0)

    def version(self) -> tuple[int, int]:
        """(newest alert id, newest alert event id): changes whenever an alert is raised,
        acknowledged or resolved; a cheap check for screens that follow the alerts."""
        with self.engine.connect() as conn:
            a = conn.scalar(select(func.max(alerts.c.id)))
            e = conn.scalar(select(func.max(alert_events.c.id)))
        return int(a or 0), int(e or 0)

    def all(self, patient_id: str | None = None) -> list[Alert]:
        """Every alert with its state (newest first)."""
        q = select(alerts).order_by(alerts.c.id.desc())
        if patient_id is not None:
            q = q.where(alerts.c.patient_id == patient_id)
        return self._read(q)

    def _read(self, q: Any) -> list[Alert]:
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
            ids = [r["id"] for r in rows]
            events = conn.execute(select(alert_events).where(alert_events.c.alert_id.in_(ids))
                                  .order_by(alert_events.c.id)).mappings().all() if ids else []
        acked: dict[int, str | None] = {}
        resolved: set[int] = set()
        for e in events:
            if e["kind"] == "acknowledged":
                acked[e["alert_id"]] = e["by"]
            elif e["kind"] == "resolved":
                resolved.add(e["alert_id"])
        return [Alert(id=r["id"], patient_id=r["patient_id"], rule=r["rule"],
                      severity=r["severity"], message=r["message"],
                      detail=json.loads(r["detail"]), raised_at=r["raised_at"],
                      data_time=r["data_time"], acknowledged_by=acked.get(r["id"]),
                      resolved=r["id"] in resolved) for r in rows]

    def raise_alert(self, patient_id: str, rule: str, severity: int, message: str,
                    detail: dict[str, Any], data_time: datetime | None) -> Alert | None:
        """Raise unless the same rule is already active for the patient at >= severity.

        A higher severity escalates: the old alert is resolved and a new one raised.
        Returns the new alert, or None when it was a repeat (no alert storm).
        """
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                open_ = conn.execute(
                    select(alerts.c.id, alerts.c.severity)
                    .where(and_(alerts.c.patient_id == patient_id, alerts.c.rule == rule))
                    .where(~alerts.c.id.in_(select(alert_events.c.alert_id)
                                            .where(alert_events.c.kind == "resolved")))
                ).all()
                if any(sev >= severity for _, sev in open_):
                    return None
                if open_:
                    conn.execute(insert(alert_events), [
                        {"alert_id": i, "kind": "resolved", "by": "escalated", "at": now}
                        for i, _ in open_])
                new_id = conn.execute(insert(alerts).values(
                    patient_id=patient_id, rule=rule, severity=severity, message=message,
                    detail=json.dumps(detail, sort_keys=True), raised_at=now,
                    data_time=data_time)).inserted_primary_key[0]
        except SQLAlchemyError as exc:
            raise StoreError(f"could not store the alert: {exc}") from exc
        return Alert(id=new_id, patient_id=patient_id, rule=rule, severity=severity,
                     message=message, detail=detail, raised_at=now, data_time=data_time)

    def apply(self, raises: list[Raise], resolves: list[tuple[str, str]]) -> list[Alert]:
        """Raise and resolve many alerts in one transaction (the monitor's batched path).

        The caller has already de-duplicated (it knows which rules are active); a raise
        resolves any alert still open for the same patient and rule (an escalation).
        """
        if not raises and not resolves:
            return []
        now = datetime.now(UTC)
        closing = {(r.patient_id, r.rule) for r in raises} | set(resolves)
        patients = sorted({p for p, _ in closing})
        out: list[Alert] = []
        try:
            with self.engine.begin() as conn:
                resolved = select(alert_events.c.alert_id).where(
                    alert_events.c.kind == "resolved")
                open_rows = conn.execute(
                    select(alerts.c.id, alerts.c.patient_id, alerts.c.rule)
                    .where(alerts.c.patient_id.in_(patients), ~alerts.c.id.in_(resolved))
                ).all()
                ends = [{"alert_id": i, "kind": "resolved",
                         "by": "cleared" if (p, r) in set(resolves) else "escalated", "at": now}
                        for i, p, r in open_rows if (p, r) in closing]
                if ends:
                    conn.execute(insert(alert_events), ends)
                for r in raises:
                    new_id = conn.execute(insert(alerts).values(
                        patient_id=r.patient_id, rule=r.rule, severity=r.severity,
                        message=r.message, detail=json.dumps(r.detail, sort_keys=True),
                        raised_at=now, data_time=r.data_time)).inserted_primary_key[0]
                    out.append(Alert(id=new_id, patient_id=r.patient_id, rule=r.rule,
                                     severity=r.severity, message=r.message, detail=r.detail,
                                     raised_at=now, data_time=r.data_time))
        except SQLAlchemyError as exc:
            raise StoreError(f"could not store alerts: {exc}") from exc
        return out

    def resolve(self, patient_id: str, rule: str) -> int:
        """Resolve the active alerts of a rule for a patient (its condition cleared)."""
        open_ids = [a.id for a in self.active(patient_id) if a.rule == rule]
        if open_ids:
            with self.engine.begin() as conn:
                conn.execute(insert(alert_events), [
                    {"alert_id": i, "kind": "resolved", "by": "cleared", "at": datetime.now(UTC)}
                    for i in open_ids])
        return len(open_ids)

    def acknowledge(self, alert_id: int, by: str) -> Alert:
        """Record that ``by`` has seen the alert; NotFoundError if there is no such alert."""
        with self.engine.begin() as conn:
            if conn.scalar(select(alerts.c.id).where(alerts.c.id == alert_id)) is None:
                raise NotFoundError(f"no alert {alert_id}; `medtwin alerts` lists them")
            conn.execute(insert(alert_events).values(alert_id=alert_id, kind="acknowledged",
                                                     by=by, at=datetime.now(UTC)))
        return self.get(alert_id)
