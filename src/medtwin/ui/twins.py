"""The twins behind the patient page: the vancomycin PK twin (:mod:`medtwin.twin.vancomycin`)
and the glucose what-if.

Pure functions over the store's records (no UI code), so they are tested without a browser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from medtwin.core.records import Condition
from medtwin.devices.scenario import simulate_scenario
from medtwin.store.event_store import EventStore
from medtwin.twin.vancomycin import PKView, pk_view

__all__ = ["PKView", "WhatIf", "glucose_what_if", "patient_kind", "pk_view"]

log = logging.getLogger(__name__)

KIND_BY_CONDITION = {"46635009": "t1d", "91302008": "deteriorating", "128045006": "vancomycin"}


def patient_kind(store: EventStore, patient_id: str) -> str:
    """``t1d``, ``vancomycin``, ``deteriorating`` or ``stable``, from the coded diagnoses."""
    codes = {c.code for c in store.timeline(patient_id, kinds=["condition"])
             if isinstance(c, Condition)}
    for code, kind in KIND_BY_CONDITION.items():
        if code in codes:
            return kind
    return "stable"


DEFAULT_MEALS: tuple[tuple[str, float], ...] = (("07:00", 50), ("12:00", 70), ("19:00", 80))


@dataclass(frozen=True)
class WhatIf:
    """The current plan's predicted glucose next to the plan with an extra meal."""

    plan: pd.DataFrame  # minute, glucose [mg/dL]
    changed: pd.DataFrame
    subject: str
    controller: str

    def time_in_range(self, which: str = "changed") -> float:
        """Percentage of minutes in 70-180 mg/dL."""
        g = getattr(self, which)["glucose"]
        return float(((g >= 70) & (g <= 180)).mean() * 100)


def glucose_what_if(extra_meal: tuple[str, float] | None, *, controller: str = "basal-bolus",
                    subject: str = "adult#001", meals: tuple[tuple[str, float], ...] =
                    DEFAULT_MEALS) -> WhatIf:
    """Simulate a day of the plan and of the plan with ``extra_meal`` (HH:MM, grams) on the
    UVA/Padova virtual subject standing in for the patient (no personalised glucose twin yet)."""
    base = simulate_scenario(subject, meals, controller=controller, seed=1)
    changed_meals = meals if extra_meal is None else (*meals, extra_meal)
    alt = simulate_scenario(subject, changed_meals, controller=controller, seed=1)

    def frame(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"minute": df["minute"], "glucose": df["BG"]})

    return WhatIf(frame(base), frame(alt), subject, controller)
