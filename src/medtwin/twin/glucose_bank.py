"""The likelihood bank: how the glucose twin learns insulin sensitivity despite CGM noise.

So one adapted parameter (``bank``, default ``Vmx``) is learned by a **likelihood bank**
instead of by regression: ``bank_size`` candidate values of its log multiplier on a grid, each
run open loop with the recorded inputs from the ensemble's mean state (an extra block of
subjects in the same solver call), each scoring the readings under the published sensor model
(the Johnson transform of an AR(1) sampled on its own 15-min grid: one reading per
``sensor_grid`` minutes, whatever the CGM's rate) plus a small Ornstein-Uhlenbeck model
discrepancy, by an extended Kalman filter over [discrepancy, sensor value] per candidate.
Readings at a bound of the CGM's range (39 mg/dL "LOW") count as censored. The posterior on the
grid (log-likelihood interpolated by a cubic spline) gives the estimate and its sd, and the
members take its quantiles (each keeping its rank), so forecasts carry the parameter's
uncertainty. Every ``bank_window_h`` hours the candidates restart from the ensemble's current
mean state on a new grid (+-4 posterior sd), with the posterior, widened by the random walk,
as the new prior: the open-loop horizon stays short enough for real patients, whose models are
never exact. On ``benchmarks/bench_twin_convergence.py``'s grid (adult#001, factors 0.5-1.8,
noise seeds 1-8) this turned 43 of 64 subject-days within 10% after 24 h (mean error 8.0%) into
55 of 64 (4.6%), and 70 of 96 into 84 of 96 on six other subjects; the misses are mostly one
noise draw (seed 8) for which even the exact batch likelihood, with the true initial state and
every other parameter known, is 10-14% off. Caveat: the likelihood is that of the modelled
sensor. With a perfect sensor (noise-free readings) the heteroscedastic Johnson term pulls the
estimate 7-10% low (the exact batch likelihood does the same), where the regression is within
3%; give the sensor's own parameters, or ``bank=None`` for the regression estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit
from scipy.interpolate import CubicSpline

from medtwin.twin.glucose_filter import Ensemble, update

# --- the likelihood bank ------------------------------------------------------------------
#: points of the fine grid on which a bank's posterior is summarised
FINE = 401
_U_FINE = np.linspace(-1.0, 1.0, FINE)


@lru_cache(maxsize=8)
def _spline_matrix(K: int) -> np.ndarray:
    """``(K, FINE)``: a not-a-knot cubic spline through K evenly spaced values on [-1, 1],
    evaluated on the fine grid (a spline is linear in its data, so this is one product)."""
    return np.ascontiguousarray(CubicSpline(np.linspace(-1.0, 1.0, K), np.eye(K))(_U_FINE).T)


@dataclass
class Bank:
    """Candidates of one adapted parameter for ``B`` patients, run open loop (see module doc).

    Candidate ``k`` of patient ``b`` has the log multiplier ``centre[b] + half[b] * U[k]``
    (``U`` evenly spaced on [-1, 1]). Since the last anchoring (``t_anchor`` [min]) every
    candidate has been propagated from the ensemble's mean state without correction, and
    ``ll`` holds the log-likelihood of the readings used since, under the sensor model plus a
    model discrepancy: ``mu`` ``(B, K, 2)`` / ``P`` ``(B, K, 2, 2)`` are each candidate's
    extended-Kalman mean and covariance of [discrepancy [mg/dL], sensor AR(1) value].
    ``log_prior`` ``(B, K)`` is the window's prior; ``t_last`` [min] the time of the last
    reading used (NaN: none yet).
    """

    centre: np.ndarray
    half: np.ndarray
    log_prior: np.ndarray
    ll: np.ndarray
    cand: Ensemble
    mu: np.ndarray
    P: np.ndarray
    t_anchor: np.ndarray
    t_last: np.ndarray
    #: the candidates' parameters ``(B, K, n_par)`` while they stay the same (not saved)
    params_: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def column(self) -> int:
        """Index of the banked parameter in ``settings.adapt``."""
        return self.cand.settings.adapt.index(self.cand.settings.bank)

    def grid(self) -> np.ndarray:
        """Log multipliers of the candidates ``(B, K)``."""
        K = self.ll.shape[1]
        return self.centre[:, None] + self.half[:, None] * np.linspace(-1.0, 1.0, K)[None]

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """The posterior of the log multiplier on a fine grid: points and normalised weights
        ``(B, FINE)`` (the log posterior interpolated between candidates by a cubic spline)."""
        lp = (self.log_prior + self.ll) @ _spline_matrix(self.ll.shape[1])
        w = np.exp(lp - lp.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        return self.centre[:, None] + self.half[:, None] * _U_FINE[None], w

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of the log multiplier ``(B,)``."""
        th, w = self.posterior()
        m = (w * th).sum(axis=1)
        return m, np.sqrt(np.maximum((w * (th - m[:, None]) ** 2).sum(axis=1), 0.0))

    def multiplier_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of the multiplier itself ``(B,)``."""
        th, w = self.posterior()
        v = np.exp(th)
        m = (w * v).sum(axis=1)
        return m, np.sqrt(np.maximum((w * (v - m[:, None]) ** 2).sum(axis=1), 0.0))

    def to_dict(self, b: int = 0) -> dict[str, Any]:
        """Patient ``b``'s bank as a JSON-ready dict."""
        return {"centre": float(self.centre[b]), "half": float(self.half[b]),
                "log_prior": self.log_prior[b].tolist(), "ll": self.ll[b].tolist(),
                "x": self.cand.x[b].tolist(), "m": self.cand.m[b].tolist(),
                "theta": self.cand.theta[b].tolist(), "mu": self.mu[b].tolist(),
                "P": self.P[b].tolist(), "t_anchor": float(self.t_anchor[b]),
                "t_last": None if math.isnan(self.t_last[b]) else float(self.t_last[b])}

    @classmethod
    def from_dict(cls, d: dict[str, Any], ens: Ensemble) -> Bank:
        """Rebuild a one-patient bank from :meth:`to_dict` next to its ensemble ``ens``."""
        a = lambda v: np.asarray(v, dtype=float)[None]  # noqa: E731
        K = len(d["ll"])
        cand = Ensemble(ens.base[:, :1].repeat(K, axis=1), a(d["x"]), a(d["m"]), a(d["theta"]),
                        np.zeros((1, K)), np.zeros((1, K)), ens.settings, ens.solver)
        t_last = math.nan if d["t_last"] is None else float(d["t_last"])
        return cls(a(d["centre"]), a(d["half"]), a(d["log_prior"]), a(d["ll"]), cand,
                   a(d["mu"]), a(d["P"]), a(d["t_anchor"]), np.array([t_last]))


