"""Ensemble Kalman filter: the ensemble adjustment (square-root) form, observations serially.

Each scalar observation of a reading is assimilated in turn (Anderson 2001, 2003): the
members' predicted values are moved deterministically to the posterior mean and spread of a
scalar Gaussian update, and every updated variable moves by its ensemble regression on the
predicted value. The predicted values of the reading's other observations are carried along
as extra variables, so a reading of several quantities is one update with no re-run of the
model. No perturbed observations: given the forecast ensemble the update is deterministic,
and for a linear-Gaussian model it reproduces the Kalman filter's mean and covariance of the
ensemble exactly (to round-off; see ``tests/core/test_estimate_filters.py``).

The three primitives (:func:`observation_moments`, :func:`eakf_increments`,
:func:`regression_gain`) and the update built on them (:func:`eakf_update`, with per-variable
reading error, frozen variables and bounds) work on any leading batch axes ``(..., N)``; the
glucose twin's batched filter (``medtwin.twin.glucose_filter``) is a configuration of them and
of :mod:`medtwin.core.estimate.ensemble`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.sequential import SequentialFilter, standard_draws


def observation_moments(hx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``(...)``, deviations ``(..., N)`` and variance ``(...)`` (``ddof=1``, floored at
    1e-9) of the members' predicted readings ``hx`` ``(..., N)``."""
    N = hx.shape[-1]
    mean = hx.mean(axis=-1)
    dev = hx - mean[..., None]
    var = np.maximum(np.einsum("...n,...n->...", dev, dev) / (N - 1), 1e-9)
    return mean, dev, var


def eakf_increments(mean: np.ndarray, var: np.ndarray, dev: np.ndarray, y: np.ndarray,
                    r: np.ndarray | float) -> np.ndarray:
    """Each member's move ``(..., N)`` of its predicted reading: to the posterior mean of the
    scalar Gaussian update with reading ``y`` of variance ``r``, the spread shrunk to the
    posterior's (deterministic square root)."""
    var_a = 1.0 / (1.0 / var + 1.0 / r)
    mean_a = var_a * (mean / var + y / r)
    return (mean_a - mean)[..., None] + (np.sqrt(var_a / var) - 1.0)[..., None] * dev


def regression_gain(z: np.ndarray, dev: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Regression coefficients ``(..., q)`` of variables ``z`` ``(..., N, q)`` on the predicted
    reading whose deviations are ``dev`` ``(..., N)`` (they sum to zero, so ``z`` needs no
    centring)."""
    N = dev.shape[-1]
    return np.einsum("...nq,...n->...q", z, dev) / ((N - 1) * var[..., None])


def eakf_update(z: np.ndarray, hx: np.ndarray, y: np.ndarray | float, r: float | np.ndarray, *,
                mask: np.ndarray | None = None, frozen: Sequence[int] = (),
                lower: np.ndarray | None = None, upper: np.ndarray | None = None
                ) -> np.ndarray:
    """Assimilate one scalar reading into each of a batch of ensembles, in place.

    ``z`` ``(..., N, q)``: the variables updated (states, transformed parameters, augmented
    error states); ``hx`` ``(..., N)``: the members' predicted readings; ``y`` ``(...)``: the
    readings, used where ``mask`` (default: everywhere). ``r``: the reading's variance, a
    scalar or one per variable ``(q,)`` (a variable may see an inflated reading error, e.g. a
    parameter learned from autocorrelated readings); members move deterministically (the
    adjustment form) and every variable by its regression on the predicted reading, except
    the columns ``frozen`` (learned elsewhere). ``lower`` / ``upper`` ``(q,)`` bound the
    updated variables. Returns the innovations ``y - mean(hx)`` ``(...)`` (NaN where not
    used)."""
    mean, dev, var = observation_moments(hx)
    q = z.shape[-1]
    rc = np.broadcast_to(np.asarray(r, dtype=float), (q,))
    if mask is None:
        mask = np.ones(mean.shape, bool)
    gain = regression_gain(z, dev, var)
    gain[..., list(frozen)] = 0.0
    for v in np.unique(rc):
        d = np.where(mask[..., None], eakf_increments(mean, var, dev, y, float(v)), 0.0)
        if (rc == v).all():
            z += gain[..., None, :] * d[..., None]
        else:
            cols = np.flatnonzero(rc == v)
            z[..., cols] += gain[..., None, cols] * d[..., None]
    if lower is not None:
        np.maximum(z, lower, out=z)
    if upper is not None:
        np.minimum(z, upper, out=z)
    return np.where(mask, y - mean, np.nan)


class EnsembleKalmanFilter(SequentialFilter):
    """Ensemble adjustment Kalman filter over any :class:`~medtwin.core.model.Model` or
    :class:`~medtwin.core.estimate.dynamics.Dynamics` (see :class:`SequentialFilter` for the
    common arguments). ``n_members`` members, each one subject of the engine's batch solver.
    ``exact_moments``: the prior draws have exactly the prior's mean and covariance (needs
    more members than learned parameters plus noisy initial states). ``inflation`` multiplies
    the forecast deviations (1: none)."""

    def __init__(self, *args: object, n_members: int = 64, exact_moments: bool = False,
                 inflation: float = 1.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.n_members = n_members
        self.exact_moments = exact_moments
        self.inflation = inflation

    def _init_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if not isinstance(self.n_members, int) or self.n_members < 4:
            raise ValidationError(f"must be an int >= 4, got {self.n_members!r}",
                                  where="n_members")
        if not (math.isfinite(self.inflation) and self.inflation >= 1.0):
            raise ValidationError(f"must be >= 1, got {self.inflation}", where="inflation")
        n = self.n_members
        draws = standard_draws(rng, n, self._q + self._ns, self.exact_moments)
        z = self._prior_samples(n, draws)
        _, m = self._dyn.initial(self._params(z))
        return {"z": z, "m": m}

    def _step(self, span: float, t0: float, t1: float, reading: dict[str, float]) -> None:
        z, m = self._s["z"], self._s["m"]
        z += self._noise_draw(self._rng, z.shape[0], span)
        if self.inflation != 1.0 and span > 0:
            mean = z.mean(axis=0)
            z[:] = mean + self.inflation * (z - mean)
        self._clip(z)
        x = np.ascontiguousarray(z[:, :self._ns])
        out = self._dyn.propagate(t0, t1, x, m, self._params(z))
        z[:, :self._ns] = x
        names = [k for k in reading if k in self._obs_index]
        if not names:
            return
        obs = [self._obs[self._obs_index[k]] for k in names]
        h = np.stack([o.predict(out) for o in obs], axis=1)  # (N, m)
        upd = self._updated
        a = np.concatenate([z[:, upd], h], axis=1)
        k = upd.size
        for j, (name, o) in enumerate(zip(names, obs, strict=True)):
            mean, dev, var = observation_moments(a[:, k + j])
            r = float(o.noise.variance(mean))
            y = reading[name]
            self.log_likelihood_ += -0.5 * (math.log(2 * math.pi * (var + r))
                                            + (y - mean) ** 2 / (var + r))
            eakf_update(a, a[:, k + j], y, r)
        z[:, upd] = a[:, :k]
        self._clip(z)

    def _weighted(self) -> tuple[np.ndarray, np.ndarray]:
        z = self._s["z"]
        n = z.shape[0]
        return z, np.full(n, 1.0 / n)

    @property
    def ensemble_covariance_(self) -> np.ndarray:
        """Sample covariance (``ddof=1``) of the members' ``z``: the Kalman filter's ``P``."""
        self._need_started()
        return np.cov(self._s["z"], rowvar=False)
