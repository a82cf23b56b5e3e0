"""The sequential filters against mathematics: the Kalman filter (linear-Gaussian, exact),
parameter recovery on an ODE, a particle filter against a fine-grid posterior; late, missing
and irregular data."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from numba import njit
from scipy.linalg import expm

from medtwin.core.errors import ValidationError
from medtwin.core.estimate import (
    EnsembleKalmanFilter,
    LearnedParameter,
    ModelDynamics,
    NoiseModel,
    ObservationModel,
    ParticleFilter,
    Reading,
    UnscentedKalmanFilter,
)
from medtwin.core.model import RHS_SIGNATURE, Model, Variable
from medtwin.core.solvers import DormandPrince


# --- a linear system with a learned forcing: z = [x1, x2, c] is linear-Gaussian ----------
@njit(RHS_SIGNATURE, cache=False)
def linear_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    dx[0] = p[0] * x[0] + p[1] * x[1] + p[4]
    dx[1] = p[2] * x[0] + p[3] * x[1]


class Linear(Model):
    """x' = A x + (c, 0): a damped oscillator driven by a constant forcing c."""

    name: ClassVar[str] = "linear-test"
    version: ClassVar[str] = "1"
    states = (Variable("x1", "1"), Variable("x2", "1"))
    parameters = (Variable("a11", "1/min"), Variable("a12", "1/min"), Variable("a21", "1/min"),
                  Variable("a22", "1/min"), Variable("c", "1/min"))
    inputs = ()
    outputs = (Variable("x1", "1"), Variable("x2", "1"))
    rhs_kernel = staticmethod(linear_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        return np.zeros((np.atleast_2d(p).shape[0], 2))

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float).copy()


A = np.array([[-0.2, 1.0], [-0.8, -0.1]])
BASE = {"a11 [1/min]": A[0, 0], "a12 [1/min]": A[0, 1], "a21 [1/min]": A[1, 0],
        "a22 [1/min]": A[1, 1], "c [1/min]": 0.5}
X0, X0_SD = np.array([1.0, -0.5]), np.array([0.6, 0.4])
C0, C_SD = 0.3, 0.5
R1, R2 = 0.3, 0.5  # reading sd of x1 and of x1 + x2
TIMES = np.array([0.4, 1.0, 1.7, 1.7, 3.0, 3.2, 4.5, 6.0, 6.1, 8.0, 9.5, 12.0])


def linear_setup(noise: float, walk: float):
    learn = [LearnedParameter("c [1/min]", C0, C_SD, transform="identity", walk_sd=walk)]
    obs = [ObservationModel("x1", "x1", NoiseModel(sd=R1)),
           ObservationModel("sum", lambda o: o["x1"] + o["x2"], NoiseModel(sd=R2))]
    dyn = ModelDynamics(Linear(), solver=DormandPrince(rtol=1e-11, atol=1e-13), dt=0.5)
    kw = dict(initial_state=X0, initial_state_sd={"x1": X0_SD[0], "x2": X0_SD[1]},
              state_noise={"x1": noise, "x2": noise} if noise else None)
    return dyn, learn, obs, kw


def linear_readings(seed: int = 3) -> list[Reading]:
    """Readings of a path of the same discrete model (c = 0.5, noise 0.2 per sqrt(min)) at
    irregular times (two at 1.7), some values missing."""
    rng = np.random.default_rng(seed)
    Abar = np.zeros((3, 3))
    Abar[:2, :2] = A
    Abar[0, 2] = 1.0
    z, t, out = np.array([X0[0], X0[1], 0.5]), 0.0, []
    for i, ti in enumerate(TIMES):
        z[:2] += 0.2 * np.sqrt(ti - t) * rng.standard_normal(2)
        z, t = expm(Abar * (ti - t)) @ z, ti
        v = {"x1": float(z[0] + R1 * rng.standard_normal()),
             "sum": float(z[0] + z[1] + R2 * rng.standard_normal())}
        if i % 3 == 1:
            v["sum"] = None
        if i % 4 == 2:
            v["x1"] = float("nan")
        out.append(Reading(float(ti), v, f"r{i}"))
    return out


