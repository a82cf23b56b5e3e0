"""What a fitted PK twin says about each sample: a per-record table and predictive bands.

:func:`record_table` is mapbayr's ``as.data.frame(est)`` (and NONMEM's ``$TABLE``) for a
fitted :class:`~medtwin.twin.pk.PKTwin`: one row per observation record with

- ``PRED``: the population prediction (all etas 0, the subject's covariates);
- ``IPRED``: the individual prediction at the MAP etas;
- ``IWRES``: ``(T(DV) - T(IPRED)) / sd(IPRED)`` on the residual error's scale ``T`` (the log
  for an exponential error, else the concentration);
- ``CWRES``: conditional weighted residuals (Hooker et al., Pharm Res 24:2187, 2007): the
  model is linearised about the MAP etas ``eta*``, ``E = T(f(eta*)) - G eta*`` and
  ``C = G Omega G' + diag(var(f(eta*)))`` with ``G = dT(f)/d eta`` at ``eta*``, and
  ``CWRES = C^(-1/2) (T(y) - E)`` (symmetric square root, as the paper writes it). The
  residual variance is taken at the individual prediction, the FOCE-I (interaction) form
  that matches the MAP objective's variance at ``f(eta)``;
- ``NPDE``: normalised prediction distribution errors (Brendel et al., Pharm Res 23:2036,
  2006): ``K`` seeded simulations of the subject's design from the prior (etas from Omega
  and the residual error, on the error's scale), decorrelated with the Cholesky factor of
  their covariance (the npde package's default, Comets et al. 2008), ``pde`` = share of
  simulations below the observation, clipped to ``[1/K, 1 - 1/K]``, ``NPDE = Phi^-1(pde)``.

Samples below the LLOQ (M3) carry ``BLQ = 1`` and their ``LLOQ`` and have no IWRES, CWRES or
NPDE (a Gaussian residual is undefined for a censored value; they are left out of the
subject's CWRES/NPDE vector). :func:`predictive_interval` is the band of a future *sample*
(the posterior of the patient's curve plus residual error), or of the curve alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.residual import ElementError, ResidualError, error_for
from medtwin.models.pk.closed_form import DoseArrays
from medtwin.twin.pk import PKTwin, predictor

_H = 1e-5  # central-difference step of the prediction Jacobian (as map.py's)

COLUMNS = ("ID", "TIME", "DV", "BLQ", "LLOQ", "PRED", "IPRED", "IWRES", "CWRES", "NPDE",
           "LINE")


@dataclass(frozen=True)
class RecordTable:
    """The per-record table (columns :data:`COLUMNS`) and where it came from."""

    records: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The records as JSON-ready dicts (missing values as None)."""
        out = []
        for rec in self.records.to_dict(orient="records"):
            out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else
                            (v.item() if isinstance(v, np.generic) else v))
                        for k, v in rec.items()})
        return out


def _parts(twin: PKTwin) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """The fitted twin's ``predict(eta (S, k, q)) -> (S, k, M)`` and its Omega."""
    twin._check()
    model, data = twin.model_, twin.data_
    if hasattr(data, "n_occasions"):  # a model-language model (ODEs, IOV)
        from medtwin.twin.pk_language import language_predictor

        return language_predictor(model, data), model.omega_all(data.n_occasions)
    return predictor(model, data, twin.typical_), np.asarray(model.omega, float)


def _squeeze(error: ResidualError | ElementError) -> ResidualError | ElementError:
    """An error shaped ``(S, 1, M)`` for the ``(S, M)`` arrays used here."""
    if isinstance(error, ElementError):
        return ElementError(error.additive_sd[:, 0], error.proportional_sd[:, 0],
                            error.log_scale[:, 0])
    return error


