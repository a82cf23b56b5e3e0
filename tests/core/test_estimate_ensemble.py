"""The batched ensemble pieces of core/estimate (what the glucose twin's filter is made of)
against mathematics: the ensemble adjustment update is the Kalman update of the ensemble's
moments, batched, masked, with per-variable reading error, frozen variables and bounds; the
process-noise terms have their exact laws over any span; propagation is one solver call."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
from numba import njit

from medtwin.core.errors import SimulationError, ValidationError
from medtwin.core.estimate.enkf import eakf_update
from medtwin.core.estimate.ensemble import (
    OrnsteinUhlenbeck,
    RandomWalk,
    crossing_probability,
    multiplied,
    propagate_batch,
)
from medtwin.core.model import RHS_SIGNATURE, Model, Variable
from medtwin.core.solvers import RK4


def ensemble(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Correlated members ``(..., N, 3)``."""
    L = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [-0.3, 0.5, 0.7]])
    return rng.standard_normal(shape + (3,)) @ L.T + np.array([1.0, -2.0, 0.5])


def test_eakf_update_is_the_kalman_update_of_the_ensemble_moments():
    rng = np.random.default_rng(1)
    z = ensemble(rng, (40,))
    h = np.array([1.0, 0.5, 0.0])
    m, P = z.mean(axis=0), np.cov(z, rowvar=False)
    y, r = 2.5, 0.4
    innov = eakf_update(z, z @ h, np.float64(y), r)
    s = h @ P @ h + r
    K = P @ h / s
    np.testing.assert_allclose(z.mean(axis=0), m + K * (y - h @ m), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.cov(z, rowvar=False), P - np.outer(K, h @ P), atol=1e-12)
    assert innov == pytest.approx(y - h @ m)


def test_batches_are_independent_and_a_masked_batch_is_left_alone():
    rng = np.random.default_rng(2)
    z = ensemble(rng, (3, 25))
    y = np.array([1.0, 3.0, -1.0])
    one = [z[b].copy() for b in range(3)]
    want = [eakf_update(one[b], one[b][:, 0], y[b], 0.3) for b in range(3)]
    before = z.copy()
    innov = eakf_update(z, z[..., 0].copy(), y, 0.3, mask=np.array([True, False, True]))
    for b in (0, 2):
        np.testing.assert_allclose(z[b], one[b], rtol=1e-13, atol=1e-13)
        assert innov[b] == pytest.approx(want[b])
    np.testing.assert_array_equal(z[1], before[1])
    assert np.isnan(innov[1])


def test_per_variable_reading_error_frozen_variables_and_bounds():
    rng = np.random.default_rng(3)
    z0 = ensemble(rng, (30,))
    hx = z0[:, 0] + 0.2 * z0[:, 1]
    # a variable that sees an inflated reading error moves as in an update with that error
    z = z0.copy()
    eakf_update(z, hx, np.float64(4.0), np.array([0.5, 0.5, 5.0]), frozen=[1])
    small, big = z0.copy(), z0.copy()
    eakf_update(small, hx, np.float64(4.0), 0.5)
    eakf_update(big, hx, np.float64(4.0), 5.0)
    np.testing.assert_array_equal(z[:, 0], small[:, 0])
    np.testing.assert_array_equal(z[:, 2], big[:, 2])
    np.testing.assert_array_equal(z[:, 1], z0[:, 1])  # frozen: learned elsewhere
    assert abs(big[:, 2].mean() - z0[:, 2].mean()) < abs(small[:, 2].mean() - z0[:, 2].mean())
    # bounds hold after the update
    zb = z0.copy()
    eakf_update(zb, hx, np.float64(-6.0), 0.1, lower=np.array([-0.5, -np.inf, -np.inf]),
                upper=np.array([np.inf, np.inf, 0.6]))
    assert zb[:, 0].min() >= -0.5 and zb[:, 2].max() <= 0.6


