"""The compiled closed loop (core/loop.py) and the Python loop (core/simulate.py) give the same
numbers, and the same typed error when a controller asks for a bad command.

Every column of the result (states, outputs, inputs with the delivered commands, sensor
readings) is compared, for the shipped glucose controllers with an ideal sensor, a Dexcom-like
CGM (both noise streams) and a noisy, delayed, quantised, limited :class:`GenericSensor`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from medtwin.core.cohort import Cohort
from medtwin.core.controller import (
    CONTROLLER_SIGNATURE,
    Command,
    ControllerProgram,
    GenericSensor,
    IdealSensor,
    LoopInput,
)
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.loop import SEGMENT_STEPS
from medtwin.core.result import Result
from medtwin.core.schedule import Schedule
from medtwin.core.simulate import simulate
from medtwin.devices.cgm import CGMSensor
from medtwin.devices.controllers import PID, BasalBolus
from medtwin.devices.pump import InsulinPump
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.models.glucose.uva_padova import UVAPadova

MODEL = UVAPadova()
DAY = np.arange(0.0, 24 * 60 + 1)
MEALS = Schedule().with_meal(420, 50).with_meal(720, 70).with_meal(1140, 80)
SUBJECTS = ["adult#001", "adolescent#003", "child#002"]


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return uva_padova_cohort(SUBJECTS)


def _generic() -> GenericSensor:
    return GenericSensor(5.0, noise_sd=8.0, delay=10.0, quantum=1.0, lo=40.0, hi=400.0)


SENSORS = {
    "ideal": lambda: IdealSensor(1.0),
    "dexcom-pcg64": lambda: CGMSensor.from_name("Dexcom"),
    "dexcom-simglucose": lambda: CGMSensor.from_name("Dexcom", rng="simglucose"),
    "generic": _generic,
}
CONTROLLERS = {"basal-bolus": BasalBolus, "pid": PID}


def _both(make_sensor, make_controller, cohort: Cohort, times: np.ndarray = DAY,
          schedule: Schedule = MEALS, seed: int = 3) -> tuple[Result, Result]:
    out = []
    for compiled in (True, False):
        r = simulate(MODEL, cohort, schedule, times, controller=make_controller(),
                     sensor=make_sensor(), pump=InsulinPump.from_name("Insulet"), seed=seed,
                     compiled=compiled)
        assert r.meta["compiled_loop"] is compiled  # no silent fallback either way
        out.append(r)
    return out[0], out[1]


def _assert_same(a: Result, b: Result) -> None:
    assert a.variables == b.variables and a.subjects == b.subjects
    np.testing.assert_array_equal(a.times, b.times)
    # NaN only where both have it (the input row after the last step)
    np.testing.assert_array_equal(np.isnan(a.values), np.isnan(b.values))
    for j, name in enumerate(a.variables):
        np.testing.assert_allclose(a.values[:, :, j], b.values[:, :, j], rtol=1e-9, atol=1e-12,
                                   err_msg=f"column {name!r} differs")


@pytest.mark.parametrize("ctl", sorted(CONTROLLERS))
@pytest.mark.parametrize("sensor", sorted(SENSORS))
def test_compiled_and_python_loops_agree_over_a_day(cohort: Cohort, sensor: str,
                                                    ctl: str) -> None:
    a, b = _both(SENSORS[sensor], CONTROLLERS[ctl], cohort)
    _assert_same(a, b)
    cgm, g_sc, insulin = a["CGM"], a["G_sc"], a["insulin"]
    assert np.isfinite(cgm).all() and np.isfinite(g_sc).all()
    # the loop did something worth comparing: insulin was delivered and glucose moved
    assert np.nanmax(insulin) > 0 and np.ptp(g_sc, axis=1).min() > 5.0
    if sensor == "ideal":
        np.testing.assert_array_equal(cgm, g_sc)
    else:  # the sensor's noise reached the controller in both loops
        assert np.abs(cgm - g_sc).max() > 1.0
    if sensor == "generic":
        assert np.all(cgm == np.round(cgm)) and cgm.min() >= 40 and cgm.max() <= 400
    if ctl == "basal-bolus":  # the meal boluses went through the pump: insulin above basal
        assert (insulin[:, :-1] > insulin[:, :1] + 1e-6).any(axis=1).all()


def test_loops_agree_across_segments_with_odd_period_and_delay() -> None:
    """Longer than one compiled segment, with a 7-min period that does not divide it: the
    sensor's delay history, its noise and the PID state carry over segment boundaries."""
    seg_days = SEGMENT_STEPS / 1440
    times = np.arange(0.0, math.ceil(seg_days + 0.5) * 1440 + 1)
    one = uva_padova_cohort(["adolescent#001"])
    sched = Schedule()
    for day in range(int(times[-1] // 1440)):
        sched = sched.with_meal(day * 1440 + 420, 60).with_meal(day * 1440 + 1140, 80)

    def sensor() -> GenericSensor:
        return GenericSensor(7.0, noise_sd=5.0, delay=13.0, quantum=2.0, lo=40.0, hi=400.0)

    a, b = _both(sensor, PID, one, times=times, schedule=sched, seed=11)
    _assert_same(a, b)
    assert times[-1] > SEGMENT_STEPS


def test_same_seed_same_run_different_seed_different_noise(cohort: Cohort) -> None:
    a, _ = _both(_generic, BasalBolus, cohort, seed=5)
    again = simulate(MODEL, cohort, MEALS, DAY, controller=BasalBolus(), sensor=_generic(),
                     pump=InsulinPump.from_name("Insulet"), seed=5, compiled=True)
    other = simulate(MODEL, cohort, MEALS, DAY, controller=BasalBolus(), sensor=_generic(),
                     pump=InsulinPump.from_name("Insulet"), seed=6, compiled=True)
    np.testing.assert_array_equal(a.values, again.values)
    assert not np.array_equal(a["CGM"], other["CGM"])


# --- the bad-command path: same typed error, same text, in both loops ------------------
def _error(make_controller, cohort: Cohort, schedule: Schedule | None,
           compiled: bool) -> SimulationError:
    with pytest.raises(SimulationError) as info:
        simulate(MODEL, cohort, schedule, DAY, controller=make_controller(),
                 sensor=IdealSensor(), pump=InsulinPump.from_name("Insulet"), seed=1,
                 compiled=compiled)
    return info.value


def test_shipped_pid_with_nan_gain_stops_with_the_same_error(cohort: Cohort) -> None:
    def nan_pid() -> PID:
        return PID(kp=float("nan"))

    fast, slow = (_error(nan_pid, cohort, None, c) for c in (True, False))
    assert type(fast) is type(slow) is SimulationError
    assert str(fast) == str(slow)
    assert str(fast) == ("controller returned basal = nan for subject 'adult#001' at t=0 min "
                         "(must be finite and >= 0); 3 subject(s) affected")


def test_shipped_basal_bolus_asking_a_negative_bolus_names_the_subject(cohort: Cohort) -> None:
    """A correction target far above glucose makes the meal bolus negative; only child#002
    eats, so only it fails, one sample (1 min) after its meal."""
    def bad_bb() -> BasalBolus:
        return BasalBolus(target=1000.0, correction_above=0.0)

    meal = Schedule().with_meal(60, 50, subject="child#002")
    fast, slow = (_error(bad_bb, cohort, meal, c) for c in (True, False))
    assert type(fast) is type(slow) is SimulationError
    assert str(fast) == str(slow)
    assert "controller returned bolus = -" in str(fast)
    assert "for subject 'child#002' at t=61 min (must be finite and >= 0); 1 subject(s)" \
        in str(fast)


@njit(CONTROLLER_SIGNATURE, cache=False)
def _faulty_kernel(t, sensed, announced, state, const, cmd):
    """const = (time it goes bad, value it then asks for, normal rate)."""
    cmd[0] = const[1] if t >= const[0] else const[2]


class Faulty:
    """A user's generic controller with a compiled kernel, going bad per subject."""

    sample_time = 5.0

    def __init__(self, bad_at: list[float], value: float, minimum: float) -> None:
        self.bad_at = np.array(bad_at)
        self.value = value
        self.commands = (Command("rate", "insulin", "rate", "U/min", minimum),)

    def reset(self, cohort: Cohort) -> None:
        self.n = len(cohort)

    def __call__(self, obs: LoopInput) -> dict[str, np.ndarray]:
        return {"rate": np.where(obs.t >= self.bad_at, self.value, 0.02)}

    def compiled(self, cohort: Cohort) -> ControllerProgram:
        const = np.column_stack([self.bad_at, np.full(self.n, self.value),
                                 np.full(self.n, 0.02)])
        return ControllerProgram(_faulty_kernel, np.zeros((self.n, 0)), const)


@pytest.mark.parametrize("value, minimum, word", [
    (float("nan"), -math.inf, "nan"),
    (float("inf"), 0.0, "inf"),
    (-0.5, 0.0, "-0.5"),
])
def test_user_compiled_controller_bad_command_same_error_as_python(
        cohort: Cohort, value: float, minimum: float, word: str) -> None:
    # adult#001 goes bad at 50, child#002 at 30 and adolescent#003 never: both loops stop at
    # the earliest failure (the compiled one runs subjects independently and must pick it)
    bad_at = [50.0, math.inf, 30.0]
    errors = []
    for compiled in (True, False):
        with pytest.raises(SimulationError) as info:
            simulate(MODEL, cohort, None, DAY, controller=Faulty(bad_at, value, minimum),
                     sensor=IdealSensor(), compiled=compiled)
        errors.append(info.value)
    fast, slow = errors
    assert type(fast) is type(slow) is SimulationError
    assert str(fast) == str(slow)
    bound = "" if minimum == -math.inf else " and >= 0"
    assert str(fast) == (f"controller returned rate = {word} for subject 'child#002' at t=30 min "
                         f"(must be finite{bound}); 1 subject(s) affected")


def test_user_compiled_controller_that_stays_good_agrees_with_python(cohort: Cohort) -> None:
    runs = [simulate(MODEL, cohort, MEALS, DAY, controller=Faulty([math.inf] * 3, 0.0, 0.0),
                     sensor=IdealSensor(5.0), compiled=c) for c in (True, False)]
    assert [r.meta["compiled_loop"] for r in runs] == [True, False]
    _assert_same(*runs)
    np.testing.assert_array_equal(runs[0]["insulin"][:, :-1], 0.02)


def test_compiled_true_refuses_what_it_cannot_compile(cohort: Cohort) -> None:
    class PythonOnly(BasalBolus):
        def __call__(self, obs):
            return super().__call__(obs)

    with pytest.raises(ValidationError, match="compiled: controller .* no compiled program"):
        simulate(MODEL, cohort, None, DAY, controller=PythonOnly(), compiled=True)
    r = simulate(MODEL, cohort, None, DAY[:61], controller=PythonOnly())  # auto: Python
    assert r.meta["compiled_loop"] is False
