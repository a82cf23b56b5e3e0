"""MAP rules taken from mapbayr: a prediction of exactly 0, and the reset rules.

Each check is against an analytic optimum or a peer fit, not a saved output.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.map import ObservedData, map_estimate, reset_needed
from medtwin.core.estimate.residual import ResidualError, ResidualErrors, observation_terms
from medtwin.interop.nonmem import EventTable
from medtwin.twin.pk import PKTwin

# mapbayr-001: one compartment, first-order absorption, proportional error (variance 0.05)
ORAL = ("ID,TIME,EVID,AMT,CMT,DV,MDV\n"
        "1,0,1,100,1,.,1\n"
        "{at_dose}"
        "1,1.5,0,0,2,1.2,0\n"
        "1,6,0,0,2,0.9,0\n"
        "1,12,0,0,2,0.4,0\n")


def _table(text: str) -> EventTable:
    return EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str,
                                             keep_default_na=False))


# --- a prediction of exactly 0 -----------------------------------------------------------


@pytest.mark.parametrize("error", [ResidualError(proportional_sd=0.2),
                                   ResidualError(additive_sd=0.1, proportional_sd=0.2)])
def test_zero_prediction_has_the_variance_of_a_prediction_of_one(error):
    """mapbayr's h(): pred[pred == 0] <- 1, so var = add^2 + prop^2 and the residual is y."""
    y = np.array([0.3, 0.3, 0.3])
    f = np.array([0.0, 1.0, 1e-3])
    t = observation_terms(error, y, f, np.ones(3, bool), np.zeros(3, bool), np.ones(3))
    var1 = error.additive_sd**2 + error.proportional_sd**2
    assert t[0] == pytest.approx(math.log(var1) + 0.3**2 / var1, rel=1e-14)
    assert t[0] == pytest.approx(t[1] + (0.3**2 - 0.7**2) / var1, rel=1e-14)
    # only an exact zero is replaced: a small prediction keeps its own variance
    var_small = max(error.additive_sd**2 + (error.proportional_sd * 1e-3) ** 2, 1e-12)
    assert t[2] == pytest.approx(math.log(var_small) + (0.3 - 1e-3) ** 2 / var_small)


