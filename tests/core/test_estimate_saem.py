"""SAEM: nlmixr2's published Theoph fit, recovery of known parameters, Dask = in-process."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medtwin.core.errors import ValidationError
from medtwin.core.estimate.map import ObservedData
from medtwin.core.estimate.residual import ResidualError, ResidualErrors
from medtwin.core.estimate.saem import SAEM
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import load_model, parse_model
from medtwin.twin.pk_population import fit_population, mu_reference, theoph_events
from medtwin.twin.pk_vpc import simulate_table

# nlmixr2 SAEM fits of theo_sd (dose in mg, etas on ka, cl, v, additive error), printed in
# nlmixr2est's README (github.com/nlmixr2/nlmixr2est, README.md at commit 042db2c):
# Ka 1.59, Cl 2.74, V 31.7; BSV 71.1 / 27.4 / 13.1 %CV; add.sd 0.696; SE of log Ka, log Cl,
# log V 0.195, 0.085, 0.0447 (linFim); subject 1 etas 0.0839, -0.477, -0.0849.
NLMIXR2EST = {"KA": 1.59, "CL": 2.74, "V": 31.7, "cv": (71.1, 27.4, 13.1), "sd": 0.696,
              "se": {"KA": 0.195, "CL": 0.085, "V": 0.0447},
              "eta1": (0.0839, -0.477, -0.0849)}
# and an earlier nlmixr2 README run (../shared/reference/pk/README.md)
NLMIXR2 = {"KA": 1.57, "CL": 2.76, "V": 31.5, "cv": (71.5, 27.6, 13.4), "sd": 0.693}

THEO_MG = {"name": "theophylline-mg", "structure": {"compartments": 1,
                                                     "absorption": "first-order"},
           "parameters": {"CL": {"value": 3.0, "eta": "eta_cl"},
                          "V": {"value": 35.0, "eta": "eta_v"},
                          "KA": {"value": 1.0, "eta": "eta_ka"}},
           "omega": {"etas": ["eta_ka", "eta_cl", "eta_v"], "variance": [0.1, 0.1, 0.1]},
           "error": {"additive_sd": 1.0}}


@pytest.fixture(scope="module")
def theo(reference):
    frame = pd.read_csv(reference / "pk" / "theoph.csv")
    return fit_population(parse_model(THEO_MG), theoph_events(frame, dose="mg"),
                          method="saem", saem=SAEM(seed=1))


@pytest.mark.parametrize("ref", [NLMIXR2EST, NLMIXR2], ids=["nlmixr2est-README", "reference"])
def test_theoph_saem_matches_nlmixr2(theo, ref):
    fe = theo.fixed_effects().set_index("parameter")["estimate"]
    for name in ("KA", "CL", "V"):  # achieved: within 1.3%
        assert fe[name] == pytest.approx(ref[name], rel=0.02), name
    cv = 100 * np.sqrt(np.exp(np.diag(theo.estimator.omega_)) - 1)
    for got, want in zip(cv, ref["cv"], strict=True):  # achieved: within 3.5%
        assert got == pytest.approx(want, rel=0.05)
    assert theo.estimator.error_.additive_sd == pytest.approx(ref["sd"], rel=0.01)


def test_theoph_standard_errors_etas_and_likelihood(theo):
    est = theo.estimator
    se = theo.fixed_effects().set_index("parameter")["rse %"] / 100  # se of log typical value
    for name, want in NLMIXR2EST["se"].items():  # FOCE-I's covariance vs nlmixr2's linFim
        assert se[name] == pytest.approx(want, rel=0.08), name
    e1 = theo.etas().iloc[0][["eta_ka", "eta_cl", "eta_v"]].to_numpy()
    assert np.abs(e1 - NLMIXR2EST["eta1"]).max() < 0.012  # achieved 0.0095 (ka)
    # -2LL by importance sampling agrees with FOCE-I's at the same estimates, and its Monte
    # Carlo error is small
    assert est.ofv_se_ < 0.2
    assert est.ofv_ == pytest.approx(est.ofv_focei_, abs=2.0)
    assert est.trace_.shape == (est.n_burn + est.n_em, 3 + 3 + 1)


def test_shared_eta_parameterisation_nlme(reference):
    """theophylline-nlme (one eta on CL and V): V's typical value has no eta of its own and
    is estimated by the numerical M-step; nlme fm3's values come back."""
    frame = pd.read_csv(reference / "pk" / "theoph.csv")
    model = load_model("theophylline-nlme")
    assert mu_reference(model, ("CL", "V", "KA")) == [2, 0]
    start = model.with_estimates({"CL": 0.05, "V": 0.5, "KA": 1.0}, np.diag([0.1, 0.1]),
                                 ResidualError(additive_sd=1.0))
    fit = fit_population(start, theoph_events(frame), method="saem", standard_errors=False,
                         saem=SAEM(seed=1))
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    nlme = {"KA": 1.593, "CL": 0.0397, "V": 0.462}
    # achieved: KA +2.4% (4 seeds), exact ML vs nlme's LME approximation
    for name, want in nlme.items():
        assert fe[name] == pytest.approx(want, rel=0.04), name
    sd = np.sqrt(np.diag(fit.estimator.omega_))
    assert sd == pytest.approx([0.6436, 0.1669], rel=0.05)
    assert fit.estimator.error_.additive_sd == pytest.approx(0.7093, rel=0.02)


