"""What-if scenarios: changes to a base model (one more cubicle, a roster, +20% arrivals).

A scenario file (YAML)::

    name: treat+1
    arrival_scale: 1.2             # optional: multiply every arrival rate
    changes:                       # deep-merged into the base model description
      resources: {non_trauma_cubicles: {capacity: 2}}

Scenarios keep common random numbers with the base (streams are keyed by name, not order),
so :func:`compare` reports paired differences with tight confidence intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from medtwin.core.cluster import dask_client
from medtwin.ops.context import Where, mapping, number, unknown_keys
from medtwin.ops.loader import with_changes
from medtwin.ops.runner import Results, run_replications
from medtwin.ops.schema import Model
from medtwin.ops.yamlio import load_yaml, plain

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class Scenario:
    """A named change to a base model."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    arrival_scale: float = 1.0

    def apply(self, model: Model) -> Model:
        """The changed model (validated again)."""
        return with_changes(model, self.changes, arrival_scale=self.arrival_scale)


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file."""
    p = Path(path)
    data = load_yaml(p.read_text(encoding="utf-8"), file=str(p))
    w = Where(str(p), "", data)
    mapping(w, "a scenario file")
    unknown_keys(w, {"name", "changes", "arrival_scale", "description"})
    scale = number(w.child("arrival_scale"), nonneg=True) if "arrival_scale" in data else 1.0
    changes = data.get("changes", {})
    if "changes" in data:
        mapping(w.child("changes"), "changes")
    return Scenario(str(data.get("name", p.stem)), plain(changes), scale)


def compare(base: Model, scenarios: list[Scenario], reps: int = 20, seed: int = 0,
            kpis: list[str] | None = None, workers: int = 1, scheduler: str | None = None,
            client: Client | None = None) -> pd.DataFrame:
    """Each scenario's KPIs minus the base's, paired by replication (common random numbers).

    On Dask (one cluster for every run) when ``workers`` > 1, a ``scheduler`` or a
    ``client`` is given."""
    if client is None and (workers > 1 or scheduler is not None):
        with dask_client(scheduler, n_workers=workers) as c:
            return compare(base, scenarios, reps, seed, kpis, client=c)
    runs: dict[str, Results] = {"base": run_replications(base, reps, seed, client=client,
                                                         progress=False, hourly=False)}
    for sc in scenarios:
        runs[sc.name] = run_replications(sc.apply(base), reps, seed, client=client,
                                         progress=False, hourly=False)
    b = runs["base"].per_rep.set_index("rep")
    cols = kpis or [c for c in b.columns if c.startswith(("wait:", "util:", "p_within",
                                                          "time_in_system"))]
    rows = []
    for name, r in runs.items():
        if name == "base":
            continue
        d = r.per_rep.set_index("rep")
        for c in cols:
            if c not in d:
                continue
            diff = (d[c] - b[c]).to_numpy(dtype=float)
            diff = diff[~np.isnan(diff)]
            n = diff.size
            half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n) if n > 1 \
                else math.nan
            rows.append({"scenario": name, "kpi": c, "base": float(b[c].mean()),
                         "value": float(d[c].mean()), "difference": float(diff.mean()),
                         "ci_low": float(diff.mean() - half), "ci_high": float(diff.mean() + half)})
    return pd.DataFrame(rows)