def new_bank(ens: Ensemble, t: float) -> Bank | None:
    """A bank anchored at the ensemble's start (time ``t`` [min]) with the filter's prior,
    or None when the settings ask for none or a patient's members do not share one parameter
    set (a population prior: the bank needs one subject's parameters)."""
    s = ens.settings
    if s.bank is None or s.prior_sd <= 0 or np.ptp(ens.base, axis=1).max() > 0:
        return None
    B, _ = ens.shape
    K = s.bank_size
    half = np.full(B, 3.0 * s.prior_sd)
    centre = np.zeros(B)
    u = np.linspace(-1.0, 1.0, K)
    log_prior = -0.5 * (half[:, None] * u[None] / s.prior_sd) ** 2
    base = ens.base[:, :1].repeat(K, axis=1)
    cand = Ensemble(base, np.zeros((B, K, ens.x.shape[2])), np.zeros((B, K, ens.m.shape[2])),
                    np.zeros((B, K, len(s.adapt))), np.zeros((B, K)), np.zeros((B, K)), s,
                    ens.solver)
    bank = Bank(centre, half, log_prior, np.zeros((B, K)), cand, np.zeros((B, K, 2)),
                np.zeros((B, K, 2, 2)), np.full(B, float(t)), np.full(B, math.nan))
    bank.P[..., 1, 1] = s.sensor_variance
    _anchor(bank, ens, np.ones(B, bool), float(t))
    return bank


