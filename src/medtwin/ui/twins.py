"""The twins behind the patient page: the vancomycin PK twin and the glucose what-if.

Pure functions over the store's records (no UI code), so they are tested without a browser.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from medtwin.core.records import Condition, Intervention, InterventionKind, Observation
from medtwin.devices.scenario import simulate_scenario
from medtwin.interop.nonmem import events_from_records
from medtwin.store.event_store import EventStore
from medtwin.twin.dosing import (
    DoseConstraints,
    Recommendation,
    Target,
    recommend_dose,
    regimen_doses,
)
from medtwin.twin.pk import PKTwin

log = logging.getLogger(__name__)

VANCO_LEVEL = "4092-3"
WEIGHT, CREATININE = "29463-7", "2160-0"
PK_MODEL = "vancomycin-goti2018"
KIND_BY_CONDITION = {"46635009": "t1d", "91302008": "deteriorating", "128045006": "vancomycin"}


def patient_kind(store: EventStore, patient_id: str) -> str:
    """``t1d``, ``vancomycin``, ``deteriorating`` or ``stable``, from the coded diagnoses."""
    codes = {c.code for c in store.timeline(patient_id, kinds=["condition"])
             if isinstance(c, Condition)}
    for code, kind in KIND_BY_CONDITION.items():
        if code in codes:
            return kind
    return "stable"


@dataclass(frozen=True)
class PKView:
    """What the PK panel shows: measured levels, the fitted course with its 90% band through
    the history and the recommended regimen, and the recommendation."""

    levels: pd.DataFrame  # time, value [mg/L]
    course: pd.DataFrame  # time (datetime), mode, lower, upper [mg/L]
    recommendation: Recommendation
    parameters: dict[str, float]
    model: str
    covariates: dict[str, float]


def _age(store: EventStore, patient_id: str, at: datetime) -> float | None:
    p = store.patient(patient_id)
    born = (p.identity or {}).get("birth_date")
    if born:
        return (at.date() - datetime.fromisoformat(born).date()).days / 365.25
    return at.year - p.birth_year if p.birth_year else None


def pk_view(store: EventStore, patient_id: str, *, days: float = 2.0, seed: int = 0
            ) -> PKView | None:
    """Personalise the vancomycin twin to the patient's doses and levels (Bayesian MAP) and
    recommend the regimen with the highest probability of AUC24 in 400-600 mg.h/L.

    None when the patient has no vancomycin doses or levels.
    """
    recs = store.timeline(patient_id, kinds=["intervention", "observation"])
    doses = [r for r in recs if isinstance(r, Intervention)
             and r.kind in (InterventionKind.INFUSION, InterventionKind.DRUG_DOSE)]
    obs = [r for r in recs if isinstance(r, Observation)]
    levels = [o for o in obs if o.code == VANCO_LEVEL and o.value is not None]
    if levels:  # doses after the last level cannot inform the fit; the forecast replaces them
        doses = [d for d in doses if d.time <= levels[-1].time]
    if not doses or not levels:
        return None
    weight = next((o.value for o in reversed(obs) if o.code == WEIGHT and o.value), 70.0)
    scr = next((o.value for o in reversed(obs) if o.code == CREATININE and o.value), 1.0)
    t0 = min(r.time for r in [*doses, *levels])
    age = _age(store, patient_id, t0) or 60.0
    female = store.patient(patient_id).gender == "female"
    crcl = min((140 - age) * weight / (72 * scr) * (0.85 if female else 1.0), 150.0)
    cov = {"WT": float(weight), "CRCL": float(crcl), "DIAL": 0.0}
    table = events_from_records(doses, levels, codes=[VANCO_LEVEL], origin=t0,
                                covariates=pd.DataFrame(cov, index=[patient_id]))
    twin = PKTwin(PK_MODEL, seed=seed).fit(table)
    rec = recommend_dose(twin, Target("auc24", 400, 600), DoseConstraints(),
                         n_samples=1000, seed=seed)
    i = twin.index(rec.subject)
    data = twin.data_
    last = max([0.0, *data.times[i][data.observed.mask[i]].tolist(),
                *data.doses.time[i][data.doses.route[i] >= 0].tolist()])
    start = math.ceil(last)
    planned = regimen_doses(twin, rec, start, int(math.ceil(days * 24 / rec.interval)))
    hours = np.linspace(0.0, start + days * 24.0, 400)
    band = twin.prediction_interval(hours, rec.subject, planned, n=300, seed=seed)
    band["time"] = [t0 + pd.Timedelta(hours=h) for h in band["time"]]
    return PKView(
        levels=pd.DataFrame({"time": [o.time for o in levels],
                             "value": [o.value for o in levels]}),
        course=band[["time", "mode", "lower", "upper"]], recommendation=rec,
        parameters={k: float(v) for k, v in twin.params_.iloc[i].items()},
        model=twin.model_.title, covariates=cov)


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
