"""KPIs from replication logs: per replication, and across replications with 95% CIs.

Conventions (those of treat-sim 3.0.0, so results compare with it):

* the results window is [warm_up, warm_up + length); a wait counts for queue entries made in
  the window whose service started before the end (patients still queueing are left out);
* ``util:<resource>`` is the service time *booked* by services that started in the window
  (their full sampled duration) over the capacity-time available in the window;
  ``busy:<resource>`` is the time-average fraction actually busy inside the window;
* time in system counts patients arriving in the window who left before its end;
* ``p_within_<x>``: of the patients arriving in the window whose outcome is known at the end
  (left, or already over the limit), the share whose time in system is within the limit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from medtwin.ops.engine import RepLog
from medtwin.ops.schema import Model


def available(model: Model, resource: str, t0: float, t1: float, offset_h: float) -> float:
    """Capacity-time of a resource in [t0, t1) (integrates a roster hour by hour)."""
    r = model.resources[resource]
    if r.roster is None:
        return r.capacity * (t1 - t0)
    uph = model.units_per_hour
    grid = np.arange(math.floor(offset_h + t0 / uph), math.ceil(offset_h + t1 / uph) + 1)
    edges = np.clip((grid - offset_h) * uph, t0, t1)
    counts = np.asarray(r.roster)[grid[:-1].astype(int) % len(r.roster)]
    return float(np.sum(counts * np.diff(edges)))


def _overlap(a: np.ndarray, b: np.ndarray, t0: float, t1: float) -> float:
    return float(np.sum(np.clip(np.minimum(b, t1) - np.maximum(a, t0), 0, None)))


def rep_kpis(model: Model, log: RepLog, *, offset_h: float | None = None) -> dict[str, float]:
    """Scalar KPIs of one replication."""
    t0, t1 = model.warm_up, log.horizon
    offset_h = model.start_day * 24 + model.start_hour if offset_h is None else offset_h
    length = t1 - t0
    out: dict[str, float] = {}
    new = ~log.initial & (log.arrival >= t0) & (log.arrival < t1)
    out["arrivals"] = float(new.sum())
    done = ~np.isnan(log.exit) & ~log.lwbs
    out["throughput"] = float((done & (log.exit >= t0) & (log.exit < t1)).sum())
    out["lwbs"] = float((new & log.lwbs).sum())
    out["lwbs_rate"] = out["lwbs"] / out["arrivals"] if out["arrivals"] else math.nan
    tis = log.exit - log.arrival
    ok = new & done
    out["time_in_system"] = float(np.mean(tis[ok])) if ok.any() else math.nan
    for ci, c in enumerate(model.classes):
        sel = ok & (log.cls == ci)
        out[f"time_in_system:{c}"] = float(np.mean(tis[sel])) if sel.any() else math.nan
    elapsed = np.where(np.isnan(log.exit), t1 - log.arrival, tis)
    for label, limit in model.targets.items():
        known = new & ~log.lwbs & (done | (elapsed > limit))
        out[f"p_within_{label}"] = float(np.mean(elapsed[known] <= limit)) if known.any() \
            else math.nan
    booked = dict.fromkeys(model.resources, 0.0)
    busy = dict.fromkeys(model.resources, 0.0)
    queue = dict.fromkeys(model.resources, 0.0)
    for name, act in model.activities.items():
        a = log.activities[name]
        started = ~np.isnan(a["start"])
        inwin = (a["enter"] >= t0) & (a["enter"] < t1) & started & ~log.initial[a["pid"]]
        wait = a["start"][inwin] - a["enter"][inwin]
        out[f"wait:{name}"] = float(np.mean(wait)) if wait.size else math.nan
        out[f"p_wait:{name}"] = float(np.mean(wait > 1e-9)) if wait.size else math.nan
        s_in = started & (a["start"] >= t0) & (a["start"] < t1)
        booked[act.resource] += float(np.sum(a["dur"][s_in]))
        busy[act.resource] += _overlap(a["start"][started], a["end"][started], t0, t1)
        qend = np.where(started, a["start"], np.where(np.isnan(a["left"]), t1, a["left"]))
        queue[act.resource] += _overlap(a["enter"], qend, t0, t1)
    for r in model.resources:
        cap = available(model, r, t0, t1, offset_h)
        out[f"util:{r}"] = booked[r] / cap if cap else math.nan
        out[f"busy:{r}"] = busy[r] / cap if cap else math.nan
        out[f"queue:{r}"] = queue[r] / length
    return out


def rep_hourly(model: Model, log: RepLog, *, offset_h: float | None = None) -> pd.DataFrame:
    """Hour-by-hour state of one replication: patients in the unit, in service and queueing
    per resource (at each hour mark), and the mean wait of queue entries in that hour."""
    uph = model.units_per_hour
    offset_h = model.start_day * 24 + model.start_hour if offset_h is None else offset_h
    marks = np.arange(model.warm_up, log.horizon + 1e-9, uph)
    df = pd.DataFrame({"rep": log.rep, "time": marks,
                       "hour_of_day": np.floor(offset_h + marks / uph).astype(int) % 24,
                       "in_system": _le(log.arrival, marks) - _le(log.exit, marks)})
    for r in model.resources:
        df[f"in_service:{r}"] = 0
        df[f"queue:{r}"] = 0
    for name, act in model.activities.items():
        a = log.activities[name]
        n_start = _le(a["start"], marks)
        df[f"in_service:{act.resource}"] += n_start - _le(a["end"], marks)
        df[f"queue:{act.resource}"] += _le(a["enter"], marks) - n_start - _le(a["left"], marks)
        started = ~np.isnan(a["start"]) & ~log.initial[a["pid"]]
        slot = np.floor((a["enter"][started] - model.warm_up) / uph).astype(int)
        w = a["start"][started] - a["enter"][started]
        ok = (slot >= 0) & (slot < len(marks))
        sums = np.bincount(slot[ok], weights=w[ok], minlength=len(marks))
        counts = np.bincount(slot[ok], minlength=len(marks))
        with np.errstate(invalid="ignore", divide="ignore"):
            df[f"wait:{name}"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return df


def _le(x: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """How many of the (finite) times in ``x`` are <= each mark."""
    x = np.sort(x[~np.isnan(x)])
    return np.searchsorted(x, marks, side="right")


NONNEG = ("arrivals", "throughput", "lwbs", "time_in_system", "wait:", "util:", "busy:",
          "queue:", "p_within", "p_wait:")  # KPIs that cannot be negative
PROPORTIONS = ("p_within", "p_wait:", "lwbs_rate")  # ... nor above 1
CI_NOTE = ("95% CI: t-interval over replications (needs >= 2); limits of waits, times, counts "
           "and utilisations truncated at 0, of proportions at 1")


def bounds(kpi: str) -> tuple[float, float]:
    """The range a KPI can take: (0, inf), (0, 1) for proportions, else unbounded."""
    if kpi.startswith(PROPORTIONS):
        return 0.0, 1.0
    if kpi.startswith(NONNEG):
        return 0.0, math.inf
    return -math.inf, math.inf


def summarise(per_rep: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean, sd, n and the t-based confidence interval of each KPI across replications.

    The interval of a KPI that cannot be negative (waits, times, counts, utilisations) is
    truncated at 0, that of a proportion also at 1 (``attrs["ci_note"]`` says so); with fewer
    than 2 replications there is no interval (NaN)."""
    rows = []
    for col in per_rep.columns:
        if col == "rep":
            continue
        x = per_rep[col].to_numpy(dtype=float)
        x = x[~np.isnan(x)]
        n = x.size
        mean = float(x.mean()) if n else math.nan
        sd = float(x.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)) if n > 1 \
            else math.nan
        lo, hi = bounds(col)
        rows.append({"kpi": col, "mean": mean, "sd": sd, "n": n,
                     "ci_low": max(mean - half, lo) if n > 1 else math.nan,
                     "ci_high": min(mean + half, hi) if n > 1 else math.nan})
    out = pd.DataFrame(rows).set_index("kpi")
    out.attrs["ci_note"] = CI_NOTE.replace("95%", f"{level:.0%}")
    return out
