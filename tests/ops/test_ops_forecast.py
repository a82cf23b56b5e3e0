"""Live occupancy forecast from the census in the store."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from medtwin.core.yamlio import load_yaml
from medtwin.ops.distributions import Distribution
from medtwin.ops.forecast import census_from_store, forecast
from medtwin.ops.loader import parse_model

WARD = """
name: ward
time_unit: minutes
resources: {{beds: {{capacity: {beds}}}}}
activities:
  stay: {{resource: beds, duration: {{dist: lognormal, mean: 600, variance: 90000}}}}
classes: {{patient: {{pathway: [stay]}}}}
arrivals: [{{name: adm, rate_per_hour: {rate}, class: patient}}]
census: {{activity: stay, encounter_class: IMP}}
"""


def test_remaining_stay_is_conditioned_on_time_spent():
    rng = np.random.default_rng(0)
    expo = Distribution("exponential", {"mean": 100.0})
    r = expo.remaining(rng, np.full(20000, 250.0))
    assert r.mean() == pytest.approx(100, rel=0.03)  # memoryless
    ln = Distribution("lognormal", {"mu": 5.0, "sigma": 0.8})
    a = 300.0
    r = ln.remaining(rng, np.full(20000, a))
    d = ln.scipy()
    exact = d.expect(lambda x: x - a, lb=a, conditional=True)
    assert r.mean() == pytest.approx(exact, rel=0.03)
    assert (r >= 0).all()
    assert np.allclose(Distribution("fixed", {"value": 10.0}).remaining(rng, [4.0, 12.0]),
                       [6.0, 0.0])


LN_MU, LN_SIGMA = 6.2, 0.55  # the generating LOS (minutes)


def _ward(rate, beds=500):
    d = Distribution("lognormal", {"mu": LN_MU, "sigma": LN_SIGMA}).scipy()
    text = WARD.format(rate=rate, beds=beds).replace(
        "mean: 600, variance: 90000", f"mean: {d.mean():.10g}, variance: {d.var():.10g}")
    return parse_model(load_yaml(text), "<ward>")


@pytest.fixture
def ward_store(encounter_store, data_start):
    now = data_start + timedelta(days=5, hours=10, minutes=30)
    store, recs = encounter_store(days=6, rates=np.full(24, 2.0), klass="IMP",
                                  los=lambda r: r.lognormal(LN_MU, LN_SIGMA), seed=3, now=now)
    yield store, recs, now
    store.close()


def test_census_is_the_open_encounters(ward_store):
    store, recs, now = ward_store
    census = census_from_store(store, _ward(2.0), at=now)
    open_ = [r for r in recs if r.end is None]
    assert len(census.elapsed) == len(open_) > 5
    expected = sorted((now - r.start).total_seconds() / 60 for r in open_)
    assert np.allclose(sorted(census.elapsed), expected)
    # default cut-off: the latest start/end stored, here just before `now`
    auto = census_from_store(store, _ward(2.0))
    assert auto.at <= now and len(auto.elapsed) >= len(open_) - 1


def test_without_arrivals_occupancy_decays_as_the_survival_function(ward_store):
    store, _, now = ward_store
    model = _ward(1e-9)
    census = census_from_store(store, model, at=now)
    fc = forecast(model, census, hours=24, reps=200, seed=1)
    d = Distribution("lognormal", {"mu": LN_MU, "sigma": LN_SIGMA}).scipy()
    for k in (0, 3, 6, 12, 24):
        exact = float(np.sum(d.sf(census.elapsed + 60 * k) / d.sf(census.elapsed)))
        row = fc.loc[fc.hour_ahead == k].iloc[0]
        assert row.occupancy_mean == pytest.approx(exact, abs=max(0.6, 0.05 * exact)), k
        assert row.occupancy_lo <= row.occupancy_mean <= row.occupancy_hi
    assert fc.loc[0, "occupancy_lo"] == fc.loc[0, "occupancy_hi"] == len(census.elapsed)


def test_with_arrivals_forecast_reaches_the_steady_state(ward_store):
    store, _, now = ward_store
    model = _ward(2.0)
    census = census_from_store(store, model, at=now)
    fc = forecast(model, census, hours=48, reps=100, seed=2)
    mean_los_h = np.exp(LN_MU + LN_SIGMA**2 / 2) / 60
    late = fc.loc[fc.hour_ahead >= 36, "occupancy_mean"].mean()
    assert late == pytest.approx(2.0 * mean_los_h, rel=0.1)  # Little's law, ample beds
    assert len(fc) == 49 and fc.attrs["census"] == len(census.elapsed)
    assert (fc["wait_mean"].fillna(0) < 1e-9).all()  # 500 beds: nobody waits
    assert fc["time"].iloc[1] - fc["time"].iloc[0] == timedelta(hours=1)


def test_forecast_with_too_few_beds_predicts_waits(ward_store):
    store, _, now = ward_store
    model = _ward(2.0, beds=12)
    census = census_from_store(store, model, at=now)
    fc = forecast(model, census, hours=24, reps=40, seed=2)
    assert fc["occupancy_hi"].max() <= 12
    assert fc["queue_mean"].iloc[-1] > 0 and fc["wait_mean"].iloc[-6:].mean() > 30
