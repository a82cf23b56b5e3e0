"""How a filter moves its samples (ensemble members, sigma points, particles) in time.

:class:`ModelDynamics` does it for any :class:`~medtwin.core.model.Model` through the engine:
every sample is one subject of one batched ``Solver.advance`` call, so a filter of ``N``
members costs one compiled loop over ``N`` subjects. Times need not sit on the input grid:
``k`` whole steps of ``dt`` then one partial step reach any time. A physiology whose
measurements are not instantaneous outputs (e.g. beat-to-beat blood pressure) gives its own
:class:`Dynamics` that reports the outputs its observations read.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.model import Model
from medtwin.core.solvers import RK4, STATUS_TEXT, Solver, Work

#: known inputs over ``k`` steps of ``dt`` from ``t0``: ``(k, n_inputs)`` (all samples) or
#: ``(n, k, n_inputs)``
InputFunction = Callable[[float, float, int], np.ndarray]


class Dynamics(ABC):
    """Propagates samples: states ``x`` ``(n, n_states)`` and memory ``m`` in place."""

    model: Model

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the model states (the filter's state vector)."""
        return tuple(v.name for v in self.model.states)

    def initial(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Initial states and memory of parameter rows ``p`` ``(n, n_par)``."""
        x = np.array(self.model.initial_state(p), dtype=float, order="C")
        m = np.array(self.model.initial_memory(p), dtype=float, order="C")
        return x, m

    @abstractmethod
    def outputs(self, x: np.ndarray, m: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name ``(n,)`` at the current states (no propagation)."""

    @abstractmethod
    def propagate(self, t0: float, t1: float, x: np.ndarray, m: np.ndarray, p: np.ndarray
                  ) -> dict[str, np.ndarray]:
        """Move every sample from ``t0`` to ``t1`` (``x``, ``m`` in place); the outputs at
        ``t1``. A failed integration raises :class:`SimulationError`, never returns numbers."""


class ModelDynamics(Dynamics):
    """Any Model through a solver: inputs from ``inputs`` (None: zeros), steps of ``dt``."""

    def __init__(self, model: Model, *, solver: Solver | None = None, dt: float = 1.0,
                 inputs: InputFunction | None = None) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValidationError(f"must be > 0, got {dt}", where="ModelDynamics.dt")
        self.model = model
        self.solver = solver or RK4(4)
        self.dt = float(dt)
        self.inputs = inputs

    def _u(self, n: int, t0: float, dt: float, k: int) -> np.ndarray:
        nu = len(self.model.inputs)
        if self.inputs is None:
            return np.zeros((n, k, nu))
        u = np.asarray(self.inputs(t0, dt, k), dtype=float)
        if u.ndim == 2:
            u = np.broadcast_to(u[None], (n, k, nu))
        if u.shape != (n, k, nu):
            raise ValidationError(f"inputs gave shape {u.shape}, expected ({k}, {nu}) or "
                                  f"({n}, {k}, {nu})", where="ModelDynamics.inputs")
        return np.ascontiguousarray(u)

    def outputs(self, x: np.ndarray, m: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        """The model's ``observe`` by output name."""
        y = self.model.observe(x, p)
        return {v.name: np.ascontiguousarray(y[:, j]) for j, v in enumerate(self.model.outputs)}

    def propagate(self, t0: float, t1: float, x: np.ndarray, m: np.ndarray, p: np.ndarray
                  ) -> dict[str, np.ndarray]:
        span = t1 - t0
        if span < 0:
            raise ValidationError(f"cannot propagate backwards from {t0} to {t1}",
                                  where="ModelDynamics")
        n = x.shape[0]
        work = Work.new(n)
        k = int(math.floor(span / self.dt + 1e-9))
        if k > 0:
            self.solver.advance(self.model, t0, self.dt, x, self._u(n, t0, self.dt, k), m, p,
                                work)
        rest = span - k * self.dt
        if rest > 1e-9 * self.dt and not work.status.any():
            t = t0 + k * self.dt
            self.solver.advance(self.model, t, rest, x, self._u(n, t, rest, 1), m, p, work)
        if work.status.any():
            i = int(np.flatnonzero(work.status)[0])
            why = STATUS_TEXT.get(int(work.status[i]), "failed")
            raise SimulationError(f"{int((work.status != 0).sum())} of {n} filter samples "
                                  f"failed to integrate from t={t0:g} to {t1:g} ({why}, e.g. "
                                  f"sample {i} at t={work.t_fail[i]:g})")
        return self.outputs(x, m, p)
