"""Replications: serial or in parallel processes, with a progress bar; same numbers either way.

Replication ``r`` always uses the streams of ``(seed, r, name)``, so the result does not
depend on which process ran it or in what order.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import pandas as pd
from tqdm import tqdm

from medtwin.core.errors import ValidationError
from medtwin.core.processes import die_with_parent
from medtwin.ops.engine import Initial, run_replication
from medtwin.ops.kpis import rep_hourly, rep_kpis, summarise
from medtwin.ops.schema import Model

log = logging.getLogger(__name__)


@dataclass
class Results:
    """KPIs per replication (``per_rep``), their summary with 95% CIs, and hourly states."""

    model: Model
    seed: int
    per_rep: pd.DataFrame
    hourly: pd.DataFrame
    events: int = 0
    extra: dict = field(default_factory=dict)

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Mean, sd and confidence interval of each KPI across replications."""
        return summarise(self.per_rep.drop(columns=["rep"]), level)

    def by_hour_of_day(self) -> pd.DataFrame:
        """Mean (and 95% CI half-width) of each hourly state by hour of day, over reps."""
        cols = [c for c in self.hourly.columns if c not in ("rep", "time", "hour_of_day")]
        per = self.hourly.groupby(["rep", "hour_of_day"])[cols].mean().reset_index()
        g = per.groupby("hour_of_day")[cols]
        n = per["rep"].nunique()
        mean, sd = g.mean(), g.std(ddof=1)
        from scipy import stats

        half = sd * stats.t.ppf(0.975, max(n - 1, 1)) / max(n, 1) ** 0.5
        return mean.join(half.add_suffix(" ci"))


Replicate = tuple[dict[str, float], "pd.DataFrame | None", int]  # KPIs, hourly states, events


def one_replication(model: Model, seed: int, rep: int, *, hourly: bool = True,
                    horizon: float | None = None, clock_offset_h: float | None = None,
                    initial: tuple[Initial, ...] = ()) -> Replicate:
    """Replication ``rep``: its KPIs (with ``rep``), its hourly states and its event count."""
    rl = run_replication(model, seed, rep, horizon=horizon, clock_offset_h=clock_offset_h,
                         initial=initial)
    k = rep_kpis(model, rl, offset_h=clock_offset_h)
    k["rep"] = rep
    h = rep_hourly(model, rl, offset_h=clock_offset_h) if hourly else None
    return k, h, rl.events


def gather_replications(model: Model, seed: int, parts: Sequence[Replicate]) -> Results:
    """The :class:`Results` of replications ``0 .. len(parts)-1``, given in that order."""
    if not parts:
        raise ValidationError("no replication has run", where="replications")
    reps = [int(p[0]["rep"]) for p in parts]
    if reps != list(range(len(parts))):
        raise ValidationError(f"replications {reps} are not 0..{len(parts) - 1} in order",
                              where="replications")
    rows = [p[0] for p in parts]
    per_rep = pd.DataFrame(rows)[["rep"] + [c for c in rows[0] if c != "rep"]]
    hours = [p[1] for p in parts if p[1] is not None]
    hourly_df = pd.concat(hours, ignore_index=True) if hours else pd.DataFrame()
    return Results(model, seed, per_rep, hourly_df, sum(p[2] for p in parts))


def run_replications(model: Model, reps: int | None = None, seed: int = 0, *,
                     workers: int = 1, progress: bool = True, hourly: bool = True,
                     horizon: float | None = None, clock_offset_h: float | None = None,
                     initial: tuple[Initial, ...] | Callable[[int], tuple[Initial, ...]] = (),
                     ) -> Results:
    """Run ``reps`` replications (default: the model's) and collect KPIs.

    ``workers`` > 1 runs them in that many processes. ``initial`` (patients already in the
    unit) may be a function of the replication index, to draw a fresh census per replication.
    """
    reps = model.replications if reps is None else reps
    workers = max(1, min(workers, reps, os.cpu_count() or 1))

    def init_of(r: int) -> tuple[Initial, ...]:
        return initial(r) if callable(initial) else initial

    bar = tqdm(total=reps, desc=f"ops {model.name}", unit="rep", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()), leave=False)
    out: dict[int, Replicate] = {}
    kw = {"hourly": hourly, "horizon": horizon, "clock_offset_h": clock_offset_h}
    with bar:
        if workers == 1:
            for r in range(reps):
                out[r] = one_replication(model, seed, r, initial=init_of(r), **kw)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                futs = {pool.submit(one_replication, model, seed, r, initial=init_of(r), **kw): r
                        for r in range(reps)}
                for f in as_completed(futs):
                    out[futs[f]] = f.result()
                    bar.update()
    log.info("ran %d replications of %s", reps, model.name)
    return gather_replications(model, seed, [out[r] for r in range(reps)])
