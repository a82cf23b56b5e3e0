"""Calibration recovers known arrival rates and LOS distributions from generated encounters."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.ops.calibrate import calibrate, fit_los
from medtwin.ops.loader import load_model
from medtwin.ops.runner import run_replications


def test_rates_and_lognormal_los_recovered_and_written(encounter_store, true_rates, tmp_path):
    store, recs = encounter_store(days=28)
    cal = calibrate(store, klass="EMER")
    store.close()
    assert cal.n_arrivals == len(recs)
    assert cal.days == 28
    rates, se = np.array(cal.rates_per_hour), np.array(cal.rate_se)
    z = (rates - true_rates) / np.sqrt(true_rates / cal.days)  # Poisson standard errors
    assert np.all(np.abs(z) < 4), z
    assert np.sum(z**2) < 24 + 4 * np.sqrt(48)  # chi-square(24) upper tail
    assert np.allclose(se, np.sqrt(rates / cal.days))
    assert cal.day_of_week is not None and np.allclose(cal.day_of_week, 1, atol=0.12)
    assert cal.best.kind == "lognormal"
    assert cal.best.dist.mean() == pytest.approx(240, rel=0.05)
    assert np.sqrt(cal.best.dist.scipy().var()) == pytest.approx(120, rel=0.1)
    assert cal.best.ks < 0.03
    table = cal.fit_table()
    assert table.loc["exponential", "delta_aic"] > 50
    path = cal.write_model(tmp_path / "cal.yaml", name="cal")
    model = load_model(path)
    assert model.arrivals[0].rates_per_hour == pytest.approx(rates, abs=1e-4)
    assert model.activities["stay"].duration.kind == "lognormal"
    # the calibrated model runs and reproduces the observed arrival rate
    res = run_replications(model, 5, seed=0, progress=False, hourly=False)
    per_day = res.per_rep["arrivals"].mean() / 7
    assert per_day == pytest.approx(rates.sum(), rel=0.05)


def test_gamma_and_weibull_are_told_apart():
    rng = np.random.default_rng(5)
    g = fit_los(rng.gamma(2.0, 60.0, 4000))
    assert g[0].kind == "gamma"
    assert g[0].dist.params["shape"] == pytest.approx(2.0, rel=0.08)
    w = fit_los(120 * rng.weibull(0.8, 4000))
    assert w[0].kind == "weibull"
    assert w[0].dist.params["shape"] == pytest.approx(0.8, rel=0.06)
    e = fit_los(rng.exponential(50.0, 4000))
    assert e[0].dist.mean() == pytest.approx(50, rel=0.06)
    assert all(f.ks < 0.05 for f in e[:1])
