"""simulate(), Schedule, Cohort and Result: semantics and bad input refused with typed errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.core.cohort import Cohort
from medtwin.core.controller import IdealSensor, Sensor
from medtwin.core.errors import NotFoundError, SimulationError, ValidationError
from medtwin.core.schedule import Meal, Schedule
from medtwin.core.simulate import simulate
from medtwin.models.glucose.loop import ControlAction, Controller, ControllerInput, NoPump, Pump
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova

MODEL = UVAPadova()
DAY = np.arange(0.0, 24 * 60 + 1)


@pytest.fixture(scope="module")
def two() -> Cohort:
    return uva_padova_cohort(["adult#001", "child#002"])


class Constant:
    """A user's own controller in a few lines: a fixed basal, no bolus."""

    sample_time = 5.0

    def __init__(self, rate: float | np.ndarray) -> None:
        self.rate = rate
        self.calls: list[ControllerInput] = []

    def reset(self, cohort: Cohort) -> None:
        self.n = len(cohort)

    def __call__(self, obs: ControllerInput) -> ControlAction:
        self.calls.append(obs)
        return ControlAction(basal=np.broadcast_to(self.rate, (self.n,)), bolus=np.zeros(self.n))


def test_protocols_are_met_by_shipped_devices() -> None:
    assert isinstance(IdealSensor(), Sensor)
    assert isinstance(NoPump(), Pump)
    assert isinstance(Constant(0.01), Controller)


def test_meals_are_eaten_at_five_grams_a_minute_and_queue(two: Cohort) -> None:
    sched = Schedule().with_meal(10, 12).with_meal(12, 8, subject="child#002")
    u = sched.render(MODEL, two.ids, 0.0, 1.0, 30)
    cho = u.u[:, :, MODEL.input_index("meal")]
    np.testing.assert_allclose(cho[0, 9:14], [0, 5, 5, 2, 0])
    # child: 12 g at 10 then 8 g at 12 queue up: 5, 5, 5, 5, 0
    np.testing.assert_allclose(cho[1, 9:15], [0, 5, 5, 5, 5, 0])
    assert u.announced[1, 12] == 8 and u.announced.sum() == 32
    slow = Schedule().with_meal(0, 30, duration=15).render(MODEL, two.ids, 0.0, 1.0, 20)
    np.testing.assert_allclose(slow.u[0, :16, 0], [2.0] * 15 + [0.0])


def test_custom_controller_runs_every_sample_time_for_whole_cohort(two: Cohort) -> None:
    ctrl = Constant(0.02)
    res = simulate(MODEL, two, Schedule().with_meal(60, 40), np.arange(0.0, 121.0), controller=ctrl)
    assert [c.t for c in ctrl.calls] == list(np.arange(0.0, 120.0, 5.0))
    assert all(c.glucose.shape == (2,) for c in ctrl.calls)
    assert ctrl.calls[13].meal.tolist() == [40.0, 40.0]  # the 60-65 period's meal, seen at 65
    assert ctrl.calls[12].meal.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(res["insulin"][:, :-1], 0.02)
    # the controller sees the mean of the 1-min sensor readings over the last period
    cgm = res["CGM"]
    np.testing.assert_allclose(ctrl.calls[2].glucose, cgm[:, 6:11].mean(axis=1))


def test_result_tables_long_and_wide(two: Cohort) -> None:
    res = simulate(MODEL, two, Schedule().with_meal(0, 20), np.arange(0.0, 31.0, 10.0))
    wide = res.to_dataframe("wide")
    assert len(wide) == 2 * 4 and {"subject", "time", "G_sc [mg/dL]", "Gp [mg/kg]"} <= set(wide)
    long = res.to_dataframe()
    assert list(long.columns) == ["subject", "time", "variable", "value"]
    assert len(long) == 2 * 4 * len(res.variables)
    row = long[(long.subject == "child#002") & (long.time == 20) & (long.variable == "Gp [mg/kg]")]
    assert row.value.item() == res["Gp"][1, 2]
    assert res.meta["model"] == "uva-padova" and res.meta["solver"].startswith("DormandPrince")
    with pytest.raises(NotFoundError, match="no variable 'nope'"):
        res["nope"]


# --- bad input: typed errors that say what and where, before any work -----------------
def test_unknown_subject_in_schedule(two: Cohort) -> None:
    with pytest.raises(NotFoundError, match="meal at t=60 min for adult#099.*unknown subject"):
        simulate(MODEL, two, Schedule().with_meal(60, 40, subject="adult#099"), DAY)


def test_negative_meal_is_refused() -> None:
    with pytest.raises(ValidationError, match="meal at t=60.*>= 0, got -40"):
        Schedule().with_meal(60, -40)
    with pytest.raises(ValidationError):
        Schedule([Meal(time=5, grams=float("nan"))])


def test_meal_outside_window_is_refused(two: Cohort) -> None:
    with pytest.raises(ValidationError, match=r"meal at t=1500 min.*outside.*\[0, 1440\)"):
        simulate(MODEL, two, Schedule().with_meal(1500, 40), DAY)
    with pytest.raises(ValidationError, match="not on the 1-min input grid"):
        simulate(MODEL, two, Schedule().with_meal(60.5, 40), DAY)


def test_non_finite_parameter_is_refused_naming_subject_and_parameter(two: Cohort) -> None:
    bad = two.with_values("kabs [1/min]", [0.05, float("nan")])
    with pytest.raises(ValidationError, match=r"subject 'child#002'.*'kabs \[1/min\]' is nan"):
        simulate(MODEL, bad, None, DAY)
    with pytest.raises(ValidationError, match="lacks parameter column"):
        simulate(MODEL, Cohort(pd.DataFrame({"BW [kg]": [70.0]}, index=["x"])), None, DAY)


@pytest.mark.parametrize("value, word", [(np.nan, "nan"), (-0.01, "-0.01")])
def test_controller_returning_nan_or_negative_rate_stops(two: Cohort, value: float,
                                                         word: str) -> None:
    class Faulty(Constant):
        def __call__(self, obs: ControllerInput) -> ControlAction:
            rate = np.array([0.02, value if obs.t >= 30 else 0.02])
            return ControlAction(basal=rate, bolus=np.zeros(2))

    with pytest.raises(SimulationError, match=rf"basal = {word} for subject 'child#002' at t=30"):
        simulate(MODEL, two, None, DAY, controller=Faulty(0.0))


def test_bad_times_are_refused(two: Cohort) -> None:
    with pytest.raises(ValidationError, match="strictly increasing"):
        simulate(MODEL, two, None, [0.0, 10.0, 5.0])
    with pytest.raises(ValidationError, match="input grid"):
        simulate(MODEL, two, None, [0.0, 2.5])


def test_cohort_select_and_unknown_subject() -> None:
    c = uva_padova_cohort()
    assert c.select("child#00[12]").ids == ("child#001", "child#002")
    with pytest.raises(NotFoundError, match="unknown subject.*'nobody'"):
        c.select(["nobody"])
    with pytest.raises(ValidationError, match="duplicate"):
        Cohort(pd.DataFrame({"a": [1, 2]}, index=["x", "x"]))
