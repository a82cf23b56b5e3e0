"""Batched ensembles: the building blocks of an ensemble filter that runs many at once.

:class:`~medtwin.core.estimate.enkf.EnsembleKalmanFilter` is one filter over one subject. A
twin that serves a ward, or a benchmark over a cohort, runs ``B`` filters of ``N`` members
each, as one batch of ``B * N`` subjects of the engine. Arrays here are shaped
``(B, N, ...)``; nothing in this module knows a physiology:

- :func:`multiplied`: parameter rows of members whose learned parameters are log multipliers
  of a base row (the ``log`` transform of :class:`~medtwin.core.estimate.priors.
  LearnedParameter`, centred on each member's own base value);
- :func:`propagate_batch`: every member (and any extra subjects, e.g. a likelihood bank's
  candidates) through one ``Solver.advance`` call, returning the state path;
- :class:`OrnsteinUhlenbeck` and :class:`RandomWalk`: process noise of augmented variables (a
  coloured model error, a sensor error state, a drifting parameter), each stepped exactly over
  any interval, so irregular readings need no fixed noise grid;
- :func:`crossing_probability`: the probability, from member paths, that an output falls
  below a threshold within a horizon, and when;
- :func:`~medtwin.core.estimate.enkf.eakf_update` (in :mod:`.enkf`): the batched ensemble
  adjustment update, with per-variable reading error, frozen variables and bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.model import Model
from medtwin.core.solvers import Solver, Work


@dataclass(frozen=True)
class OrnsteinUhlenbeck:
    """A stationary Gauss-Markov process with stationary sd ``sd`` and correlation time
    ``tau`` (time unit of the model; ``tau = 0``: white). Stepped exactly over any span:
    ``v <- a v + sqrt(1 - a^2) sd e``, ``a = exp(-span / tau)``."""

    sd: float
    tau: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sd) and math.isfinite(self.tau) and self.sd >= 0
                and self.tau >= 0):
            raise ValidationError(f"need finite sd >= 0 and tau >= 0, got {self.sd}, "
                                  f"{self.tau}", where="OrnsteinUhlenbeck")

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Draws from the stationary law."""
        return rng.standard_normal(shape) * self.sd

    def step(self, v: np.ndarray, span: float, rng: np.random.Generator) -> np.ndarray:
        """The process ``span`` later (one standard-normal draw per element of ``v``)."""
        a = math.exp(-span / self.tau) if self.tau > 0 else 0.0
        return a * v + math.sqrt(1 - a * a) * self.sd * rng.standard_normal(v.shape)


@dataclass(frozen=True)
class RandomWalk:
    """A Brownian drift with sd ``sd`` per square root of ``per`` time units (e.g. ``per=60``
    for an sd per square root of an hour in a model timed in minutes)."""

    sd: float
    per: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sd) and self.sd >= 0 and math.isfinite(self.per)
                and self.per > 0):
            raise ValidationError(f"need finite sd >= 0 and per > 0, got {self.sd}, "
                                  f"{self.per}", where="RandomWalk")

    def step(self, v: np.ndarray, span: float, rng: np.random.Generator) -> np.ndarray:
        """The walk ``span`` later (one standard-normal draw per element of ``v``)."""
        return v + self.sd * math.sqrt(span / self.per) * rng.standard_normal(v.shape)


def multiplied(base: np.ndarray, theta: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """Parameter rows ``(B * N, n_par)`` of members with base rows ``base`` ``(B, N, n_par)``
    whose parameters ``columns`` are multiplied by ``exp(theta[..., j])`` (``theta``
    ``(B, N, len(columns))``: log multipliers)."""
    p = base.copy()
    for j, c in enumerate(columns):
        p[..., c] *= np.exp(theta[..., j])
    return np.ascontiguousarray(p.reshape(-1, p.shape[-1]))


def propagate_batch(model: Model, solver: Solver, t0: float, dt: float, x: np.ndarray,
                    m: np.ndarray, p: np.ndarray, u: np.ndarray, *, what: str = "ensemble"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move ``B x M`` subjects over ``k = u.shape[2]`` input steps of ``dt`` from ``t0`` in one
    solver call: states ``x`` ``(B, M, ns)``, memory ``m`` ``(B, M, nm)``, parameter rows ``p``
    ``(B * M, n_par)`` or ``(B, M, n_par)``, inputs ``u`` ``(B, M, k, nu)``. Returns the new
    states and memory (same shapes; contiguous ``x`` and ``m`` are moved in place, as by
    ``Solver.advance``) and the state path ``(B, M, k, ns)``. A failed
    integration raises :class:`SimulationError` naming ``what``."""
    B, M, k = u.shape[0], u.shape[1], u.shape[2]
    xx = np.ascontiguousarray(x.reshape(B * M, -1))
    mm = np.ascontiguousarray(m.reshape(B * M, -1))
    pp = np.ascontiguousarray(p.reshape(B * M, -1))
    work = Work.new(B * M)
    out = solver.advance(model, t0, dt, xx, np.ascontiguousarray(u.reshape(B * M, k, -1)), mm,
                         pp, work)
    if work.status.any():
        raise SimulationError(f"the {what} failed to integrate at t={t0:g} "
                              f"({int((work.status != 0).sum())} members)")
    return xx.reshape(B, M, -1), mm.reshape(B, M, -1), out.reshape(B, M, k, -1)


def crossing_probability(paths: np.ndarray, threshold: float, horizon: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """From member paths ``(B, N, >= horizon + 1)`` on a unit time grid (column 0: now):
    P(the path is below ``threshold`` at some point of ``[0, horizon]``) ``(B,)``, and the
    median first-crossing time of the members that cross (NaN where none does)."""
    below = paths[..., :horizon + 1] < threshold
    crosses = below.any(axis=2)
    first = below.argmax(axis=2).astype(float)
    prob = crosses.mean(axis=1)
    minutes = np.full(paths.shape[0], np.nan)
    for b in np.flatnonzero(crosses.any(axis=1)):
        minutes[b] = float(np.median(first[b, crosses[b]]))
    return prob, minutes
