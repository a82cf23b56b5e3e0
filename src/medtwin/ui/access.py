"""What the dashboard reads and changes, through the service's policy and audit trail.

Every function takes the caller (a :class:`Principal` from :mod:`medtwin.ui.session`) and
checks it with the same :class:`AccessPolicy` the API uses; every read or write of patient
data appends an audit entry, as an API call would. A refusal raises :class:`UiDeniedError` with
the policy's message; a hidden patient looks exactly like a missing one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
from starlette.requests import Request

from medtwin.api.deps import Services
from medtwin.core import codes
from medtwin.core.errors import MedtwinError, NotFoundError
from medtwin.interop.codes import to_canonical
from medtwin.monitor.news2 import News2, Risk
from medtwin.monitor.rules import VITAL_WORDS
from medtwin.monitor.vitals import (
    News2Breakdown,
    latest_items,
    latest_items_many,
    news2_breakdown,
)
from medtwin.security.policy import AccessDeniedError, Action, Grant
from medtwin.security.roles import Principal, Role
from medtwin.store.alerts import Alert, AlertStore
from medtwin.store.latest import latest_per_code
from medtwin.store.resources import ResourceStore
from medtwin.store.search_index import Query
from medtwin.store.snapshots import last_sync_times
from medtwin.twin.service import (
    DOSE_RESOURCE,
    GLUCOSE_RESOURCE,
    GlucosePlan,
    GlucoseView,
    Regimen,
    current_regimen,
    dose_view,
    glucose_view,
)
from medtwin.twin.vancomycin import PKView

log = logging.getLogger(__name__)

CGM, GLUCOSE_LAB = codes.GLUCOSE_INTERSTITIAL, codes.GLUCOSE_BLOOD
CHART_CODES = {codes.HEART_RATE: ("Heart rate", "/min"),
               codes.RESPIRATORY_RATE: ("Respiratory rate", "/min"),
               codes.SPO2_PULSE_OXIMETRY: ("SpO2", "%"), codes.SYSTOLIC_BP: ("Systolic BP", "mmHg"),
               codes.BODY_TEMPERATURE: ("Temperature", "°C"), CGM: ("CGM glucose", "mg/dL"),
               GLUCOSE_LAB: ("Blood glucose", "mg/dL")}
RISK_ORDER = {Risk.HIGH: 3, Risk.MEDIUM: 2, Risk.LOW_MEDIUM: 1, Risk.LOW: 0}
#: the vitals a ward tile shows: item, short label, unit (the unit alerts use)
SHOWN_VITALS = tuple((item, label, VITAL_WORDS[item][1]) for item, label in (
    ("pulse", "HR"), ("respiration_rate", "RR"), ("spo2", "SpO2"), ("systolic_bp", "SBP"),
    ("temperature", "Temp")))


#: the FHIR ``meta.tag`` that synthetic patients carry (``medtwin synth`` and ``medtwin demo``)
SYNTHETIC_TAG = ("urn:medtwin:tag", "synthetic")


def _tagged_synthetic(resource: dict[str, object]) -> bool:
    tags = (resource.get("meta") or {}).get("tag") or []  # type: ignore[union-attr]
    return any((t.get("system"), t.get("code")) == SYNTHETIC_TAG for t in tags)


def demo_store(svc: Services) -> bool:
    """True when the store holds demo data: its first stored Patient carries the synthetic
    tag (the demo fills an empty store with synthetic patients only). One small read."""
    try:
        page = ResourceStore(svc.store).search(Query("Patient"), count=1, total=False)
        return bool(page.resources) and _tagged_synthetic(page.resources[0].resource())
    except MedtwinError:
        log.warning("could not tell whether the store holds demo data", exc_info=True)
        return False


def synthetic_patient(svc: Services, patient_id: str) -> bool:
    """True when the patient's FHIR Patient resource carries the synthetic tag."""
    try:
        rtype, _, rid = svc.store.patient(patient_id).source_id.partition("/")
        return _tagged_synthetic(ResourceStore(svc.store).read(rtype, rid).resource())
    except MedtwinError:
        return False


class UiDeniedError(MedtwinError):
    """The caller may not see or do this (the policy's reason is the message)."""


