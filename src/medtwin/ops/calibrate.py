"""Calibration from the store: arrival rates by hour (and day) and a length-of-stay
distribution, chosen by goodness of fit, from Encounter records; written as a model file.

Arrival rates are counts per clock hour divided by how many times that hour occurs in the
observed span (maximum-likelihood rates of a Poisson process). LOS candidates (exponential,
lognormal, gamma, Weibull, all with location 0) are fitted by maximum likelihood and ranked
by AIC; the Kolmogorov-Smirnov statistic of each is reported beside it. Encounters without an
end (still in progress) count as arrivals but not for LOS (no censoring correction).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from medtwin.core.errors import ValidationError
from medtwin.core.records import Encounter
from medtwin.ops.distributions import Distribution
from medtwin.ops.schema import UNITS_PER_HOUR

log = logging.getLogger(__name__)

CANDIDATES = ("exponential", "lognormal", "gamma", "weibull")


def encounters_frame(store: Any, klass: str | None = None) -> pd.DataFrame:
    """All stored encounters (patient, start, end, klass), optionally of one class."""
    rows = []
    for pid in store.patients()["id"]:
        for e in store.timeline(pid, kinds=["encounter"]):
            if not isinstance(e, Encounter) or e.start is None:
                continue
            if klass is not None and e.klass != klass:
                continue
            rows.append({"patient": pid, "start": e.start, "end": e.end, "klass": e.klass,
                         "source_id": e.source_id})
    df = pd.DataFrame(rows, columns=["patient", "start", "end", "klass", "source_id"])
    df["start"] = pd.to_datetime(df["start"], utc=True)
    df["end"] = pd.to_datetime(df["end"], utc=True)
    return df.sort_values("start", ignore_index=True)


@dataclass(frozen=True)
class Fit:
    """One fitted LOS candidate: its distribution, log-likelihood, AIC and KS statistic."""

    kind: str
    dist: Distribution
    loglik: float
    aic: float
    ks: float


def fit_los(durations: np.ndarray) -> list[Fit]:
    """Fit the candidates to positive durations; best (lowest AIC) first."""
    x = np.asarray(durations, dtype=float)
    x = x[np.isfinite(x) & (x > 0)]
    if x.size < 10:
        raise ValidationError(f"only {x.size} finished encounters with a positive length; "
                              "need at least 10 to fit a length-of-stay distribution",
                              where="calibration")
    fits = []
    for kind in CANDIDATES:
        if kind == "exponential":
            loc, scale = stats.expon.fit(x, floc=0)
            frozen, k, d = stats.expon(scale=scale), 1, Distribution(kind, {"mean": scale})
        elif kind == "lognormal":
            s, loc, scale = stats.lognorm.fit(x, floc=0)
            frozen, k = stats.lognorm(s, scale=scale), 2
            d = Distribution(kind, {"mu": math.log(scale), "sigma": s})
        elif kind == "gamma":
            a, loc, scale = stats.gamma.fit(x, floc=0)
            frozen, k, d = stats.gamma(a, scale=scale), 2, Distribution(kind, {"shape": a,
                                                                                "scale": scale})
        else:
            c, loc, scale = stats.weibull_min.fit(x, floc=0)
            frozen, k = stats.weibull_min(c, scale=scale), 2
            d = Distribution(kind, {"shape": c, "scale": scale})
        ll = float(np.sum(frozen.logpdf(x)))
        ks = float(stats.kstest(x, frozen.cdf).statistic)
        fits.append(Fit(kind, d, ll, 2 * k - 2 * ll, ks))
    return sorted(fits, key=lambda f: f.aic)


@dataclass
class Calibration:
    """Calibrated figures: hourly rates, day-of-week multipliers, LOS fits, and the span."""

    klass: str | None
    rates_per_hour: list[float]
    day_of_week: list[float] | None
    fits: list[Fit]
    n_arrivals: int
    n_finished: int
    days: float
    time_unit: str = "minutes"
    rate_se: list[float] = field(default_factory=list)

    @property
    def best(self) -> Fit:
        """The LOS candidate with the lowest AIC."""
        return self.fits[0]

    def fit_table(self) -> pd.DataFrame:
        """The LOS candidates with log-likelihood, AIC, delta-AIC and KS statistic."""
        best = self.fits[0].aic
        return pd.DataFrame([{"distribution": f.kind, "mean": f.dist.mean(), "loglik": f.loglik,
                              "aic": f.aic, "delta_aic": f.aic - best, "ks": f.ks}
                             for f in self.fits]).set_index("distribution")

    def model_dict(self, *, name: str = "calibrated", capacity: int | None = None,
                   resource: str = "beds", activity: str = "stay") -> dict[str, Any]:
        """A model description (ready for YAML) with the calibrated arrivals and LOS."""
        los = self.best.dist
        uph = UNITS_PER_HOUR[self.time_unit]
        load = sum(self.rates_per_hour) / 24 * los.mean() / uph  # mean occupancy (Little)
        cap = capacity or max(1, math.ceil(load + 3 * math.sqrt(load)))
        arrivals: dict[str, Any] = {"name": "observed",
                                    "source": f"calibrated from {self.n_arrivals} encounters "
                                              f"over {self.days:.1f} days",
                                    "rates_per_hour": [round(r, 4) for r in self.rates_per_hour],
                                    "class": "patient"}
        if self.day_of_week:
            arrivals["day_of_week"] = [round(m, 4) for m in self.day_of_week]
        day = 24 * uph
        out: dict[str, Any] = {
            "name": name,
            "description": f"calibrated from stored encounters (class {self.klass}); LOS "
                           f"{self.best.kind} chosen by AIC (KS {self.best.ks:.3f})",
            "time_unit": self.time_unit,
            "run": {"warm_up": round(max(day, 5 * los.mean()), 2), "length": 7 * day,
                    "replications": 20},
            "resources": {resource: {"capacity": cap}},
            "activities": {activity: {"resource": resource, "duration": los.to_dict()}},
            "classes": {"patient": {"pathway": [activity]}},
            "arrivals": [arrivals],
            "kpis": {"within": {"4h": 4 * uph}},
            "census": {"activity": activity, **({"encounter_class": self.klass}
                                                if self.klass else {})},
        }
        return out

    def write_model(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the calibrated model file (YAML) and return its path."""
        path = Path(path)
        header = (f"# Calibrated by medtwin ops calibrate on {datetime.now(UTC):%Y-%m-%d}.\n"
                  "# LOS candidates (AIC, KS): " + ", ".join(
                      f"{f.kind} ({f.aic:.1f}, {f.ks:.3f})" for f in self.fits) + "\n")
        path.write_text(header + yaml.safe_dump(self.model_dict(**kwargs), sort_keys=False),
                        encoding="utf-8")
        return path


