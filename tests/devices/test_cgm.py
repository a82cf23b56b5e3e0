"""CGM sensors: the peer's noise model (AR(1) on 15 min + Johnson SU + cubic interpolation),
seeding, zero-order hold and clipping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.interpolate import interp1d

from medtwin.core.controller import Sensor
from medtwin.core.errors import NotFoundError, SimulationError, ValidationError
from medtwin.devices.cgm import (
    CGMNoise,
    CGMSensor,
    SensorSpec,
    ar1_peer,
    johnson_su_transform,
    sensor_names,
    subject_generators,
)


@pytest.fixture
def glucose(reference):
    """A reader of the shared glucose reference tables (simglucose 0.2.11 outputs)."""
    return lambda name: pd.read_csv(reference / "glucose" / name)


def test_catalogue_has_the_three_sensors_with_their_sample_times():
    assert sensor_names() == ["Dexcom", "GuardianRT", "Navigator"]
    times = {n: SensorSpec.from_name(n).sample_time for n in sensor_names()}
    assert times == {"Dexcom": 3.0, "GuardianRT": 5.0, "Navigator": 1.0}
    assert SensorSpec.from_name("navigator").min == 32.0


def test_unknown_sensor_lists_known_names():
    with pytest.raises(NotFoundError, match="Dexcom, GuardianRT, Navigator"):
        CGMSensor.from_name("Libre")


def test_satisfies_the_engine_sensor_protocol():
    assert isinstance(CGMSensor.from_name("Dexcom"), Sensor)


def test_johnson_su_transform_is_scipy_johnsonsu_of_a_standard_normal():
    spec = SensorSpec.from_name("Dexcom")
    dist = stats.johnsonsu(spec.gamma, spec.delta, loc=spec.xi, scale=spec.lam)
    q = np.linspace(0.001, 0.999, 101)
    np.testing.assert_allclose(spec.transform(stats.norm.ppf(q)), dist.ppf(q), rtol=1e-10)
    z = np.random.default_rng(0).standard_normal(400_000)
    eps = johnson_su_transform(z, xi=spec.xi, lam=spec.lam, gamma=spec.gamma, delta=spec.delta)
    assert eps.mean() == pytest.approx(dist.mean(), abs=4 * dist.std() / np.sqrt(z.size))
    assert eps.std() == pytest.approx(dist.std(), rel=0.01)


def test_ar1_recursion_is_the_peers():
    z = np.array([[1.0, 2.0, -1.0]])
    e = ar1_peer(z, 0.5, np.array([4.0]))
    np.testing.assert_allclose(e, [[2.5, 2.25, 0.625]])  # e_j = 0.5 * (e_{j-1} + z_j)


def _long_noise(name: str, n_subjects: int, n_samples: int, seed: int = 3) -> np.ndarray:
    spec = SensorSpec.from_name(name)
    return CGMNoise(spec, subject_generators(n_subjects, seed)).values(0, n_samples)


def test_noise_on_the_15_min_grid_has_the_model_autocorrelation_and_marginal():
    """Noise value j sits at 3 (j + 1) min on the peer's grid, so every 5th value (j = 4, 9, ...)
    is a 15-min grid value: inverting the Johnson map there recovers the AR(1) process."""
    spec = SensorSpec.from_name("Dexcom")
    noise = _long_noise("Dexcom", 200, 2000)
    knots = noise[:, 4::5]
    e = spec.gamma + spec.delta * np.arcsinh((knots - spec.xi) / spec.lam)
    e = e[:, 5:]  # forget the N(0, 1) start; the process is stationary after a few steps
    lag1 = np.mean([np.corrcoef(r[:-1], r[1:])[0, 1] for r in e])
    assert lag1 == pytest.approx(spec.pacf, abs=0.01)
    s2 = spec.pacf**2 / (1 - spec.pacf**2)  # stationary variance of e_j = p (e_{j-1} + z_j)
    assert e.var() == pytest.approx(s2, rel=0.03)
    s = np.sqrt(s2)
    marginal = stats.johnsonsu(spec.gamma / s, spec.delta / s, loc=spec.xi, scale=spec.lam)
    eps = knots[:, 5:]
    assert eps.mean() == pytest.approx(marginal.mean(), abs=0.35)
    assert eps.std() == pytest.approx(marginal.std(), rel=0.03)


def test_sensors_share_the_15_min_grid_and_interpolate_it_with_a_cubic_spline():
    dexcom = _long_noise("Dexcom", 2, 100)  # t = 3, 6, ..., 300 min
    navigator = _long_noise("Navigator", 2, 300)  # t = 1, ..., 300 min
    guardian = _long_noise("GuardianRT", 2, 60)  # t = 5, ..., 300 min
    np.testing.assert_allclose(dexcom[:, 4::5], navigator[:, 14::15], rtol=1e-12)
    np.testing.assert_allclose(dexcom[:, 4::5], guardian[:, 2::3], rtol=1e-12)
    # inside the second batch (150..300 min) the values are scipy's cubic spline of the knots
    t15 = np.arange(150.0, 301.0, 15.0)
    knots = navigator[:, 149::15]
    spline = interp1d(t15, knots, kind="cubic", axis=1)(np.arange(151.0, 301.0))
    np.testing.assert_allclose(navigator[:, 150:], spline, rtol=1e-10, atol=1e-10)


def test_reproduces_the_peer_noise_stream_for_seed_1(glucose):
    """Exact reproduction of simglucose's ``CGMNoise(Dexcom, seed=1)`` stream.

    In ``adult_001_dexcom_seed1.csv`` the controller sees only basal insulin until the first
    meal at 07:00, so the true glucose G is flat (it drifts by < 0.01 mg/dL) over rows 0-139.
    The peer measures twice at t = 0 (row 0 records noise n0, the controller gets n1) and then
    at 3, 6, ... min (n2, n3, ...); each row averages the three 1-min zero-order-hold readings,
    so CGM_k - BG_k = (2 n_k + n_{k+1}) / 3 for k >= 1 and n0 for k = 0, up to the drift of G
    inside the 3 min (~1e-5 mg/dL).
    """
    ref = glucose("adult_001_dexcom_seed1.csv")
    fasting = ref.index[ref["CHO"].cumsum() == 0]
    assert len(fasting) == 140
    spec = SensorSpec.from_name("Dexcom")
    n = CGMNoise(spec, subject_generators(1, 1, "simglucose")).values(0, 141)[0]
    predicted = np.r_[n[0], (2 * n[1:140] + n[2:141]) / 3]
    observed = (ref["CGM"] - ref["BG"]).to_numpy()[fasting]
    np.testing.assert_allclose(observed, predicted, atol=1e-3)


def test_sensor_in_peer_mode_gives_the_readings_the_peer_recorded(glucose):
    ref = glucose("adult_001_dexcom_seed1.csv")
    sensor = CGMSensor.from_name("Dexcom", rng="simglucose")
    sensor.reset(1, 1)
    bg = ref["BG"].to_numpy()
    readings = [sensor.measure(3.0 * s, bg[s : s + 1])[0] for s in range(140)]
    held = (2 * np.array(readings[:-1]) + np.array(readings[1:])) / 3
    np.testing.assert_allclose(ref["CGM"].to_numpy()[1:140], held, atol=1e-3)


def test_same_seed_same_readings_and_streams_do_not_depend_on_the_cohort_size():
    g = np.full(5, 120.0)
    a, b = CGMSensor.from_name("Dexcom"), CGMSensor.from_name("Dexcom")
    a.reset(5, 7)
    b.reset(5, 7)
    ra = np.array([a.measure(float(t), g) for t in range(0, 600)])
    rb = np.array([b.measure(float(t), g) for t in range(0, 600)])
    np.testing.assert_array_equal(ra, rb)
    assert len({tuple(np.round(r, 9)) for r in ra[::3].T}) == 5  # subjects differ
    # subject 3 alone, with its own seed sequence, gets the same stream as in the cohort
    c = CGMSensor.from_name("Dexcom")
    c.reset(1, [np.random.SeedSequence(7, spawn_key=(3,))])
    rc = np.array([c.measure(float(t), g[:1]) for t in range(0, 600)])
    np.testing.assert_array_equal(rc[:, 0], ra[:, 3])
    d = CGMSensor.from_name("Dexcom")
    d.reset(5, 8)
    assert not np.allclose(d.measure(0.0, g), ra[0])


def test_zero_order_hold_between_samples_and_clipping():
    sensor = CGMSensor.from_name("GuardianRT")
    sensor.reset(3, 11)
    g = np.array([10.0, 150.0, 900.0])
    first = sensor.measure(0.0, g)
    assert first[0] == 39.0 and first[2] == 600.0
    for t in (1.0, 2.0, 4.0):
        np.testing.assert_array_equal(sensor.measure(t, g + 50.0), first)
    np.testing.assert_array_equal(sensor.measure(0.0, g), first)  # a repeated time: same reading
    fifth = sensor.measure(5.0, g)
    assert fifth[1] != first[1]
    lows = CGMSensor.from_name("Navigator")
    lows.reset(50, 1)
    r = np.array([lows.measure(float(t), np.full(50, 20.0)) for t in range(300)])
    assert r.min() == 32.0 and r.max() <= 600.0


def test_bad_use_is_a_typed_error():
    sensor = CGMSensor.from_name("Dexcom")
    with pytest.raises(SimulationError, match="before reset"):
        sensor.measure(0.0, np.array([100.0]))
    with pytest.raises(ValidationError, match=">= 0"):
        sensor.reset(2, -1)
    with pytest.raises(ValidationError, match="n_subjects"):
        sensor.reset(0, 1)
    with pytest.raises(ValidationError, match="one seed per subject"):
        sensor.reset(2, [1])
    sensor.reset(2, 1)
    with pytest.raises(SimulationError, match="2 subjects"):
        sensor.measure(0.0, np.array([100.0]))