@dataclass(frozen=True)
class WardRow:
    """One patient on the ward overview."""

    patient_id: str
    name: str
    mrn: str
    vitals: dict[str, str]
    score: News2 | None
    alerts: list[Alert] = field(default_factory=list)
    last_reading: datetime | None = None
    twin_synced: datetime | None = None  # the data time the patient's live twin has reached
    breakdown: News2Breakdown | None = None  # every NEWS2 item: scored, stale, missing, untrusted
    glucose_time: datetime | None = None  # when the glucose shown was measured

    @property
    def rank(self) -> tuple[int, int, int]:
        """Higher is sicker: the NEWS2 band or the most severe active alert (severity 1-3 on
        the band's scale: a predicted low of severity 2 ranks with a medium band), then the
        score, then the number of active alerts."""
        band = -1 if self.score is None else RISK_ORDER[self.score.risk]
        worst = max((a.severity for a in self.alerts), default=-1)
        total = -1 if self.score is None else self.score.total
        return (max(band, worst), total, len(self.alerts))


def refusal(who: Principal, exc: AccessDeniedError) -> str:
    """The policy's refusal in words for these pages, with what the caller can do here
    (the API's wording names headers and paths, which mean nothing on a page)."""
    if who.role is Role.ADMIN:
        return ("administrators open a patient's record only in an emergency: give the "
                "reason below and open it (the reason is recorded in the audit trail)")
    if who.role is Role.RESEARCHER:
        return ("researchers see only de-identified data: the Trials and Operations pages "
                "are yours")
    return str(exc)


def _check(svc: Services, request: Request | None, who: Principal, patient_id: str,
           action: Action, resource: str, break_glass: str | None = None) -> Grant:
    try:
        return svc.policy.check(who, patient_id, action, break_glass=break_glass)
    except AccessDeniedError as exc:
        svc.record(request, who, action.value, resource, "denied", patient_id=patient_id,
                   detail=str(exc))
        if exc.status == 404:  # a hidden patient looks exactly like a missing one
            raise UiDeniedError(f"no patient with id {patient_id}") from None
        raise UiDeniedError(refusal(who, exc)) from None


def visible_patients(svc: Services, request: Request | None, who: Principal) -> list[str]:
    """The ids of the patients the caller may list (audited, as ``GET /patients``)."""
    try:
        svc.policy.require_role(who, Role.CLINICIAN, Role.PATIENT)
    except AccessDeniedError as exc:
        svc.record(request, who, "read", "ward", "denied", detail=str(exc))
        raise UiDeniedError("the ward shows identified clinical data, for clinicians and "
                            "patients. Administrators manage users and the audit trail on "
                            "the Admin page; researchers run trials and operations models "
                            "on the Trials and Operations pages (de-identified data only)"
                            ) from None
    ids = svc.policy.visible_patients(who, list(svc.store.patients()["id"]))
    svc.record(request, who, "read", "ward", "success", detail=f"{len(ids)} listed")
    return ids


def care_patients(svc: Services, who: Principal) -> list[str]:
    """The stored patients the caller may list now (a clinician's care teams, a patient's own
    record), without reading every patient: what a live ward checks for new arrivals."""
    if who.role is Role.CLINICIAN:
        candidates = sorted(svc.directory.care_patients(who.id))
    elif who.role is Role.PATIENT and who.patient_id:
        candidates = [who.patient_id]
    else:
        return []
    return [p for p in svc.policy.visible_patients(who, candidates) if svc.store.has_patient(p)]


def _name(svc: Services, patient_id: str) -> tuple[str, str]:
    ident = svc.store.patient(patient_id).identity or {}
    names = ident.get("name") or [{}]
    return names[0].get("text", patient_id[:8]), ident.get("mrn", "")