def kalman(readings: list[Reading], noise: float, walk: float):
    """The exact Kalman filter of the same discrete model (noise at the interval's start)."""
    Abar = np.zeros((3, 3))
    Abar[:2, :2] = A
    Abar[0, 2] = 1.0
    m = np.array([X0[0], X0[1], C0])
    P = np.diag([X0_SD[0] ** 2, X0_SD[1] ** 2, C_SD ** 2])
    t, ll = 0.0, 0.0
    H = {"x1": (np.array([1.0, 0, 0]), R1), "sum": (np.array([1.0, 1.0, 0]), R2)}
    for r in readings:
        dt = r.time - t
        F = expm(Abar * dt)
        P = F @ (P + np.diag([noise ** 2, noise ** 2, walk ** 2]) * dt) @ F.T
        m = F @ m
        t = r.time
        for k, y in r.present().items():
            h, sd = H[k]
            s = h @ P @ h + sd ** 2
            g = P @ h / s
            ll += -0.5 * (np.log(2 * np.pi * s) + (y - h @ m) ** 2 / s)
            m = m + g * (y - h @ m)
            P = P - np.outer(g, h @ P)
    return m, P, ll


def test_ukf_is_the_kalman_filter_on_a_linear_gaussian_model():
    dyn, learn, obs, kw = linear_setup(noise=0.2, walk=0.05)
    readings = linear_readings()
    f = UnscentedKalmanFilter(dyn, BASE, learn, obs, **kw).assimilate(readings)
    m, P, ll = kalman(readings, 0.2, 0.05)
    # exact up to the solver's tolerance (rtol 1e-11)
    np.testing.assert_allclose(f.mean_, m, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f.cov_, P, rtol=0, atol=1e-8)
    assert f.log_likelihood_ == pytest.approx(ll, abs=1e-7)
    assert f.n_readings_ == len(readings)


def test_enkf_with_exact_prior_moments_is_the_kalman_filter_without_process_noise():
    dyn, learn, obs, kw = linear_setup(noise=0.0, walk=0.0)
    readings = linear_readings()
    f = EnsembleKalmanFilter(dyn, BASE, learn, obs, n_members=16, exact_moments=True, **kw)
    f.assimilate(readings)
    m, P, ll = kalman(readings, 0.0, 0.0)
    z = f._s["z"]
    # the adjustment filter moves the ensemble's mean and covariance exactly as the KF does
    np.testing.assert_allclose(z.mean(axis=0), m, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f.ensemble_covariance_, P, rtol=0, atol=1e-8)
    assert f.log_likelihood_ == pytest.approx(ll, abs=1e-7)


@pytest.mark.parametrize("members", [500, 4000])
def test_enkf_converges_to_the_kalman_filter_with_process_noise(members):
    """With process noise drawn per member the ensemble is Monte Carlo: its mean and
    covariance approach the KF's as 1/sqrt(N). Largest errors over seeds 0-5 (KF sds
    0.20-0.31): N=500 mean 0.028, covariance 0.0054; N=4000 mean 0.0087, covariance 0.0035.
    Tolerances: 1.5x those."""
    dyn, learn, obs, kw = linear_setup(noise=0.2, walk=0.05)
    readings = linear_readings()
    f = EnsembleKalmanFilter(dyn, BASE, learn, obs, n_members=members, exact_moments=True,
                             **kw).assimilate(readings)
    m, P, _ = kalman(readings, 0.2, 0.05)
    tol = {500: (0.042, 0.0081), 4000: (0.013, 0.0053)}[members]
    assert np.max(np.abs(f._s["z"].mean(axis=0) - m)) < tol[0]
    assert np.max(np.abs(f.ensemble_covariance_ - P)) < tol[1]


@pytest.mark.parametrize("kind", ["enkf", "ukf", "pf"])
def test_a_late_reading_is_refiltered_to_the_in_order_result(kind):
    dyn, learn, obs, kw = linear_setup(noise=0.2, walk=0.05)
    readings = linear_readings()
    make = {"enkf": lambda: EnsembleKalmanFilter(dyn, BASE, learn, obs, n_members=32, **kw),
            "ukf": lambda: UnscentedKalmanFilter(dyn, BASE, learn, obs, **kw),
            "pf": lambda: ParticleFilter(dyn, BASE, learn, obs, n_particles=300, **kw)}[kind]
    in_order = make().assimilate(readings)
    late = make()
    held = readings[5]
    for r in readings:
        if r is not held:
            late.assimilate([r])
    late.assimilate([held])  # arrives after 12.0, dated 3.2
    assert late.flags_ == [] and late.time_ == in_order.time_ == TIMES[-1]
    assert late.n_readings_ == in_order.n_readings_ == len(readings)
    for k in in_order._s:
        np.testing.assert_array_equal(late._s[k], in_order._s[k])
    # with the skip policy (or beyond the history) it is flagged, not assimilated
    skip = make()
    skip.late = "skip"
    skip.assimilate([r for r in readings if r is not held]).assimilate([held])
    assert [f["source_id"] for f in skip.flags_] == ["r5"]
    assert skip.n_readings_ == len(readings) - 1