def calibrate_frame(enc: pd.DataFrame, *, time_unit: str = "minutes",
                    klass: str | None = None) -> Calibration:
    """Calibrate from an encounters frame (columns start, end as UTC timestamps)."""
    if enc.empty:
        raise ValidationError(f"no encounters{f' of class {klass}' if klass else ''} in the "
                              "store; import data first or choose another --class",
                              where="calibration")
    starts = enc["start"]
    first = starts.min().floor("D")
    last = starts.max().floor("D") + pd.Timedelta(days=1)
    days = (last - first) / pd.Timedelta(days=1)
    day_index = pd.date_range(first, last, freq="D", inclusive="left")
    hod = starts.dt.hour.to_numpy()
    counts = np.bincount(hod, minlength=24).astype(float)
    rates = counts / days
    dow = None
    if days >= 14:
        per_dow = np.bincount(starts.dt.day_of_week.to_numpy(), minlength=7).astype(float)
        n_dow = np.bincount(day_index.day_of_week, minlength=7).astype(float)
        daily = per_dow / np.maximum(n_dow, 1)
        dow = (daily / (counts.sum() / days)).tolist()
    uph = UNITS_PER_HOUR[time_unit]
    done = enc.dropna(subset=["end"])
    los = ((done["end"] - done["start"]) / pd.Timedelta(hours=1)).to_numpy() * uph
    fits = fit_los(los)
    log.info("calibrated %d encounters over %.1f days; LOS best fit %s", len(enc), days,
             fits[0].kind)
    return Calibration(klass, rates.tolist(), dow, fits, len(enc), len(done), float(days),
                       time_unit, (np.sqrt(counts) / days).tolist())


def calibrate(store: Any, *, klass: str | None = "EMER",
              time_unit: str = "minutes") -> Calibration:
    """Calibrate arrivals and LOS from the store's encounters of one class."""
    return calibrate_frame(encounters_frame(store, klass), time_unit=time_unit, klass=klass)
