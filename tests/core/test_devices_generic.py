"""The general engine on a non-glucose model: a user's own LoopController dosing a PK model
through a GenericSensor and LimitedActuators, checked against numbers computed here
(the sensor's noise stream, delay, quantisation and limits; the actuators' rounding and
clipping; the analytic one-compartment solution for the infusion actually delivered), the
same loop compiled, and the devices' parameter validation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numba import njit

from medtwin.core.cohort import Cohort
from medtwin.core.controller import (
    CONTROLLER_SIGNATURE,
    Command,
    ControllerProgram,
    GenericSensor,
    LimitedActuator,
    LoopController,
    LoopInput,
    Sensor,
)
from medtwin.core.devices import Actuator
from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.model import OUTPUT_SIGNATURE, RHS_SIGNATURE
from medtwin.core.result import Result
from medtwin.core.simulate import simulate
from medtwin.core.solvers import DormandPrince
from medtwin.models.pk.ode import LinearPK

DT = 0.25  # h, the input step
PERIOD = 0.5  # h, the controller's and the noisy sensor's sample time
TIMES = np.arange(0.0, 24.0 + 1e-9, DT)
SEED = 7
SOLVER = DormandPrince(rtol=1e-10, atol=1e-12)
# one compartment (Q = Q3 = 0): CL [L/h], V [L]
CL = np.array([3.0, 4.5])
V = np.array([20.0, 15.0])
# the noisy sensor
# (the upper limit is not a multiple of the quantum: quantise first, then clip)
NOISE_SD, DELAY, QUANTUM, LO, HI = 0.3, 0.75, 0.1, 0.5, 8.04
# the actuators: rate rounded to 0.5 mg/h in [0, 60]; loading amount to 25 mg in [0, 200]
RATE_INC, RATE_HI, LOAD_INC, LOAD_HI = 0.5, 60.0, 25.0, 200.0
LOAD = np.array([110.0, 260.0])  # -> 100 (rounded down) and 200 (250 clipped)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    rows = [(cl, v, 0.0, 1.0, 0.0, 1.0, 1.0) for cl, v in zip(CL, V, strict=True)]
    return Cohort(pd.DataFrame(rows, index=["a", "b"], columns=list(LinearPK().parameter_labels)))


@njit(OUTPUT_SIGNATURE, cache=False)
def _pk_output(x, p, y):
    y[0] = x[1] / p[1]


class CompiledLinearPK(LinearPK):
    """LinearPK with an output kernel, so the whole loop can run compiled."""

    output_kernel = staticmethod(_pk_output)


@njit(CONTROLLER_SIGNATURE, cache=False)
def _tdm_kernel(t, sensed, announced, state, const, cmd):
    """const = target, gain, base rate, loading amount."""
    r = const[2] + const[1] * (const[0] - sensed[0])
    cmd[0] = r if r > 0.0 else 0.0
    cmd[1] = const[3] if t == 0.0 else 0.0


class Tdm:
    """A user's own proportional dosing controller (not shipped): a loading amount at t=0,
    then an infusion rate ``base + gain * (target - sensed)``; it records what it saw and
    asked for."""

    sample_time = PERIOD
    target, gain, base = 10.0, 5.0, 20.0

    def __init__(self, *, kernel: bool = False) -> None:
        self.commands = (
            Command("rate", "central rate", "rate", "mg/h", 0.0,
                    LimitedActuator(RATE_INC, 0.0, RATE_HI)),
            Command("load", "central", "amount", "mg", 0.0,
                    LimitedActuator(LOAD_INC, 0.0, LOAD_HI)),
        )
        self.kernel = kernel
        self.seen: list[LoopInput] = []
        self.asked: list[dict[str, np.ndarray]] = []

    def reset(self, cohort: Cohort) -> None:
        self.n = len(cohort)
        self.seen, self.asked = [], []

    def __call__(self, obs: LoopInput) -> dict[str, np.ndarray]:
        c = obs["conc [mg/L]"]
        rate = self.base + self.gain * (self.target - c)
        out = {"rate": np.where(rate > 0.0, rate, 0.0),
               "load": LOAD.copy() if obs.t == 0.0 else np.zeros(self.n)}
        self.seen.append(obs)
        self.asked.append(out)
        return out

    def compiled(self, cohort: Cohort) -> ControllerProgram | None:
        if not self.kernel:
            return None
        n = len(cohort)
        const = np.column_stack([np.full(n, self.target), np.full(n, self.gain),
                                 np.full(n, self.base), LOAD])
        return ControllerProgram(_tdm_kernel, np.zeros((n, 0)), const, reads=("conc [mg/L]",))


def _sensors() -> list[GenericSensor]:
    clean = GenericSensor(DT, reads="concentration", label="true conc [mg/L]", delay=DELAY)
    noisy = GenericSensor(PERIOD, reads="concentration", label="conc [mg/L]", noise_sd=NOISE_SD,
                          delay=DELAY, quantum=QUANTUM, lo=LO, hi=HI)
    return [clean, noisy]  # the controller reads the second: by label, not by position


def _run(model: LinearPK, cohort: Cohort, ctl: Tdm, compiled: bool | None) -> Result:
    return simulate(model, cohort, None, TIMES, controller=ctl, sensors=_sensors(),
                    input_step=DT, seed=SEED, compiled=compiled, solver=SOLVER)


def _expected_readings(conc: np.ndarray) -> np.ndarray:
    """The noisy sensor's readings from the true concentration, computed here: subject ``i``
    draws from ``SeedSequence(seed, spawn_key=(i,))``, sample ``k`` at ``k * PERIOD`` uses
    the ``k``-th normal of its stream and the value ``DELAY`` earlier (the first value before
    that), quantised then clipped, held between samples."""
    n, steps = conc.shape
    lag = round(DELAY / DT)
    every = round(PERIOD / DT)
    out = np.empty_like(conc)
    for i in range(n):
        z = np.random.Generator(np.random.PCG64(np.random.SeedSequence(SEED, spawn_key=(i,))))
        noise = z.standard_normal(steps // every + 1) * NOISE_SD
        for j in range(steps):
            if j % every:
                out[i, j] = out[i, j - 1]
                continue
            v = conc[i, max(j - lag, 0)] + noise[j // every]
            out[i, j] = min(max(np.round(v / QUANTUM) * QUANTUM, LO), HI)
    return out


def _one_compartment(rates: np.ndarray) -> np.ndarray:
    """Analytic concentration on the input grid for piecewise-constant infusion rates
    ``(n, n_steps)`` [mg/h] from C(0) = 0: C+ = C e^(-k dt) + R/CL (1 - e^(-k dt))."""
    n, steps = rates.shape
    decay = np.exp(-CL / V * DT)
    c = np.zeros((n, steps + 1))
    for j in range(steps):
        c[:, j + 1] = c[:, j] * decay + rates[:, j] / CL * (1.0 - decay)
    return c


@pytest.fixture(scope="module")
def python_run(cohort: Cohort) -> tuple[Result, Tdm]:
    ctl = Tdm()
    assert isinstance(ctl, LoopController)
    res = _run(LinearPK(), cohort, ctl, None)  # LinearPK has no output kernel: Python loop
    assert res.meta["compiled_loop"] is False
    return res, ctl


def test_delay_the_clean_reading_is_the_true_output_three_steps_earlier(python_run) -> None:
    res, _ = python_run
    conc, clean = res["concentration"], res["true conc [mg/L]"]
    lag = round(DELAY / DT)
    np.testing.assert_array_equal(clean[:, lag:], conc[:, :-lag])
    np.testing.assert_array_equal(clean[:, :lag], conc[:, :1].repeat(lag, axis=1))
    assert np.ptp(conc) > 1.0  # the output does move, so a wrong lag would show


def test_noisy_reading_is_noise_delay_quantum_and_limits_computed_here(python_run) -> None:
    res, _ = python_run
    got = res["conc [mg/L]"]
    np.testing.assert_allclose(got, _expected_readings(res["concentration"]), rtol=0, atol=1e-12)
    inside = got[got < HI] / QUANTUM  # multiples of the quantum, but for the clipped ones
    np.testing.assert_allclose(inside, np.round(inside), rtol=0, atol=1e-9)
    assert got.min() == LO and got.max() == HI  # both limits were hit ...
    assert (res["concentration"] > HI + 1.0).any()  # ... for true values well outside them
    held = got[:, 1::2] == got[:, 0:-1:2]  # held between 0.5-h samples
    assert held.all()


def test_actuators_round_and_clip_what_the_controller_asked(python_run) -> None:
    res, ctl = python_run
    asked_rate = np.stack([a["rate"] for a in ctl.asked], axis=1)
    asked_load = np.stack([a["load"] for a in ctl.asked], axis=1)
    rate = np.clip(np.round(asked_rate / RATE_INC) * RATE_INC, 0.0, RATE_HI)
    load = np.clip(np.round(asked_load / LOAD_INC) * LOAD_INC, 0.0, LOAD_HI)
    np.testing.assert_array_equal(load[:, 0], [100.0, 200.0])
    assert (asked_rate > RATE_HI).any() and (rate == RATE_HI).any()  # the clip was used
    assert np.any(asked_rate != rate)  # so was the rounding
    per_period = rate + load / PERIOD  # the amount is spread over the period
    every = round(PERIOD / DT)
    u = res["central rate"][:, :-1]
    np.testing.assert_allclose(u, per_period.repeat(every, axis=1), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(res["depot rate"][:, :-1], 0.0)
    assert np.isnan(res["central rate"][:, -1]).all()


def test_controller_sees_the_mean_reading_of_its_last_period(python_run) -> None:
    res, ctl = python_run
    assert [o.t for o in ctl.seen] == list(np.arange(0.0, 24.0, PERIOD))
    got = res["conc [mg/L]"]
    np.testing.assert_array_equal(ctl.seen[0]["conc [mg/L]"], got[:, 0])
    for p, obs in enumerate(ctl.seen[1:], start=1):
        np.testing.assert_allclose(obs.sensed["conc [mg/L]"], got[:, 2 * p - 1 : 2 * p + 1].mean(1),
                                   rtol=1e-15)
        assert set(obs.sensed) == {"true conc [mg/L]", "conc [mg/L]"} and obs.announced == {}


def test_concentration_is_the_analytic_solution_for_the_delivered_dose(python_run) -> None:
    res, _ = python_run
    u = res["central rate"][:, :-1]
    expected = _one_compartment(u)
    np.testing.assert_allclose(res["concentration"], expected, rtol=1e-7, atol=1e-9)
    # mass balance: what was infused is in the body or eliminated
    infused = np.concatenate([np.zeros((2, 1)), np.cumsum(u * DT, axis=1)], axis=1)
    np.testing.assert_allclose(res["central"] + res["eliminated"], infused, rtol=1e-9, atol=1e-9)


def test_the_same_user_loop_compiled_gives_the_same_numbers(cohort: Cohort, python_run) -> None:
    res, _ = python_run
    ctl = Tdm(kernel=True)
    fast = _run(CompiledLinearPK(), cohort, ctl, True)
    assert fast.meta["compiled_loop"] is True and ctl.seen == []  # no Python call per period
    slow = _run(CompiledLinearPK(), cohort, Tdm(kernel=True), False)
    assert slow.meta["compiled_loop"] is False
    for other in (slow, res):
        assert fast.variables == other.variables
        np.testing.assert_array_equal(np.isnan(fast.values), np.isnan(other.values))
        np.testing.assert_allclose(fast.values, other.values, rtol=1e-9, atol=1e-12)


def test_actuators_given_to_simulate_override_the_commands_own(cohort: Cohort) -> None:
    ctl = Tdm()
    res = simulate(LinearPK(), cohort, None, TIMES[:9], controller=ctl, sensors=_sensors(),
                   input_step=DT, seed=SEED, solver=SOLVER,
                   actuators={"rate": LimitedActuator(4.0, 0.0, 30.0)})
    asked = np.stack([a["rate"] for a in ctl.asked], axis=1)
    rate = np.clip(np.round(asked / 4.0) * 4.0, 0.0, 30.0)
    load = np.clip(np.round(LOAD / LOAD_INC) * LOAD_INC, 0.0, LOAD_HI)
    rate[:, 0] += load / PERIOD
    np.testing.assert_array_equal(res["central rate"][:, :-1], rate.repeat(2, axis=1))
    with pytest.raises(ValidationError, match="no command 'bolus'"):
        simulate(LinearPK(), cohort, None, TIMES[:9], controller=Tdm(), sensors=_sensors(),
                 input_step=DT, actuators={"bolus": LimitedActuator()})


def test_compiled_loop_refuses_a_delay_off_the_input_grid(cohort: Cohort) -> None:
    off = GenericSensor(PERIOD, reads="concentration", label="conc [mg/L]", delay=0.3)
    with pytest.raises(ValidationError, match="delay 0.3 min is not a whole number") as info:
        simulate(CompiledLinearPK(), cohort, None, TIMES, controller=Tdm(kernel=True),
                 sensor=off, input_step=DT, compiled=True)
    assert info.value.where == "sensor.delay"



def test_python_loop_refuses_a_delay_off_the_input_grid_too(cohort: Cohort) -> None:
    off = GenericSensor(PERIOD, reads="concentration", label="conc [mg/L]", delay=0.3)
    with pytest.raises(ValidationError, match="delay 0.3 min is not a whole number"):
        simulate(LinearPK(), cohort, None, TIMES, controller=Tdm(), sensor=off, input_step=DT,
                 compiled=False)

def test_a_sensor_on_an_unknown_output_or_no_output_is_refused(cohort: Cohort) -> None:
    with pytest.raises(ValidationError, match="no output 'effect'") as info:
        simulate(LinearPK(), cohort, None, TIMES, controller=Tdm(),
                 sensor=GenericSensor(reads="effect"), input_step=DT)
    assert info.value.where == "sensors[0].reads"
    with pytest.raises(ValidationError, match="no default sensed output"):
        simulate(LinearPK(), cohort, None, TIMES, controller=Tdm(), sensor=GenericSensor(),
                 input_step=DT)


# --- failures: the compiled loop reports what the Python loop reports ---------------------
@njit(RHS_SIGNATURE, cache=False)
def _breaking_rhs(t, x, u, m, p, dx):
    """One compartment whose state turns NaN from time ``p[6]`` on (the KA column)."""
    c = x[1] / p[1]
    dx[0] = 0.0
    dx[1] = u[1] - p[0] * c if t < p[6] else math.nan
    dx[2] = 0.0
    dx[3] = 0.0
    dx[4] = p[0] * c


class BreakingPK(CompiledLinearPK):
    rhs_kernel = staticmethod(_breaking_rhs)


@njit(CONTROLLER_SIGNATURE, cache=False)
def _nan_after_kernel(t, sensed, announced, state, const, cmd):
    cmd[0] = math.nan if t >= const[0] else 1.0
    cmd[1] = 0.0


class NanAfter(Tdm):
    """Asks for a NaN rate from a per-subject time on."""

    def __init__(self, at: list[float]) -> None:
        super().__init__(kernel=True)
        self.at = np.array(at)

    def __call__(self, obs: LoopInput) -> dict[str, np.ndarray]:
        return {"rate": np.where(obs.t >= self.at, np.nan, 1.0), "load": np.zeros(self.n)}

    def compiled(self, cohort: Cohort) -> ControllerProgram:
        return ControllerProgram(_nan_after_kernel, np.zeros((self.n, 0)),
                                 self.at[:, None].copy(), reads=("conc [mg/L]",))


def _failures(breaks_at: list[float], ctl: Tdm) -> list[str]:
    rows = [(3.0, 20.0, 0.0, 1.0, 0.0, 1.0, b) for b in breaks_at]
    cohort = Cohort(pd.DataFrame(rows, index=["a", "b"],
                                 columns=list(BreakingPK().parameter_labels)))
    out = []
    for compiled in (True, False):
        with pytest.raises(SimulationError) as info:
            simulate(BreakingPK(), cohort, None, TIMES, controller=ctl, sensors=_sensors(),
                     input_step=DT, seed=SEED, compiled=compiled, solver=SOLVER)
        out.append(str(info.value))
    return out


def test_solver_failure_of_the_first_subject_is_reported_alike() -> None:
    fast, slow = _failures([2.0, 1e9], Tdm(kernel=True))
    assert fast.startswith(slow)  # the compiled loop adds "(n subjects failed)" at most
    assert "failed for subject 'a' at t=2 min: the state became non-finite" in slow


def test_earliest_solver_failure_is_reported_by_the_compiled_loop() -> None:
    # 'a' breaks at 10 h, 'b' at 2 h: the Python loop stops at 2 h naming 'b'
    fast, slow = _failures([10.0, 2.0], Tdm(kernel=True))
    assert "failed for subject 'b' at t=2 min" in slow
    assert fast == slow


def test_solver_failure_before_a_bad_command_is_reported_by_the_compiled_loop() -> None:
    # 'a' asks for NaN at 10 h, 'b' breaks at 2 h: the Python loop stops at 2 h naming 'b'
    fast, slow = _failures([1e9, 2.0], NanAfter([10.0, 1e9]))
    assert "failed for subject 'b' at t=2 min" in slow
    assert "unknown failure" not in fast
    assert fast == slow


# --- the devices on their own -------------------------------------------------------------
def test_generic_sensor_and_limited_actuator_meet_the_protocols() -> None:
    assert isinstance(GenericSensor(), Sensor)
    assert isinstance(LimitedActuator(), Actuator)


def test_generic_sensor_measure_by_hand() -> None:
    s = GenericSensor(2.0, delay=1.0, quantum=0.5, lo=1.0, hi=3.0)
    s.reset(2)
    got = [s.measure(t, np.array([v, -v])) for t, v in
           enumerate([2.2, 2.7, 9.0, 0.1, 1.3, 1.6])]
    # t=0: 2.2 (delay: first value) -> 2.0; t=1 held; t=2: value at 1 = 2.7 -> 2.5;
    # t=3 held; t=4: value at 3 = 0.1 -> 0.0 -> clipped 1.0; t=5 held
    np.testing.assert_array_equal(np.array(got)[:, 0], [2.0, 2.0, 2.5, 2.5, 1.0, 1.0])
    np.testing.assert_array_equal(np.array(got)[:, 1], 1.0)  # negatives clipped up to lo
    odd = GenericSensor(1.0, quantum=1.0, lo=0.3, hi=2.7)
    odd.reset(3)  # quantised first, then clipped: the limits need not be multiples
    np.testing.assert_array_equal(odd.measure(0.0, np.array([2.6, 0.4, 1.4])), [2.7, 0.3, 1.0])


def test_generic_sensor_noise_is_per_subject_and_reproducible() -> None:
    s = GenericSensor(1.0, noise_sd=2.0)
    s.reset(3, seed=42)
    a = np.array([s.measure(t, np.zeros(3)) for t in range(5)])
    for i in range(3):
        g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(42, spawn_key=(i,))))
        np.testing.assert_array_equal(a[:, i], g.standard_normal(5) * 2.0)
    s.reset(3, seed=42)
    np.testing.assert_array_equal(np.array([s.measure(t, np.zeros(3)) for t in range(5)]), a)


def test_generic_sensor_refuses_misuse() -> None:
    s = GenericSensor(noise_sd=1.0)
    with pytest.raises(SimulationError, match="before reset"):
        s.measure(0.0, np.zeros(2))
    s.reset(2, seed=1)
    with pytest.raises(SimulationError, match="reset for 2 subjects"):
        s.measure(0.0, np.zeros(3))
    with pytest.raises(ValidationError, match=">= 0, got -1") as info:
        s.reset(2, seed=-1)
    assert info.value.where == "seed"
    with pytest.raises(ValidationError, match="3 seeds for 2 subjects"):
        s.reset(2, seed=[1, 2, 3])
    with pytest.raises(ValidationError) as info:
        s.reset(0)
    assert info.value.where == "n_subjects"


def test_limited_actuator_rounds_half_to_even_then_clips() -> None:
    a = LimitedActuator(0.5, 0.0, 2.0)
    req = np.array([0.24, 0.25, 0.26, 0.75, 1.1, 1.76, 2.3, -0.3])
    np.testing.assert_array_equal(a.deliver(req, 5.0), [0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 0.0])
    np.testing.assert_array_equal(LimitedActuator().deliver(req, 5.0), req)  # pass-through
    np.testing.assert_array_equal(LimitedActuator(0.0, -0.1, 1.0).deliver(req, 1.0),
                                  np.clip(req, -0.1, 1.0))
    assert a.program().apply(req, 5.0).tolist() == a.deliver(req, 5.0).tolist()


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("kwargs, where", [
    ({"sample_time": 0.0}, "sensor.sample_time"),
    ({"sample_time": -1.0}, "sensor.sample_time"),
    ({"sample_time": NAN}, "sensor.sample_time"),
    ({"sample_time": INF}, "sensor.sample_time"),
    ({"noise_sd": -0.1}, "sensor.noise_sd"),
    ({"noise_sd": NAN}, "sensor.noise_sd"),
    ({"noise_sd": INF}, "sensor.noise_sd"),
    ({"delay": -1.0}, "sensor.delay"),
    ({"delay": INF}, "sensor.delay"),
    ({"quantum": -0.5}, "sensor.quantum"),
    ({"quantum": NAN}, "sensor.quantum"),
    ({"lo": 5.0, "hi": 5.0}, "sensor limits"),
    ({"lo": 6.0, "hi": 5.0}, "sensor limits"),
    ({"lo": NAN}, "sensor limits"),
    ({"hi": NAN}, "sensor limits"),
])
def test_generic_sensor_refuses_bad_parameters_naming_the_field(kwargs: dict,
                                                                where: str) -> None:
    sample_time = kwargs.pop("sample_time", 1.0)
    with pytest.raises(ValidationError) as info:
        GenericSensor(sample_time, **kwargs)
    assert info.value.where == where
    assert str(info.value).startswith(f"{where}: ")


@pytest.mark.parametrize("args, where", [
    ((-0.5,), "actuator.increment"),
    ((NAN,), "actuator.increment"),
    ((INF,), "actuator.increment"),
    ((0.1, 2.0, 1.0), "actuator limits"),
    ((0.1, NAN, 1.0), "actuator limits"),
    ((0.1, 0.0, NAN), "actuator limits"),
])
def test_limited_actuator_refuses_bad_parameters_naming_the_field(args: tuple,
                                                                  where: str) -> None:
    with pytest.raises(ValidationError) as info:
        LimitedActuator(*args)
    assert info.value.where == where


def test_limited_actuator_accepts_equal_limits() -> None:
    np.testing.assert_array_equal(LimitedActuator(0.0, 1.0, 1.0).deliver(np.array([0.0, 9.0]),
                                                                          1.0), [1.0, 1.0])
