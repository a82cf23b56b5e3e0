"""M/M/c models written as YAML reproduce Erlang C (README table): the analytic mean wait
lies inside the 95% CI of the simulated mean wait, for every case in the table."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from medtwin.core.yamlio import load_yaml
from medtwin.ops.loader import load_model, parse_model
from medtwin.ops.runner import run_replications


def erlang_c(c: int, lam: float, mu: float) -> tuple[float, float]:
    """(P(wait), Wq) of an M/M/c queue, computed from the Erlang C formula."""
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait, p_wait / (c * mu - lam)


# (label, c, lambda, mu, README Wq): the README's values, checked against the formula too.
CASES = [
    ("M/M/1 l0.9", 1, 0.9, 1.0, 9.0),
    ("M/M/2 l1", 2, 1.0, 1.0, 1 / 3),
    ("M/M/3 l2.7", 3, 2.7, 1.0, 2.723537),
    ("M/M/3 l2", 3, 2.0, 1.0, 4 / 9),
    ("l10/h mu2/h c6", 6, 10.0, 2.0, 0.293758),
]


def mmc_yaml(c: int, lam: float, mu: float, customers: int, reps: int) -> str:
    length = customers / lam
    return f"""
name: mm{c}
time_unit: hours
run: {{warm_up: {length / 20:.6g}, length: {length:.6g}, replications: {reps}}}
resources:
  servers: {{capacity: {c}}}
activities:
  service: {{resource: servers, duration: {{dist: exponential, mean: {1 / mu:.12g}}}}}
classes:
  customer: {{pathway: [service]}}
arrivals:
  - {{name: poisson, rate_per_hour: {lam}, class: customer}}
"""


@pytest.mark.parametrize(("label", "c", "lam", "mu", "wq_readme"), CASES,
                         ids=[c[0] for c in CASES])
def test_mmc_mean_wait_matches_erlang_c(label, c, lam, mu, wq_readme):
    p_wait, wq = erlang_c(c, lam, mu)
    assert wq == pytest.approx(wq_readme, rel=1e-6)
    # heavy traffic (rho 0.9) needs longer runs for a tight CI
    customers = 16_000 if lam / (c * mu) >= 0.8 else 8_000
    model = parse_model(load_yaml(mmc_yaml(c, lam, mu, customers, 10)), f"<{label}>")
    s = run_replications(model, seed=2024, progress=False, hourly=False).summary()
    w = s.loc["wait:service"]
    assert w.ci_low <= wq <= w.ci_high, (label, wq, w.to_dict())
    assert (w.ci_high - w.ci_low) / 2 < 0.15 * wq  # the CI is tight enough to mean something
    pw = s.loc["p_wait:service"]
    assert pw["mean"] == pytest.approx(p_wait, abs=0.03)
    assert s.loc["util:servers", "mean"] == pytest.approx(lam / (c * mu), abs=0.02)


def test_shipped_mm3_example_is_the_readme_case():
    m = load_model("mm3")
    assert m.resources["servers"].capacity == 3
    assert m.arrivals[0].rates_per_hour == (2.7,)
    assert m.activities["service"].duration.mean() == pytest.approx(1.0)
    # Lq from Little's law matches the README's 7.353549
    _, wq = erlang_c(3, 2.7, 1.0)
    assert 2.7 * wq == pytest.approx(7.353549, rel=1e-6)
    assert stats.expon(scale=1.0).mean() == m.activities["service"].duration.mean()
