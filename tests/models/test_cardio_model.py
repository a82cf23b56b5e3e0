"""The cardiovascular model (Smith 2004 + Ursino 1998): validation against cited numbers,
conservation, convergence order, steady-state detection and refusal of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.simulate import simulate
from medtwin.core.solvers import RK4, DormandPrince
from medtwin.models.cardio.beats import run_beats
from medtwin.models.cardio.parameters import cardio_cohort, parameter_table
from medtwin.models.cardio.smith_ursino import SmithUrsino


@pytest.fixture(scope="module")
def rest() -> dict[str, float]:
    r = run_beats(cardio_cohort(1), 40.0)
    return {k: float(v[0]) for k, v in r.last(5).items()}


def test_every_parameter_is_cited_data() -> None:
    t = parameter_table()
    assert len(t) == len(SmithUrsino.parameters)
    assert t["source"].str.len().min() > 5
    assert t.loc["R_sys [mmHg*s/mL]", "value"] == 1.0889  # Smith 2004 Table 2


@pytest.mark.parametrize(("name", "lo", "hi"), [
    # Pulse Physiology Engine cardiovascular validation ranges (resting adult)
    ("SBP", 100, 140), ("DBP", 60, 90), ("MAP", 70, 105), ("HR", 60, 100),
    ("SV", 55, 93), ("PAS", 15, 30), ("PAD", 4, 12), ("LVESV", 34, 66),
    ("CO", 5.6 * 0.9, 5.6 * 1.1), ("EF", 0.50, 0.60),
])
def test_resting_adult_inside_pulse_ranges(rest: dict[str, float], name: str, lo: float,
                                           hi: float) -> None:
    assert lo <= rest[name] <= hi, (name, rest[name])


def test_resting_adult_outside_pulse_ranges_with_published_parameters(rest: dict) -> None:
    """Smith 2004's published parameters give LVEDV ~112 mL (Pulse: max LV volume 131-189 mL)
    and CVP ~1.95 mmHg (Pulse: 2-6 mmHg): the model carries only the 1.5 L stressed volume and
    no atria. Not tuned away: this test pins the deviation so that a change is noticed."""
    assert 110.0 < rest["LVEDV"] < 114.0
    assert 1.85 < rest["CVP"] < 2.05


def _open_loop(**changes: float) -> dict[str, float]:
    r = run_beats(cardio_cohort(1, changes={"baroreflex [1]": 0.0, **changes}), 30.0)
    return {k: float(v[0]) for k, v in r.last(5).items()}


def test_smith_2004_doubling_systemic_resistance() -> None:
    """Smith 2004 reports 120/80 -> about 165/130 mmHg. With the published (CellML) parameters
    and the loop open as in the paper, this model gives 116.5/79 -> 176/144 mmHg: the rise is
    reproduced in direction but is ~11 (systolic) and ~14 (diastolic) mmHg larger than
    reported. Not tuned; pinned here."""
    base = _open_loop()
    high = _open_loop(**{"R_sys [mmHg*s/mL]": 2 * 1.0889})
    assert abs(base["SBP"] - 120) < 5 and abs(base["DBP"] - 80) < 3
    assert 173 < high["SBP"] < 179 and 141 < high["DBP"] < 147
    assert high["CO"] < base["CO"]


def test_smith_2004_thoracic_pressure() -> None:
    """Smith 2004 reports cardiac output falling by about 9% when thoracic pressure rises from
    -4 to 0 mmHg. With the published parameters this model's output falls by ~19%
    (5.30 -> 4.29 L/min): direction reproduced, magnitude about twice the reported one."""
    base = _open_loop()
    zero = _open_loop(**{"P_th [mmHg]": 0.0})
    drop = 1 - zero["CO"] / base["CO"]
    assert 0.17 < drop < 0.21


def test_cohort_integrates_with_the_engine_and_conserves_blood_volume() -> None:
    model = SmithUrsino()
    cohort = cardio_cohort(3, changes={"R_sys [mmHg*s/mL]": 1.2})
    t = np.arange(0, 10.0 + 1e-9, 0.01)
    r = simulate(model, cohort, None, t, solver=DormandPrince(rtol=1e-8, atol=1e-8),
                 input_step=0.01)
    vb = r["V_blood"]
    assert np.max(np.abs(vb - 1500.0)) < 1e-8
    assert r["P_ao"].max() > 100 and r["HR"].min() > 50


def test_volume_balance_with_fluid_input() -> None:
    fluid = np.array([5.0, -4.0])  # mL/s for 20 s
    r = run_beats(cardio_cohort(2), 20.0, fluid=fluid)
    np.testing.assert_allclose(r.blood_volume[:, 1] - r.blood_volume[:, 0], fluid * 20.0,
                               rtol=0, atol=1e-8)


def test_rk4_convergence_order_between_valve_events() -> None:
    """Over the first 60 ms (both atrioventricular valves open, no valve opens or closes) the
    classical RK4's global error falls 16-fold per halving of the step (order 4)."""
    model = SmithUrsino()
    cohort = cardio_cohort(2)
    t = np.array([0.0, 0.06])

    def end(sub: int) -> np.ndarray:
        return simulate(model, cohort, None, t, solver=RK4(sub), input_step=0.06).values[0, -1, :10]

    ref = simulate(model, cohort, None, t, solver=DormandPrince(rtol=1e-12, atol=1e-12),
                   input_step=0.06).values[0, -1, :10]
    errs = [np.max(np.abs(end(s) - ref)) for s in (16, 32, 64)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 3.8) & (orders < 4.3)), orders


def test_periodic_steady_state_is_detected() -> None:
    base = run_beats(cardio_cohort(1, changes={"baroreflex [1]": 0.0}), 20.0)
    assert 0 <= base.steady_beat()[0] < 10
    step = run_beats(cardio_cohort(1, changes={"baroreflex [1]": 0.0,
                                               "R_sys [mmHg*s/mL]": 2.0}), 30.0,
                     x0=base.final_state)
    k = step.steady_beat()[0]
    assert k > 3  # the pressure rises over several beats before it settles
    m = step["MAP"][0]
    assert abs(m[k + 1] - m[k]) / m[k] < 5e-3


@pytest.mark.parametrize(("label", "value"), [
    ("R_sys [mmHg*s/mL]", -1.0), ("T_ref [s]", 0.0), ("V_stressed [mL]", float("nan")),
    ("baroreflex [1]", 2.0),
])
def test_non_physiological_parameters_are_refused(label: str, value: float) -> None:
    with pytest.raises(ValidationError) as e:
        cardio_cohort(1, changes={label: value})
    assert e.value.where == label


def test_diverging_run_is_reported_not_returned() -> None:
    with pytest.raises(SimulationError, match="cardio#001"):
        run_beats(cardio_cohort(1), 10.0, fluid=np.array([-1000.0]))
