"""Per-record diagnostics (PRED, IPRED, IWRES, CWRES, NPDE) and the posterior predictive band:
against a hand computation on a one-compartment IV bolus, and calibrated on subjects simulated
from the model itself."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.linalg import sqrtm

from medtwin.core.errors import ValidationError
from medtwin.interop.nonmem import EventTable
from medtwin.models.pk.spec import load_model, parse_model
from medtwin.twin.pk import PKTwin
from medtwin.twin.pk_diagnostics import (
    COLUMNS,
    cwres,
    npde,
    predictive_interval,
    provenance,
    record_table,
)

DOSE = 500.0
CL, V = 4.0, 30.0
OMEGA = np.array([[0.09, 0.03], [0.03, 0.04]])
TIMES = (1.0, 4.0, 10.0, 18.0)


def _bolus(error: dict) -> object:
    return parse_model({
        "name": "bolus-1cmt", "title": "one compartment IV bolus", "source": "test",
        "structure": {"compartments": 1, "absorption": "none"},
        "units": {"time": "h", "amount": "mg", "concentration": "mg/L"},
        "parameters": {"CL": {"value": CL, "unit": "L/h", "eta": "ETA_CL"},
                       "V": {"value": V, "unit": "L", "eta": "ETA_V"}},
        "omega": {"etas": ["ETA_CL", "ETA_V"], "matrix": OMEGA.tolist()},
        "error": error})


def _table(rows: list[tuple]) -> EventTable:
    frame = pd.DataFrame(rows, columns=["ID", "TIME", "EVID", "AMT", "CMT", "DV", "MDV"])
    return EventTable.from_frame(frame.astype(str).replace("nan", "."))


def _one_subject(dv: tuple[float, ...]) -> EventTable:
    rows = [("A", 0.0, 1, DOSE, 1, np.nan, 1)]
    rows += [("A", t, 0, 0.0, 1, y, 0) for t, y in zip(TIMES, dv, strict=True)]
    return _table(rows)


@pytest.mark.parametrize("error", [{"log_scale": True, "additive_sd": 0.15},
                                   {"additive_sd": 0.4, "proportional_sd": 0.1}])
def test_iwres_and_cwres_match_the_hand_computation(error):
    """C = D/V exp(-CL t / V): IPRED, the eta-Jacobian and the FOCE-I linearisation are
    closed-form, so IWRES and CWRES = C^-1/2 (T(y) - E) can be written out by hand."""
    model = _bolus(error)
    twin = PKTwin(model).fit(_one_subject((12.1, 11.5, 6.2, 3.9)))
    table = record_table(twin, npde_samples=0).records
    e1, e2 = twin.eta_[0]
    cl, v = CL * np.exp(e1), V * np.exp(e2)
    t = np.array(TIMES)
    y = np.array([12.1, 11.5, 6.2, 3.9])
    ipred = DOSE / v * np.exp(-cl / v * t)
    dlog = np.stack([-cl / v * t, -1 + cl / v * t], axis=1)  # d log C / d eta, (m, q)
    if error.get("log_scale"):
        ty, tf, G = np.log(y), np.log(ipred), dlog
        var = np.full(t.size, error["additive_sd"] ** 2)
    else:
        ty, tf, G = y, ipred, dlog * ipred[:, None]
        var = error["additive_sd"] ** 2 + (error["proportional_sd"] * ipred) ** 2
    iwres = (ty - tf) / np.sqrt(var)
    E = tf - G @ twin.eta_[0]
    C = G @ OMEGA @ G.T + np.diag(var)
    expected = np.linalg.solve(np.real(sqrtm(C)), ty - E)
    np.testing.assert_allclose(table["PRED"], DOSE / V * np.exp(-CL / V * t), rtol=1e-12)
    np.testing.assert_allclose(table["IPRED"], ipred, rtol=1e-12)
    np.testing.assert_allclose(table["IWRES"], iwres, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(table["CWRES"], expected, rtol=1e-8, atol=1e-9)
    assert list(table.columns) == list(COLUMNS)
    assert table["LINE"].tolist() == [3, 4, 5, 6]


def _simulate(model, n: int, seed: int, times=TIMES) -> tuple[EventTable, np.ndarray]:
    """``n`` subjects drawn from ``model`` itself (etas from Omega, residual error)."""
    rng = np.random.default_rng(seed)
    eta = rng.multivariate_normal(np.zeros(2), OMEGA, size=n)
    t = np.array(times)
    conc = DOSE / (V * np.exp(eta[:, 1:])) * np.exp(-CL * np.exp(eta[:, :1])
                                                    / (V * np.exp(eta[:, 1:])) * t)
    err = model.error
    z = rng.standard_normal(conc.shape)
    if err.log_scale:
        y = conc * np.exp(err.additive_sd * z)
    else:
        y = conc + np.sqrt(err.additive_sd**2 + (err.proportional_sd * conc) ** 2) * z
    rows = []
    for i in range(n):
        rows.append((f"S{i:03d}", 0.0, 1, DOSE, 1, np.nan, 1))
        rows += [(f"S{i:03d}", tj, 0, 0.0, 1, max(yj, 1e-3), 0)
                 for tj, yj in zip(t, y[i], strict=True)]
    return _table(rows), eta


@pytest.fixture(scope="module")
def simulated():
    model = _bolus({"additive_sd": 0.3, "proportional_sd": 0.15})
    table, eta = _simulate(model, 400, seed=11)
    return model, PKTwin(model).fit(table), eta


def test_cwres_and_npde_are_standard_normal_on_data_from_the_model(simulated):
    _, twin, _ = simulated
    assert twin.converged_.all()
    table = record_table(twin, npde_samples=2000, seed=3).records
    cw, nd = table["CWRES"].to_numpy(), table["NPDE"].to_numpy()
    assert cw.size == nd.size == 1600
    # 1600 residuals: standard errors 0.025 (mean) and 0.035 (variance); bounds are 2 of them
    # (achieved: CWRES -0.016 / 0.965, NPDE 0.000 / 1.001)
    assert abs(cw.mean()) < 0.05 and abs(cw.var() - 1) < 0.07
    assert abs(nd.mean()) < 0.05 and abs(nd.var() - 1) < 0.07
    assert stats.kstest(nd, "norm").pvalue > 0.05
    # decorrelated: residuals of the same subject are not correlated with each other (400
    # subjects: standard error 0.05)
    corr = np.corrcoef(cw.reshape(400, 4).T)
    assert np.abs(corr[np.triu_indices(4, 1)]).max() < 0.12


def test_misspecified_model_shows_in_cwres_and_npde(simulated):
    """The same data under a model whose clearance is 40% too high: residuals drift up."""
    model, twin, _ = simulated
    wrong = model.with_estimates({"CL": CL * 1.4, "V": V}, OMEGA, model.error)
    bad = PKTwin(wrong).fit(twin.events_)
    table = record_table(bad, npde_samples=500).records
    assert table["CWRES"].mean() > 0.3
    assert table["NPDE"].mean() > 0.3


def test_npde_is_reproducible_and_checks_its_input(simulated):
    _, twin, _ = simulated
    one = PKTwin(twin.model_).fit(twin.events_.select(["S000", "S001"]))
    np.testing.assert_array_equal(npde(one, n=200, seed=5), npde(one, n=200, seed=5))
    assert not np.array_equal(npde(one, n=200, seed=5), npde(one, n=200, seed=6))
    with pytest.raises(ValidationError):
        npde(one, n=5)


def test_blq_rows_have_no_residuals_and_provenance():
    model = _bolus({"log_scale": True, "additive_sd": 0.15})
    text = ("ID,TIME,EVID,AMT,CMT,DV,MDV,BLQ,LLOQ\nA,0,1,500,1,.,1,0,.\nA,1,0,0,1,12.1,0,0,.\n"
            "A,4,0,0,1,11.5,0,0,.\nA,10,0,0,1,6.2,0,0,.\nA,30,0,0,1,.,0,1,2\n")
    twin = PKTwin(model).fit(EventTable.from_frame(pd.read_csv(io.StringIO(text), dtype=str,
                                                               keep_default_na=False)))
    rt = record_table(twin, npde_samples=300)
    blq = rt.records.iloc[-1]
    assert blq["BLQ"] == 1 and blq["LLOQ"] == 2.0 and np.isnan(blq["DV"])
    assert np.isnan(blq[["IWRES", "CWRES", "NPDE"]].to_numpy(float)).all()
    assert np.isfinite(rt.records.iloc[:3][["IWRES", "CWRES", "NPDE"]].to_numpy(float)).all()
    # the BLQ sample still informs the fit (M3), so IPRED there is below the LLOQ
    assert blq["IPRED"] < 2.0
    assert rt.rows()[-1]["DV"] is None
    p = rt.provenance
    assert p["model"] == "bolus-1cmt" and p["data_cutoff_time"] == 30.0
    assert len(p["model_digest"]) == 12 and p["medtwin_version"]
    assert p["computed_at"].endswith("+00:00")
    assert provenance(twin)["model_digest"] == p["model_digest"]


def test_cwres_of_an_unfitted_twin_is_a_typed_error():
    with pytest.raises(ValidationError, match="not fitted"):
        cwres(PKTwin(load_model("mapbayr-001")))


def test_predictive_band_covers_future_samples(simulated):
    """A 90% band for a sample at 24 h and 36 h (after the fitted samples) holds about 90% of
    the samples the simulated patients really give; the curve-only band holds far fewer."""
    model, twin, eta = simulated
    rng = np.random.default_rng(99)
    future = np.array([24.0, 36.0])
    n = 400
    conc = DOSE / (V * np.exp(eta[:n, 1:])) * np.exp(
        -CL * np.exp(eta[:n, :1]) / (V * np.exp(eta[:n, 1:])) * future)
    err = model.error
    y = conc + np.sqrt(err.additive_sd**2 + (err.proportional_sd * conc) ** 2) \
        * rng.standard_normal(conc.shape)
    inside = np.zeros((n, 2), bool)
    inside_curve = np.zeros((n, 2), bool)
    for i in range(n):
        s = twin.subjects_[i]
        band = predictive_interval(twin, future, s, n=1000, seed=i)
        curve = predictive_interval(twin, future, s, n=1000, seed=i, residual=False)
        inside[i] = (band["lower"] <= y[i]) & (y[i] <= band["upper"])
        inside_curve[i] = (curve["lower"] <= y[i]) & (y[i] <= curve["upper"])
    # 800 future samples: the standard error of a 90% coverage is 0.011 (achieved 0.899)
    assert inside.mean() == pytest.approx(0.9, abs=0.025)
    assert inside_curve.mean() < 0.5  # achieved 0.385
    # without residual error the band is PKTwin.prediction_interval's
    curve = predictive_interval(twin, future, twin.subjects_[0], n=500, seed=1, residual=False)
    ref = twin.prediction_interval(future, twin.subjects_[0], n=500, seed=1)
    np.testing.assert_allclose(curve[["lower", "upper"]], ref[["lower", "upper"]])
    with pytest.raises(ValidationError):
        predictive_interval(twin, future, twin.subjects_[0], level=1.5)
