"""The twins' service functions, shared by the API's ``/twins`` routes and the dashboard.

Bring a patient's glucose twin up to date with the store and forecast it, with or without a
what-if plan (meals, boluses, a basal rate); personalise the vancomycin twin and predict a
regimen's course and probability of target attainment. Nothing here checks access: each front
end checks the service's policy before the call and audits after it (``api.deps.guard`` and
``audited``, ``ui.access``), under the same resource names (:data:`GLUCOSE_RESOURCE`,
:data:`DOSE_RESOURCE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from medtwin.core.errors import MedtwinError, NotFoundError, ValidationError
from medtwin.core.records import Intervention, InterventionKind
from medtwin.models.glucose.constants import HYPO_THRESHOLD, TARGET_RANGE
from medtwin.store.event_store import EventStore
from medtwin.twin.dosing import DoseConstraints, Target
from medtwin.twin.glucose import MODEL_NAME, MODEL_VERSION, GlucoseTwin
from medtwin.twin.glucose_sync import GlucoseSync
from medtwin.twin.vancomycin import (
    REGIMEN_INTERVAL,
    REGIMEN_MAX_DOSE,
    REGIMEN_MIN_INFUSION,
    PKView,
    pk_view,
)

GLUCOSE_RESOURCE = "glucose-twin"
DOSE_RESOURCE = "dose"
HYPO_HORIZON = 30  # min: as the monitor's predicted-low rule
MAX_BASAL = 10.0  # U/h


class TwinNotReadyError(MedtwinError):
    """The twin has nothing to start from yet (no reading, no dose): HTTP 409."""


@dataclass(frozen=True)
class GlucosePlan:
    """A what-if on the glucose twin: meals (time, g) and boluses (time, U) added to what is
    recorded, and optionally a basal rate [U/h] from the twin's time on (None: unchanged)."""

    meals: tuple[tuple[datetime, float], ...] = ()
    boluses: tuple[tuple[datetime, float], ...] = ()
    basal: float | None = None

    @property
    def empty(self) -> bool:
        """Whether the plan changes nothing."""
        return not self.meals and not self.boluses and self.basal is None

    def interventions(self, patient_id: str) -> list[Intervention]:
        """The planned meals and boluses as records (never stored); a meal is eaten at 5 g/min."""
        planned = [Intervention(patient_id, "meal", t, g, "g", f"what-if-meal-{i}",
                                duration=timedelta(minutes=max(1.0, g / 5.0)))
                   for i, (t, g) in enumerate(self.meals)]
        planned += [Intervention(patient_id, "insulin", t, u, "U", f"what-if-bolus-{i}")
                    for i, (t, u) in enumerate(self.boluses)]
        return planned


@dataclass(frozen=True)
class Outlook:
    """Summary of one predicted course: what a clinician compares between plans."""

    peak: float  # mg/dL, of the mean
    nadir: float
    time_in_range: float  # % of the horizon with the mean in 70-180 mg/dL
    hypo_probability: float  # P(< 70 mg/dL within 30 min)

    @classmethod
    def of(cls, forecast: pd.DataFrame, hypo: float) -> Outlook:
        """The outlook of a forecast frame (time, minutes, mean, p05, p95)."""
        m = forecast["mean"].to_numpy(float)
        low, high = TARGET_RANGE
        return cls(float(m.max()), float(m.min()),
                   float(((m >= low) & (m <= high)).mean() * 100), float(hypo))


@dataclass(frozen=True)
class GlucoseView:
    """The glucose twin brought up to date: now, its forecast, and a what-if's forecast."""

    patient_id: str
    twin_time: datetime
    glucose: float
    insulin_sensitivity: float
    hypo_probability: float
    minutes_to_hypo: float | None
    forecast: pd.DataFrame  # time, minutes, mean, p05, p95 [mg/dL]
    outlook: Outlook
    what_if: pd.DataFrame | None = None
    what_if_outlook: Outlook | None = None
    plan: GlucosePlan = field(default_factory=GlucosePlan)
    model: str = MODEL_NAME
    model_version: str = MODEL_VERSION


def _with_basal(twin: GlucoseTwin, rate: float) -> GlucoseTwin:
    """A copy of the twin whose background insulin is ``rate`` U/h from its time on."""
    if not (np.isfinite(rate) and 0.0 <= rate <= MAX_BASAL):
        raise ValidationError(f"basal rate must be 0-{MAX_BASAL:g} U/h, got {rate!r}",
                              where="basal")
    snap = twin.snapshot()
    if "basal" not in snap:
        raise ValidationError("this glucose twin cannot change its basal rate", where="basal")
    return GlucoseTwin.from_snapshot({**snap, "basal": float(rate)})