def test_state_dict_round_trip_continues_bit_for_bit():
    dyn, learn, obs, kw = linear_setup(noise=0.2, walk=0.05)
    readings = linear_readings()
    a = EnsembleKalmanFilter(dyn, BASE, learn, obs, n_members=20, **kw).assimilate(readings[:6])
    saved = a.state_dict()
    a.assimilate(readings[6:])
    b = EnsembleKalmanFilter(dyn, BASE, learn, obs, n_members=20, **kw).load_state_dict(saved)
    b.assimilate(readings[6:])
    np.testing.assert_array_equal(a._s["z"], b._s["z"])


def test_bad_configuration_and_readings_are_typed_errors():
    dyn, learn, obs, kw = linear_setup(noise=0.2, walk=0.0)
    with pytest.raises(ValidationError, match="no parameter 'k"):
        EnsembleKalmanFilter(dyn, BASE, [LearnedParameter("k [1/min]", 1.0, 0.1)], obs).start()
    with pytest.raises(ValidationError, match="no observation model"):
        UnscentedKalmanFilter(dyn, BASE, learn, obs, **kw).assimilate([Reading(1.0, {"y": 1})])
    with pytest.raises(ValidationError, match="unknown state"):
        EnsembleKalmanFilter(dyn, BASE, learn, obs, state_noise={"x9": 1.0}).start()
    with pytest.raises(ValidationError, match="value > 0"):
        LearnedParameter("c [1/min]", -1.0, 0.1, transform="log")
    with pytest.raises(ValidationError, match="late-data policy"):
        ParticleFilter(dyn, BASE, learn, obs, late="later").start()


# --- parameter recovery on logistic growth: x' = r x (1 - x / K) ----------------------------
@njit(RHS_SIGNATURE, cache=False)
def logistic_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    dx[0] = p[0] * x[0] * (1.0 - x[0] / p[1])


class Logistic(Model):
    name: ClassVar[str] = "logistic-test"
    version: ClassVar[str] = "1"
    states = (Variable("x", "1"),)
    parameters = (Variable("r", "1/h"), Variable("K", "1"), Variable("x0", "1"))
    inputs = ()
    outputs = (Variable("x", "1"),)
    rhs_kernel = staticmethod(logistic_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(p)[:, 2:3], dtype=float)

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float).copy()


R_TRUE, K_TRUE, X0_TRUE = 0.3, 50.0, 2.0


def logistic_data(seed: int = 1) -> list[Reading]:
    rng = np.random.default_rng(seed)
    t = np.arange(1.0, 41.0)
    x = K_TRUE / (1 + (K_TRUE / X0_TRUE - 1) * np.exp(-R_TRUE * t))
    y = x * (1 + 0.05 * rng.standard_normal(t.size))
    return [Reading(float(a), {"x": float(b)}) for a, b in zip(t, y, strict=True)]


@pytest.mark.parametrize("kind", ["enkf", "ukf", "pf"])
def test_each_filter_recovers_the_parameters_of_an_ode(kind):
    """Prior medians 0.2 and 30 (truth 0.3 and 50), log-normal sd 0.5; 40 hourly readings
    with 5% error. Measured errors of the posterior means (data seed 1): EnKF -0.6%, -0.2%;
    UKF 0.3%, -0.2%; PF 0.5%, -0.4% (seeds 1-3: all within 2.7%)."""
    learn = [LearnedParameter("r [1/h]", 0.2, 0.5), LearnedParameter("K [1]", 30.0, 0.5)]
    obs = [ObservationModel("x", "x", NoiseModel(cv=0.05))]
    dyn = ModelDynamics(Logistic(), dt=0.25)
    base = {"r [1/h]": 0.2, "K [1]": 30.0, "x0 [1]": X0_TRUE}
    f = {"enkf": lambda: EnsembleKalmanFilter(dyn, base, learn, obs, n_members=64),
         "ukf": lambda: UnscentedKalmanFilter(dyn, base, learn, obs),
         "pf": lambda: ParticleFilter(dyn, base, learn, obs, n_particles=3000, jitter=0.1),
         }[kind]().assimilate(logistic_data())
    s = f.parameter_summary(0.95)
    for label, truth in (("r [1/h]", R_TRUE), ("K [1]", K_TRUE)):
        assert abs(s.loc[label, "mean"] / truth - 1) < 0.015, s
        assert s.loc[label, "lower"] < truth < s.loc[label, "upper"], s
    band = f.forecast([45.0, 60.0])
    x60 = band[(band.time == 60.0) & (band.output == "x")].iloc[0]
    assert x60.lower < K_TRUE < x60.upper and x60.upper - x60.lower < 5.0


