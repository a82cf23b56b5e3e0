"""Live occupancy forecast: start from the current census in the store and simulate ahead.

Patients in the unit now are the encounters (of the census class) that have started and not
ended at the cut-off; each is placed in the census activity holding its resource, with a
remaining stay drawn from the model's LOS distribution *conditioned on the time already
spent* (``X - a | X > a``), a fresh draw per replication. New arrivals follow the model's
hourly profile from the cut-off's clock hour. Occupancy, queue and wait per hour are given
as means with 95% prediction intervals (2.5% and 97.5% quantiles over replications).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.ops.calibrate import encounters_frame
from medtwin.ops.engine import Initial
from medtwin.ops.loader import with_changes
from medtwin.ops.runner import run_replications
from medtwin.ops.schema import Model
from medtwin.ops.streams import stream_rng

if TYPE_CHECKING:
    from distributed import Client


@dataclass
class Census:
    """Who is in the unit at ``at``: time already spent by each (model time units)."""

    at: datetime
    elapsed: np.ndarray
    patients: list[str]


def census_from_store(store: Any, model: Model, *, klass: str | None = None,
                      at: datetime | None = None) -> Census:
    """Encounters started by ``at`` and not ended by it (default ``at``: the data cut-off,
    the latest start or end stored for that class)."""
    klass = klass if klass is not None else model.census.get("encounter_class")
    enc = encounters_frame(store, klass)
    if at is None:
        if enc.empty:
            raise ValidationError(f"no encounters of class {klass} in the store to take a "
                                  "census from; import data or give --class", where="forecast")
        at = max(enc["start"].max(), enc["end"].max() if enc["end"].notna().any()
                 else enc["start"].max()).to_pydatetime()
    at_ts = pd.Timestamp(at).tz_convert(UTC) if pd.Timestamp(at).tzinfo else \
        pd.Timestamp(at).tz_localize(UTC)
    inside = enc[(enc["start"] <= at_ts) & (enc["end"].isna() | (enc["end"] > at_ts))]
    elapsed = ((at_ts - inside["start"]) / pd.Timedelta(hours=1)).to_numpy() * \
        model.units_per_hour
    return Census(at_ts.to_pydatetime(), elapsed.astype(float), inside["patient"].tolist())


def _census_class(model: Model, activity: str) -> str:
    for c in model.classes.values():
        if any(s.kind == "activity" and s.target == activity and s.id == activity
               for s in c.steps):
            return c.name
    raise ValidationError(f"no patient class has activity '{activity}' as a step",
                          where=f"{model.file} [census.activity]")


def forecast(model: Model, census: Census, *, hours: float = 48, reps: int = 50,
             seed: int = 0, activity: str | None = None, workers: int = 1,
             progress: bool = False, scheduler: str | None = None,
             client: Client | None = None) -> pd.DataFrame:
    """Hour-by-hour forecast of occupancy, queue and wait at the census activity's resource."""
    activity = activity or model.census.get("activity")
    if activity is None or activity not in model.activities:
        raise ValidationError("the model names no census activity; add 'census: {activity: "
                              "<name>}' to the model file or pass --activity",
                              where=f"{model.file} [census]")
    act = model.activities[activity]
    klass = _census_class(model, activity)
    uph = model.units_per_hour
    horizon = hours * uph
    run_model = with_changes(model, {"run": {"warm_up": 0, "length": horizon}})
    at = census.at
    offset = at.weekday() * 24 + at.hour + at.minute / 60 + at.second / 3600

    def initial(rep: int) -> tuple[Initial, ...]:
        rng = stream_rng(seed, rep, "census:remaining")
        rem = act.duration.remaining(rng, census.elapsed)
        return tuple(Initial(klass, activity, float(r), float(a))
                     for r, a in zip(rem, census.elapsed, strict=True))

    res = run_replications(run_model, reps, seed, workers=workers, progress=progress,
                           clock_offset_h=offset, initial=initial, scheduler=scheduler,
                           client=client)
    h = res.hourly
    h = h.assign(hour_ahead=np.rint(h["time"] / uph).astype(int))
    cols = {"occupancy": f"in_service:{act.resource}", "queue": f"queue:{act.resource}",
            "wait": f"wait:{activity}", "in_system": "in_system"}
    out = pd.DataFrame({"hour_ahead": sorted(h["hour_ahead"].unique())}).set_index("hour_ahead")
    g = h.groupby("hour_ahead")
    for name, col in cols.items():
        out[f"{name}_mean"] = g[col].mean()
        out[f"{name}_lo"] = g[col].quantile(0.025)
        out[f"{name}_hi"] = g[col].quantile(0.975)
    out.insert(0, "time", [pd.Timestamp(at) + pd.Timedelta(hours=int(k)) for k in out.index])
    out.attrs.update({"model": model.name, "census": len(census.elapsed),
                      "cut_off": at.isoformat(), "activity": activity,
                      "capacity": model.resources[act.resource].capacity, "reps": reps})
    return out.reset_index()