def glucose_view(store: EventStore, patient_id: str, *, horizon: int = 120,
                 plan: GlucosePlan | None = None, sync: GlucoseSync | None = None
                 ) -> GlucoseView:
    """Assimilate what is new for the patient (storing a snapshot), then forecast
    ``horizon`` minutes with what is recorded and, given a ``plan``, with the plan too.

    Raises :class:`NotFoundError` (no such patient), :class:`TwinNotReadyError` (no glucose
    reading yet) or :class:`ValidationError` (a planned item outside the day after the twin's
    time, a bad basal rate or horizon). Nothing of the plan is stored.
    """
    if not store.has_patient(patient_id):
        raise NotFoundError(f"no patient {patient_id!r}")
    sync = sync or GlucoseSync(store)
    sync.update(patient_id)
    twin, _ = sync.twin(patient_id)
    if not twin.started:
        raise TwinNotReadyError("no glucose reading for this patient yet: the twin has nothing "
                                "to start from (it starts at the first CGM or blood glucose "
                                "reading)")
    plan = plan or GlucosePlan()
    planned = plan.interventions(patient_id)
    for d in planned:
        if not twin.time_ - timedelta(hours=1) <= d.time <= twin.time_ + timedelta(days=1):
            raise ValidationError(f"planned {d.kind.value} at {d.time.isoformat()} is not "
                                  "within a day after the twin's time "
                                  f"{twin.time_.isoformat()}", where="planned")
    p, minutes = twin.hypo_risk(HYPO_THRESHOLD, HYPO_HORIZON)
    forecast = twin.forecast(horizon)
    what_if = what_if_outlook = None
    if not plan.empty:
        alt = twin if plan.basal is None else _with_basal(twin, plan.basal)
        what_if = alt.forecast(horizon, planned=planned)
        hypo, _ = alt.hypo_risk(HYPO_THRESHOLD, HYPO_HORIZON, planned=planned)
        what_if_outlook = Outlook.of(what_if, hypo)
    return GlucoseView(
        patient_id=patient_id, twin_time=twin.time_, glucose=twin.glucose_,
        insulin_sensitivity=twin.insulin_sensitivity_, hypo_probability=p,
        minutes_to_hypo=minutes, forecast=forecast, outlook=Outlook.of(forecast, p),
        what_if=what_if, what_if_outlook=what_if_outlook, plan=plan,
        model_version=twin.model_version_)


# --- vancomycin -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Regimen:
    """An intermittent IV regimen: dose [mg] every ``interval`` h, infused over ``infusion`` h."""

    dose: float
    interval: float
    infusion: float

    def __post_init__(self) -> None:
        lo, hi = REGIMEN_INTERVAL
        if not (0 < self.dose <= REGIMEN_MAX_DOSE):
            raise ValidationError(f"dose must be in (0, {REGIMEN_MAX_DOSE:g}] mg, got "
                                  f"{self.dose!r}", where="regimen.dose")
        if not (lo <= self.interval <= hi):
            raise ValidationError(f"interval must be {lo:g}-{hi:g} h, got {self.interval!r}",
                                  where="regimen.interval")
        if not (REGIMEN_MIN_INFUSION <= self.infusion <= self.interval):
            raise ValidationError(f"infusion must last {REGIMEN_MIN_INFUSION:g} h up to the "
                                  f"interval "
                                  f"({self.interval:g} h), got {self.infusion!r}",
                                  where="regimen.infusion")

    def constraints(self) -> DoseConstraints:
        """Dose constraints that admit exactly this regimen (so its PTA and course are the
        recommendation's)."""
        return DoseConstraints(rounding=self.dose, min_dose=self.dose, max_dose=self.dose,
                               intervals=(float(self.interval),),
                               min_duration=float(self.infusion), max_rate=1e9)

    def text(self) -> str:
        """One line, e.g. ``1000 mg every 12 h over 1 h``."""
        return f"{self.dose:g} mg every {self.interval:g} h over {self.infusion:g} h"


def current_regimen(store: EventStore, patient_id: str) -> Regimen | None:
    """The regimen the patient is on: the last vancomycin dose, at the interval since the one
    before it (None with fewer than two infusions or doses)."""
    doses = [r for r in store.timeline(patient_id, kinds=["intervention"])
             if isinstance(r, Intervention)
             and r.kind in (InterventionKind.INFUSION, InterventionKind.DRUG_DOSE)
             and r.unit == "mg"]
    if len(doses) < 2:
        return None
    last, before = doses[-1], doses[-2]
    interval = round((last.time - before.time).total_seconds() / 3600.0, 1)
    infusion = last.duration.total_seconds() / 3600.0 if last.duration else 1.0
    try:
        return Regimen(float(last.amount), interval, max(0.25, min(infusion, interval)))
    except ValidationError:
        return None


def dose_view(store: EventStore, patient_id: str, *, target: Target | None = None,
              regimen: Regimen | None = None) -> PKView:
    """Personalise the vancomycin twin to the stored doses and levels; with ``regimen``, its
    course and probability of target attainment, otherwise the recommended regimen's.

    Raises :class:`NotFoundError` (no such patient), :class:`TwinNotReadyError` (no doses or
    levels to personalise from) or :class:`ValidationError`.
    """
    if not store.has_patient(patient_id):
        raise NotFoundError(f"no patient {patient_id!r}")
    view = pk_view(store, patient_id, target=target,
                   constraints=regimen.constraints() if regimen is not None else None)
    if view is None:
        raise TwinNotReadyError("no vancomycin doses and levels for this patient: nothing to "
                                "personalise from (the twin needs at least one of each)")
    return view