def _anchor(bank: Bank, ens: Ensemble, which: np.ndarray, t: float) -> None:
    """Restart the candidates of patients ``which`` from the ensemble's mean state at ``t``."""
    s = ens.settings
    K = bank.ll.shape[1]
    c = bank.cand
    c.x[which] = ens.x[which].mean(axis=1, keepdims=True).repeat(K, axis=1)
    c.m[which] = ens.m[which].mean(axis=1, keepdims=True).repeat(K, axis=1)
    c.theta[which] = ens.theta[which].mean(axis=1, keepdims=True).repeat(K, axis=1)
    c.theta[which, :, bank.column] = bank.grid()[which]
    bank.params_ = None
    # the discrepancy starts at the uncertainty of the anchor's glucose
    g_var = ens.glucose()[which].var(axis=1, ddof=1)
    bank.mu[which, :, 0] = 0.0
    bank.P[which, :, 0, :] = 0.0
    bank.P[which, :, :, 0] = 0.0
    bank.P[which, :, 0, 0] = np.maximum(g_var, s.bank_discrepancy_sd ** 2)[:, None]
    bank.ll[which] = 0.0
    bank.t_anchor[which] = t


def bank_update(bank: Bank, y: np.ndarray, t: float, mask: np.ndarray | None = None
                ) -> np.ndarray:
    """Add readings ``y`` ``(B,)`` at ``t`` [min] to the candidates' likelihood, for the
    patients (in ``mask``) whose last used reading is at least one sensor grid step old;
    returns which patients used theirs ``(B,)``.

    The predicted reading of a candidate is its glucose plus the discrepancy plus the Johnson
    transform of the AR(1) value, linearised at its mean (an extended Kalman step); the
    likelihood term is that of the innovation.
    """
    s = bank.cand.settings
    B, K = bank.ll.shape
    if mask is None:
        mask = np.ones(B, bool)
    fresh = np.isnan(bank.t_last)
    use = mask & (fresh | (t - np.where(fresh, -np.inf, bank.t_last) >= s.sensor_grid - 1e-6))
    if not use.any():
        return use
    last = np.where(fresh, t, bank.t_last)
    # no reading yet: the sensor value is at its stationary law; the discrepancy has been
    # decaying since the later of the anchoring and the last reading
    r = np.where(fresh, 0.0, s.sensor_pacf ** ((t - last) / s.sensor_grid))
    a = np.exp(-(t - np.where(fresh, bank.t_anchor, np.maximum(last, bank.t_anchor)))
               / s.bank_discrepancy_tau)
    _ekf_step(bank.cand.glucose(), np.asarray(y, dtype=float), use, r, a, bank.mu, bank.P,
              bank.ll, s.bank_discrepancy_sd ** 2, s.sensor_variance, s.bank_white_sd ** 2,
              s.sensor_gamma, s.sensor_delta, s.sensor_lambda, s.sensor_xi, s.sensor_min,
              s.sensor_max)
    bank.t_last = np.where(use, t, bank.t_last)
    return use


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(cache=True)
def _log_ndtr(z: float) -> float:  # pragma: no cover - compiled
    """log of the standard normal CDF, accurate in the far left tail."""
    if z > -20.0:
        return math.log(0.5 * math.erfc(-z / math.sqrt(2.0)))
    return -0.5 * z * z - math.log(-z) - _LOG_SQRT_2PI


@njit(cache=True)
def _ekf_step(G: np.ndarray, y: np.ndarray, use: np.ndarray, r: np.ndarray, a: np.ndarray,
              mu: np.ndarray, P: np.ndarray, ll: np.ndarray, var_d: float, var_e: float,
              var_w: float, gamma: float, delta: float, lam: float, xi: float, lo: float,
              hi: float) -> None:  # pragma: no cover - compiled
    """One extended Kalman step of every candidate's [discrepancy, sensor value] and its
    log-likelihood term, in place (see :func:`bank_update`)."""
    B, K = G.shape
    for b in range(B):
        if not use[b]:
            continue
        rb, ab = r[b], a[b]
        low, high = y[b] <= lo, y[b] >= hi
        for k in range(K):
            d = mu[b, k, 0] * ab
            e = mu[b, k, 1] * rb
            p00 = ab * ab * P[b, k, 0, 0] + var_d * (1.0 - ab * ab)
            p01 = ab * rb * P[b, k, 0, 1]
            p11 = rb * rb * P[b, k, 1, 1] + var_e * (1.0 - rb * rb)
            # the Johnson map linearised at the sensor value's mean (an extended Kalman step)
            z = (e - gamma) / delta
            h1 = lam / delta * math.cosh(z)  # d reading / d sensor value
            innov = y[b] - (G[b, k] + d + xi + lam * math.sinh(z))
            ph0 = p00 + p01 * h1
            ph1 = p01 + p11 * h1
            S = ph0 + h1 * ph1 + var_w
            zc = innov / math.sqrt(S)
            if low or high:
                # a reading at a bound of the range says only that the truth is beyond it:
                # its likelihood is the predicted probability of that; it corrects nothing
                ll[b, k] += _log_ndtr(zc if low else -zc)
                g0 = g1 = 0.0
            else:
                ll[b, k] += -0.5 * (zc * zc + math.log(S))
                g0, g1 = ph0 / S, ph1 / S
            mu[b, k, 0] = d + g0 * innov
            mu[b, k, 1] = e + g1 * innov
            P[b, k, 0, 0] = p00 - g0 * ph0
            P[b, k, 0, 1] = P[b, k, 1, 0] = p01 - g0 * ph1
            P[b, k, 1, 1] = p11 - g1 * ph1


