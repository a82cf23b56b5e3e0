"""The twins behind the patient page: which twin a patient has, and the what-if panels' inputs
as the service's plans (:mod:`medtwin.twin.service`, which the API's twins routes use too).

Pure functions over the store's records and the panels' values (no UI code), so they are
tested without a browser.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from medtwin.core.errors import ValidationError
from medtwin.core.records import Condition
from medtwin.store.event_store import EventStore
from medtwin.twin.service import GlucosePlan, Regimen
from medtwin.twin.vancomycin import (
    REGIMEN_INTERVAL,
    REGIMEN_MAX_DOSE,
    REGIMEN_MIN_INFUSION,
    PKView,
    pk_view,
)

__all__ = ["PKView", "PlanRow", "glucose_plan", "numbered", "patient_kind", "pk_view",
           "plan_marks", "regimen"]

log = logging.getLogger(__name__)

KIND_BY_CONDITION = {"46635009": "t1d", "91302008": "deteriorating", "128045006": "vancomycin"}
MAX_AHEAD = 24 * 60  # min: the twin plans at most a day ahead


def patient_kind(store: EventStore, patient_id: str) -> str:
    """``t1d``, ``vancomycin``, ``deteriorating`` or ``stable``, from the coded diagnoses."""
    codes = {c.code for c in store.timeline(patient_id, kinds=["condition"])
             if isinstance(c, Condition)}
    for code, kind in KIND_BY_CONDITION.items():
        if code in codes:
            return kind
    return "stable"


@dataclass
class PlanRow:
    """One planned meal or bolus of the what-if panel: ``minutes`` after the twin's time,
    ``amount`` in g (meal) or U (bolus). Mutable: the panel's inputs edit it in place."""

    kind: str  # "meal" or "bolus"
    minutes: float | None
    amount: float | None

    @property
    def unit(self) -> str:
        """g for a meal, U for a bolus."""
        return "g" if self.kind == "meal" else "U"


def numbered(rows: Iterable[PlanRow]) -> list[tuple[PlanRow, int]]:
    """Each row with its number among the rows of its kind, from 1: a meal then a bolus are
    Meal 1 and Bolus 1 (not Bolus 2)."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        seen[row.kind] = seen.get(row.kind, 0) + 1
        out.append((row, seen[row.kind]))
    return out


def row_name(row: PlanRow, n: int) -> str:
    """A row's name as the panel and the chart show it, e.g. ``Bolus 1``."""
    return f"{'Meal' if row.kind == 'meal' else 'Bolus'} {n}"


def plan_marks(rows: Iterable[PlanRow], twin_time: datetime) -> list[tuple[str, datetime]]:
    """(name, time) of each planned meal and bolus with a valid time, for the chart's markers."""
    marks = []
    for row, n in numbered(rows):
        minutes = row.minutes
        if isinstance(minutes, int | float) and math.isfinite(minutes) and \
                0 <= minutes <= MAX_AHEAD:
            marks.append((row_name(row, n), twin_time + timedelta(minutes=minutes)))
    return marks


def _number(value: float | None, what: str, low: float, high: float) -> float:
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{what} is empty: give a number from {low:g} to {high:g}",
                              where=what)
    if not low <= value <= high:
        raise ValidationError(f"{what} must be {low:g}-{high:g}, got {value:g}", where=what)
    return float(value)


def glucose_plan(rows: Iterable[PlanRow], basal: float | None, twin_time: datetime
                 ) -> GlucosePlan:
    """The panel's rows (minutes after ``twin_time``) and basal rate [U/h] as a plan for the
    glucose twin; :class:`ValidationError` names the first bad input."""
    meals: list[tuple[datetime, float]] = []
    boluses: list[tuple[datetime, float]] = []
    for row, n in numbered(rows):
        label = f"{row.kind} {n}"
        minutes = _number(row.minutes, f"{label} time [min]", 0, MAX_AHEAD)
        at = twin_time + timedelta(minutes=minutes)
        if row.kind == "meal":
            meals.append((at, _number(row.amount, f"{label} carbohydrate [g]", 1, 300)))
        elif row.kind == "bolus":
            boluses.append((at, _number(row.amount, f"{label} insulin [U]", 0.1, 50)))
        else:
            raise ValidationError(f"unknown kind {row.kind!r}: meal or bolus", where=label)
    rate = None if basal is None else _number(basal, "basal rate [U/h]", 0, 10)
    return GlucosePlan(meals=tuple(meals), boluses=tuple(boluses), basal=rate)


def regimen(dose: float | None, interval: float | None, infusion: float | None) -> Regimen:
    """The vancomycin what-if panel's inputs as a regimen (errors name the input)."""
    return Regimen(_number(dose, "dose [mg]", 1, REGIMEN_MAX_DOSE),
                   _number(interval, "interval [h]", *REGIMEN_INTERVAL),
                   _number(infusion, "infusion [h]", REGIMEN_MIN_INFUSION, REGIMEN_INTERVAL[1]))