def _jacobian(predict: Callable[[np.ndarray], np.ndarray], eta: np.ndarray) -> np.ndarray:
    """``d f / d eta`` at ``eta`` ``(S, q)`` -> ``(S, q, M)`` by central differences."""
    S, q = eta.shape
    eye = np.eye(q) * _H
    pts = np.concatenate([eta[:, None] + eye, eta[:, None] - eye], axis=1)  # (S, 2q, q)
    F = predict(pts)
    return (F[:, :q] - F[:, q:]) / (2 * _H)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root of a positive-definite matrix."""
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v / np.sqrt(w)) @ v.T


def cwres(twin: PKTwin) -> np.ndarray:
    """CWRES ``(S, M)`` of the quantified samples (NaN elsewhere); see the module docstring."""
    predict, omega = _parts(twin)
    data = twin.data_
    obs = data.observed
    err = _squeeze(obs.error(twin.model_.error))
    eta = np.asarray(twin.eta_, float)
    f = predict(eta[:, None])[:, 0]
    J = _jacobian(predict, eta)
    G = J * err.dtransform(f)[:, None, :]  # (S, q, M) on the error's scale
    E = err.transform(f) - np.einsum("sqm,sq->sm", G, eta)
    var = err.variance(f)
    res = err.transform(obs.y) - E
    out = np.full(f.shape, np.nan)
    quant = obs.mask & ~obs.blq
    for s in range(f.shape[0]):
        idx = np.flatnonzero(quant[s])
        if idx.size == 0:
            continue
        g = G[s][:, idx]
        c = g.T @ omega @ g + np.diag(var[s, idx])
        out[s, idx] = _inv_sqrt(c) @ res[s, idx]
    return out


def npde(twin: PKTwin, *, n: int = 1000, seed: int = 0) -> np.ndarray:
    """NPDE ``(S, M)`` of the quantified samples from ``n`` seeded simulations of each
    subject's design under the prior (NaN elsewhere); see the module docstring."""
    if n < 10:
        raise ValidationError(f"needs at least 10 simulations, got {n}", where="npde")
    predict, omega = _parts(twin)
    obs = twin.data_.observed
    err = _squeeze(obs.error(twin.model_.error))
    S, M = obs.y.shape
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(omega)
    eta = rng.standard_normal((S, n, omega.shape[0])) @ chol.T
    f = predict(eta)  # (S, n, M)
    e3 = _squeeze_back(err)
    sims = e3.transform(f) + np.sqrt(e3.variance(f)) * rng.standard_normal(f.shape)
    y = err.transform(obs.y)
    out = np.full((S, M), np.nan)
    quant = obs.mask & ~obs.blq
    for s in range(S):
        idx = np.flatnonzero(quant[s])
        if idx.size == 0:
            continue
        ys = sims[s][:, idx]
        mean = ys.mean(axis=0)
        cov = np.atleast_2d(np.cov(ys, rowvar=False))
        L = np.linalg.cholesky(cov)
        dec_sim = np.linalg.solve(L, (ys - mean).T)  # (m, n)
        dec_obs = np.linalg.solve(L, y[s, idx] - mean)
        pde = (dec_sim < dec_obs[:, None]).mean(axis=1)
        out[s, idx] = ndtri(np.clip(pde, 1.0 / n, 1.0 - 1.0 / n))
    return out


def _squeeze_back(error: ResidualError | ElementError) -> ResidualError | ElementError:
    """An ``(S, M)`` error shaped to broadcast against ``(S, n, M)`` simulations."""
    if isinstance(error, ElementError):
        return ElementError(error.additive_sd[:, None], error.proportional_sd[:, None],
                            error.log_scale[:, None])
    return error