# --- simulated data -----------------------------------------------------------------------
SIM = {"name": "sim-1cmt-oral", "structure": {"compartments": 1, "absorption": "first-order"},
       "parameters": {"CL": {"value": 2.0, "eta": "eta_cl"},
                      "V": {"value": 20.0, "eta": "eta_v"},
                      "KA": {"value": 1.2, "eta": "eta_ka"}},
       "omega": {"etas": ["eta_ka", "eta_cl", "eta_v"], "variance": [0.25, 0.09, 0.04]},
       "error": {"additive_sd": 0.1, "proportional_sd": 0.1}}


def _design(n: int) -> EventTable:
    rows = []
    for i in range(n):
        rows.append({"ID": i + 1, "TIME": 0.0, "EVID": 1, "AMT": (100, 200)[i % 2], "CMT": 1,
                     "DV": np.nan, "MDV": 1})
        rows += [{"ID": i + 1, "TIME": t, "EVID": 0, "AMT": 0, "CMT": 2, "DV": 1.0, "MDV": 0}
                 for t in (0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 24)]
    return EventTable.from_frame(pd.DataFrame(rows))


def test_recovers_simulated_parameters_combined_error_with_blq():
    truth = parse_model(SIM)
    data = simulate_table(truth, _design(100), seed=3, lloq=0.05)
    assert data.records["BLQ"].sum() > 0  # some samples censored: M3 in the M-step
    start = truth.with_estimates({"CL": 1.0, "V": 40.0, "KA": 0.5}, np.diag([0.1] * 3),
                                 ResidualError(0.5, 0.3))
    fit = fit_population(start, data, method="saem", standard_errors=False,
                         saem=SAEM(n_burn=100, n_em=100, seed=1))
    fe = fit.fixed_effects().set_index("parameter")["estimate"]
    for name, want in {"CL": 2.0, "V": 20.0, "KA": 1.2}.items():  # achieved: within 2.2%
        assert fe[name] == pytest.approx(want, rel=0.04), name
    assert np.diag(fit.estimator.omega_) == pytest.approx([0.25, 0.09, 0.04], rel=0.2)
    err = fit.estimator.error_
    assert (err.additive_sd, err.proportional_sd) == pytest.approx((0.1, 0.1), rel=0.06)


def _exp_decay(times: np.ndarray):
    """A model-agnostic predict: f = A exp(-k t), A and k log-normal (mu-referenced)."""
    def predict(theta: np.ndarray, eta: np.ndarray) -> np.ndarray:
        a = np.exp(theta[0] + eta[..., 0])[..., None]
        k = np.exp(theta[1] + eta[..., 1])[..., None]
        return a * np.exp(-k * times[:, None, :])

    return predict


def _exp_data(n: int = 30, seed: int = 5):
    rng = np.random.default_rng(seed)
    times = np.tile([0.5, 1, 2, 4, 8, 12], (n, 1)).astype(float)
    eta = rng.normal(0, [0.3, 0.2], size=(n, 1, 2))
    f = _exp_decay(times)(np.log([10.0, 0.2]), eta)[:, 0]
    y = f * (1 + 0.1 * rng.standard_normal(f.shape))
    return times, ObservedData.build(y)


def test_model_agnostic_proportional_error_recovery():
    times, data = _exp_data(n=60)
    est = SAEM(n_burn=100, n_em=100, seed=0, standard_errors=False).fit(
        _exp_decay(times), data, np.log([5.0, 0.5]), np.diag([0.5, 0.5]),
        ResidualError(proportional_sd=0.3), mu_index=[0, 1])
    # achieved -3.6%, -5.3% (the sample's own se of log k is ~2.6%); sds -14%, -9%; 0.4%
    assert np.exp(est.theta_) == pytest.approx([10.0, 0.2], rel=0.06)
    assert np.sqrt(np.diag(est.omega_)) == pytest.approx([0.3, 0.2], rel=0.2)
    assert est.error_.proportional_sd == pytest.approx(0.1, rel=0.03)
    assert est.error_.additive_sd == 0.0


