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
    and CVP ~1.95 mmHg (Pulse: 2-6 mmHg). The equations and every value match the authors'
    code as encoded in CellML (see ``data/README.md``), so this is the published model, not a
    bug; the model has no atria and carries only the 1.5 L stressed volume. Not tuned away:
    this test pins the deviation so that a change is noticed."""
    assert 110.0 < rest["LVEDV"] < 114.0
    assert 1.85 < rest["CVP"] < 2.05


def test_lvedv_shortfall_is_the_lv_diastolic_wall_not_the_blood_volume() -> None:
    """Why LVEDV stays below Pulse's 131 mL: a third more stressed volume (2000 mL instead of
    Smith's 1500) lifts LVEDV by only ~9 mL (the LV free wall's exponential EDPVR, P_0_lvf
    0.1203 mmHg, lambda_lvf 0.033/mL, stiffens quickly) while the pulmonary systolic pressure
    already reaches the top of Pulse's 15-30 mmHg range. So no stressed volume alone meets
    the LV volume range; it would take re-fitting the LV's diastolic (and systolic) wall
    parameters, for which no cited adult set is known here. (CVP enters 2-6 mmHg from about
    1520 mL on.)"""
    lo = run_beats(cardio_cohort(1), 60.0).last(5)
    hi = run_beats(cardio_cohort(1, changes={"V_stressed [mL]": 2000.0}), 60.0).last(5)
    assert 7.0 < hi["LVEDV"][0] - lo["LVEDV"][0] < 11.0
    assert hi["LVEDV"][0] < 125.0
    assert 28.5 < hi["PAS"][0] < 30.0
    assert 3.0 < hi["CVP"][0] < 4.0


# Smith 2004 experiments. The paper's model has no baroreflex, so these run with the loop open
# (``baroreflex [1] = 0``): the Smith 2004 values then hold exactly. The protocol: the open-loop
# periodic steady state (60 s from the CellML initial state), then three runs from that same
# state: unchanged, R_sys doubled, P_th -4 -> 0 mmHg.
_R_SYS = 1.0889  # Smith 2004 Table 2 [mmHg*s/mL]
_AFTER = 6.75    # s after the step: the 9th beat's end at Smith's 0.75 s period


@pytest.fixture(scope="module")
def smith_steps() -> dict[str, object]:
    open_loop = {"baroreflex [1]": 0.0}
    base = run_beats(cardio_cohort(1, changes=open_loop), 60.0)
    runs = {}
    for name, change in (("base", {}), ("R2", {"R_sys [mmHg*s/mL]": 2 * _R_SYS}),
                         ("Pth0", {"P_th [mmHg]": 0.0})):
        runs[name] = run_beats(cardio_cohort(1, changes={**open_loop, **change}), 60.0,
                               x0=base.final_state)
    return runs


def _at(r, name: str, t: float) -> float:  # noqa: ANN001
    """Output ``name`` of the beat ending closest to ``t`` s after the step."""
    ends = r["t_end"][0]
    k = int(np.nanargmin(np.abs(ends - t)))
    assert abs(ends[k] - t) < 0.05
    return float(r[name][0, k])


def test_smith_2004_doubling_systemic_resistance(smith_steps: dict) -> None:
    """Smith et al. 2004 (Med Eng Phys 26:131, abstract): doubling the systemic resistance
    raises the arterial pressure "from 120/80 to 165/130 mmHg". Baroreflex off (the paper's
    model has none). The model, identical to the authors' code (CellML), starts from 116.5/79
    and passes through 165/130 during the transient: 167.7/135.8 mmHg 6.75 s (9 beats) after
    the step, the same time at which the thoracic-pressure response equals the paper's 9%
    (next test). The PERIODIC STEADY STATE is higher, 176.4/143.7 mmHg (pinned below): volume
    moves from the vena cava (compliance 1/E_vc = 169 mL/mmHg) to the aorta over ~30 s. The
    paper's figures therefore appear to be transient values, consistent with its simulations
    spanning about 10 s (the Physiome CellML encoding, made "to recreate the published
    results", runs 14 beats = 10.5 s); the paper's time axis was not available to confirm."""
    base, high = smith_steps["base"].last(5), smith_steps["R2"]
    assert abs(base["SBP"][0] - 120) < 5 and abs(base["DBP"][0] - 80) < 3
    assert abs(_at(high, "SBP", _AFTER) - 165) < 5
    assert abs(_at(high, "DBP", _AFTER) - 130) < 8
    steady = high.last(5)
    assert 174 < steady["SBP"][0] < 179 and 141 < steady["DBP"][0] < 146
    assert steady["CO"][0] < base["CO"][0]


def test_smith_2004_thoracic_pressure(smith_steps: dict) -> None:
    """Smith et al. 2004 (abstract): raising the thoracic pressure from -4 to 0 mmHg drops the
    cardiac output by 9%. Baroreflex off. P_th acts, as in the authors' code, on the
    pericardium and the pulmonary artery and vein, not on the aorta and vena cava (in a
    throw-away variant of the equations, applying it to the vena cava as well gave 0.3%, to
    the pericardium alone 26%, at steady state: neither explains the 9%). The
    model's output falls 8.9% at 6.75 s (9 beats) after the step, the time at which the
    resistance step passes through 165/130 (previous test); at the periodic steady state it
    falls 19.1% (5.29 -> 4.28 L/min, pinned below), reached with a ~6 s time constant."""
    co0 = smith_steps["base"].last(5)["CO"][0]
    zero = smith_steps["Pth0"]
    drop = 1 - _at(zero, "CO", _AFTER) / co0
    assert abs(drop - 0.09) < 0.03
    steady = 1 - zero.last(5)["CO"][0] / co0
    assert 0.17 < steady < 0.21


def test_baroreflex_buffers_the_smith_2004_steps() -> None:
    """With the Ursino 1998 baroreflex on (the resting adult), the same steps at steady state:
    the reflex lowers the heart rate and cuts the MAP rise of a doubled systemic resistance to
    under half of the open-loop rise (open loop 97.8 -> 159.7, reflex 97.7 -> 123.8 mmHg); no
    cited figure for this combination is known, so only the direction and the buffering are
    checked."""
    def run(**ch: float) -> dict[str, float]:
        r = run_beats(cardio_cohort(1, changes=ch), 90.0)
        return {k: float(v[0]) for k, v in r.last(5).items()}

    base, high = run(), run(**{"R_sys [mmHg*s/mL]": 2 * _R_SYS})
    open_base = run(**{"baroreflex [1]": 0.0})
    open_high = run(**{"baroreflex [1]": 0.0, "R_sys [mmHg*s/mL]": 2 * _R_SYS})
    assert high["HR"] < base["HR"] - 5
    rise, open_rise = high["MAP"] - base["MAP"], open_high["MAP"] - open_base["MAP"]
    assert 0 < rise < 0.5 * open_rise


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
