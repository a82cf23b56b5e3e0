"""The glucose twin's filter, rebuilt on core/estimate's generic ensemble pieces
(``eakf_update``, ``propagate_batch``, ``OrnsteinUhlenbeck``, ``RandomWalk``, ``multiplied``,
``crossing_probability``), gives the numbers of the filter it replaced: the reference values
below were computed with the self-contained implementation (``glucose_filter.py`` before issue
14) on the same scenarios, and were reproduced bit for bit (the tolerance only allows another
CPU's last-digit rounding)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.core.errors import ValidationError
from medtwin.core.records import Intervention, Observation
from medtwin.models.glucose.subjects import uva_padova_cohort
from medtwin.twin import glucose_bank as gb
from medtwin.twin import glucose_filter as gf
from medtwin.twin.glucose import GlucoseTwin

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)

#: glucose, its sd, Vmx, its sd, Gp, Ip, last innovation, forecast mean and p05 at 60 min,
#: P(< 130 mg/dL within 60 min)
TWIN = [105.29645960211671, 3.746209321745197, 0.09841395434276046, 0.005368938022290226,
        198.6240967184524, 38.39417072207036, 33.39987255356523, 96.16679184606903,
        92.0269899369081, 1.0]
POPULATION = [117.12569445806096, 11.996294760791226, 0.0814432336265314,
              0.041396028894886173, 213.11834603007674, 25.66134893115794, 26.482822696942236,
              108.75912576442315, 80.98013646802994, 0.875]
#: two patients batched with a bank, kp3 learned by regression with an inflated reading error,
#: a reading missing every third step for one patient: forecast means, mean kp3 multiplier,
#: bias, flux, the bank's log-likelihood, the spread of Gp
BATCH = [112.44696060860151, 117.76017245058325, 0.19469490971917625, 0.0,
         0.014527623218720769, -850.7599899069828, 17.55867914102195]


def records(n: int):
    obs = [Observation("p1", "99504-3", T0 + timedelta(minutes=5 * i),
                       120.0 + 45.0 * np.sin(i / 9.0) + 6.0 * np.cos(i * 1.7), "mg/dL", f"c{i}")
           for i in range(n)]
    ivs = [Intervention("p1", "meal", T0 + timedelta(minutes=30), 50.0, "g", "m1"),
           Intervention("p1", "insulin", T0 + timedelta(minutes=30), 4.0, "U", "b1")]
    return obs, ivs


def twin_numbers(prior: str, **kw) -> list[float]:
    obs, ivs = records(60)
    tw = GlucoseTwin(prior, settings=gf.FilterSettings(**kw) if kw else None).assimilate(obs, ivs)
    fc = tw.forecast(60)
    return [tw.glucose_, tw.glucose_sd_, tw.insulin_sensitivity_, tw.insulin_sensitivity_sd_,
            float(tw.state_mean_.iloc[3]), float(tw.state_mean_.iloc[6]), tw.innovations_[-1],
            float(fc["mean"].iloc[-1]), float(fc["p05"].iloc[-1]), tw.hypo_risk(130.0, 60)[0]]


def test_the_twin_with_its_bank_reproduces_the_former_filter():
    assert twin_numbers("adult#001") == pytest.approx(TWIN, rel=1e-12, abs=1e-12)


def test_a_population_prior_with_member_basal_reproduces_the_former_filter():
    got = twin_numbers("adult#00*", n_members=16, sensor_sd=4.0)
    assert got == pytest.approx(POPULATION, rel=1e-12, abs=1e-12)


def test_the_batched_filter_reproduces_the_former_filter():
    p = uva_padova_cohort(["adult#001", "adult#002"]).parameters(gf.MODEL)
    N = 12
    st = gf.FilterSettings(n_members=N, adapt=("Vmx", "kp3"), seed=3, param_obs_sd=35.0)
    rng = np.random.default_rng(10)
    base = np.repeat(p[:, None, :], N, axis=1)
    y = 130.0 + 30.0 * np.sin(np.arange(40)[None] / 7.0 + np.arange(2)[:, None])
    ens = gf.new_ensemble(base, st, y[:, 0], rng)
    bank = gb.new_bank(ens, 0.0)
    u = np.zeros((2, 200, 2))
    u[:, 10, 0], u[:, :, 1], u[:, 12, 1] = 10.0, 0.01, 3.0
    for j in range(1, 40):
        gf.advance(ens, 5.0 * (j - 1), u[:, 5 * (j - 1):5 * j], rng, bank)
        innov = gb.assimilate(ens, bank, y[:, j], 5.0 * j, np.array([True, j % 3 != 0]))
        assert np.isnan(innov[1]) == (j % 3 == 0)
    paths = gf.glucose_paths(ens, 200.0, u[:, :30], np.random.default_rng(5))
    got = [float(paths[0, :, -1].mean()), float(paths[1, :, -1].mean()),
           float(ens.theta[..., 1].mean()), float(ens.bias.mean()), float(ens.flux.mean()),
           float(bank.ll.sum()), float(ens.x[..., 3].std())]
    assert got == pytest.approx(BATCH, rel=1e-12, abs=1e-12)
    # the updated states respect their bounds; per-member inputs cannot move a bank
    assert (ens.x[..., list(gf.UPDATED_STATES)] >= 0).all() and (ens.x[..., gf.GP] >= 1e-3).all()
    with pytest.raises(ValidationError, match="per-member"):
        gf.advance(ens, 200.0, np.zeros((2, N, 5, 2)), rng, bank)
