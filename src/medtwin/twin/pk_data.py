"""An event table made computable for one population model: padded dose and observation arrays.

This is where the table meets the model, so it is where compartments, covariates and the
timing of doses are checked; every error names the source line and column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.map import ObservedData
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import DoseArrays
from medtwin.models.pk.spec import PopulationModel


@dataclass(frozen=True)
class PKData:
    """``S`` subjects: doses ``(S, D)``, observation times ``(S, M)``, the observed data,
    source lines of the observations, and covariates ``name -> (S,)``."""

    subjects: tuple[str, ...]
    doses: DoseArrays
    times: np.ndarray
    observed: ObservedData
    lines: np.ndarray
    covariates: dict[str, np.ndarray]

    def take(self, rows: np.ndarray | list[int]) -> PKData:
        """The data of the subjects at ``rows``."""
        rows = np.asarray(rows, int)
        o = self.observed
        return PKData(tuple(self.subjects[i] for i in rows), self.doses.take(rows),
                      self.times[rows], o.take(rows),
                      self.lines[rows], {k: v[rows] for k, v in self.covariates.items()})


def _where(line: int, column: str) -> str:
    return f"line {line}, column {column}"


def dose_arrays(model: PopulationModel, doses: pd.DataFrame, subjects: tuple[str, ...]
                ) -> DoseArrays:
    """Padded closed-form dose arrays from an expanded dose table (see ``EventTable.doses``)."""
    per = [doses[doses["ID"] == s] for s in subjects]
    D = max([len(p) for p in per] + [1])
    out = DoseArrays.empty(len(subjects), D)
    for i, d in enumerate(per):
        for j, (_, r) in enumerate(d.iterrows()):
            cmt = int(r["CMT"]) if r["CMT"] else (1 if model.absorption else model.central)
            try:
                route = model.route_of(cmt)
            except KeyError:
                raise ValidationError(
                    f"unknown dose compartment {cmt}; model {model.name!r} has "
                    f"{model.compartment_names} and takes doses in "
                    f"{[c for c in model.compartment_names if c <= model.central]}",
                    where=_where(int(r["LINE"]), "CMT")) from None
            if route == 0 and r["DUR"] > 0:
                raise ValidationError("a zero-order input into the depot is not supported; "
                                      "give the infusion into the central compartment",
                                      where=_where(int(r["LINE"]), "RATE"))
            out.time[i, j] = r["TIME"]
            out.amt[i, j] = r["AMT"] if r["AMT"] > 0 else 0.0
            out.dur[i, j] = r["DUR"]
            out.route[i, j] = route if r["AMT"] > 0 else -1
            out.ss[i, j] = int(r["SS"] > 0)
            out.ii[i, j] = r["II"]
        resets = d["TIME"].to_numpy()[d["RESET"].to_numpy(bool)]
        for j in range(len(d)):
            later = resets[resets > out.time[i, j]]
            if later.size:
                out.until[i, j] = later.min()
    return out


def prepare(model: PopulationModel, table: EventTable, *, for_fit: bool = True) -> PKData:
    """Check ``table`` against ``model`` and build the arrays.

    With ``for_fit``, a dose after a subject's last observation is refused (mapbayr's rule:
    it cannot inform the fit and usually means a mis-sorted or truncated record).
    """
    subjects = table.subjects
    obs = table.observations()
    doses = table.doses()
    names = list(model.covariates)
    cov_frame = table.subject_covariates(names)
    covariates = {n: cov_frame[n].to_numpy(dtype=float) for n in names}
    for n in names:
        model.covariate_values(covariates, n, len(subjects))  # a typed error if unusable
    per = [obs[obs["ID"] == s] for s in subjects]
    M = max([len(p) for p in per] + [1])
    S = len(subjects)
    times = np.zeros((S, M))
    y = np.full((S, M), np.nan)
    mask = np.zeros((S, M), bool)
    blq = np.zeros((S, M), bool)
    lloq = np.full((S, M), np.nan)
    lines = np.zeros((S, M), np.int64)
    for i, o in enumerate(per):
        for j, (_, r) in enumerate(o.iterrows()):
            cmt = int(r["CMT"])
            if cmt not in (0, model.central):
                raise ValidationError(
                    f"unknown observation compartment {cmt}; model {model.name!r} observes "
                    f"the central compartment, CMT {model.central}",
                    where=_where(int(r["LINE"]), "CMT"))
            times[i, j] = r["TIME"]
            lines[i, j] = int(r["LINE"])
            limit = r["LLOQ"] if np.isfinite(r["LLOQ"]) else (model.lloq or np.nan)
            below = bool(r["BLQ"]) or (np.isfinite(limit) and np.isfinite(r["DV"])
                                       and r["DV"] < limit)
            if below and not np.isfinite(limit):
                raise ValidationError("sample flagged BLQ but no LLOQ is known (give an LLOQ "
                                      "column or the model's lloq)",
                                      where=_where(int(r["LINE"]), "BLQ"))
            y[i, j] = r["DV"] if not below else np.nan
            blq[i, j] = below
            lloq[i, j] = limit
            mask[i, j] = True
        if len(o):
            times[i, len(o):] = times[i, len(o) - 1]
        if for_fit:
            d = doses[(doses["ID"] == subjects[i]) & (doses["AMT"] > 0)]
            last = o["TIME"].max() if len(o) else -np.inf
            late = d[d["TIME"] > last]
            if len(late):
                r = late.iloc[0]
                raise ValidationError(
                    f"dose at TIME {r['TIME']:g} is after subject {subjects[i]!r}'s last "
                    f"observation ({'none' if not len(o) else f'{last:g}'}) used for fitting; "
                    "drop it (or its ADDL) before fitting, and give it as a regimen to forecast",
                    where=_where(int(r["LINE"]), "TIME"))
    observed = ObservedData.build(y, mask, blq, np.where(blq, lloq, np.nan))
    return PKData(subjects, dose_arrays(model, doses, subjects), times, observed, lines,
                  covariates)
