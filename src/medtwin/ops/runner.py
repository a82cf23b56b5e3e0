"""Replications: serial or on Dask (a LocalCluster or a scheduler), with a progress bar; same
numbers either way.

Replication ``r`` always uses the streams of ``(seed, r, name)``, so the result does not
depend on which process ran it or in what order.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from medtwin.core.cluster import dask_client
from medtwin.core.errors import ValidationError
from medtwin.ops.engine import Initial, run_replication
from medtwin.ops.kpis import rep_hourly, rep_kpis, summarise
from medtwin.ops.schema import Model

if TYPE_CHECKING:
    from distributed import Client

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
                     scheduler: str | None = None, client: Client | None = None,
                     on_progress: Callable[[int, int], None] | None = None,
                     ) -> Results:
    """Run ``reps`` replications (default: the model's) and collect KPIs.

    Serial in this process by default; on Dask when ``workers`` > 1 (a LocalCluster of that
    many workers), a ``scheduler`` address or an open ``client`` is given. ``initial``
    (patients already in the unit) may be a function of the replication index, to draw a fresh
    census per replication. ``on_progress(done, total)`` is called as replications finish.
    """
    reps = model.replications if reps is None else reps
    workers = max(1, min(workers, reps, os.cpu_count() or 1))

    def init_of(r: int) -> tuple[Initial, ...]:
        return initial(r) if callable(initial) else initial

    bar = tqdm(total=reps, desc=f"ops {model.name}", unit="rep", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()), leave=False)
    out: dict[int, Replicate] = {}
    kw = {"hourly": hourly, "horizon": horizon, "clock_offset_h": clock_offset_h}

    def done(r: int, rep: Replicate) -> None:
        out[r] = rep
        bar.update()
        if on_progress is not None:
            on_progress(len(out), reps)

    with bar:
        if workers == 1 and scheduler is None and client is None:
            for r in range(reps):
                done(r, one_replication(model, seed, r, initial=init_of(r), **kw))
        else:
            from distributed import as_completed

            with dask_client(scheduler, n_workers=workers, client=client) as c:
                [m] = c.scatter([model], broadcast=True)
                futs = {c.submit(one_replication, m, seed, r, initial=init_of(r), pure=False,
                                 **kw): r for r in range(reps)}
                for f in as_completed(futs):
                    done(futs[f], f.result())
    log.info("ran %d replications of %s", reps, model.name)
    return gather_replications(model, seed, [out[r] for r in range(reps)])
