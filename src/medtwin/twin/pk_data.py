"""An event table made computable for one population model: padded dose and observation arrays.

This is where the table meets the model, so it is where compartments, covariates and the
timing of doses are checked; every error names the source line and column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.map import ObservedData
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.closed_form import DoseArrays
from medtwin.models.pk.spec import PopulationModel

log = logging.getLogger(__name__)


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
            if r["RATE"] < 0:
                what = "rate" if r["RATE"] == -1 else "duration"
                raise ValidationError(
                    f"RATE {r['RATE']:g} asks for a modelled infusion {what}, "
                    f"which the closed-form model {model.name!r} does not have; write the "
                    "model in the model language with dosing: {central: {rate: ... or "
                    "duration: ...}}, or give RATE = AMT / duration",
                    where=_where(int(r["LINE"]), "RATE"))
            if r["SS"] > 0 and r["DUR"] > r["II"]:
                raise ValidationError("a steady-state infusion must end within II (AMT / RATE "
                                      "> II) for the closed forms; the model language takes "
                                      "longer ones", where=_where(int(r["LINE"]), "RATE"))
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


def censoring(record: pd.Series, table: EventTable, lloq: float | None, *,
              log_scale: bool = False) -> tuple[bool, float]:
    """Whether an observation record (a row of ``table.observations()``) is below the limit
    of quantification, and that limit (NaN when quantified).

    The table has already turned its BLQ convention into ``BLQ``/``LLOQ`` (see
    :mod:`medtwin.interop.nonmem`); here the model's ``lloq`` fills a missing LLOQ and, when
    the table has no flag column, makes a DV below it BLQ. A flagged sample whose LLOQ is
    known nowhere, a finite ``LIMIT`` that would make it interval censoring, and a DV of 0
    under a log-scale error are typed errors naming the line and column.
    """
    line = int(record["LINE"])
    limit = record["LLOQ"] if np.isfinite(record["LLOQ"]) else (lloq or np.nan)
    dv = record["DV"]
    below = bool(record["BLQ"]) or (table.blq_column is None and np.isfinite(limit)
                                    and np.isfinite(dv) and dv < limit)
    if below and not np.isfinite(limit):
        raise ValidationError(
            "sample is below the limit of quantification but no LLOQ is known for it; give "
            "an LLOQ column, write DV as the LLOQ on the flagged record (NONMEM M3 / Monolix "
            "CENS) or as '<LLOQ' (e.g. '<0.5'), or set the model's lloq",
            where=_where(line, table.blq_column or "DV"))
    limit_low = record.get("LIMIT", np.nan)
    if below and np.isfinite(limit_low) and not (log_scale and limit_low <= 0):
        raise ValidationError(
            f"LIMIT {limit_low:g} makes this interval censoring ({limit_low:g} < y < LLOQ "
            f"{limit:g}), which is not fitted; write LIMIT '.' to fit the sample by M3 "
            "(y < LLOQ)" + ("" if log_scale else " (LIMIT <= 0 is M3 only with an "
                            "exponential, log-scale error)"),
            where=_where(line, "LIMIT"))
    if not below and log_scale and np.isfinite(dv) and dv <= 0:
        raise ValidationError(
            f"DV {dv:g} cannot be fitted with an exponential (log-scale) error; if the sample "
            "is below the limit of quantification, flag it (BLQ=1) and give its LLOQ",
            where=_where(line, "DV"))
    return below, (float(limit) if below else np.nan)


def prepare(model: PopulationModel, table: EventTable, *, for_fit: bool = True) -> PKData:
    """Check ``table`` against ``model`` and build the arrays.

    Doses after a subject's last observation are kept: they cannot change a fit (a sample
    depends only on the doses before it) but they are the planned regimen that predictions
    and dose recommendations go on with. ``for_fit`` only logs them.
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
            below, limit = censoring(r, table, model.lloq, log_scale=model.error.log_scale)
            y[i, j] = r["DV"] if not below else np.nan
            blq[i, j] = below
            lloq[i, j] = limit
            mask[i, j] = True
        if len(o):
            times[i, len(o):] = times[i, len(o) - 1]
        if for_fit:
            d = doses[(doses["ID"] == subjects[i]) & (doses["AMT"] > 0)]
            last = o["TIME"].max() if len(o) else -np.inf
            n_late = int((d["TIME"] > last).sum())
            if n_late:
                log.debug("subject %s: %d dose(s) after the last observation kept for "
                          "prediction", subjects[i], n_late)
    observed = ObservedData.build(y, mask, blq, np.where(blq, lloq, np.nan))
    return PKData(subjects, dose_arrays(model, doses, subjects), times, observed, lines,
                  covariates)
