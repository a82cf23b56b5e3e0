"""PK/PD models as ODEs on the engine's Model contract, run by the engine's ``simulate``.

- :class:`LinearPK` — depot, central and two peripheral compartments plus the cumulative
  amount eliminated (so mass balance can be checked); the ODE twin of the closed forms.
- :class:`MichaelisMentenPK` — depot, central and one peripheral compartment with saturable
  (Michaelis-Menten) elimination ``VMAX C / (KM + C)``, as phenytoin's: no closed form by
  superposition, so the ODE is needed; its IV bolus has the Lambert-W solution
  ``C(t) = KM W((C0/KM) exp((C0 - VMAX t / V) / KM))`` (Beal, J Pharmacokinet Biopharm
  10:109, 1982).
- :class:`ParentMetabolite` — parent (first-order absorption, one compartment) converted with
  fraction ``FM`` into a one-compartment metabolite.
- :class:`EffectCompartment` — one-compartment PK, an effect compartment (``KE0``) and a
  sigmoid Emax response ``E0 + EMAX Ce^g / (EC50^g + Ce^g)`` (Sheiner et al., Clin Pharmacol
  Ther 25:358, 1979); ``GAMMA = 1`` is the plain Emax model.

Amounts are mg, volumes L, time h. Inputs are zero-order rates [mg/h] into the depot or the
central compartment (roles ``"depot"`` and ``"central"``). Doses are events of the engine's
:class:`~medtwin.core.schedule.Schedule`: a bolus or an oral dose adds its amount to the dosed
state, an infusion is a rate held over its duration (:func:`dose_schedule`);
:func:`simulate_doses` is a thin wrapper that picks the input grid and calls ``simulate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np
import pandas as pd
from numba import njit

from medtwin.core.cohort import Cohort
from medtwin.core.errors import ValidationError
from medtwin.core.model import RHS_SIGNATURE, Model, Variable
from medtwin.core.schedule import Event, InputRate, Schedule, StateBolus
from medtwin.core.simulate import simulate
from medtwin.core.solvers import DormandPrince, Solver

_MG, _L, _LH, _H1 = "mg", "L", "L/h", "1/h"
#: the most subject-steps :func:`simulate_doses` integrates on its grid (more: round the times)
MAX_SUBJECT_STEPS = 10_000_000
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


class PKModel(Model):
    """A PK model in hours whose doses go into named states (bolus) or inputs (infusion)."""

    time_unit: ClassVar[str] = "h"
    #: the state a bolus of each route goes into
    dose_states: ClassVar[Mapping[str, str]] = {"depot": "depot", "central": "central"}

    def initial_state(self, p: np.ndarray) -> np.ndarray:  # noqa: D102
        return np.zeros((np.atleast_2d(p).shape[0], len(self.states)))


class LinearPK(PKModel):
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

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:  # noqa: D102
        v = np.asarray(p)[:, 1].reshape((-1,) + (1,) * (x.ndim - 2))
        return (x[..., 1] / v)[..., None]


@njit(RHS_SIGNATURE, cache=True)
def michaelis_menten_rhs(t, x, u, m, p, dx):  # noqa: ANN001, ANN201
    """Depot -> central <-> peripheral, saturable elimination VMAX C / (KM + C)."""
    vmax, km, v, q, v2, ka = p[0], p[1], p[2], p[3], p[4], p[5]
    c = x[1] / v
    elim = vmax * c / (km + c)
    dist = q * (c - x[2] / v2) if q != 0.0 else 0.0
    dx[0] = u[0] - ka * x[0]
    dx[1] = u[1] + ka * x[0] - elim - dist
    dx[2] = dist
    dx[3] = elim


class MichaelisMentenPK(PKModel):
    """1-2 compartment PK with Michaelis-Menten elimination (``Q = 0``: one compartment)."""

    name = "michaelis-menten-pk"
    version = "1"
    states = (Variable("depot", _MG), Variable("central", _MG), Variable("peripheral", _MG),
              Variable("eliminated", _MG))
    parameters = (Variable("VMAX", "mg/h", "maximum elimination rate"),
                  Variable("KM", "mg/L", "concentration at half the maximum rate"),
                  Variable("V", _L), Variable("Q", _LH), Variable("V2", _L),
                  Variable("KA", _H1))
    inputs = _INPUTS
    outputs = (Variable("concentration", "mg/L", "central concentration"),)
    rhs_kernel = staticmethod(michaelis_menten_rhs)

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:  # noqa: D102
        v = np.asarray(p)[:, 2].reshape((-1,) + (1,) * (x.ndim - 2))
        return (x[..., 1] / v)[..., None]


def michaelis_menten_bolus(t: np.ndarray, c0: float, vmax: float, km: float,
                           v: float) -> np.ndarray:
    """Analytic concentration [mg/L] after an IV bolus giving ``c0`` in a one-compartment
    model with Michaelis-Menten elimination: ``KM W((C0/KM) exp((C0 - VMAX t/V)/KM))``."""
    from scipy.special import lambertw

    y0 = c0 / km
    # W(a e^b) with a large b would overflow: W(e^z) for z = ln a + b via its log form
    z = np.atleast_1d(np.log(y0) + y0 - vmax * np.asarray(t, float) / (v * km))
    w = np.empty_like(z)
    big = z >= 500.0
    w[~big] = lambertw(np.exp(z[~big])).real
    w[big] = _wexp_large(z[big])
    return (km * w).reshape(np.shape(t))


def _wexp_large(z: np.ndarray) -> np.ndarray:
    """W(e^z) for large z: Newton on w + ln w = z from w = z - ln z."""
    w = np.maximum(z - np.log(np.maximum(z, 1.0)), 1.0)
    for _ in range(50):
        w = w - (w + np.log(w) - z) / (1.0 + 1.0 / w)
    return w


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


class ParentMetabolite(PKModel):
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
    dose_states = {"depot": "depot", "central": "parent"}

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


class EffectCompartment(PKModel):
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
    """A dose: ``amount`` [mg] at ``time`` [h] into ``route`` (``"depot"`` or ``"central"``),
    as a bolus (added to the route's state) or over ``duration`` [h] (a held rate)."""

    time: float
    amount: float
    route: str = "central"
    duration: float = 0.0


def dose_schedule(model: Model, doses: Sequence[OdeDose], *,
                  subject: str | None = None) -> Schedule:
    """The engine's schedule of ``doses`` (for ``subject``, or every subject when None)."""
    states = getattr(model, "dose_states", {"depot": "depot", "central": "central"})
    events: list[Event] = []
    for k, d in enumerate(doses):
        where = f"doses[{k}]"
        if d.route not in states:
            raise ValidationError(f"route must be one of {sorted(states)}, got {d.route!r}",
                                  where=where)
        for name, value in (("time", d.time), ("amount", d.amount), ("duration", d.duration)):
            if not (math.isfinite(value) and value >= 0):
                raise ValidationError(f"{name} must be finite and >= 0, got {value}",
                                      where=where)
        if d.duration > 0:
            events.append(InputRate(float(d.time), d.route, d.amount / d.duration,
                                    float(d.duration), subject))
        else:
            events.append(StateBolus(float(d.time), states[d.route], float(d.amount), subject))
    return Schedule(events)


def input_grid(times: Sequence[float] | np.ndarray) -> float:
    """The largest step that puts every one of ``times`` (>= 0) on the grid ``k * step``."""
    fr = [Fraction(float(t)).limit_denominator(1_000_000) for t in times if t > 0]
    if not fr:
        return 1.0
    den = math.lcm(*(f.denominator for f in fr))
    num = math.gcd(*(f.numerator * (den // f.denominator) for f in fr))
    return num / den


def simulate_doses(
    model: Model,
    params: np.ndarray,
    doses: Sequence[OdeDose],
    times: Sequence[float] | np.ndarray,
    *,
    solver: Solver | None = None,
) -> np.ndarray:
    """States ``(n, T, n_states)`` at ``times`` [h] (from 0 h) for parameter rows ``params``,
    every subject getting ``doses``; the state at a dose time is the state after the dose.

    A thin wrapper over the engine: the doses become a :class:`Schedule`
    (:func:`dose_schedule`), the input step is the largest that puts every time, dose start and
    infusion end on the grid, and :func:`~medtwin.core.simulate.simulate` integrates.
    """
    solver = solver or DormandPrince(rtol=1e-10, atol=1e-12)
    p = np.ascontiguousarray(np.atleast_2d(np.asarray(params, float)))
    t_out = np.asarray(times, float)
    if (t_out.ndim != 1 or t_out.size == 0 or not np.all(np.isfinite(t_out))
            or np.any(np.diff(t_out) < 0) or t_out[0] < 0):
        raise ValidationError("need finite, increasing output times >= 0 [h]", where="times")
    if p.ndim != 2 or p.shape[1] != len(model.parameters):
        raise ValidationError(f"need rows of {len(model.parameters)} parameters "
                              f"({', '.join(model.parameter_labels)}), got shape {p.shape}",
                              where="params")
    doses = list(doses)
    dose_schedule(model, doses)  # checks every dose, also those past the last time
    t_last = float(t_out[-1])
    kept = [d for d in doses if d.time <= t_last]
    schedule = dose_schedule(model, kept)
    marks = [*t_out.tolist(), *(d.time for d in kept),
             *(d.time + d.duration for d in kept if d.duration > 0)]
    dt = input_grid(marks)
    # a dose at the last time still shows there: simulate one step past it
    t_end = t_last + dt if any(d.time == t_last for d in kept) or t_last == 0 else t_last
    n_steps = int(round(t_end / dt))
    if n_steps * p.shape[0] > MAX_SUBJECT_STEPS:
        raise ValidationError(f"the times and doses need a {dt:g}-h input grid of {n_steps} "
                              f"steps for {p.shape[0]} subject(s) (> {MAX_SUBJECT_STEPS} in "
                              "all); round them to a coarser grid", where="times")
    grid = np.unique(np.round(np.concatenate([[0.0], t_out, [t_end]]) / dt)) * dt
    ids = [f"row{i}" for i in range(p.shape[0])]
    cohort = Cohort(pd.DataFrame(p, index=ids, columns=list(model.parameter_labels)))
    res = simulate(model, cohort, schedule, grid, solver=solver, input_step=dt)
    rows = np.searchsorted(grid, np.round(t_out / dt) * dt)
    return np.ascontiguousarray(res.values[:, rows, : len(model.states)])