def bank_reanchor(bank: Bank, ens: Ensemble, t: float) -> np.ndarray:
    """Start a new window for the patients whose window is ``bank_window_h`` old: the new
    prior is the Gaussian (in log) with the posterior's mean and sd widened by the random
    walk over the window, the grid spans 4 of its sd (at least +-0.1, at most the first
    prior's), the sensor value keeps its posterior moments. Returns which were re-anchored."""
    s = bank.cand.settings
    which = t - bank.t_anchor >= s.bank_window_h * 60.0 - 1e-6
    if not which.any():
        return which
    m, sd = bank.moments()
    sd = np.sqrt(sd * sd + s.walk_sd_per_sqrt_h ** 2 * (t - bank.t_anchor) / 60.0)
    # the sensor value's posterior: moments of the candidates' mixture
    wk = np.exp(bank.log_prior + bank.ll - (bank.log_prior + bank.ll).max(axis=1, keepdims=True))
    wk /= wk.sum(axis=1, keepdims=True)
    e_m = (wk * bank.mu[..., 1]).sum(axis=1)
    e_v = (wk * (bank.P[..., 1, 1] + (bank.mu[..., 1] - e_m[:, None]) ** 2)).sum(axis=1)
    K = bank.ll.shape[1]
    u = np.linspace(-1.0, 1.0, K)
    half = np.clip(4.0 * sd, 0.1, 3.0 * s.prior_sd)
    bank.centre = np.where(which, m, bank.centre)
    bank.half = np.where(which, half, bank.half)
    prior = -0.5 * ((half[:, None] * u[None]) / sd[:, None]) ** 2
    bank.log_prior = np.where(which[:, None], prior, bank.log_prior)
    bank.mu[which, :, 1] = e_m[which, None]
    bank.P[which, :, 1, 1] = e_v[which, None]
    bank.P[which, :, 0, 1] = 0.0
    bank.P[which, :, 1, 0] = 0.0
    _anchor(bank, ens, which, t)
    return which


def assign_members(bank: Bank, ens: Ensemble, which: np.ndarray) -> None:
    """Give the members of patients ``which`` the bank's posterior quantiles of the banked
    log multiplier, in the order of their current values (so each member keeps its rank)."""
    if not which.any():
        return
    B, N = ens.shape
    j = bank.column
    th, w = bank.posterior()
    cdf = np.cumsum(w, axis=1) - 0.5 * w
    q = (np.arange(N) + 0.5) / N
    for b in np.flatnonzero(which):
        order = np.argsort(ens.theta[b, :, j], kind="stable")
        vals = np.interp(q, cdf[b], th[b])
        ens.theta[b, order, j] = vals


def assimilate(ens: Ensemble, bank: Bank | None, y: np.ndarray, t: float,
               mask: np.ndarray | None = None) -> np.ndarray:
    """One reading per patient at ``t`` [min], with the bank when there is one: the bank
    adds it to its likelihood (every sensor grid step) and hands its posterior to the
    members, the ensemble assimilates it, then windows that are due are re-anchored on the
    updated ensemble. Returns the innovations ``(B,)``."""
    if bank is None:
        return update(ens, y, mask)
    used = bank_update(bank, y, t, mask)
    assign_members(bank, ens, used)
    out = update(ens, y, mask, frozen=(bank.column,))
    bank_reanchor(bank, ens, t)
    return out