def test_blocks_and_dask_give_identical_results():
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    times, data = _exp_data(n=12)
    predict = _exp_decay(times)

    def subset(rows: np.ndarray):
        return _exp_decay(times[rows])

    def run(**kw) -> SAEM:
        return SAEM(n_burn=15, n_em=15, n_conditional=10, n_importance=200, seed=4,
                    standard_errors=False, **kw).fit(
            predict, data, np.log([5.0, 0.5]), np.diag([0.5, 0.5]),
            ResidualError(0.05, 0.2), mu_index=[0, 1], subset=subset)

    serial = run()
    blocked = run(block_size=5)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        dask = run(client=client)
    for other in (blocked, dask):
        np.testing.assert_array_equal(other.theta_, serial.theta_)
        np.testing.assert_array_equal(other.omega_, serial.omega_)
        np.testing.assert_array_equal(other.eta_mean_, serial.eta_mean_)
        assert other.error_ == serial.error_
        assert other.ofv_ == serial.ofv_
    assert not np.array_equal(run(block_size=None).theta_, SAEM(
        n_burn=15, n_em=15, n_conditional=10, n_importance=200, seed=5,
        standard_errors=False).fit(predict, data, np.log([5.0, 0.5]), np.diag([0.5, 0.5]),
                                   ResidualError(0.05, 0.2), mu_index=[0, 1]).theta_)


def test_checks():
    times, data = _exp_data(n=4)
    predict = _exp_decay(times)
    with pytest.raises(ValidationError, match="mu_index"):
        SAEM().fit(predict, data, np.zeros(2), np.eye(2), ResidualError(1.0), mu_index=[0, 0])
    with pytest.raises(ValidationError, match="subset"):
        SAEM(block_size=2).fit(predict, data, np.zeros(2), np.eye(2), ResidualError(1.0))
    with pytest.raises(ValidationError, match="method"):
        fit_population(parse_model(SIM), _design(2), method="laplace")


def test_fit_population_blocks_of_subjects_match_one_block():
    """fit_population hands SAEM a per-block predict (subset of the PK data): same fit."""
    truth = parse_model(SIM)
    data = simulate_table(truth, _design(10), seed=8, lloq=0.05)

    def run(block_size: int | None):
        return fit_population(truth, data, method="saem", standard_errors=False,
                              saem=SAEM(n_burn=10, n_em=10, n_conditional=5,
                                        n_importance=100, block_size=block_size)).estimator

    one, blocks = run(None), run(3)
    np.testing.assert_array_equal(one.theta_, blocks.theta_)
    np.testing.assert_array_equal(one.eta_, blocks.eta_)


def test_progress_signal_counts_iterations_and_can_stop_the_fit():
    truth = parse_model(SIM)
    data = simulate_table(truth, _design(4), seed=9, lloq=0.05)
    seen: list[int] = []
    fit_population(truth, data, method="saem", standard_errors=False, on_batch=seen.append,
                   saem=SAEM(n_burn=3, n_em=4, n_conditional=2, n_importance=50))
    assert seen == list(range(1, 8))

    def stop(k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_population(truth, data, method="saem", on_batch=stop,
                       saem=SAEM(n_burn=3, n_em=4))


def test_two_observation_kinds_each_with_its_own_error():
    """A PK/PD-shaped model (concentration and a direct Imax effect, observed at the same
    times): one residual error per observation kind, both recovered."""
    rng = np.random.default_rng(11)
    n, tt = 40, np.array([0.5, 1, 2, 4, 8, 12], float)
    times = np.tile(np.concatenate([tt, tt]), (n, 1))
    kind = np.tile(np.repeat([0, 1], tt.size), (n, 1))

    def predict(theta: np.ndarray, eta: np.ndarray) -> np.ndarray:
        a = np.exp(theta[0] + eta[..., 0])[..., None]
        k = np.exp(theta[1] + eta[..., 1])[..., None]
        e0 = np.exp(theta[2] + eta[..., 2])[..., None]
        ec50 = math.exp(theta[3])
        conc = a * np.exp(-k * times[:, None, :])
        return np.where(kind[:, None, :] == 0, conc, e0 * (1 - conc / (conc + ec50)))

    truth = np.log([10.0, 0.2, 100.0, 3.0])
    eta = rng.normal(0, [0.3, 0.2, 0.1], size=(n, 1, 3))
    f = predict(truth, eta)[:, 0]
    y = np.where(kind == 0, f * (1 + 0.1 * rng.standard_normal(f.shape)),
                 f + 2.0 * rng.standard_normal(f.shape))
    data = ObservedData.build(y, kind=kind)
    errors = ResidualErrors((ResidualError(proportional_sd=0.3), ResidualError(5.0)),
                            ("conc", "effect"))
    est = SAEM(n_burn=100, n_em=100, seed=0).fit(
        predict, data, np.log([5.0, 0.5, 80.0, 1.0]), np.diag([0.3, 0.3, 0.3]), errors,
        mu_index=[0, 1, 2])
    assert not hasattr(est, "se_")  # FOCE-I's covariance takes one error model
    # EC50 has no eta: the numerical M-step; achieved: within 4%
    assert np.exp(est.theta_) == pytest.approx([10.0, 0.2, 100.0, 3.0], rel=0.06)
    conc_err, effect_err = est.error_.errors
    assert conc_err.proportional_sd == pytest.approx(0.1, rel=0.1)
    assert effect_err.additive_sd == pytest.approx(2.0, rel=0.1)
    assert (conc_err.additive_sd, effect_err.proportional_sd) == (0.0, 0.0)
    assert est.error_.names == ("conc", "effect")
