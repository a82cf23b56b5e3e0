"""Particle filter: sequential importance resampling (bootstrap proposal; Gordon et al. 1993).

Particles move through the dynamics with the process noise (one batch of subjects per
interval); a reading multiplies each particle's weight by its likelihood under the noise
models; when the effective sample size falls below ``resample_below`` x ``n_particles`` the
particles are resampled systematically. A learned parameter without ``walk_sd`` is static and
would collapse onto a few values after many resamplings: ``jitter`` > 0 applies Liu & West's
(2001) shrinkage kernel to the parameters after each resampling (mean and covariance kept).
Unlike the Kalman filters it makes no Gaussian assumption: multimodal posteriors stay so.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.sequential import (
    SequentialFilter,
    standard_draws,
    systematic_resample,
)


class ParticleFilter(SequentialFilter):
    """Bootstrap particle filter (see the module doc and :class:`SequentialFilter`)."""

    def __init__(self, *args: object, n_particles: int = 2000, resample_below: float = 0.5,
                 jitter: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.n_particles = n_particles
        self.resample_below = resample_below
        self.jitter = jitter

    def _init_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if not isinstance(self.n_particles, int) or self.n_particles < 10:
            raise ValidationError(f"must be an int >= 10, got {self.n_particles!r}",
                                  where="n_particles")
        if not 0.0 <= self.resample_below <= 1.0:
            raise ValidationError(f"must be in [0, 1], got {self.resample_below}",
                                  where="resample_below")
        if not 0.0 <= self.jitter < 1.0:
            raise ValidationError(f"must be in [0, 1), got {self.jitter}", where="jitter")
        n = self.n_particles
        z = self._prior_samples(n, standard_draws(rng, n, self._q + self._ns, False))
        _, m = self._dyn.initial(self._params(z))
        return {"z": z, "m": m, "logw": np.full(n, -math.log(n))}

    def _step(self, span: float, t0: float, t1: float, reading: dict[str, float]) -> None:
        s = self._s
        z, m = s["z"], s["m"]
        z += self._noise_draw(self._rng, z.shape[0], span)
        self._clip(z)
        x = np.ascontiguousarray(z[:, :self._ns])
        out = self._dyn.propagate(t0, t1, x, m, self._params(z))
        z[:, :self._ns] = x
        names = [k for k in reading if k in self._obs_index]
        if not names:
            return
        ll = np.zeros(z.shape[0])
        for k in names:
            o = self._obs[self._obs_index[k]]
            ll += o.noise.log_pdf(reading[k], o.predict(out))
        ll = np.where(np.isfinite(ll), ll, -np.inf)
        logw = s["logw"] + ll
        total = logsumexp(logw)
        if not math.isfinite(total):
            raise ValidationError(f"every particle has zero likelihood for the reading at "
                                  f"{t1:g}: more particles, wider priors or a larger "
                                  "reading error", where="ParticleFilter")
        self.log_likelihood_ += float(total)
        logw -= total
        w = np.exp(logw)
        if 1.0 / np.sum(w * w) < self.resample_below * z.shape[0]:
            idx = systematic_resample(w, z.shape[0], self._rng)
            z = z[idx]
            m = m[idx]
            logw = np.full(z.shape[0], -math.log(z.shape[0]))
            if self.jitter > 0:
                self._liu_west(z)
        s["z"], s["m"], s["logw"] = np.ascontiguousarray(z), np.ascontiguousarray(m), logw

    def _liu_west(self, z: np.ndarray) -> None:
        h = self.jitter
        a = math.sqrt(1.0 - h * h)
        th = z[:, self._ns:]
        mean = th.mean(axis=0)
        cov = np.atleast_2d(np.cov(th, rowvar=False))
        w, v = np.linalg.eigh(cov)
        e = self._rng.standard_normal(th.shape) * np.sqrt(np.maximum(w, 0.0))
        z[:, self._ns:] = a * th + (1 - a) * mean + h * e @ v.T

    def _weighted(self) -> tuple[np.ndarray, np.ndarray]:
        w = np.exp(self._s["logw"] - logsumexp(self._s["logw"]))
        return self._s["z"], w

    @property
    def effective_sample_size_(self) -> float:
        """``1 / sum(w^2)`` of the current weights."""
        _, w = self._weighted()
        return float(1.0 / np.sum(w * w))
