"""Dose recommendation: the regimen that maximises the probability of target attainment (PTA).

Candidate IV regimens (dose on a rounding grid x allowed interval, each infused at most at
the allowed rate) are scored at steady state for parameter sets drawn from the twin's
Laplace posterior: AUC24 = 24/tau x dose / CL, trough and peak by the steady-state sums of
:func:`~medtwin.models.pk.closed_form.steady_state_exposure`. The target may be an AUC24
window (vancomycin: 400-600 mg.h/L, Rybak et al., Am J Health-Syst Pharm 77:835, 2020) or a
trough or peak window. Ties in PTA go to the regimen whose median is closest to the middle of
the window, then to the smaller daily dose.

Only a converged MAP fit is used: a subject whose fit did not converge (``converged_`` False,
e.g. an estimate still on its bound after mapbayr's resets) gets a typed error instead of a
dose or a plotted course, since its etas and covariance are not a posterior mode.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import CENTRAL, DoseArrays, steady_state_exposure
from medtwin.models.pk.language.model import LanguageModel
from medtwin.twin.pk import PKTwin

log = logging.getLogger(__name__)

METRICS = {"auc24": "mg.h/L", "cmin": "mg/L", "cmax": "mg/L"}


@dataclass(frozen=True)
class Target:
    """Window ``[low, high]`` on ``metric`` (``auc24``, ``cmin`` trough, ``cmax`` peak)."""

    metric: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValidationError(f"unknown metric {self.metric!r}; use {list(METRICS)}",
                                  where="target")
        if not (0 <= self.low < self.high and math.isfinite(self.high)):
            raise ValidationError(f"need 0 <= low < high, got {self.low}:{self.high}",
                                  where="target")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"auc24=400:600"``, ``"cmin=10:15"``."""
        try:
            metric, window = text.split("=")
            low, high = window.split(":")
            return cls(metric.strip().lower(), float(low), float(high))
        except ValueError:
            raise ValidationError(f"cannot read {text!r}; write e.g. auc24=400:600 or "
                                  "cmin=10:15", where="target") from None


@dataclass(frozen=True)
class DoseConstraints:
    """Practical limits: dose rounding [mg], allowed intervals [h], maximum infusion rate
    [mg/h], shortest infusion [h], dose range [mg]."""

    rounding: float = 250.0
    intervals: tuple[float, ...] = (8.0, 12.0, 24.0)
    max_rate: float = 1000.0
    min_duration: float = 1.0
    min_dose: float = 250.0
    max_dose: float = 4000.0

    def regimens(self) -> list[tuple[float, float, float]]:
        """Every allowed (dose, interval, infusion duration)."""
        if not (self.rounding > 0 and self.max_rate > 0 and self.intervals):
            raise ValidationError("rounding and max_rate must be > 0, with >= 1 interval",
                                  where="constraints")
        doses = np.arange(math.ceil(self.min_dose / self.rounding) * self.rounding,
                          self.max_dose + 1e-9, self.rounding)
        out = []
        for tau in self.intervals:
            for d in doses:
                dur = max(self.min_duration, d / self.max_rate)
                if dur <= tau:
                    out.append((float(d), float(tau), float(dur)))
        if not out:
            raise ValidationError("no regimen satisfies the constraints", where="constraints")
        return out


@dataclass(frozen=True)
class Recommendation:
    """The chosen regimen, its probability of target attainment and all candidates scored."""

    subject: str
    dose: float
    interval: float
    duration: float
    probability: float
    target: Target
    median: float
    interval_90: tuple[float, float]
    candidates: pd.DataFrame

    def text(self) -> str:
        """One line for a clinician."""
        unit = METRICS[self.target.metric]
        return (f"subject {self.subject}: {self.dose:g} mg every {self.interval:g} h, infused "
                f"over {self.duration:g} h -> P({self.target.metric} in "
                f"{self.target.low:g}-{self.target.high:g} {unit}) = {self.probability:.0%}; "
                f"median {self.median:.1f} {unit} (90% {self.interval_90[0]:.1f}-"
                f"{self.interval_90[1]:.1f})")

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"subject": self.subject, "dose [mg]": self.dose, "interval [h]": self.interval,
                "infusion [h]": self.duration, "probability": self.probability,
                "target": {"metric": self.target.metric, "low": self.target.low,
                           "high": self.target.high},
                "median": self.median, "interval_90": list(self.interval_90)}


def require_converged(twin: PKTwin, subject: str | None) -> int:
    """Row of ``subject`` in ``twin``; a typed error when its MAP fit did not converge."""
    i = twin.index(subject)
    if not bool(twin.converged_[i]):
        raise ValidationError(
            f"the MAP fit of subject {twin.subjects_[i]!r} did not converge (OFV "
            f"{float(twin.ofv_[i]):.6g}), so its etas are not a posterior mode and no dose is "
            "recommended from them; check the subject's doses, times and units, then refit "
            "with more iterations or resets (PKTwin(max_iter=..., restarts=...))",
            where=f"subject {twin.subjects_[i]}")
    return i


