"""An event table made computable for a model-language model: per-subject event arrays.

Every record of the table becomes an event of the compiled loop (doses with ADDL expanded,
observations, covariate changes, resets), each with the covariates in force at it. Between two
records the model's individual parameters come from the covariates of the later record (NOCB)
or the earlier one (LOCF), as the model file says. Errors name the source line and column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.map import ObservedData
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.language.events import STATUS_TEXT
from medtwin.models.pk.language.model import LanguageModel
from medtwin.twin.pk_data import censoring

_EV_KEYS = ("time", "evid", "amt", "cmt", "rate", "ii", "ss", "occ", "out", "kind")


@dataclass(frozen=True)
class LanguageData:
    """``S`` subjects: event arrays, observation times/lines ``(S, M)``, observed data (with
    each observation's kind), the number of occasions and each subject's first and last
    covariates (``(S, C)``: the latter are what a forecast carries forward)."""

    subjects: tuple[str, ...]
    events: dict[str, np.ndarray]
    times: np.ndarray
    observed: ObservedData
    lines: np.ndarray
    n_occasions: int
    first_covariates: np.ndarray
    last_covariates: np.ndarray

    @property
    def n_out(self) -> int:
        """Observation columns per subject."""
        return self.times.shape[1]


def _where(line: int, column: str) -> str:
    return f"line {line}, column {column}"


def _covariates(model: LanguageModel, r: pd.DataFrame) -> np.ndarray:
    """Covariate values ``(n_records, C)`` with defaults and caps; typed errors otherwise."""
    out = np.zeros((len(r), len(model.covariates)))
    for j, (name, spec) in enumerate(model.covariates.items()):
        if name in r.columns:
            v = r[name].to_numpy(dtype=float).copy()
        elif spec.default is not None:
            v = np.full(len(r), np.nan)
        else:
            raise ValidationError(f"model {model.name!r} needs covariate {name!r} "
                                  f"({spec.unit}) but the table has no such column; add it "
                                  "or give the covariate a default in the model",
                                  where=f"column {name}")
        miss = ~np.isfinite(v)
        if miss.any():
            if spec.default is None:
                i = int(np.flatnonzero(miss)[0])
                raise ValidationError(f"covariate {name!r} is missing for subject "
                                      f"{r['ID'].iloc[i]!r} and the model gives no default",
                                      where=_where(int(r['LINE'].iloc[i]), name))
            v[miss] = spec.default
        if spec.min is not None:
            v = np.maximum(v, spec.min)
        if spec.max is not None:
            v = np.minimum(v, spec.max)
        out[:, j] = v
    return out


def _occasions(model: LanguageModel, r: pd.DataFrame) -> tuple[np.ndarray, int]:
    if not model.kappas:
        return np.full(len(r), -1, np.int64), 0
    col = model.occasion or "OCC"
    if col not in r.columns:
        raise ValidationError(f"model {model.name!r} has inter-occasion variability but the "
                              f"table has no occasion column {col!r}", where=f"column {col}")
    v = r[col].to_numpy(dtype=float)
    bad = ~np.isfinite(v) | (v < 1) | (v != np.round(v))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"occasion must be a whole number >= 1, got {v[i]}",
                              where=_where(int(r["LINE"].iloc[i]), col))
    levels = np.unique(v)
    return np.searchsorted(levels, v).astype(np.int64), int(levels.size)


def _expand(r: pd.DataFrame) -> pd.DataFrame:
    """Records with ADDL doses as records of their own (at equal times doses first)."""
    r = r.copy()
    r["_ORDER"] = np.arange(len(r), dtype=float)
    extra = r[(r["ADDL"] > 0) & r["EVID"].isin([1, 4])]
    rows = [r]
    for _, row in extra.iterrows():
        k = np.arange(1, int(row["ADDL"]) + 1)
        rep = pd.DataFrame([row] * k.size)
        rep["TIME"] = row["TIME"] + k * row["II"]
        rep["EVID"] = 1
        rep["SS"] = 0
        rep["ADDL"] = 0
        rows.append(rep)
    out = pd.concat(rows, ignore_index=True)
    out["_OBS"] = (out["EVID"] == 0).astype(int)
    return out.sort_values(["ID", "TIME", "_OBS", "_ORDER"], kind="stable")


def prepare_language(model: LanguageModel, table: EventTable) -> LanguageData:
    """Check ``table`` against ``model`` and build the event arrays."""
    subjects = table.subjects
    recs = table.records
    occ_all, n_occ = _occasions(model, recs)
    recs = recs.assign(_OCC=occ_all)
    cov_all = _covariates(model, recs)
    cov_cols = [f"_C{j}" for j in range(cov_all.shape[1])]
    recs = recs.assign(**{c: cov_all[:, j] for j, c in enumerate(cov_cols)})
    per = [_expand(recs[recs["ID"] == s]) for s in subjects]
    # ADDL doses take the covariates in force at their time (NOCB: the next record's)
    n_c = len(model.compartments)
    S = len(subjects)
    E = max([len(p) for p in per] + [1])
    M = max([int(((p["EVID"] == 0) & (p["MDV"] == 0)).sum()) for p in per] + [1])
    ev = {k: np.zeros((S, E), np.int64 if k in ("evid", "cmt", "ss", "occ", "out", "kind")
                      else float) for k in _EV_KEYS}
    ev["out"][:] = -1
    ev["cov"] = np.zeros((S, E, len(cov_cols) + 1))
    ev["seg_cov"] = np.zeros((S, E, len(cov_cols) + 1))
    ev["n"] = np.zeros(S, np.int64)
    times = np.zeros((S, M))
    y = np.full((S, M), np.nan)
    mask = np.zeros((S, M), bool)
    blq = np.zeros((S, M), bool)
    lloq = np.full((S, M), np.nan)
    kind = np.zeros((S, M), np.int64)
    lines = np.zeros((S, M), np.int64)
    first = np.zeros((S, len(cov_cols)))
    last = np.zeros((S, len(cov_cols)))
    for i, p in enumerate(per):
        n = len(p)
        ev["n"][i] = n
        t = p["TIME"].to_numpy(float)
        orig = p.drop_duplicates("_ORDER")
        covs = p[cov_cols].to_numpy(float, copy=True)
        # an ADDL dose's covariates: those of the first original record at or after it (NOCB)
        ot = orig["TIME"].to_numpy(float)
        ocov = orig[cov_cols].to_numpy(float)
        added = p.duplicated("_ORDER", keep="first").to_numpy()
        for k in np.flatnonzero(added):
            j = min(int(np.searchsorted(ot, t[k], side="left")), len(ot) - 1)
            covs[k] = ocov[j]
        first[i] = covs[0] if n else 0.0
        last[i] = covs[-1] if n else 0.0
        ev["time"][i, :n] = t
        ev["evid"][i, :n] = p["EVID"].to_numpy(int)
        ev["amt"][i, :n] = p["AMT"].to_numpy(float)
        ev["rate"][i, :n] = p["RATE"].to_numpy(float)
        ev["ii"][i, :n] = p["II"].to_numpy(float)
        ev["ss"][i, :n] = p["SS"].to_numpy(int)
        ev["occ"][i, :n] = p["_OCC"].to_numpy(int)
        ev["cov"][i, :n, :-1] = covs
        ev["cov"][i, :n, -1] = t
        seg = covs if model.interpolation == "nocb" else np.vstack([covs[:1], covs[:-1]])
        ev["seg_cov"][i, :n, :-1] = seg
        ev["seg_cov"][i, :n, -1] = t
        j = 0
        for k, (_, r) in enumerate(p.iterrows()):
            line = int(r["LINE"])
            cmt = int(r["CMT"])
            if r["EVID"] in (1, 4):
                cmt = cmt or 1
                if not 1 <= cmt <= n_c:
                    raise ValidationError(f"dose into CMT {cmt}; model {model.name!r} has "
                                          f"compartments {dict(enumerate(model.compartments, 1))}",
                                          where=_where(line, "CMT"))
                ev["cmt"][i, k] = cmt - 1
                continue
            if r["EVID"] != 0 or r["MDV"] != 0:
                continue
            q = model.kind_of_cmt(cmt) if cmt else (0 if len(model.observations) == 1 else None)
            if q is None:
                raise ValidationError(
                    f"observation with CMT {cmt}; model {model.name!r} observes "
                    + ", ".join(f"{o.name} (CMT {o.cmt})" for o in model.observations),
                    where=_where(line, "CMT"))
            o = model.observations[q]
            below, limit = censoring(r, table, o.lloq, log_scale=o.error.log_scale)
            ev["out"][i, k] = j
            ev["kind"][i, k] = q
            times[i, j] = r["TIME"]
            y[i, j] = np.nan if below else r["DV"]
            blq[i, j] = below
            lloq[i, j] = limit
            mask[i, j] = True
            kind[i, j] = q
            lines[i, j] = line
            j += 1
        if j:
            times[i, j:] = times[i, j - 1]
    observed = ObservedData.build(y, mask, blq, np.where(blq, lloq, np.nan), kind)
    return LanguageData(subjects, ev, times, observed, lines, n_occ, first, last)


def language_predictor(model: LanguageModel, data: LanguageData,
                       theta: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(eta (S, k, q)) -> (S, k, M)`` at the observation records."""
    S = len(data.subjects)

    def predict(eta: np.ndarray) -> np.ndarray:
        k = eta.shape[1]
        rows = np.repeat(np.arange(S), k)
        out, _ = model.solve(eta.reshape(S * k, -1), rows, data.events, data.n_out, theta)
        return out.reshape(S, k, -1)

    return predict


def check_solved(model: LanguageModel, data: LanguageData, eta: np.ndarray) -> None:
    """Raise a typed error naming the first subject whose records the solver could not run."""
    S = len(data.subjects)
    _, status = model.solve(eta, np.arange(S), data.events, data.n_out)
    bad = np.flatnonzero(status != 0)
    if bad.size:
        s = int(bad[0])
        raise ValidationError(f"{STATUS_TEXT.get(int(status[s]), 'failed')}; check the model's "
                              "expressions and the subject's doses",
                              where=f"subject {data.subjects[s]}")


def predict_at(model: LanguageModel, table: EventTable, times: np.ndarray, eta: np.ndarray,
               quantity: str | None = None) -> np.ndarray:
    """Predictions ``(k, T)`` of ``quantity`` (default: the first observed) at ``times`` for
    the one subject of ``table`` and eta rows ``(k, q)``: its records (observations kept as
    covariate records) with observation records added at ``times``."""
    if len(table.subjects) != 1:
        raise ValidationError(f"predict needs one subject's records, got "
                              f"{len(table.subjects)}", where="table")
    names = [o.name for o in model.observations]
    if quantity is not None and quantity not in names:
        raise ValidationError(f"no observed quantity {quantity!r}; the model has {names}",
                              where="quantity")
    obs = model.observations[names.index(quantity) if quantity else 0]
    t = np.asarray(times, float).ravel()
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValidationError("times must be finite and >= 0", where="times")
    r = table.records.copy()
    r.loc[r["EVID"] == 0, "EVID"] = 2  # keep their covariates, drop them as outputs
    rt = r["TIME"].to_numpy(float)
    add = []
    for time in np.sort(t):
        j = min(int(np.searchsorted(rt, time, side="left")), len(r) - 1)  # NOCB covariates
        row = r.iloc[j].copy()
        row[["TIME", "EVID", "AMT", "RATE", "II", "ADDL", "SS", "DV", "MDV", "BLQ"]] = (
            time, 0, 0.0, 0.0, 0.0, 0, 0, 1.0, 0, 0)  # DV: a placeholder, never fitted
        row["CMT"], row["LLOQ"], row["LINE"] = obs.cmt, np.nan, 0
        add.append(row)
    recs = pd.concat([r, pd.DataFrame(add)], ignore_index=True)
    recs = recs.sort_values("TIME", kind="stable").reset_index(drop=True)
    data = prepare_language(model, EventTable(recs, table.covariate_names))
    eta = np.atleast_2d(eta)
    q = model.omega_all(data.n_occasions).shape[0]
    full = np.zeros((len(eta), q))
    full[:, : min(q, eta.shape[1])] = eta[:, :q]
    out = language_predictor(model, data)(full[None])[0]
    order = np.argsort(np.argsort(t, kind="stable"), kind="stable")
    return out[:, order]