def ward_rows(svc: Services, request: Request | None, who: Principal, ids: list[str], *,
              audit: bool, names: dict[str, tuple[str, str]] | None = None) -> list[WardRow]:
    """Latest vitals, NEWS2, active alerts and the twin's last sync per patient, sickest first.

    The policy is asked again on every call (a patient taken out of the care team since the
    page opened drops off). ``audit`` records one read per patient, in one transaction (on
    opening the page; the live refresh of an open page is covered by that entry, as the API's
    WebSocket audits once per subscription). ``names`` caches the decrypted name and MRN
    between the calls of one page. The reads are batched: a ward of 100 costs a few queries.
    """
    allowed = set(svc.policy.visible_patients(who, ids))
    ids = [p for p in ids if p in allowed]
    names = {} if names is None else names
    active: dict[str, list[Alert]] = {}
    for a in AlertStore(svc.store).active():
        active.setdefault(a.patient_id, []).append(a)
    synced = last_sync_times(svc.store, ids)
    glucose = latest_per_code(svc.store, ids, [CGM, GLUCOSE_LAB])
    rows = []
    now = datetime.now(UTC)
    for pid, items in latest_items_many(svc.store, ids).items():
        # current as of now: a monitor that went quiet hours ago gives no score, not an old
        # one shown as today's; an implausible stored value is named, never scored
        breakdown = news2_breakdown(items, at=now)
        score = breakdown.score
        when = max((t for t, _ in items.values()), default=None)
        shown = {}
        for item, label, unit in SHOWN_VITALS:
            if item in items:
                value = items[item][1]
                shown[label] = f"{value:.1f} {unit}" if item == "temperature" else \
                    f"{value:.0f} {unit}"
        glucose_time = None
        if glucose[pid]:
            g = glucose[pid][-1]  # the newest of CGM and laboratory glucose
            if g.value is not None:  # type: ignore[attr-defined]
                try:  # readings are normalised on the way in; a record appended directly
                    value, unit = to_canonical(g.code, g.value, g.unit)  # type: ignore[attr-defined]
                    shown["Glucose"] = f"{value:.0f} {unit}"
                except MedtwinError:  # may not be: show it as stored
                    shown["Glucose"] = f"{g.value:g} {g.unit}"  # type: ignore[attr-defined]
                glucose_time = g.time  # type: ignore[attr-defined]
                when = g.time if when is None else max(when, g.time)  # type: ignore[attr-defined]
        if pid not in names:
            names[pid] = _name(svc, pid)
        name, mrn = names[pid]
        rows.append(WardRow(pid, name, mrn, shown, score, active.get(pid, []), when,
                            synced.get(pid), breakdown, glucose_time))
    if audit:
        svc.record_many(request, who, "read", "ward-summary", "success", list(ids))
    return sorted(rows, key=lambda r: r.rank, reverse=True)


@dataclass(frozen=True)
class PatientData:
    """What the patient page shows (identified: clinicians and the patient themselves)."""

    patient_id: str
    name: str
    mrn: str
    series: pd.DataFrame  # time, code, value, unit
    alerts: list[Alert]
    news2: News2Breakdown | None = None  # NEWS2 now, item by item


def patient_data(svc: Services, request: Request | None, who: Principal, patient_id: str, *,
                 hours: float = 48.0, audit: bool = True, break_glass: str | None = None
                 ) -> PatientData:
    """The charted series of the last ``hours``, NEWS2 now and all alerts of one patient
    (``break_glass``: an admin's emergency reason, audited with the read)."""
    grant = _check(svc, request, who, patient_id, Action.READ, "patient-page", break_glass)
    try:
        name, mrn = _name(svc, patient_id)
        frame = svc.store.timeline_frame(patient_id, kinds=["observation"],
                                         codes=list(CHART_CODES))
    except NotFoundError:
        raise UiDeniedError(f"no patient with id {patient_id}") from None
    if len(frame):
        frame = frame[frame["time"] >= frame["time"].max() - timedelta(hours=hours)]
    bp = svc.store.timeline(patient_id, kinds=["observation"],
                            codes=[codes.BP_PANEL, codes.BP_PANEL_OLD])
    sbp = [(o.time, c.value) for o in bp for c in o.components if c.code == codes.SYSTOLIC_BP]
    if sbp:
        extra = pd.DataFrame({"time": pd.to_datetime([t for t, _ in sbp], utc=True),
                              "code": codes.SYSTOLIC_BP, "value": [v for _, v in sbp],
                              "unit": "mmHg"})
        extra = extra[extra["time"] >= frame["time"].min()] if len(frame) else extra
        frame = pd.concat([frame[["time", "code", "value", "unit"]], extra], ignore_index=True)
    if audit:
        svc.record(request, who, grant.action.value, "patient-page", "success",
                   patient_id=patient_id, detail=f"break-glass: {grant.break_glass}"
                   if grant.break_glass else None)
    series = frame[["time", "code", "value", "unit"]].sort_values("time") if len(frame) else \
        pd.DataFrame(columns=["time", "code", "value", "unit"])
    breakdown = news2_breakdown(latest_items(svc.store, patient_id), at=datetime.now(UTC))
    return PatientData(patient_id, name, mrn, series, AlertStore(svc.store).all(patient_id),
                       breakdown)


