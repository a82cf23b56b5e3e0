"""Solvers against mathematics: convergence order, tolerance, stiffness, failure reporting."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from numba import njit

from medtwin.core.cohort import Cohort
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.model import RHS_SIGNATURE, Model, Variable
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.core.solvers import RK4, DormandPrince, ScipyStiff


# --- a damped rotation x' = A x + u with a closed-form solution ---------------------------
@njit(RHS_SIGNATURE, cache=False)
def rotation_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    a, w = p[0], p[1]
    dx[0] = -a * x[0] - w * x[1] + u[0]
    dx[1] = w * x[0] - a * x[1]


class DampedRotation(Model):
    """x1' = -a x1 - w x2 + u, x2' = w x1 - a x2 (a = decay, w = angular frequency)."""

    name: ClassVar[str] = "damped-rotation"
    version: ClassVar[str] = "1"
    states = (Variable("x1", "1"), Variable("x2", "1"))
    parameters = (
        Variable("a", "1/min"),
        Variable("w", "rad/min"),
        Variable("x1_0", "1"),
        Variable("x2_0", "1"),
    )
    inputs = (Variable("forcing", "1/min", role="insulin"),)
    outputs = (Variable("y", "1", "x1 as observed"),)
    rhs_kernel = staticmethod(rotation_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(p)[:, 2:4], dtype=float)

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(x)[..., :1]


def exact(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Closed-form unforced solution ``(n, len(t), 2)``."""
    a, w, x1, x2 = (p[:, i : i + 1] for i in range(4))
    e = np.exp(-a * t[None, :])
    c, s = np.cos(w * t[None, :]), np.sin(w * t[None, :])
    return np.stack([e * (c * x1 - s * x2), e * (s * x1 + c * x2)], axis=-1)


MODEL = DampedRotation()
TIMES = np.arange(0.0, 11.0)  # 10 one-minute input steps


def _cohort(a: float = 0.3, w: float = 1.1) -> Cohort:
    table = pd.DataFrame(
        {"a [1/min]": [a, 2 * a], "w [rad/min]": [w, 0.5 * w], "x1_0 [1]": [1.0, -0.5],
         "x2_0 [1]": [0.0, 2.0]},
        index=["s1", "s2"],
    )
    return Cohort(table)


def _error(solver: object, cohort: Cohort) -> float:
    res = simulate(MODEL, cohort, None, TIMES, solver=solver)
    ref = exact(cohort.parameters(MODEL), TIMES)
    return float(np.max(np.abs(res.values[:, :, :2] - ref)))


def _order(errors: list[float], hs: list[float]) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def test_rk4_converges_with_order_four() -> None:
    cohort = _cohort()
    subs = [2, 4, 8, 16]
    errs = [_error(RK4(substeps=s), cohort) for s in subs]
    assert _order(errs, [1 / s for s in subs]) == pytest.approx(4.0, abs=0.25)


def test_dormand_prince_converges_with_order_five_at_fixed_steps() -> None:
    cohort = _cohort()
    hs = [1 / 2, 1 / 4, 1 / 8, 1 / 16]
    # a tolerance so loose every step is accepted: a fixed-step 5th-order RK
    errs = [_error(DormandPrince(rtol=1e3, atol=1e3, max_step=h), cohort) for h in hs]
    assert _order(errs, hs) == pytest.approx(5.0, abs=0.3)


@pytest.mark.parametrize("tol", [1e-5, 1e-7, 1e-9])
def test_dormand_prince_meets_its_tolerance(tol: float) -> None:
    err = _error(DormandPrince(rtol=tol, atol=tol), _cohort())
    # global error over 10 min stays within a small multiple of the local tolerance
    assert err < 20 * tol
    assert err > 1e-4 * tol  # and the tolerance is what limits it (not a hidden tiny step)


def test_stiff_fallback_solves_a_stiff_problem_cheaply() -> None:
    stiff = _cohort(a=2000.0, w=0.5)
    ref = exact(stiff.parameters(MODEL), TIMES)
    bdf = simulate(MODEL, stiff, None, TIMES, solver=ScipyStiff("BDF", rtol=1e-8, atol=1e-12))
    dp = simulate(MODEL, stiff, None, TIMES, solver=DormandPrince(rtol=1e-8, atol=1e-12))
    assert np.max(np.abs(bdf.values[:, :, :2] - ref)) < 1e-6
    assert np.max(np.abs(dp.values[:, :, :2] - ref)) < 1e-6
    assert bdf.meta["rhs_evaluations"] < dp.meta["rhs_evaluations"] / 5


def test_stiff_fallback_agrees_with_dopri_on_uva_padova() -> None:
    from medtwin.models.glucose.subjects import uva_padova_cohort
    from medtwin.models.glucose.uva_padova import UVAPadova

    cohort = uva_padova_cohort(["adult#002", "child#001"])
    schedule = Schedule().with_meal(5, 30).with_bolus(6, 3.0)
    times = np.arange(0.0, 91.0, 5)
    a = simulate(UVAPadova(), cohort, schedule, times, solver=ScipyStiff("BDF", rtol=1e-8,
                                                                         atol=1e-8))
    b = simulate(UVAPadova(), cohort, schedule, times, solver=DormandPrince(rtol=1e-9,
                                                                            atol=1e-9))
    np.testing.assert_allclose(a["G_plasma"], b["G_plasma"], rtol=1e-5)
    assert np.max(b["G_plasma"][:, -1] - b["G_plasma"][:, 0]) > 5  # the meal did something


def test_forcing_is_held_constant_over_each_input_step() -> None:
    # x1' = u with a = w = 0: a bolus of 3 units over one 1-min step adds exactly 3
    cohort = _cohort(a=0.0, w=0.0)
    sched = Schedule().with_bolus(4, 3.0, subject="s1")
    res = simulate(MODEL, cohort, sched, TIMES, solver=DormandPrince())
    np.testing.assert_allclose(res["x1"][0], [1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4], atol=1e-12)
    np.testing.assert_allclose(res["x1"][1], -0.5, atol=1e-12)


def test_solver_failure_names_subject_and_time() -> None:
    blowup = _cohort(a=-1000.0, w=0.0)  # RK4 grows ~4e10-fold per step: overflows
    with pytest.raises(SimulationError, match=r"subject 's1' at t=\d"):
        simulate(MODEL, blowup, None, np.arange(0.0, 60.0), solver=RK4(substeps=1))


def test_bad_solver_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        DormandPrince(rtol=0)
    with pytest.raises(ValidationError):
        RK4(substeps=0)
    with pytest.raises(ValidationError, match="BDF, Radau or LSODA"):
        ScipyStiff("Euler")