def _model_digest(model: Any) -> str:
    digest = str(getattr(model, "digest", "") or "")
    if digest:
        return digest
    to_dict = getattr(model, "to_dict", None)
    if to_dict is None:
        return ""
    text = json.dumps(to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def provenance(twin: PKTwin) -> dict[str, Any]:
    """Where a fitted twin's outputs come from: model name, version (and a digest of its
    definition), source, the data cut-off (latest record time of the fitted table, in its
    time unit), medtwin's version and when this was computed."""
    from medtwin import __version__

    twin._check()
    model = twin.model_
    times = twin.events_.records["TIME"].to_numpy(dtype=float)
    return {
        "model": model.name,
        "model_title": getattr(model, "title", model.name),
        "model_version": str(getattr(model, "version", "") or "unversioned"),
        "model_digest": _model_digest(model),
        "model_source": getattr(model, "source", ""),
        "data_cutoff_time": float(times.max()) if times.size else None,
        "time_unit": getattr(model, "units", {}).get("time", "h"),
        "subjects": list(twin.subjects_),
        "estimator": "Bayesian MAP (mapbayr objective; M3 for samples below the LLOQ)",
        "medtwin_version": __version__,
        "computed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def record_table(twin: PKTwin, *, npde_samples: int = 1000, seed: int = 0) -> RecordTable:
    """Per observation record of a fitted twin: ID, TIME, DV, BLQ, LLOQ, PRED, IPRED, IWRES,
    CWRES, NPDE (``npde_samples`` seeded simulations; 0 leaves it out) and the source LINE,
    with :func:`provenance`."""
    predict, omega = _parts(twin)
    data = twin.data_
    obs = data.observed
    err = _squeeze(obs.error(twin.model_.error))
    S, q = twin.eta_.shape
    pred = predict(np.zeros((S, 1, q)))[:, 0]
    ipred = predict(np.asarray(twin.eta_, float)[:, None])[:, 0]
    iwres = (err.transform(obs.y) - err.transform(ipred)) / np.sqrt(err.variance(ipred))
    quant = obs.mask & ~obs.blq
    iwres = np.where(quant, iwres, np.nan)
    cw = cwres(twin)
    nd = npde(twin, n=npde_samples, seed=seed) if npde_samples else np.full(pred.shape, np.nan)
    s_idx, j_idx = np.nonzero(obs.mask)
    frame = pd.DataFrame({
        "ID": np.array(twin.subjects_, dtype=object)[s_idx],
        "TIME": data.times[s_idx, j_idx],
        "DV": np.where(quant, obs.y, np.nan)[s_idx, j_idx],
        "BLQ": obs.blq[s_idx, j_idx].astype(int),
        "LLOQ": np.where(obs.blq, obs.lloq, np.nan)[s_idx, j_idx],
        "PRED": pred[s_idx, j_idx],
        "IPRED": ipred[s_idx, j_idx],
        "IWRES": iwres[s_idx, j_idx],
        "CWRES": cw[s_idx, j_idx],
        "NPDE": nd[s_idx, j_idx],
        "LINE": data.lines[s_idx, j_idx].astype(int),
    })
    prov = provenance(twin)
    prov["npde_simulations"] = int(npde_samples)
    prov["npde_seed"] = int(seed)
    return RecordTable(frame, prov)


def predictive_interval(twin: PKTwin, times: np.ndarray, subject: str | None = None,
                        doses: DoseArrays | None = None, *, n: int = 1000,
                        level: float = 0.9, seed: int = 0,
                        residual: bool = True) -> pd.DataFrame:
    """Median and ``level`` band at ``times`` of one subject's next *sample* under the
    posterior: seeded Laplace draws of the etas, each prediction with a draw of the
    residual error on its scale when ``residual`` (the posterior predictive band), else the
    band of the concentration curve itself (as ``PKTwin.prediction_interval``).

    Columns: time, mode (prediction at the MAP etas), median, lower, upper. An additive
    error can put the lower bound of a sample's band below 0 (no truncation).
    """
    if not 0 < level < 1:
        raise ValidationError(f"level must be between 0 and 1, got {level}", where="level")
    if n < 10:
        raise ValidationError(f"needs at least 10 draws, got {n}", where="n")
    t = np.asarray(times, float)
    eta = twin.sample_eta(n, subject, seed)
    f = twin.predict(t, subject, doses, eta)  # (n, T)
    if residual:
        err = error_for(twin.model_.error, None)
        z = np.random.default_rng([seed, 1]).standard_normal(f.shape)
        g = err.transform(f) + np.sqrt(err.variance(f)) * z
        f = np.exp(g) if err.log_scale else g
    lo, med, hi = np.quantile(f, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
    return pd.DataFrame({"time": t, "mode": twin.predict(t, subject, doses)[0],
                         "median": med, "lower": lo, "upper": hi})