def test_ornstein_uhlenbeck_and_random_walk_have_their_exact_laws_over_any_span():
    rng = np.random.default_rng(4)
    ou = OrnsteinUhlenbeck(sd=2.0, tau=30.0)
    v0 = ou.draw((200_000,), rng)
    v = v0
    for span in (1.0, 7.5, 0.25, 40.0):  # irregular spans keep the stationary law
        v = ou.step(v, span, rng)
    assert np.std(v) == pytest.approx(2.0, rel=0.01)
    assert np.corrcoef(v0, v)[0, 1] == pytest.approx(math.exp(-48.75 / 30.0), abs=0.01)
    white = OrnsteinUhlenbeck(sd=1.5, tau=0.0).step(np.full(100_000, 9.0), 1.0, rng)
    assert abs(white.mean()) < 0.03 and np.std(white) == pytest.approx(1.5, rel=0.02)
    walk = RandomWalk(sd=0.1, per=60.0).step(np.zeros(200_000), 90.0, rng)
    assert np.std(walk) == pytest.approx(0.1 * math.sqrt(1.5), rel=0.01)
    for bad in (lambda: OrnsteinUhlenbeck(-1.0, 1.0), lambda: OrnsteinUhlenbeck(1.0, -1.0),
                lambda: RandomWalk(0.1, per=0.0), lambda: RandomWalk(float("nan"))):
        with pytest.raises(ValidationError):
            bad()


def test_multiplied_applies_log_multipliers_to_the_chosen_columns_only():
    base = np.arange(1.0, 2 * 3 * 4 + 1).reshape(2, 3, 4)
    theta = np.log(np.array([2.0, 0.5]))[None, None].repeat(2, 0).repeat(3, 1)
    p = multiplied(base, theta, [1, 3])
    assert p.shape == (6, 4) and p.flags.c_contiguous
    np.testing.assert_allclose(p[:, [0, 2]], base.reshape(6, 4)[:, [0, 2]])
    np.testing.assert_allclose(p[:, 1], 2.0 * base.reshape(6, 4)[:, 1])
    np.testing.assert_allclose(p[:, 3], 0.5 * base.reshape(6, 4)[:, 3])
    assert base[0, 0, 1] == 2.0  # the base is not changed


@njit(RHS_SIGNATURE, cache=False)
def decay_rhs(t, x, u, m, p, dx) -> None:  # noqa: ANN001
    dx[0] = -p[0] * x[0] + u[0]


class Decay(Model):
    """x' = -k x + u."""

    name: ClassVar[str] = "decay-test"
    version: ClassVar[str] = "1"
    states = (Variable("x", "1"),)
    parameters = (Variable("k", "1/min"),)
    inputs = (Variable("u", "1/min"),)
    outputs = (Variable("x", "1"),)
    rhs_kernel = staticmethod(decay_rhs)

    def initial_state(self, p: np.ndarray) -> np.ndarray:
        return np.ones((np.atleast_2d(p).shape[0], 1))

    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float).copy()


def test_propagate_batch_moves_every_member_of_every_batch_in_one_call():
    B, M, k = 2, 3, 10
    x = np.ones((B, M, 1)) * np.arange(1.0, M + 1)[None, :, None]
    m = np.zeros((B, M, 0))
    kk = np.array([[0.1, 0.2, 0.3], [0.05, 0.5, 1.0]])
    u = np.zeros((B, M, k, 1))
    u[1, :, :, 0] = 0.2  # a constant input for the second batch
    x0 = x.copy()
    x1, m1, path = propagate_batch(Decay(), RK4(8), 0.0, 0.5, x, m, kk[..., None], u)
    assert x1.shape == (B, M, 1) and path.shape == (B, M, k, 1)
    np.testing.assert_array_equal(path[:, :, -1], x1)
    t = k * 0.5
    want = x0[..., 0] * np.exp(-kk * t)
    want[1] += 0.2 / kk[1] * (1 - np.exp(-kk[1] * t))
    np.testing.assert_allclose(x1[..., 0], want, rtol=1e-7)
    x = x0.copy()
    bad = kk.copy()
    bad[0, 1] = np.nan
    with pytest.raises(SimulationError, match="the test ensemble failed"):
        propagate_batch(Decay(), RK4(), 0.0, 0.5, x, m, bad[..., None], u, what="test ensemble")


def test_crossing_probability_and_median_first_crossing():
    paths = np.full((2, 4, 11), 100.0)
    paths[0, 0, 3:] = 60.0
    paths[0, 1, 7:] = 60.0
    paths[0, 2, 10:] = 60.0  # beyond a horizon of 8
    prob, first = crossing_probability(paths, 70.0, 8)
    np.testing.assert_allclose(prob, [0.5, 0.0])
    assert first[0] == 5.0 and np.isnan(first[1])