def acknowledge(svc: Services, request: Request | None, who: Principal, alert_id: int
                ) -> Alert:
    """Record that the caller has seen an alert (needs write access to its patient)."""
    store = AlertStore(svc.store)
    alert = next((a for a in store.all() if a.id == alert_id), None)
    if alert is None:
        raise UiDeniedError(f"no alert {alert_id}")
    _check(svc, request, who, alert.patient_id, Action.WRITE, f"alert:{alert_id}")
    done = store.acknowledge(alert_id, who.label)
    svc.record(request, who, "acknowledge", f"alert:{alert_id}", "success",
               patient_id=alert.patient_id)
    return done


def require_admin(svc: Services, request: Request | None, who: Principal, resource: str
                  ) -> None:
    """Refuse non-admins (audited)."""
    try:
        svc.policy.require_role(who, Role.ADMIN)
    except AccessDeniedError as exc:
        svc.record(request, who, "access", resource, "denied", detail=str(exc))
        raise UiDeniedError(str(exc)) from None


def glucose_twin(svc: Services, request: Request | None, who: Principal, patient_id: str, *,
                 horizon: int = 120, plan: GlucosePlan | None = None, audit: bool = True
                 ) -> GlucoseView:
    """The patient's glucose twin brought up to date, its forecast and a what-if's, checked
    and audited as ``GET /twins/{id}/glucose`` (the same service function runs).

    Raises :class:`UiDeniedError`, ``TwinNotReadyError`` (no glucose reading yet) or
    ``ValidationError`` (a plan the twin cannot run). ``audit=False`` for the live refresh of
    a page whose opening was audited.
    """
    _check(svc, request, who, patient_id, Action.READ, GLUCOSE_RESOURCE)
    try:
        view = glucose_view(svc.store, patient_id, horizon=horizon, plan=plan)
    except NotFoundError:
        svc.record(request, who, "read", GLUCOSE_RESOURCE, "not-found", patient_id=patient_id)
        raise UiDeniedError(f"no patient with id {patient_id}") from None
    if audit:
        svc.record(request, who, "read", GLUCOSE_RESOURCE, "success", patient_id=patient_id)
    return view


@dataclass(frozen=True)
class DoseComparison:
    """The vancomycin twin's recommendation, the current regimen continued, and a what-if."""

    recommended: PKView
    current: PKView | None
    current_regimen: Regimen | None
    what_if: PKView | None = None
    what_if_regimen: Regimen | None = None


def dose(svc: Services, request: Request | None, who: Principal, patient_id: str, *,
         what_if: Regimen | None = None) -> DoseComparison:
    """The personalised vancomycin twin: recommended regimen, the current one continued and
    (given) a what-if regimen, checked and audited as ``GET /twins/{id}/dose``.

    Raises :class:`UiDeniedError`, ``TwinNotReadyError`` (no doses and levels yet) or
    ``ValidationError``.
    """
    _check(svc, request, who, patient_id, Action.READ, DOSE_RESOURCE)
    try:
        recommended = dose_view(svc.store, patient_id)
        regimen = current_regimen(svc.store, patient_id)
        current = dose_view(svc.store, patient_id, regimen=regimen) if regimen else None
        alt = dose_view(svc.store, patient_id, regimen=what_if) if what_if else None
    except NotFoundError:
        svc.record(request, who, "read", DOSE_RESOURCE, "not-found", patient_id=patient_id)
        raise UiDeniedError(f"no patient with id {patient_id}") from None
    svc.record(request, who, "read", DOSE_RESOURCE, "success", patient_id=patient_id)
    return DoseComparison(recommended, current, regimen, alt, what_if)