def recommend_dose(
    twin: PKTwin,
    target: Target,
    constraints: DoseConstraints | None = None,
    *,
    subject: str | None = None,
    n_samples: int = 2000,
    seed: int = 0,
) -> Recommendation:
    """The regimen maximising PTA under ``twin``'s posterior for one subject (seeded)."""
    constraints = constraints or DoseConstraints()
    model = getattr(twin, "source_model_", twin.model_)
    if isinstance(model, LanguageModel):
        raise ValidationError(f"model {model.name!r} is a model-language (ODE) model; dose "
                              "recommendation covers the closed-form 1-3 compartment models "
                              "(simulate candidate regimens with PKTwin.predict instead)",
                              where="model")
    if model.absorption:
        raise ValidationError(f"model {model.name!r} has first-order absorption; dose "
                              "recommendation covers IV infusion regimens", where="model")
    i = require_converged(twin, subject)
    eta = twin.sample_eta(n_samples, subject, seed)
    params = twin.forecast_parameters(subject, eta)
    lam, coef = model.disposition({k: v[None] for k, v in params.items()})
    rows = []
    draws = {}
    for dose, tau, dur in constraints.regimens():
        m = steady_state_exposure(lam, coef, params["CL"], dose, tau, dur)[target.metric]
        pta = float(np.mean((m >= target.low) & (m <= target.high)))
        med = float(np.median(m))
        rows.append({"dose": dose, "interval": tau, "duration": dur, "probability": pta,
                     "median": med, "distance": abs(med - 0.5 * (target.low + target.high)),
                     "daily": dose * 24.0 / tau})
        draws[(dose, tau)] = m
    table = pd.DataFrame(rows).sort_values(["probability", "distance", "daily"],
                                           ascending=[False, True, True], kind="stable")
    best = table.iloc[0]
    m = draws[(best["dose"], best["interval"])]
    return Recommendation(twin.subjects_[i], float(best["dose"]), float(best["interval"]),
                          float(best["duration"]), float(best["probability"]), target,
                          float(best["median"]),
                          (float(np.quantile(m, 0.05)), float(np.quantile(m, 0.95))),
                          table.drop(columns=["distance"]).reset_index(drop=True))


def regimen_table(twin: PKTwin, rec: Recommendation, start: float, n_doses: int) -> EventTable:
    """The subject's records followed by ``n_doses`` of the recommended regimen (into the
    central compartment, covariates carried forward from the last record)."""
    i = twin.index(rec.subject)
    table = twin.events_.select([twin.subjects_[i]])
    r = table.records
    last = r.iloc[-1]
    model = getattr(twin, "source_model_", twin.model_)
    rows = []
    for j in range(n_doses):
        row = last.copy()
        row[["TIME", "EVID", "AMT", "RATE", "II", "ADDL", "SS", "DV", "MDV", "BLQ"]] = (
            start + j * rec.interval, 1, rec.dose,
            rec.dose / rec.duration if rec.duration > 0 else 0.0, 0.0, 0, 0, np.nan, 1, 0)
        row["CMT"], row["LLOQ"], row["LINE"] = model.central, np.nan, 0
        rows.append(row)
    return EventTable(pd.concat([r, pd.DataFrame(rows)], ignore_index=True),
                      table.covariate_names)


def regimen_doses(twin: PKTwin, rec: Recommendation, start: float, n_doses: int) -> DoseArrays:
    """The subject's fitted doses followed by ``n_doses`` of the recommended regimen."""
    i = twin.index(rec.subject)
    past = twin.data_.doses.take(np.array([i]))
    keep = past.route[0] >= 0
    out = DoseArrays.empty(1, int(keep.sum()) + n_doses)
    k = int(keep.sum())
    for f in ("time", "amt", "dur", "route", "ss", "ii", "until"):
        getattr(out, f)[0, :k] = getattr(past, f)[0, keep]
    for j in range(n_doses):
        out.time[0, k + j] = start + j * rec.interval
        out.amt[0, k + j] = rec.dose
        out.dur[0, k + j] = rec.duration
        out.route[0, k + j] = CENTRAL
    return out


def plot_course(twin: PKTwin, rec: Recommendation, path: str | Path, *, days: float = 3.0,
                n_samples: int = 500, seed: int = 0) -> Path:
    """Write a PNG: observed levels, the predicted course (mode and 90% band under the
    posterior) through the history and ``days`` of the recommended regimen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = require_converged(twin, rec.subject)
    data = twin.data_
    obs_t = data.times[i][data.observed.mask[i]]
    n_new = int(math.ceil(days * 24 / rec.interval))
    doses: DoseArrays | EventTable
    if isinstance(twin.model_, LanguageModel):
        r = twin.events_.select([twin.subjects_[i]]).records
        last_dose = r.loc[r["EVID"].isin([1, 4]), "TIME"].to_numpy(float)
        start = math.ceil(max([0.0, *obs_t.tolist(), *last_dose.tolist()]))
        doses = regimen_table(twin, rec, start, n_new)
    else:
        last_dose = data.doses.time[i][data.doses.route[i] >= 0]
        start = math.ceil(max([0.0, *obs_t.tolist(), *last_dose.tolist()]))
        doses = regimen_doses(twin, rec, start, n_new)
    t = np.linspace(0.0, start + days * 24.0, 600)
    band = twin.prediction_interval(t, rec.subject, doses, n=n_samples, seed=seed)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(band["time"], band["lower"], band["upper"], alpha=0.3,
                    label="90% prediction band (posterior)")
    ax.plot(band["time"], band["mode"], lw=1.5, label="MAP prediction")
    y = data.observed.y[i][data.observed.mask[i] & ~data.observed.blq[i]]
    t_q = data.times[i][data.observed.mask[i] & ~data.observed.blq[i]]
    ax.plot(t_q, y, "o", color="k", label="measured")
    ax.axvline(start, color="grey", ls=":", lw=1)
    ax.set_xlabel("time [h]")
    ax.set_ylabel("concentration [mg/L]")
    ax.set_title(f"{twin.model_.title}: subject {rec.subject}\n{rec.dose:g} mg q"
                 f"{rec.interval:g}h over {rec.duration:g} h, P(target) = {rec.probability:.0%}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