@pytest.mark.parametrize("dv", [0.0, 0.3])
def test_sample_at_oral_dose_time_leaves_the_estimate_of_the_other_samples(dv):
    """The oral model predicts exactly 0 at the dose time for any eta: the fit with that
    sample equals the fit without it, and its OFV is larger by log(0.05) + DV^2 / 0.05."""
    without = PKTwin("mapbayr-001").fit(_table(ORAL.format(at_dose="")))
    with_zero = PKTwin("mapbayr-001").fit(_table(ORAL.format(at_dose=f"1,0,0,0,2,{dv},0\n")))
    assert with_zero.predict(np.array([0.0]))[0, 0] == 0.0
    assert without.converged_.all() and with_zero.converged_.all()
    np.testing.assert_allclose(with_zero.eta_, without.eta_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(with_zero.cov_, without.cov_, rtol=1e-9)
    assert with_zero.ofv_[0] - without.ofv_[0] == pytest.approx(
        math.log(0.05) + dv**2 / 0.05, abs=1e-10)


def test_log_scale_sample_predicted_zero_is_refused_but_a_blq_one_is_not():
    def predict(eta):  # (S, k, q) -> (S, k, 2): a structural zero, then 5 exp(eta)
        return np.concatenate([np.zeros(eta.shape[:2] + (1,)), 5 * np.exp(eta)], axis=-1)

    err = ResidualError(additive_sd=0.2, log_scale=True)
    data = ObservedData.build(np.array([[0.1, 6.0]]))
    with pytest.raises(ValidationError) as exc:
        map_estimate(predict, data, np.eye(1) * 0.1, err)
    assert exc.value.where == "subject 0, observation 0"
    assert "log scale" in str(exc.value)
    # below the LLOQ it is a probability, which is 1 for a prediction of 0: the estimate is
    # that of the other sample alone, (log 6 - log 5) / (1 + 0.2^2 / 0.1)
    blq = ObservedData.build(np.array([[np.nan, 6.0]]), mask=np.array([[True, True]]),
                             blq=np.array([[True, False]]), lloq=0.05)
    res = map_estimate(predict, blq, np.eye(1) * 0.1, err)
    assert res.converged[0]
    assert res.eta[0, 0] == pytest.approx(math.log(6 / 5) / (1 + 0.04 / 0.1), abs=1e-9)


def test_zero_prediction_rule_applies_per_kind():
    errs = ResidualErrors((ResidualError(proportional_sd=0.2),
                           ResidualError(additive_sd=0.5)), ("parent", "metabolite"))
    data = ObservedData.build(np.array([[0.3, 0.3]]), kind=np.array([[0, 1]]))
    e = data.error(errs)
    t = observation_terms(e, data.y[:, None], np.zeros((1, 1, 2)), data.mask[:, None],
                          data.blq[:, None], data.lloq[:, None])
    np.testing.assert_allclose(t[0, 0], [math.log(0.04) + 0.09 / 0.04,
                                         math.log(0.25) + 0.09 / 0.25], rtol=1e-14)


# --- mapbayr's reset rules ---------------------------------------------------------------


def test_reset_rules_one_by_one():
    lo, hi = -np.ones((5, 2)), np.ones((5, 2))
    eta = np.array([[0.1, 0.2],     # fine
                    [0.1, 0.2],     # not converged
                    [0.1, 0.2],     # OFV equal to its start (all.equal, 1.5e-8 relative)
                    [0.3, -0.3],    # all |eta| equal
                    [1.0, 0.2]])    # on a bound
    ofv = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    start = np.array([12.0, 12.0, 10.0 * (1 + 1e-8), 12.0, 12.0])
    conv = np.array([True, False, True, True, True])
    new_start, new_bounds = reset_needed(eta, ofv, start, conv, lo, hi)
    assert new_start.tolist() == [False, True, True, True, False]
    assert new_bounds.tolist() == [False, False, False, False, True]
    # a relative change just above R's tolerance is a change
    ns, _ = reset_needed(eta[:1], ofv[:1], np.array([10.0 * (1 + 2e-8)]), conv[:1],
                         lo[:1], hi[:1])
    assert not ns[0]
    # one eta: equal |eta| is no reason
    ns, _ = reset_needed(np.array([[0.0]]), np.array([1.0]), np.array([2.0]),
                         np.array([True]), -np.ones((1, 1)), np.ones((1, 1)))
    assert not ns[0]


def _stationary_start_case():
    """f = eta^2, y = 4, additive sd 0.5, omega 1: eta = 0 is a stationary point (a local
    maximum of the posterior) where Newton cannot move; the modes are at
    eta^2 = 4 - sd^2 / (2 omega) = 3.875."""
    def predict(eta):
        return eta**2

    data = ObservedData.build(np.array([[4.0]]))
    return predict, data, np.eye(1), ResidualError(additive_sd=0.5)


def test_estimate_stuck_at_its_start_is_reset_from_prior_draws():
    predict, data, omega, err = _stationary_start_case()
    stuck = map_estimate(predict, data, omega, err, restarts=0)
    assert stuck.eta[0, 0] == 0.0 and stuck.restarts[0] == 0
    res = map_estimate(predict, data, omega, err)
    assert res.restarts[0] == 1 and res.converged[0]
    assert abs(res.eta[0, 0]) == pytest.approx(math.sqrt(3.875), abs=1e-9)
    assert res.ofv[0] < stuck.ofv[0] - 1.0


def test_estimate_on_a_bound_widens_the_bounds_tenfold_each_reset():
    """Log-scale data 5 log-units above the typical value, sd 0.1, omega 1: the mode is
    eta = 5 / (1 + 0.1^2) = 4.9505, beyond the 99.9% bound (3.09 sd). Widening the tail
    probability 0.001 -> 1e-4 -> 1e-5 -> 1e-6 -> 1e-7 puts the bound at 3.72, 4.26, 4.75
    and 5.20: the fourth reset frees it."""
    def predict(eta):
        return 10.0 * np.exp(eta)

    data = ObservedData.build(np.array([[10.0 * math.exp(5.0)], [10.0]]),
                              mask=np.array([[True], [False]]))
    err = ResidualError(additive_sd=0.1, log_scale=True)
    res = map_estimate(predict, data, np.eye(1), err)
    assert res.restarts.tolist() == [4, 0]  # the subject without data is never reset
    assert res.converged.tolist() == [True, True]
    assert res.eta[0, 0] == pytest.approx(5.0 / 1.01, abs=1e-9)
    assert res.eta[1, 0] == 0.0
    short = map_estimate(predict, data, np.eye(1), err, restarts=2)
    assert short.restarts[0] == 2
    assert short.eta[0, 0] == pytest.approx(-ndtri(1e-5), rel=1e-12)
    assert not short.converged[0]  # still on a bound: not a posterior mode


def test_bad_settings_are_refused():
    predict, data, omega, err = _stationary_start_case()
    with pytest.raises(ValidationError):
        map_estimate(predict, data, omega, err, bound_quantile=1.0)
    with pytest.raises(ValidationError):
        map_estimate(predict, data, omega, err, max_iter=0)
