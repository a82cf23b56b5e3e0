"""ODE PK on the engine: simulate() with dose events against closed forms, Lambert-W, mass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.cohort import Cohort
from medtwin.core.errors import ValidationError
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.core.solvers import DormandPrince
from medtwin.models.pk.closed_form import CENTRAL, DEPOT, DoseArrays, disposition, superpose
from medtwin.models.pk.ode import (
    LinearPK,
    MichaelisMentenPK,
    OdeDose,
    dose_schedule,
    input_grid,
    michaelis_menten_bolus,
    simulate_doses,
)

TIGHT = DormandPrince(rtol=1e-11, atol=1e-12)
#: CL, V, Q, V2, Q3, V3, KA of three subjects (1, 2 and 3 compartments)
SUBJECTS = {
    "one": (3.0, 20.0, 0.0, 40.0, 0.0, 100.0, 1.3),
    "two": (4.5, 15.0, 6.0, 30.0, 0.0, 100.0, 0.8),
    "three": (2.0, 25.0, 5.0, 40.0, 1.2, 90.0, 2.1),
}


def _cohort(model, rows: dict[str, tuple[float, ...]]) -> Cohort:
    return Cohort(pd.DataFrame(list(rows.values()), index=list(rows),
                               columns=list(model.parameter_labels)))


def _closed(p: tuple[float, ...], items, times: np.ndarray) -> np.ndarray:
    cl, v, q, v2, q3, v3, ka = p
    args = [cl, v] + ([q, v2] if q > 0 else []) + ([q3, v3] if q3 > 0 else [])
    lam, coef = disposition(*[np.array([a]) for a in args])
    d = DoseArrays.empty(1, len(items))
    for j, (t, amt, dur, route) in enumerate(items):
        d.time[0, j], d.amt[0, j], d.dur[0, j], d.route[0, j] = t, amt, dur, route
    return superpose(lam, coef, np.array([ka]), np.array([1.0]), np.array([0.0]),
                     np.array([0]), d, np.atleast_2d(times))[0]


def test_cohort_of_one_two_and_three_compartments_through_simulate_equals_closed_forms():
    """One simulate() call, three subjects each with its own doses (IV bolus, infusion, oral),
    agrees with the closed forms by superposition to 1e-8 relative."""
    model = LinearPK()
    doses = {
        "one": [OdeDose(0.0, 500), OdeDose(6.0, 1000, duration=2.0), OdeDose(12.5, 640, "depot")],
        "two": [OdeDose(1.0, 800, "depot"), OdeDose(24.0, 1200, duration=1.5)],
        "three": [OdeDose(0.5, 300), OdeDose(8.0, 300), OdeDose(30.0, 900, "depot"),
                  OdeDose(36.0, 600, duration=0.5)],
    }
    sched = Schedule()
    for sid, ds in doses.items():
        sched = sched.with_events(*dose_schedule(model, ds, subject=sid).events)
    times = np.arange(0.0, 48.25, 0.25)
    res = simulate(model, _cohort(model, SUBJECTS), sched, times, solver=TIGHT, input_step=0.25)
    route = {"central": CENTRAL, "depot": DEPOT}
    for i, (sid, p) in enumerate(SUBJECTS.items()):
        closed = _closed(p, [(d.time, d.amount, d.duration, route[d.route]) for d in doses[sid]],
                         times)
        np.testing.assert_allclose(res["concentration"][i], closed, rtol=1e-8, atol=1e-10)
    # the result says what was given: the central infusion rate [mg/h] over its hours
    rate = res["central rate"][0]
    assert rate[times == 6.0].item() == pytest.approx(500.0) and rate[times == 8.0].item() == 0


def test_state_bolus_is_in_the_state_at_its_time_and_mass_balances():
    """The state at a dose time is the state after the dose (as the closed forms count it);
    depot + central + peripherals + eliminated == everything given so far."""
    model = LinearPK()
    t = np.linspace(0, 72, 145)
    x = simulate_doses(model, np.array([SUBJECTS["three"]]),
                       [OdeDose(0.0, 300, "depot"), OdeDose(4.0, 500, duration=3.0),
                        OdeDose(10.0, 250)], t)
    assert x[0, 0, 0] == 300.0
    assert x[0, t == 10.0, 1].item() - x[0, t == 9.5, 1].item() > 200
    given = 300 + 500 * np.clip((t - 4.0) / 3.0, 0, 1) + 250 * (t >= 10.0)
    np.testing.assert_allclose(x[0].sum(axis=1), given, rtol=1e-10)


@pytest.mark.parametrize("c0", [0.5, 20.0, 200.0])  # first-order, mixed, near zero-order
def test_michaelis_menten_bolus_matches_lambert_w(c0):
    """Phenytoin-like VMAX 20 mg/h, KM 4 mg/L, V 50 L: the ODE == KM W(...) to 1e-8."""
    vmax, km, v = 20.0, 4.0, 50.0
    p = np.array([[vmax, km, v, 0.0, 1.0, 1.0]])
    t = np.linspace(0, 240, 241)
    x = simulate_doses(MichaelisMentenPK(), p, [OdeDose(0.0, c0 * v)], t,
                       solver=DormandPrince(rtol=1e-12, atol=1e-14))
    conc = MichaelisMentenPK().observe(x, p)[0, :, 0]
    exact = michaelis_menten_bolus(t, c0, vmax, km, v)
    np.testing.assert_allclose(conc, exact, rtol=1e-8, atol=1e-12 * c0)
    np.testing.assert_allclose(x[0].sum(axis=1), c0 * v, rtol=1e-12)


def test_lambert_w_solution_has_the_michaelis_menten_limits():
    """The analytic solution itself: zero-order decline at C >> KM, first-order at C << KM."""
    t = np.array([0.0, 1.0, 2.0])
    high = michaelis_menten_bolus(t, 1e4, 20.0, 1e-3, 50.0)  # C >> KM: dC/dt = -VMAX/V
    np.testing.assert_allclose(np.diff(high), -20.0 / 50.0, rtol=1e-6)
    low = michaelis_menten_bolus(t, 1e-6, 20.0, 4.0, 50.0)  # C << KM: k = VMAX/(KM V)
    np.testing.assert_allclose(low, 1e-6 * np.exp(-20.0 / (4.0 * 50.0) * t), rtol=1e-6)


def test_michaelis_menten_exposure_rises_more_than_dose():
    """Saturable elimination: doubling an oral dose more than doubles the AUC; mass balances
    with a peripheral compartment and an infusion."""
    p = np.array([[20.0, 4.0, 50.0, 10.0, 80.0, 1.0]])
    t = np.linspace(0, 200, 801)
    auc = []
    for dose in (300.0, 600.0):
        x = simulate_doses(MichaelisMentenPK(), p, [OdeDose(0.0, dose, "depot"),
                                                    OdeDose(24.0, dose, duration=2.0)], t)
        np.testing.assert_allclose(x[0].sum(axis=1), dose * (1 + np.clip((t - 24) / 2, 0, 1)),
                                   rtol=1e-9)
        c = x[0, :, 1] / 50.0
        auc.append(np.sum(np.diff(t) * 0.5 * (c[1:] + c[:-1])))
    assert auc[1] / auc[0] > 2.2


def test_wrapper_picks_the_coarsest_grid_and_keeps_output_times():
    assert input_grid([0.0, 6.0, 12.5, 1.25]) == 0.25
    assert input_grid([1 / 3, 1.0]) == pytest.approx(1 / 3)
    times = [0.0, 0.75, 0.75, 3.0]  # repeated times are allowed
    x = simulate_doses(LinearPK(), np.array([SUBJECTS["one"]]), [OdeDose(3.0, 100)], times)
    assert x.shape == (1, 4, 5) and x[0, 3, 1] == 100.0 and x[0, 1, 1] == x[0, 2, 1] == 0.0


@pytest.mark.parametrize("dose, match", [
    (OdeDose(1.0, -5.0), "amount must be finite and >= 0"),
    (OdeDose(1.0, 5.0, "muscle"), "route must be one of"),
    (OdeDose(float("nan"), 5.0), "time must be finite"),
])
def test_bad_doses_are_refused_naming_the_dose(dose, match):
    with pytest.raises(ValidationError, match=rf"doses\[0\].*{match}"):
        simulate_doses(LinearPK(), np.array([SUBJECTS["one"]]), [dose], [0.0, 2.0])


def test_bad_parameter_rows_are_refused():
    with pytest.raises(ValidationError, match="rows of 7 parameters"):
        simulate_doses(LinearPK(), np.ones((1, 3)), [], [0.0, 1.0])
    with pytest.raises(ValidationError, match="'CL \\[L/h\\]' is nan"):
        simulate_doses(LinearPK(), np.array([[np.nan, 1, 0, 1, 0, 1, 1]]), [], [0.0, 1.0])


def test_a_grid_too_fine_for_memory_is_refused_with_advice():
    with pytest.raises(ValidationError, match="round them to a coarser grid"):
        simulate_doses(LinearPK(), np.array([SUBJECTS["one"]] * 20), [OdeDose(0.0, 1.0)],
                       [0.0, 1e-6 * 7, 1000.0])
