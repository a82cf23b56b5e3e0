"""Basal-bolus and PID controllers, the registry by name, and closed-loop behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.core.errors import NotFoundError
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.devices.controllers import PID, BasalBolus, controller_names, make_controller
from medtwin.models.glucose.loop import ControllerInput
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova

IDS = ("adult#001", "child#001", "adolescent#001")


def _obs(glucose: list[float], meal: list[float], t: float = 0.0) -> ControllerInput:
    return ControllerInput(t, np.array(glucose, float), np.array(meal, float), IDS)


def test_basal_bolus_follows_the_peer_formula() -> None:
    cohort = uva_padova_cohort(list(IDS))
    bb = BasalBolus()
    bb.reset(cohort)
    a = bb(_obs([120.0, 200.0, 151.0], [50.0, 30.0, 0.0]))
    cr, cf = cohort.column("CR [g/U]"), cohort.column("CF [mg/dL/U]")
    basal = cohort.column("u2ss [pmol/kg/min]") * cohort.column("BW [kg]") / 6000
    np.testing.assert_allclose(a.basal, basal)
    assert a.basal[0] == pytest.approx(0.0211227, rel=1e-5)  # adult#001
    # no correction at 120; correction (200-140)/CF at 200; no meal -> no bolus at all
    np.testing.assert_allclose(a.bolus, [50 / cr[0], 30 / cr[1] + 60 / cf[1], 0.0])


def test_pid_pushes_insulin_up_when_high_and_never_below_zero() -> None:
    cohort = uva_padova_cohort(list(IDS))
    pid = PID(kp=1e-3, ki=0.0, kd=0.0, target=120)
    pid.reset(cohort)
    a = pid(_obs([220.0, 120.0, 20.0], [0, 0, 0]))
    basal = cohort.column("u2ss [pmol/kg/min]") * cohort.column("BW [kg]") / 6000
    np.testing.assert_allclose(a.basal[:2], [basal[0] + 0.1, basal[1]])
    assert a.basal[2] == 0.0 and np.all(a.bolus == 0)


def test_registry_knows_names_and_refuses_unknown() -> None:
    assert controller_names() == ["basal-bolus", "pid"]
    assert isinstance(make_controller("Basal-Bolus"), BasalBolus)
    with pytest.raises(NotFoundError, match="unknown controller 'mpc'.*basal-bolus, pid"):
        make_controller("mpc")


def test_closed_loop_basal_bolus_keeps_glucose_in_range_and_pid_lowers_it() -> None:
    cohort = uva_padova_cohort(["adult#003", "adolescent#004"])
    meals = Schedule().with_meal(7 * 60, 60).with_meal(12 * 60, 70).with_meal(19 * 60, 80)
    times = np.arange(0.0, 24 * 60 + 1)
    bb = simulate(UVAPadova(), cohort, meals, times, controller=BasalBolus())
    none = simulate(UVAPadova(), cohort, meals, times, controller=make_controller(
        "pid", kp=0.0, ki=0.0, kd=0.0))  # basal only
    pid = simulate(UVAPadova(), cohort, meals, times, controller=PID())
    assert np.all(bb["G_sc"] > 54) and np.all(bb["G_sc"] < 300)
    assert np.all(bb["G_sc"].max(axis=1) < none["G_sc"].max(axis=1))
    assert np.all(pid["G_sc"].mean(axis=1) < none["G_sc"].mean(axis=1))
    total_bb = np.nansum(bb["insulin"], axis=1)
    total_basal = np.nansum(none["insulin"], axis=1)
    cr = cohort.column("CR [g/U]")
    np.testing.assert_allclose(total_bb - total_basal, 210 / cr, rtol=0.15)  # + corrections
