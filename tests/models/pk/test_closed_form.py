"""Closed-form linear PK: agreement with the ODE engine, mass balance, analytic exposures."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.models.pk.closed_form import (
    CENTRAL,
    DEPOT,
    DoseArrays,
    disposition,
    steady_state_exposure,
    superpose,
)
from medtwin.models.pk.ode import (
    EffectCompartment,
    LinearPK,
    OdeDose,
    ParentMetabolite,
    emax,
    simulate_doses,
)

# CL, V, Q, V2, Q3, V3, KA
P3 = dict(CL=3.0, V=20.0, Q=5.0, V2=40.0, Q3=1.2, V3=100.0, KA=1.3)


def _disp(n_cmt, p=P3):
    args = [p["CL"], p["V"]] + ([p["Q"], p["V2"]] if n_cmt >= 2 else []) + (
        [p["Q3"], p["V3"]] if n_cmt == 3 else [])
    return disposition(*[np.array([a]) for a in args])


def _ode_params(n_cmt, p=P3):
    return np.array([[p["CL"], p["V"], p["Q"] if n_cmt >= 2 else 0.0, p["V2"],
                      p["Q3"] if n_cmt == 3 else 0.0, p["V3"], p["KA"]]])


def _doses(items):
    d = DoseArrays.empty(1, len(items))
    for j, (t, amt, dur, route, ss, ii) in enumerate(items):
        d.time[0, j], d.amt[0, j], d.dur[0, j] = t, amt, dur
        d.route[0, j], d.ss[0, j], d.ii[0, j] = route, ss, ii
    return d


def _closed(n_cmt, items, times, *, fbio=1.0, lag=0.0, integral=False):
    lam, coef = _disp(n_cmt)
    return superpose(lam, coef, np.array([P3["KA"]]), np.array([fbio]), np.array([lag]),
                     np.array([0]), _doses(items), np.atleast_2d(times), integral=integral)[0]


@pytest.mark.parametrize("n_cmt", [1, 2, 3])
def test_closed_form_agrees_with_ode(n_cmt):
    """Bolus, infusion and oral doses (lag 0.5 h, F 0.8) superposed == the integrated ODE."""
    times = np.linspace(0, 48, 97)
    closed = _closed(n_cmt, [(0.0, 500, 0, CENTRAL, 0, 0), (6.0, 1000, 2.0, CENTRAL, 0, 0),
                             (12.0, 800, 0, DEPOT, 0, 0), (30.0, 400, 0, DEPOT, 0, 0)],
                     times, fbio=0.8, lag=0.5)
    ode = simulate_doses(LinearPK(), _ode_params(n_cmt),
                         [OdeDose(0.0, 500), OdeDose(6.0, 1000, duration=2.0),
                          OdeDose(12.5, 640, "depot"), OdeDose(30.5, 320, "depot")], times)
    conc = LinearPK().observe(ode, _ode_params(n_cmt))[0, :, 0]
    np.testing.assert_allclose(closed, conc, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n_cmt", [1, 2, 3])
def test_steady_state_equals_many_repeated_doses(n_cmt):
    """SS=1 (geometric sums) == the 400th dose of a long regimen; infusion and oral."""
    tau, n = 12.0, 400
    times = (n - 1) * tau + np.linspace(0, tau, 13)
    for route, dur in ((CENTRAL, 1.5), (DEPOT, 0.0), (CENTRAL, 0.0)):
        ss = _closed(n_cmt, [((n - 1) * tau, 1000, dur, route, 1, tau)], times, lag=0.3)
        many = _closed(n_cmt, [(k * tau, 1000, dur, route, 0, 0) for k in range(n)], times,
                       lag=0.3)
        np.testing.assert_allclose(ss, many, rtol=1e-8)


@pytest.mark.parametrize("n_cmt", [1, 2, 3])
def test_auc_to_infinity_of_a_single_iv_dose_is_dose_over_cl(n_cmt):
    auc = _closed(n_cmt, [(0.0, 1000, 0, CENTRAL, 0, 0)], [1e5], integral=True)
    assert auc[0] == pytest.approx(1000 / P3["CL"], rel=1e-9)
    auc_inf = _closed(n_cmt, [(0.0, 1000, 3.0, CENTRAL, 0, 0)], [1e5], integral=True)
    assert auc_inf[0] == pytest.approx(1000 / P3["CL"], rel=1e-9)
    auc_oral = _closed(n_cmt, [(0.0, 1000, 0, DEPOT, 0, 0)], [1e5], fbio=0.6, integral=True)
    assert auc_oral[0] == pytest.approx(600 / P3["CL"], rel=1e-9)


def test_integral_matches_quadrature_of_concentrations():
    t = np.linspace(0, 30, 30001)
    items = [(0.0, 500, 0, DEPOT, 0, 0), (8.0, 700, 2.0, CENTRAL, 0, 0)]
    c = _closed(3, items, t)
    auc = _closed(3, items, t, integral=True)
    trap = np.concatenate([[0], np.cumsum(np.diff(t) * 0.5 * (c[1:] + c[:-1]))])
    np.testing.assert_allclose(auc[::1000], trap[::1000], rtol=1e-6, atol=1e-6)


def test_mass_balance_closed_form_one_compartment_oral():
    """depot + central + eliminated (CL x AUC) == F x dose at all times."""
    t = np.linspace(0, 24, 49)
    c = _closed(1, [(0.0, 1000, 0, DEPOT, 0, 0)], t, fbio=0.7)
    auc = _closed(1, [(0.0, 1000, 0, DEPOT, 0, 0)], t, fbio=0.7, integral=True)
    depot = 700 * np.exp(-P3["KA"] * t)
    np.testing.assert_allclose(depot + P3["V"] * c + P3["CL"] * auc, 700.0, rtol=1e-10)


def test_mass_balance_ode_three_compartments():
    x = simulate_doses(LinearPK(), _ode_params(3),
                       [OdeDose(0.0, 300, "depot"), OdeDose(4.0, 500, duration=3.0)],
                       np.linspace(0, 72, 37))
    total = x[0].sum(axis=1)
    expected = np.where(np.linspace(0, 72, 37) < 4.0, 300.0,
                        300.0 + 500 * np.clip((np.linspace(0, 72, 37) - 4.0) / 3.0, 0, 1))
    np.testing.assert_allclose(total, expected, rtol=1e-9)


def test_steady_state_exposure_formulas():
    lam, coef = _disp(2)
    ex = steady_state_exposure(lam, coef, np.array([P3["CL"]]), 1000.0, 12.0, 1.0)
    times = 59 * 12.0 + np.array([1.0, 12.0])
    many = _closed(2, [(k * 12.0, 1000, 1.0, CENTRAL, 0, 0) for k in range(60)], times)
    assert ex["cmax"][0] == pytest.approx(many[0], rel=1e-8)
    assert ex["cmin"][0] == pytest.approx(many[1], rel=1e-8)
    assert ex["auc24"][0] == pytest.approx(2000 / P3["CL"])


def test_vectorised_rows_equal_one_by_one():
    rng = np.random.default_rng(1)
    cl, v = rng.uniform(1, 5, 50), rng.uniform(10, 60, 50)
    lam, coef = disposition(cl, v, np.full(50, 4.0), np.full(50, 30.0))
    doses = _doses([(0.0, 1000, 1.0, CENTRAL, 0, 0), (12.0, 1000, 1.0, CENTRAL, 0, 0)])
    t = np.atleast_2d(np.linspace(0, 24, 25))
    all_rows = superpose(lam, coef, 1.0, 1.0, 0.0, np.zeros(50, int), doses, t)
    for i in (0, 17, 49):
        one = superpose(lam[i : i + 1], coef[i : i + 1], 1.0, 1.0, 0.0, np.zeros(1, int), doses, t)
        np.testing.assert_allclose(all_rows[i], one[0])


def test_parent_metabolite_mass_balance_and_metabolite_auc():
    p = np.array([[4.0, 30.0, 1.0, 0.4, 2.0, 15.0]])
    t = np.linspace(0, 200, 401)
    x = simulate_doses(ParentMetabolite(), p, [OdeDose(0.0, 1000, "depot")], t)
    np.testing.assert_allclose(x[0].sum(axis=1), 1000.0, rtol=1e-9)
    cm = ParentMetabolite().observe(x, p)[0, :, 1]
    auc = np.sum(np.diff(t) * 0.5 * (cm[1:] + cm[:-1]))
    assert auc == pytest.approx(0.4 * 1000 / 2.0, rel=1e-3)  # FM x dose / CLM


def test_effect_compartment_lags_plasma_and_reaches_emax_at_steady_state():
    p = np.array([[2.0, 20.0, 1.0, 0.3, 10.0, 50.0, 5.0, 2.0]])
    t = np.linspace(0, 200, 201)
    x = simulate_doses(EffectCompartment(), p, [OdeDose(0.0, 4000, "central", duration=200)], t)
    y = EffectCompartment().observe(x, p)[0]
    assert np.all(x[0, 1:20, 2] < y[1:20, 0])  # the effect site trails the plasma early on
    css = 4000 / 200 / 2.0
    assert x[0, -1, 2] == pytest.approx(css, rel=1e-3)
    assert y[-1, 1] == pytest.approx(float(emax(css, 10.0, 50.0, 5.0, 2.0)), rel=1e-3)
    # an Emax model never exceeds E0 + EMAX and is E0 + EMAX/2 at EC50
    assert float(emax(5.0, 10.0, 50.0, 5.0, 3.0)) == pytest.approx(35.0)
    assert y[:, 1].max() < 60.0
