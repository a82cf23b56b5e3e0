"""PK/PD models as ODEs on the engine's Model contract, and a dose-event driver for them.

- :class:`LinearPK` — depot, central and two peripheral compartments plus the cumulative
  amount eliminated (so mass balance can be checked); the ODE twin of the closed forms.
- :class:`ParentMetabolite` — parent (first-order absorption, one compartment) converted with
  fraction ``FM`` into a one-compartment metabolite.
- :class:`EffectCompartment` — one-compartment PK, an effect compartment (``KE0``) and a
  sigmoid Emax response ``E0 + EMAX Ce^g / (EC50^g + Ce^g)`` (Sheiner et al., Clin Pharmacol
  Ther 25:358, 1979); ``GAMMA = 1`` is the plain Emax model.

Amounts are mg, volumes L, time h. Inputs are zero-order rates [mg/h] into the depot or the
central compartment; boluses are added to the states by :func:`simulate_doses`, which
integrates between dose events with the engine's solvers (each segment one held-input step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from medtwin.core.errors import ValidationError
from medtwin.core.model import RHS_SIGNATURE, Model, Variable
from medtwin.core.solvers import DormandPrince, Solver, Work

_MG, _L, _LH, _H1 = "mg", "L", "L/h", "1/h"
_INPUTS = (Variable("depot rate", "mg/h", "zero-order input into the depot", role="depot"),
           Variable("central rate", "mg/h", "zero-order input into the central compartment",
                    role="central"))


@njit(RHS_SIGNATURE, cache=True)
def linear_rhs(t, x, u, m, p, dx):  # noqa: ANN001, ANN201
    """Depot -> central <-> peripherals, elimination from the central compartment."""
    cl, v, q2, v2, q3, v3, ka = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    c = x[1] / v
    dx[0] = u[0] - ka * x[0]
    dx[1] = (u[1] + ka * x[0] - cl * c - q2 * (c - x[2] / v2) - q3 * (c - x[3] / v3))
    dx[2] = q2 * (c - x[2] / v2)
    dx[3] = q3 * (c - x[3] / v3)
    dx[4] = cl * c


class LinearPK(Model):
    """Linear 1-3 compartment PK with a depot (set ``Q``/``Q3`` to 0 for fewer compartments)."""

    name = "linear-pk"
    version = "1"
    states = (Variable("depot", _MG), Variable("central", _MG), Variable("peripheral", _MG),
              Variable("peripheral2", _MG), Variable("eliminated", _MG))
    parameters = (Variable("CL", _LH), Variable("V", _L), Variable("Q", _LH), Variable("V2", _L),
                  Variable("Q3", _LH), Variable("V3", _L), Variable("KA", _H1))
    inputs = _INPUTS
    outputs = (Variable("concentration", "mg/L", "central concentration"),)
    rhs_kernel = staticmethod(linear_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.zeros((np.atleast_2d(p).shape[0], len(self.states)))

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:  # noqa: D102
        v = np.asarray(p)[:, 1].reshape((-1,) + (1,) * (x.ndim - 2))
        return (x[..., 1] / v)[..., None]


@njit(RHS_SIGNATURE, cache=True)
def parent_metabolite_rhs(t, x, u, m, p, dx):  # noqa: ANN001, ANN201
    """Parent cleared by CL, a fraction FM of it forming the metabolite (cleared by CLM)."""
    cl, v, ka, fm, clm, vm = p[0], p[1], p[2], p[3], p[4], p[5]
    out = cl * x[1] / v
    dx[0] = u[0] - ka * x[0]
    dx[1] = u[1] + ka * x[0] - out
    dx[2] = fm * out - clm * x[2] / vm
    dx[3] = (1.0 - fm) * out
    dx[4] = clm * x[2] / vm


class ParentMetabolite(Model):
    """Parent (depot + central) and metabolite, amounts of parent and metabolite eliminated."""

    name = "parent-metabolite"
    version = "1"
    states = (Variable("depot", _MG), Variable("parent", _MG), Variable("metabolite", _MG),
              Variable("parent eliminated", _MG), Variable("metabolite eliminated", _MG))
    parameters = (Variable("CL", _LH), Variable("V", _L), Variable("KA", _H1),
                  Variable("FM", "1", "fraction of the parent's clearance forming metabolite"),
                  Variable("CLM", _LH), Variable("VM", _L))
    inputs = _INPUTS
    outputs = (Variable("parent concentration", "mg/L"),
               Variable("metabolite concentration", "mg/L"))
    rhs_kernel = staticmethod(parent_metabolite_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.zeros((np.atleast_2d(p).shape[0], len(self.states)))

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:  # noqa: D102
        shape = (-1,) + (1,) * (x.ndim - 2)
        return np.stack([x[..., 1] / p[:, 1].reshape(shape), x[..., 2] / p[:, 5].reshape(shape)],
                        axis=-1)


@njit(RHS_SIGNATURE, cache=True)
def effect_rhs(t, x, u, m, p, dx):  # noqa: ANN001, ANN201
    """One-compartment PK and the effect-site concentration."""
    cl, v, ka, ke0 = p[0], p[1], p[2], p[3]
    c = x[1] / v
    dx[0] = u[0] - ka * x[0]
    dx[1] = u[1] + ka * x[0] - cl * c
    dx[2] = ke0 * (c - x[2])


class EffectCompartment(Model):
    """One-compartment PK with an effect compartment and a sigmoid Emax response."""

    name = "effect-compartment"
    version = "1"
    states = (Variable("depot", _MG), Variable("central", _MG),
              Variable("Ce", "mg/L", "effect-site concentration"))
    parameters = (Variable("CL", _LH), Variable("V", _L), Variable("KA", _H1),
                  Variable("KE0", _H1), Variable("E0", "1"), Variable("EMAX", "1"),
                  Variable("EC50", "mg/L"), Variable("GAMMA", "1"))
    inputs = _INPUTS
    outputs = (Variable("concentration", "mg/L"), Variable("effect", "1"))
    rhs_kernel = staticmethod(effect_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.zeros((np.atleast_2d(p).shape[0], len(self.states)))

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:  # noqa: D102
        shape = (-1,) + (1,) * (x.ndim - 2)
        P = {k: p[:, i].reshape(shape) for i, k in enumerate(("CL", "V", "KA", "KE0", "E0",
                                                              "EMAX", "EC50", "GAMMA"))}
        ce = np.maximum(x[..., 2], 0.0)
        effect = P["E0"] + P["EMAX"] * ce ** P["GAMMA"] / (P["EC50"] ** P["GAMMA"]
                                                            + ce ** P["GAMMA"])
        return np.stack([x[..., 1] / P["V"], effect], axis=-1)


def emax(ce: np.ndarray, e0: float, emax_: float, ec50: float, gamma: float = 1.0) -> np.ndarray:
    """Sigmoid Emax response at effect-site concentrations ``ce``."""
    ce = np.maximum(np.asarray(ce, float), 0.0)
    return e0 + emax_ * ce**gamma / (ec50**gamma + ce**gamma)


@dataclass(frozen=True)
class OdeDose:
    """A dose for :func:`simulate_doses`: ``amount`` [mg] at ``time`` [h] into input ``route``
    (``"depot"`` or ``"central"``), as a bolus or over ``duration`` [h]."""

    time: float
    amount: float
    route: str = "central"
    duration: float = 0.0


def simulate_doses(
    model: Model,
    params: np.ndarray,
    doses: Sequence[OdeDose],
    times: Sequence[float] | np.ndarray,
    *,
    solver: Solver | None = None,
) -> np.ndarray:
    """States ``(n, T, n_states)`` at ``times`` [h] for parameter rows ``params``, every subject
    getting ``doses``. Integrates between events (dose starts, infusion ends, output times)
    with held inputs, and adds boluses to the dosed state."""
    solver = solver or DormandPrince(rtol=1e-10, atol=1e-12)
    p = np.ascontiguousarray(np.atleast_2d(params), dtype=float)
    t_out = np.asarray(times, float)
    if t_out.ndim != 1 or np.any(np.diff(t_out) < 0) or t_out.size == 0:
        raise ValidationError("need increasing output times", where="times")
    n = p.shape[0]
    for d in doses:
        if d.route not in ("depot", "central") or d.amount < 0 or d.duration < 0:
            raise ValidationError(f"bad dose {d}", where="doses")
    cuts = {0.0, *t_out.tolist()}
    for d in doses:
        cuts.add(d.time)
        if d.duration > 0:
            cuts.add(d.time + d.duration)
    grid = np.array(sorted(c for c in cuts if c <= t_out[-1]))
    x = np.ascontiguousarray(model.initial_state(p), dtype=float)
    m = np.zeros((n, max(1, len(model.memory))))
    work = Work.new(n)
    out = np.empty((n, t_out.size, x.shape[1]))
    state_of = {"depot": model.states.index(next(s for s in model.states if s.name == "depot")),
                "central": 1}
    k = 0
    for j, t in enumerate(grid):
        for d in doses:
            if d.duration == 0 and d.time == t:
                x[:, state_of[d.route]] += d.amount
        while k < t_out.size and t_out[k] == t:
            out[:, k] = x
            k += 1
        if j + 1 == grid.size:
            break
        u = np.zeros((n, 1, len(model.inputs)))
        for d in doses:
            if d.duration > 0 and d.time <= t < d.time + d.duration:
                u[:, 0, model.input_index(d.route)] += d.amount / d.duration
        solver.advance(model, t, grid[j + 1] - t, x, u, m, p, work)
        if np.any(work.status != 0):
            raise ValidationError(f"the ODE solver failed at t={t:g} h", where="simulate_doses")
    return out
