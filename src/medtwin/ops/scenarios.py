"""What-if scenarios: changes to a base model (one more cubicle, a roster, +20% arrivals).

A scenario file (YAML)::

    name: treat+1
    arrival_scale: 1.2             # optional: multiply every arrival rate
    changes:                       # deep-merged into the base model description; names
      resources:                   # must exist in the base (a typo is an error)
        non_trauma_cubicles: {capacity: 2}
      arrivals:                    # streams are merged by name, not restated whole
        - {name: all, rates_csv: busier_day.csv}
    add:                           # new resources, activities, classes or streams
      resources: {triage_nurse_2: {capacity: 1}}

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
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from medtwin.core.cluster import dask_client
from medtwin.core.errors import ValidationError
from medtwin.core.filecontext import Where, check_schema, mapping
from medtwin.core.yamlio import load_yaml
from medtwin.ops.errors import ModelFileError
from medtwin.ops.loader import with_changes
from medtwin.ops.runner import Results, run_replications
from medtwin.ops.schema import Model

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class Scenario:
    """A named change to a base model.

    ``changes`` may only change what the base model has (a misspelt name is an error with the
    nearest valid name); ``add`` adds new resources, activities, classes or arrival streams.
    """

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    arrival_scale: float = 1.0
    add: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    tree: Any = field(default=None, compare=False, repr=False)  # as read, with line numbers

    def apply(self, model: Model) -> Model:
        """The changed model (validated again)."""
        changes = self.tree.get("changes", {}) if self.tree is not None else self.changes
        add = self.tree.get("add", {}) if self.tree is not None else self.add
        return with_changes(model, changes, arrival_scale=self.arrival_scale, add=add or None,
                            file=self.file)


class ScenarioFile(BaseModel):
    """The schema of a scenario file (strict: unknown keys and wrong types are errors)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, description="Name shown in tables and CSVs (default: the "
                             "file name).")
    description: str | None = None
    arrival_scale: float = Field(1.0, ge=0, description="Multiply every arrival rate.")
    changes: dict[str, Any] = Field(default_factory=dict, description="Deep-merged into the "
                                    "base model; names must exist in it; arrival streams are "
                                    "merged by name.")
    add: dict[str, Any] = Field(default_factory=dict, description="New resources, "
                                "activities, classes or arrival streams.")


def scenario_json_schema() -> dict[str, Any]:
    """The published JSON Schema of scenario files."""
    return ScenarioFile.model_json_schema()


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file (unknown keys and wrong types are errors naming the file and
    line, an unknown key with the nearest valid one)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelFileError(f"cannot read the scenario file: {exc.strerror or exc}",
                             file=str(p), fix="give the path of an existing YAML file") from None
    data = load_yaml(text, file=str(p))
    w = Where(str(p), "", data)
    mapping(w, "a scenario file")
    if isinstance(data.get("arrival_scale"), int) and not isinstance(data["arrival_scale"],
                                                                        bool):
        data["arrival_scale"] = float(data["arrival_scale"])
    sf = check_schema(ScenarioFile, w)
    return Scenario(sf.name or p.stem, sf.changes, sf.arrival_scale, sf.add, str(p), data)


def run_scenarios(base: Model, scenarios: list[Scenario], reps: int = 20, seed: int = 0, *,
                  workers: int = 1, scheduler: str | None = None, client: Client | None = None,
                  hourly: bool = False) -> dict[str, Results]:
    """The base model and each scenario, run with the same seeds (common random numbers):
    ``{"base": Results, <scenario name>: Results, ...}``."""
    if client is None and (workers > 1 or scheduler is not None):
        with dask_client(scheduler, n_workers=workers) as c:
            return run_scenarios(base, scenarios, reps, seed, client=c, hourly=hourly)
    names = ["base"] + [sc.name for sc in scenarios]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValidationError(f"scenario names must differ from each other and from 'base': "
                              f"{dup} repeat", where="scenario name")
    models = [base] + [sc.apply(base) for sc in scenarios]  # every file checked before a run
    return {n: run_replications(m, reps, seed, client=client, progress=False, hourly=hourly)
            for n, m in zip(names, models, strict=True)}


def default_kpis(per_rep: pd.DataFrame) -> list[str]:
    """The KPIs a comparison shows by default."""
    return [c for c in per_rep.columns if c.startswith(
        ("arrivals", "throughput", "lwbs", "time_in_system", "p_within", "wait:", "util:"))]


def compare(base: Model, scenarios: list[Scenario], reps: int = 20, seed: int = 0,
            kpis: list[str] | None = None, workers: int = 1, scheduler: str | None = None,
            client: Client | None = None) -> pd.DataFrame:
    """Each scenario's KPIs minus the base's, paired by replication (common random numbers).

    On Dask (one cluster for every run) when ``workers`` > 1, a ``scheduler`` or a
    ``client`` is given. Columns: scenario, kpi, base (mean), value (the scenario's mean),
    difference with its paired 95% CI (ci_low, ci_high), and each side's own 95% CI
    (base_ci_low/high, value_ci_low/high; limits of a KPI that cannot be negative truncated
    at 0)."""
    runs = run_scenarios(base, scenarios, reps, seed, workers=workers, scheduler=scheduler,
                         client=client)
    return compare_runs(runs, kpis)


def compare_runs(runs: dict[str, Results], kpis: list[str] | None = None) -> pd.DataFrame:
    """The paired-difference table of :func:`compare` from runs of :func:`run_scenarios`."""
    b = runs["base"].per_rep.set_index("rep")
    bs = runs["base"].summary()
    cols = kpis or default_kpis(runs["base"].per_rep)
    rows = []
    for name, r in runs.items():
        if name == "base":
            continue
        d = r.per_rep.set_index("rep")
        ds = r.summary()
        for c in cols:
            if c not in d or c not in b:
                continue
            diff = (d[c] - b[c]).to_numpy(dtype=float)
            diff = diff[~np.isnan(diff)]
            n = diff.size
            half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n) if n > 1 \
                else math.nan
            mean = float(diff.mean()) if n else math.nan
            rows.append({"scenario": name, "kpi": c, "base": float(b[c].mean()),
                         "base_ci_low": float(bs.loc[c, "ci_low"]),
                         "base_ci_high": float(bs.loc[c, "ci_high"]),
                         "value": float(d[c].mean()),
                         "value_ci_low": float(ds.loc[c, "ci_low"]),
                         "value_ci_high": float(ds.loc[c, "ci_high"]),
                         "difference": mean, "ci_low": float(mean - half),
                         "ci_high": float(mean + half)})
    return pd.DataFrame(rows)


def side_by_side(runs: dict[str, Results], kpis: list[str] | None = None) -> pd.DataFrame:
    """One row per KPI, for each run its mean and 95% CI: columns ``<name>``,
    ``<name> ci_low``, ``<name> ci_high``."""
    cols = kpis or default_kpis(runs["base"].per_rep)
    parts = []
    for name, r in runs.items():
        s = r.summary()
        s = s.loc[[c for c in cols if c in s.index], ["mean", "ci_low", "ci_high"]]
        parts.append(s.rename(columns={"mean": name, "ci_low": f"{name} ci_low",
                                       "ci_high": f"{name} ci_high"}))
    return pd.concat(parts, axis=1)
