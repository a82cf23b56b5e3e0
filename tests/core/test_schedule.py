"""Schedule: general input and state events on any model, the glucose configuration, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medtwin.core.cohort import Cohort
from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.schedule import (
    InputBolus,
    InputLevel,
    InputRate,
    Meal,
    Schedule,
    StateBolus,
)
from medtwin.core.simulate import simulate
from medtwin.core.solvers import DormandPrince
from medtwin.models.glucose.uva_padova import UVAPadova
from medtwin.models.pk.ode import LinearPK

PK = LinearPK()
IDS = ("a", "b")


def _render(s: Schedule, n_steps: int = 10, dt: float = 1.0, model=PK):
    return s.render(model, IDS, 0.0, dt, n_steps)


def test_rates_levels_and_input_boluses_by_name_or_role():
    """A rate holds over its duration and overlapping rates add; a level holds until the next
    level of that input and subject; an input bolus is amount/dt over one step."""
    s = (Schedule()
         .with_rate(2, "central", 10.0, duration=3)                 # by role
         .with_rate(3, "central rate", 1.0, subject="b")            # by name, to the end
         .with_level(0, "depot", 2.0).with_level(6, "depot", 0.5, subject="a")
         .with_input_bolus(4, "depot", 8.0, subject="b"))
    r = _render(s)
    central = r.u[:, :, PK.input_index("central")]
    np.testing.assert_array_equal(central[0], [0, 0, 10, 10, 10, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(central[1], [0, 0, 10, 11, 11, 1, 1, 1, 1, 1])
    depot = r.u[:, :, PK.input_index("depot")]
    np.testing.assert_array_equal(depot[0], [2, 2, 2, 2, 2, 2, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(depot[1], [2, 2, 2, 2, 10, 2, 2, 2, 2, 2])
    # the same events on a half-step grid last as long in time
    fine = _render(s, n_steps=20, dt=0.5).u[:, :, PK.input_index("central")]
    np.testing.assert_array_equal(fine[0, 3:11], [0, 10, 10, 10, 10, 10, 10, 0])
    assert r.boluses.step.size == 0 and r.announced.sum() == 0


def test_state_boluses_are_sparse_sorted_and_applied_between_steps():
    s = (Schedule().with_state_bolus(5, "central", 100.0, subject="b")
         .with_state_bolus(2, "depot", 40.0).with_state_bolus(5, "central", 1.0, subject="b"))
    b = _render(s).boluses
    assert b.step.tolist() == [2, 2, 5, 5] and b.row.tolist() == [0, 1, 1, 1]
    assert b.chunks(12, 4) == [(0, 2), (2, 4), (4, 5), (5, 8), (8, 12)]
    x = np.zeros((2, len(PK.states)))
    assert not b.apply(x, 3) and b.apply(x, 5)
    assert x[1, 1] == 101.0 and x.sum() == 101.0


def test_a_state_bolus_through_simulate_jumps_the_state_once():
    """x' = -CL/V x with one bolus: exactly the exponential, restarted by the dose."""
    cohort = Cohort(pd.DataFrame([[2.0, 10.0, 0.0, 1.0, 0.0, 1.0, 1.0]], index=["a"],
                                 columns=list(PK.parameter_labels)))
    t = np.arange(0.0, 11.0)
    res = simulate(PK, cohort, Schedule().with_state_bolus(3, "central", 50.0), t,
                   solver=DormandPrince(rtol=1e-12, atol=1e-14))
    expected = np.where(t >= 3, 50.0 * np.exp(-0.2 * (t - 3)), 0.0)
    np.testing.assert_allclose(res["central"][0], expected, rtol=1e-10, atol=1e-14)


def test_state_bolus_with_a_controller_is_refused_not_dropped():
    class Nothing:
        sample_time = 1.0

        def reset(self, cohort):
            pass

        def __call__(self, obs):  # pragma: no cover - refused before any call
            raise AssertionError

    from medtwin.models.glucose.subjects import uva_padova_cohort

    with pytest.raises(ValidationError, match="state boluses"):
        simulate(UVAPadova(), uva_padova_cohort(["adult#001"]),
                 Schedule().with_state_bolus(2, "Gp", 10.0), np.arange(0.0, 10.0),
                 controller=Nothing())


def test_glucose_configuration_renders_as_before():
    """with_meal / with_bolus / with_basal are the general events on roles meal and insulin:
    a meal queues at 5 g/min, a bolus is over one step, basal holds, they add up."""
    m = UVAPadova()
    s = (Schedule().with_meal(1, 12).with_bolus(1, 3.0).with_basal(0, 0.02)
         .with_basal(4, 0.01, subject="b"))
    assert {type(e) for e in s.events} == {Meal, InputBolus, InputLevel}
    r = _render(s, n_steps=6, model=m)
    np.testing.assert_allclose(r.u[0, :, m.input_index("meal")], [0, 5, 5, 2, 0, 0])
    np.testing.assert_allclose(r.u[:, :, m.input_index("insulin")],
                               [[0.02, 3.02, 0.02, 0.02, 0.02, 0.02],
                                [0.02, 3.02, 0.02, 0.02, 0.01, 0.01]])
    assert r.announced[:, 1].tolist() == [12.0, 12.0]


@pytest.mark.parametrize("schedule, error, match", [
    (Schedule().with_rate(0, "oxygen", 1.0), ValidationError,
     "rate on input 'oxygen' at t=0 h.*no input named or with role 'oxygen'.*depot rate"),
    (Schedule().with_state_bolus(0, "liver", 1.0), ValidationError,
     "bolus into state 'liver'.*no state 'liver'; states: depot, central"),
    (Schedule().with_rate(1, "central", 1.0, duration=0.5), ValidationError,
     "ends not on the 1-h input grid"),
    (Schedule().with_input_bolus(12, "depot", 1.0), ValidationError, r"outside.*\[0, 10\) h"),
    (Schedule().with_level(1, "depot", 1.0, subject="zz"), NotFoundError,
     "level of input 'depot' at t=1 h for zz: unknown subject"),
])
def test_bad_events_are_refused_before_any_work(schedule, error, match):
    with pytest.raises(error, match=match):
        _render(schedule)


@pytest.mark.parametrize("event, match", [
    (InputRate(0.0, "central", math.nan), "amount must be finite"),
    (InputRate(0.0, "central", 1.0, duration=0.0), "duration must be > 0"),
    (StateBolus(math.inf, "central", 1.0), "time must be a finite number"),
    (InputLevel(0.0, "", 1.0), "needs an input name"),
    ("meal", "not a schedule event"),
])
def test_malformed_events_are_refused_at_construction(event, match):
    with pytest.raises(ValidationError, match=match):
        Schedule([event])


def test_insulin_configuration_refuses_negative_amounts_but_generic_inputs_may_be_negative():
    with pytest.raises(ValidationError, match="bolus at t=3: amount must be finite and >= 0"):
        Schedule().with_bolus(3, -1.0)
    with pytest.raises(ValidationError, match="basal"):
        Schedule().with_basal(3, -0.1)
    bleed = Schedule().with_rate(0, "central", -5.0, duration=2)  # e.g. a loss
    assert _render(bleed).u[0, :3, 1].tolist() == [-5.0, -5.0, 0.0]
