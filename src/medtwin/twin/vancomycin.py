"""The vancomycin twin of a stored patient: personalise Goti 2018 to the patient's doses and
levels (Bayesian MAP) and recommend the regimen most likely to reach AUC24 400-600 mg.h/L.

Used by the dashboard's patient page and the API's dose endpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from medtwin.core import codes
from medtwin.core.records import Intervention, InterventionKind, Observation
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

VANCO_LEVEL = codes.VANCOMYCIN_TROUGH
WEIGHT, CREATININE = codes.BODY_WEIGHT, codes.CREATININE_SERUM
PK_MODEL = "vancomycin-goti2018"
#: limits of a what-if regimen (API, dashboard): one dose up to this [mg], every
#: ``REGIMEN_INTERVAL`` h, infused over at least ``REGIMEN_MIN_INFUSION`` h
REGIMEN_MAX_DOSE = 6000.0
REGIMEN_INTERVAL: tuple[float, float] = (1.0, 72.0)
REGIMEN_MIN_INFUSION = 0.25


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


def pk_view(store: EventStore, patient_id: str, *, days: float = 2.0, seed: int = 0,
            target: Target | None = None, constraints: DoseConstraints | None = None,
            now: datetime | None = None) -> PKView | None:
    """Personalise the vancomycin twin to the patient's doses and levels (Bayesian MAP) and
    recommend the regimen with the highest probability of AUC24 in 400-600 mg.h/L.

    Every dose given up to ``now`` (default: the current time) stays in the course; the
    regimen starts when the next dose is due (the last dose plus the interval between the
    last two, and not before ``now`` when the record reaches within two days of it), so the
    recommended and current courses part only where they differ. None when the patient has
    no vancomycin doses or levels.
    """
    recs = store.timeline(patient_id, kinds=["intervention", "observation"])
    doses = [r for r in recs if isinstance(r, Intervention)
             and r.kind in (InterventionKind.INFUSION, InterventionKind.DRUG_DOSE)]
    obs = [r for r in recs if isinstance(r, Observation)]
    levels = [o for o in obs if o.code == VANCO_LEVEL and o.value is not None]
    now = now or datetime.now(UTC)
    doses = [d for d in doses if d.time <= now]  # given already: they stay in the course
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
    rec = recommend_dose(twin, target or Target("auc24", 400, 600),
                         constraints or DoseConstraints(), n_samples=1000, seed=seed)
    i = twin.index(rec.subject)
    data = twin.data_
    given = np.sort(data.doses.time[i][data.doses.route[i] >= 0])
    last = max([0.0, *data.times[i][data.observed.mask[i]].tolist(), *given.tolist()])
    gap = float(given[-1] - given[-2]) if given.size > 1 else rec.interval
    start = max(last, float(given[-1]) + gap if given.size else last)
    now_h = (now - t0).total_seconds() / 3600.0
    if last <= now_h <= last + 48.0:  # a current record: nothing is due in the past
        start = max(start, now_h)
    start = math.ceil(start)
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