# --- a particle filter on a bimodal posterior vs a fine grid -------------------------------
@njit(RHS_SIGNATURE, cache=False)
def decay_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    dx[0] = -p[0] * x[0]


class Decay(Model):
    name: ClassVar[str] = "decay-test"
    version: ClassVar[str] = "1"
    states = (Variable("x", "1"),)
    parameters = (Variable("k", "1/min"),)
    inputs = ()
    outputs = (Variable("x", "1"),)
    rhs_kernel = staticmethod(decay_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        return np.zeros((np.atleast_2d(p).shape[0], 1))

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float).copy()


def test_particle_filter_matches_a_fine_grid_posterior():
    """x' = -k x, x(0) ~ N(0.4, 1), log k ~ N(log 0.3, 0.4^2); readings of x^2 (sign lost:
    the posterior of x is bimodal), sd 0.1, at 6 irregular times; 40,000 particles,
    systematic resampling below half. Grid: 1601 x 801 points over (x0, log k). Largest
    deviations over particle seeds 5-7: P(x > 0) 0.018, E|x| 0.4%, E k 0.4%, sd k 5%."""
    t_obs = np.array([0.5, 1.2, 2.0, 3.1, 4.0, 5.5])
    x0_true, k_true, sd = -1.3, 0.25, 0.1
    rng = np.random.default_rng(11)
    y = (x0_true * np.exp(-k_true * t_obs)) ** 2 + sd * rng.standard_normal(t_obs.size)
    readings = [Reading(float(t), {"x2": float(v)}) for t, v in zip(t_obs, y, strict=True)]
    f = ParticleFilter(
        ModelDynamics(Decay(), solver=DormandPrince(rtol=1e-9, atol=1e-12), dt=0.5),
        {"k [1/min]": 0.3}, [LearnedParameter("k [1/min]", 0.3, 0.4)],
        [ObservationModel("x2", lambda o: o["x"] ** 2, NoiseModel(sd=sd))],
        initial_state=np.array([0.4]), initial_state_sd={"x": 1.0},
        n_particles=40_000, seed=5).assimilate(readings)
    # the grid posterior over (x0, log k)
    x0 = np.linspace(-4.6, 5.4, 1601)[:, None]
    lk = np.linspace(np.log(0.3) - 2.4, np.log(0.3) + 2.4, 801)[None, :]
    logp = -0.5 * (x0 - 0.4) ** 2 - 0.5 * ((lk - np.log(0.3)) / 0.4) ** 2
    for t, v in zip(t_obs, y, strict=True):
        logp = logp - 0.5 * (((x0 * np.exp(-np.exp(lk) * t)) ** 2 - v) / sd) ** 2
    w = np.exp(logp - logp.max())
    w /= w.sum()
    x_end = x0 * np.exp(-np.exp(lk) * t_obs[-1])
    grid = {"P(x>0)": float((w * (x_end > 0)).sum()),
            "E|x|": float((w * np.abs(x_end)).sum()),
            "E k": float((w * np.exp(lk)).sum())}
    grid["sd k"] = float(np.sqrt((w * (np.exp(lk) - grid["E k"]) ** 2).sum()))
    z, wp = f._weighted()
    k = np.exp(z[:, 1])
    pf = {"P(x>0)": float(wp @ (z[:, 0] > 0)), "E|x|": float(wp @ np.abs(z[:, 0])),
          "E k": float(wp @ k)}
    pf["sd k"] = float(np.sqrt(wp @ (k - pf["E k"]) ** 2))
    assert len(np.unique(z[:, 1])) > 1000  # resampled, not collapsed
    # both modes are kept (a Gaussian filter cannot), with the grid's weights
    assert 0.6 < grid["P(x>0)"] < 0.9
    assert pf["P(x>0)"] == pytest.approx(grid["P(x>0)"], abs=0.036)
    assert pf["E|x|"] == pytest.approx(grid["E|x|"], rel=0.008)
    assert pf["E k"] == pytest.approx(grid["E k"], rel=0.008)
    assert pf["sd k"] == pytest.approx(grid["sd k"], rel=0.1)
