"""Simulation-based search for the cheapest resource mix or roster meeting a service target.

Candidates are the combinations of the varied resources' counts (for a rostered resource:
a number of staff added to, or removed from, every hour of its roster). They are evaluated
in order of cost with common random numbers; a candidate *meets* the target when the
one-sided confidence that the KPI's true mean is on the right side of the target reaches
``confidence`` (t-test over replications). Assuming more resource never hurts the KPI, a
candidate with no more of anything than a failing one is skipped as failing too.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from medtwin.core.cluster import dask_client
from medtwin.core.errors import ValidationError
from medtwin.core.filecontext import nearest
from medtwin.ops.kpis import bounds
from medtwin.ops.loader import with_changes
from medtwin.ops.runner import run_replications
from medtwin.ops.schema import Model

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)
_TARGET = re.compile(r"^\s*([\w:.\-]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Target:
    """A service target such as ``p_within_4h>=0.95`` or ``wait:triage<=30``."""

    kpi: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Target:
        """Read 'KPI>=VALUE' or 'KPI<=VALUE'."""
        m = _TARGET.match(text)
        if not m:
            raise ValidationError(f"cannot read target {text!r}; write e.g. "
                                  "'p_within_4h>=0.95' or 'wait:triage<=30'", where="--target")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def confidence(self, x: np.ndarray) -> float:
        """One-sided confidence that the mean of the KPI meets the target."""
        x = x[~np.isnan(x)]
        if x.size < 2:
            return math.nan
        se = x.std(ddof=1) / math.sqrt(x.size)
        margin = (x.mean() - self.value) if self.op == ">=" else (self.value - x.mean())
        if se == 0:
            return 1.0 if margin >= 0 else 0.0
        return float(stats.t.cdf(margin / se, x.size - 1))


def candidate_model(model: Model, counts: dict[str, int]) -> Model:
    """The model with these counts (roster resources: this many added to every hour)."""
    changes: dict = {"resources": {}}
    for r, k in counts.items():
        res = model.resources[r]
        if res.roster is not None:
            changes["resources"][r] = {"roster": [max(0, c + k) for c in res.roster]}
        else:
            changes["resources"][r] = {"capacity": k}
    return with_changes(model, changes)


def default_ranges(model: Model) -> dict[str, tuple[int, int]]:
    """Vary every resource that has a cost: counts from one less to two more (rosters:
    -1..+2 on every hour)."""
    out = {}
    for r in model.resources.values():
        if r.cost_per_hour > 0:
            out[r.name] = (-1, 2) if r.roster else (max(1, r.capacity - 1), r.capacity + 2)
    return out


def optimise(model: Model, target: str | Target, ranges: dict[str, tuple[int, int]] | None =
             None, *, reps: int = 10, seed: int = 0, confidence: float = 0.95,
             extra: int = 3, max_candidates: int = 400, workers: int = 1,
             scheduler: str | None = None, client: Client | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Evaluate candidates cheapest first; return the trade-off table (cheapest meeting the
    target flagged ``best``). Columns: counts, cost per day, KPI mean and 95% CI, confidence,
    meets, status (evaluated / skipped-dominated).

    A candidate's replications run on Dask when ``workers`` > 1, a ``scheduler`` or a
    ``client`` is given (one cluster for the whole search); ``on_progress(done, total)``
    counts candidates considered out of the grid."""
    if client is None and (workers > 1 or scheduler is not None):
        with dask_client(scheduler, n_workers=workers) as c:
            return optimise(model, target, ranges, reps=reps, seed=seed, confidence=confidence,
                            extra=extra, max_candidates=max_candidates, client=c,
                            on_progress=on_progress)
    tgt = target if isinstance(target, Target) else Target.parse(target)
    ranges = ranges or default_ranges(model)
    if not ranges:
        raise ValidationError("nothing to vary: give resources with --vary or a cost_per_hour",
                              where="optimise")
    for r, (lo, hi) in ranges.items():
        if r not in model.resources:
            raise ValidationError(f"unknown resource '{r}'{nearest(r, model.resources)}; use "
                                  f"one of {sorted(model.resources)}", where="--vary")
        if hi < lo:
            raise ValidationError(f"range {lo}:{hi} of '{r}' is empty", where="--vary")
    names = list(ranges)
    grid = list(itertools.product(*[range(lo, hi + 1) for lo, hi in ranges.values()]))
    if len(grid) > max_candidates:
        raise ValidationError(f"{len(grid)} candidates exceed {max_candidates}; narrow --vary",
                              where="optimise")
    cands = []
    for combo in grid:
        counts = dict(zip(names, combo, strict=True))
        m = candidate_model(model, counts)
        cands.append((m.cost_per_hour() * 24, combo, m))
    cands.sort(key=lambda c: (c[0], c[1]))
    rows, failing, found, after = [], [], False, 0
    for cost, combo, m in cands:
        if on_progress is not None:
            on_progress(len(rows), len(cands))
        row = {**dict(zip(names, combo, strict=True)), "cost_per_day": cost}
        if any(all(a <= b for a, b in zip(combo, f, strict=True)) for f in failing):
            rows.append({**row, "status": "skipped (needs more than a failing mix)",
                         "meets": False})
            continue
        res = run_replications(m, reps, seed, progress=False, hourly=False, client=client)
        if tgt.kpi not in res.per_rep:
            raise ValidationError(f"unknown KPI '{tgt.kpi}'{nearest(tgt.kpi, res.per_rep)}; "
                                  "the model gives "
                                  f"{sorted(c for c in res.per_rep if c != 'rep')}",
                                  where="--target")
        x = res.per_rep[tgt.kpi].to_numpy(dtype=float)
        x = x[~np.isnan(x)]
        conf = tgt.confidence(x)
        half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
        meets = bool(conf >= confidence)
        lo, hi = bounds(tgt.kpi)  # a wait or a count cannot be negative
        rows.append({**row, "kpi_mean": x.mean(), "ci_low": max(x.mean() - half, lo),
                     "ci_high": min(x.mean() + half, hi), "confidence": conf, "meets": meets,
                     "status": "evaluated"})
        log.info("candidate %s cost %.0f: %s = %.4g (confidence %.3f)", combo, cost, tgt.kpi,
                 x.mean(), conf)
        if not meets:
            failing.append(combo)
        elif not found:
            found = True
        if found:
            after += 1
            if after > extra:
                break
    if on_progress is not None:
        on_progress(len(cands), len(cands))
    table = pd.DataFrame(rows)
    table["best"] = False
    ok = table.index[table["meets"]]
    if len(ok):
        table.loc[ok[0], "best"] = True
    table.attrs.update({"target": f"{tgt.kpi}{tgt.op}{tgt.value:g}", "confidence": confidence,
                        "reps": reps})
    return table
