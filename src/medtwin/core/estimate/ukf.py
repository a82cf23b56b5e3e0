"""Unscented Kalman filter (Julier & Uhlmann 1997; scaled sigma points, van der Merwe 2004).

The posterior is a Gaussian over ``z`` (states and transformed parameters). Each interval:
the process noise is added to the covariance, ``2 nz + 1`` sigma points are drawn from it and
moved through the dynamics in one batch (each a subject of the engine's solver), their
weighted mean and covariance are the forecast, and the reading's predicted values at the same
points give the gain. Defaults ``alpha = 1, beta = 0, kappa = 0`` (the cubature rule: every
weight ``1 / (2 nz)``, none negative). For a linear-Gaussian model it is the Kalman filter.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.sequential import SequentialFilter, standard_draws


def sigma_points(mean: np.ndarray, cov: np.ndarray, alpha: float, beta: float, kappa: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma points ``(2n + 1, n)`` and their mean and covariance weights."""
    n = mean.size
    lam = alpha * alpha * (n + kappa) - n
    c = n + lam
    if c <= 0:
        raise ValidationError(f"alpha^2 (n + kappa) must be > 0 (n = {n})", where="UKF")
    try:
        s = np.linalg.cholesky(c * cov)
    except np.linalg.LinAlgError:  # not quite positive definite: symmetric square root
        w, v = np.linalg.eigh(0.5 * (cov + cov.T))
        s = v * np.sqrt(np.maximum(w, 0.0) * c)
    pts = np.empty((2 * n + 1, n))
    pts[0] = mean
    pts[1:n + 1] = mean + s.T
    pts[n + 1:] = mean - s.T
    wm = np.full(2 * n + 1, 0.5 / c)
    wc = wm.copy()
    wm[0] = lam / c
    wc[0] = lam / c + (1.0 - alpha * alpha + beta)
    return pts, wm, wc


class UnscentedKalmanFilter(SequentialFilter):
    """Unscented Kalman filter (see the module doc and :class:`SequentialFilter`)."""

    def __init__(self, *args: object, alpha: float = 1.0, beta: float = 0.0,
                 kappa: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.beta = beta
        self.kappa = kappa

    def _init_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # prior moments: parameters from their priors; states from the initial state at the
        # prior mean parameters (or ``initial_state``) with ``initial_state_sd``
        nz = self._ns + self._q
        mean = np.empty(nz)
        mean[self._ns:] = [lp.prior_mean for lp in self._learn]
        z0 = self._prior_samples(1, np.zeros((1, self._q + self._ns)))
        mean[:self._ns] = z0[0, :self._ns]
        cov = np.zeros((nz, nz))
        cov[np.arange(self._ns), np.arange(self._ns)] = self._x_sd ** 2
        for j, lp in enumerate(self._learn):
            cov[self._ns + j, self._ns + j] = lp.sd ** 2
        _, m = self._dyn.initial(self._params(mean[None]))
        return {"mean": mean, "cov": cov, "m": m}

    def _step(self, span: float, t0: float, t1: float, reading: dict[str, float]) -> None:
        s = self._s
        cov = s["cov"] + np.diag(self._noise ** 2 * max(span, 0.0))
        pts, wm, wc = sigma_points(s["mean"], cov, self.alpha, self.beta, self.kappa)
        self._clip(pts)
        x = np.ascontiguousarray(pts[:, :self._ns])
        m = np.ascontiguousarray(np.repeat(s["m"][:1], pts.shape[0], axis=0))
        out = self._dyn.propagate(t0, t1, x, m, self._params(pts))
        pts[:, :self._ns] = x
        mean = wm @ pts
        d = pts - mean
        cov = (d * wc[:, None]).T @ d
        s["m"] = m[:1].copy()
        names = [k for k in reading if k in self._obs_index]
        if names:
            obs = [self._obs[self._obs_index[k]] for k in names]
            h = np.stack([o.predict(out) for o in obs], axis=1)  # (2n+1, m)
            yhat = wm @ h
            dh = h - yhat
            r = np.array([float(o.noise.variance(v)) for o, v in zip(obs, yhat, strict=True)])
            S = (dh * wc[:, None]).T @ dh + np.diag(r)
            C = (d * wc[:, None]).T @ dh
            K = np.linalg.solve(S.T, C.T).T
            frozen = np.setdiff1d(np.arange(mean.size), self._updated)
            K[frozen] = 0.0
            y = np.array([reading[k] for k in names])
            innov = y - yhat
            mean = mean + K @ innov
            # general (any-gain) form: P - K C' - C K' + K S K'
            cov = cov - K @ C.T - C @ K.T + K @ S @ K.T
            _, logdet = np.linalg.slogdet(2 * math.pi * S)
            self.log_likelihood_ += -0.5 * (logdet + innov @ np.linalg.solve(S, innov))
        self._clip(mean[None])
        s["mean"] = mean
        s["cov"] = 0.5 * (cov + cov.T)

    def _weighted(self) -> tuple[np.ndarray, np.ndarray]:
        pts, wm, _ = sigma_points(self._s["mean"], self._s["cov"], 1.0, 0.0, 0.0)
        return pts, wm

    def _draw_z(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self._s
        e = standard_draws(rng, n, s["mean"].size, False)
        w, v = np.linalg.eigh(s["cov"])
        z = s["mean"] + (e * np.sqrt(np.maximum(w, 0.0))) @ v.T
        self._clip(z)
        return z, np.ascontiguousarray(np.repeat(s["m"][:1], n, axis=0))

    @property
    def mean_(self) -> np.ndarray:
        """Posterior mean of ``z`` (states, then transformed parameters)."""
        self._need_started()
        return self._s["mean"].copy()

    @property
    def cov_(self) -> np.ndarray:
        """Posterior covariance of ``z``."""
        self._need_started()
        return self._s["cov"].copy()

    def parameter_summary(self, level: float = 0.9) -> pd.DataFrame:
        """As :meth:`SequentialFilter.parameter_summary`: the mean and sd on the natural scale
        by the sigma points, the interval from the Gaussian on the transformed scale."""
        df = super().parameter_summary(level)
        q = norm.ppf((1 + level) / 2)
        for j, lp in enumerate(self._learn):
            mu = self._s["mean"][self._ns + j]
            sd = math.sqrt(max(self._s["cov"][self._ns + j, self._ns + j], 0.0))
            df.loc[lp.label, "lower"] = float(lp.inverse(mu - q * sd))
            df.loc[lp.label, "upper"] = float(lp.inverse(mu + q * sd))
        return df
